"""DADA under mpirun: Algorithm 1 on rank 0 (the source), Algorithm 2 on ranks 1..k (the targets),
on the shared run loop (:class:`mpidist.loop.Loop`).

The ranks meet every 10 sync-up steps (``Strategy.meet_every``): one 8-byte allreduce on channel
``control`` agrees on a stop signal (SIGUSR1/SIGTERM) or a due ``--checkpoint-every 15m``, and then
every rank saves its state (and stops). ``--checkpoint-every K`` saves after every K steps;
``--resume`` skips the pre-training and the initial transfer and continues bitwise.
"""
from __future__ import annotations

import time

from .. import checkpoint
from ..comm import FlatParams
from ..loop import Loop
from .exchange import (DiscExchange, load_own_domain, report_accuracies,
                       transfer_initial_models)
from .nodes import (SourceNode, StepContext, TargetNode, build_discriminator, build_network,
                    build_source)
from .report import summary_distributed
from .rules import DiscriminatorRule, adam, make_strategy


def checkpoint_state(n, fpD, rule, node, ex, fixed) -> dict:
    """Everything a rank needs to continue after step n: D (weights, G_acc, optimizer, D_sync),
    its network (E_s and C on the source, E_t and C on a target) and E_t's optimizer, the data
    position, the exchange counters and the fixed figures of the run (``fixed``)."""
    state = {"n": n, "disc": fpD.params.clone(), "disc_grads": fpD.grads.clone(),
             "opt_disc": rule.opt.state_dict(), "d_sync": rule.d_sync,
             "net": node.net.state_dict(), "batches": node.batches.state_dict(),
             "exchange": ex.counters(), **fixed}
    if isinstance(node, TargetNode):
        state["opt_target"] = node.optE.state_dict()
    return state


def _networks(run, domain, cache):
    """E, C and D at the start of the adaptation, with (source accuracy, initial transfer bytes):
    fresh (the source's pre-training, then the initial transfer as step 0), or as the checkpoint
    holds them after its step (``--resume``)."""
    args, comm, dev = run.args, run.comm, run.device
    saved = run.resumed_state
    if saved is None:
        if run.rank == 0:
            net, source_acc = build_source(args, domain, dev, cache)
            run.metric(0, "source_acc", source_acc)
        else:
            net, source_acc = build_network(args, domain.train.num_classes, dev), float("nan")
        disc = build_discriminator(args, net.feature_dim, dev)
        fpD = FlatParams(disc)
        init_bytes = transfer_initial_models(comm, net, fpD)
        run.step_done(0)  # step 0 is the initial transfer: rows of step n carry n from here on
        return net, disc, fpD, source_acc, init_bytes
    net = build_network(args, domain.train.num_classes, dev)
    disc = build_discriminator(args, net.feature_dim, dev)
    fpD = FlatParams(disc)

    def restore():  # a checkpoint of another --task/--image-size: one line, no traceback
        net.load_state_dict(saved["net"])
        fpD.params.copy_(saved["disc"])
        fpD.grads.copy_(saved["disc_grads"])
    checkpoint.restore(comm, restore)
    return net, disc, fpD, saved["source_acc"], saved["init_bytes"]


def adapt_distributed(run, on_step=None, cache: dict | None = None, summary: bool = True) -> dict:
    """Algorithms 1 (rank 0) and 2 (ranks 1..k) under ``run`` (mpidist.runtime.Run).

    Returns on every rank a dict with this rank's figures; on rank 0 also ``targets`` (a list of
    (rank, rotation, source-only accuracy, adapted accuracy)). Prints the summary on rank 0
    (unless ``summary`` is False). ``on_step(n, StepContext)`` is called after every step;
    ``cache`` memoises the source's pre-training (:func:`build_source`).
    """
    args, comm, dev, rank = run.args, run.comm, run.device, run.rank
    t_start = time.perf_counter()
    k = run.world_size - 1
    strategy = make_strategy(args.strategy or "ga", args.sync_period)
    domain = load_own_domain(comm, args, k)
    net, disc, fpD, source_acc, init_bytes = _networks(run, domain, cache)
    saved = run.resumed_state
    if rank == 0:
        node, before = SourceNode(net, domain, disc, args, dev), float("nan")
    else:
        node = TargetNode(net, domain, disc, args, dev)
        if saved is None:
            before = node.accuracy()    # source-only: E_t = E_s, C_t = C_s
            run.metric(0, "target_acc", before)
        else:
            before = saved["before"]
            node.optE.load_state_dict(saved["opt_target"])
    rule = DiscriminatorRule(strategy, fpD, adam(disc.parameters(), args.lr_disc))
    ex = DiscExchange(comm, fpD.numel, fpD.params.dtype, fpD.params.device, strategy.channel)
    if saved is not None:
        rule.opt.load_state_dict(saved["opt_disc"])
        if rule.d_sync is not None:
            rule.d_sync.copy_(saved["d_sync"])
        node.batches.load_state_dict(saved["batches"])
        ex.set_counters(saved["exchange"])
    fixed = {"source_acc": source_acc, "init_bytes": init_bytes, "before": before}
    ctx = StepContext(fpD, rule, node, ex)
    loop = Loop(run, total=args.steps, first_step=1, meet_every=strategy.meet_every,
                state=lambda n: checkpoint_state(n, fpD, rule, node, ex, fixed))
    last = loop.first - 1
    t_adapt = time.perf_counter()
    for n in loop:
        last = n
        vals = node.step(n, rule, ex)
        for name, v in vals.items():
            run.metric(n, name, v)
        if rank > 0 and (n % args.eval_every == 0 or loop.is_last(n)):
            run.metric(n, "target_acc", node.accuracy())
        if on_step is not None:
            on_step(n, ctx)
        if loop.end_step(n, d_loss=vals["d_loss"], d_acc=vals["d_acc"]):
            break
    t_adapt = time.perf_counter() - t_adapt
    after = node.accuracy() if rank > 0 else float("nan")
    res = {"rank": rank, "strategy": strategy, "source_acc": source_acc, "before": before,
           "after": after, "syncs": ex.syncs, "bytes_sent": ex.bytes_sent,
           "bytes_received": ex.bytes_received, "disc_bytes": fpD.nbytes,
           "init_bytes": init_bytes, "adapt_seconds": t_adapt, "steps_run": last - loop.first + 1,
           "rotation": domain.rotation, "label": domain.label, "stopped": loop.stopped}
    if loop.stopped:
        return res
    targets = report_accuracies(comm, k, domain.rotation, before, after)
    if targets is not None:
        res["targets"] = targets
    res["seconds"] = time.perf_counter() - t_start
    if rank == 0 and summary:
        summary_distributed(run, args, strategy, res, k)
    return res
