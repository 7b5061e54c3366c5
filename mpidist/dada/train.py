"""DADA under mpirun: Algorithm 1 on rank 0 (the source), Algorithm 2 on ranks 1..k (the targets),
on the shared run loop (:class:`mpidist.loop.Loop`).

The ranks meet every 10 sync-up steps (``Strategy.meet_every``): one 8-byte allreduce on channel
``control`` agrees on a stop signal (SIGUSR1/SIGTERM) or a due ``--checkpoint-every 15m``, and then
every rank saves its state (and stops). ``--checkpoint-every K`` saves after every K steps;
``--resume`` skips the pre-training and the initial transfer and continues bitwise.
"""
from __future__ import annotations

import copy
import time

from .. import checkpoint
from ..loop import Loop
from .exchange import agreed, gather_domains, report_accuracies
from .nodes import (SourceNode, StepContext, TargetNode, build_discriminator, build_network,
                    build_source, check_networks, describe_networks, uses_user_parts)
from .report import setup_distributed, summary_distributed
from .rules import adam, make_strategy
from .sync import DiscriminatorSync


def checkpoint_state(n, sync, node, fixed) -> dict:
    """Everything a rank needs to continue after step n: D (the DiscriminatorSync's state: weights,
    G_acc, optimizer, D_sync, exchange counters), its network (E_s and C on the source, E_t and C
    on a target) and E_t's optimizer, the data position and the fixed figures of the run
    (``fixed``)."""
    state = {"n": n, **sync.state_dict(), "net": node.net.state_dict(),
             "batches": node.batches.state_dict(), **fixed}
    if isinstance(node, TargetNode):
        state["opt_target"] = node.optE.state_dict()
    return state


def _networks(run, domain, strategy, cache):
    """E, C and D at the start of the adaptation, with D's :class:`DiscriminatorSync`, the source
    accuracy and the initial transfer's bytes: fresh (the source's pre-training, then the initial
    transfer as step 0), or as the checkpoint holds them after its step (``--resume``)."""
    args, comm, dev = run.args, run.comm, run.device
    saved = run.resumed_state
    k, shape = domain.train.num_classes, domain.train.shape
    if saved is None:
        if run.rank == 0:
            net, source_acc = build_source(args, domain, dev, cache)
            run.metric(0, "source_acc", source_acc)
        else:
            net, source_acc = build_network(args, k, dev, in_shape=shape), float("nan")
        disc = build_discriminator(args, net.feature_dim, dev)
        sync = DiscriminatorSync(comm, disc, adam(disc.parameters(), args.lr_disc), strategy)
        init_bytes = sync.share_initial_models(net.extractor, net.classifier)
        run.step_done(0)  # step 0 is the initial transfer: rows of step n carry n from here on
        return net, disc, sync, source_acc, init_bytes
    net = build_network(args, k, dev, in_shape=shape)
    disc = build_discriminator(args, net.feature_dim, dev)
    sync = DiscriminatorSync(comm, disc, adam(disc.parameters(), args.lr_disc), strategy)

    def restore():  # a checkpoint of another --task/--image-size: one line, no traceback
        net.load_state_dict(saved["net"])
        sync.load_state_dict(saved)
    checkpoint.restore(comm, restore)
    return net, disc, sync, saved["source_acc"], saved["init_bytes"]


def adapt_distributed(run, on_step=None, cache: dict | None = None, summary: bool = True) -> dict:
    """Algorithms 1 (rank 0) and 2 (ranks 1..k) under ``run`` (mpidist.runtime.Run).

    Returns on every rank a dict with this rank's figures; on rank 0 also ``targets`` (a list of
    (rank, rotation, source-only accuracy, adapted accuracy)). Prints the summary on rank 0
    (unless ``summary`` is False). ``on_step(n, StepContext)`` is called after every step;
    ``cache`` memoises the source's pre-training (:func:`build_source`). A completed run saves
    every rank's network (E and C) as ``<run dir>/model/rank<k>.pt`` and its D as
    ``<run dir>/discriminator/rank<k>.pt``.
    """
    args, comm, dev, rank = run.args, run.comm, run.device, run.rank
    t_start = time.perf_counter()
    k = run.world_size - 1
    strategy = make_strategy(args.strategy or "ga", args.sync_period)
    domain, domains = gather_domains(comm, args, k)
    if uses_user_parts(args):  # the user's own parts: checked alike on every rank before training
        agreed(comm, lambda: check_networks(args, domain, dev))
    net, disc, sync, source_acc, init_bytes = _networks(run, domain, strategy, cache)
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
    if saved is not None:
        node.batches.load_state_dict(saved["batches"])
    described = None
    if uses_user_parts(args):
        described = describe_networks(args, net, disc)
        run.trace.set_attrs(networks=described, domain=domain.label,
                            domain_train_samples=len(domain.train))
    fixed = {"source_acc": source_acc, "init_bytes": init_bytes, "before": before}
    ctx = StepContext(sync.fp, sync.rule, node, sync.exchange, sync)
    loop = Loop(run, total=args.steps, first_step=1, meet_every=sync.meet_every,
                state=lambda n: checkpoint_state(n, sync, node, fixed))
    run.say(*setup_distributed(args, strategy, k, domains, described))
    last = loop.first - 1
    t_adapt = time.perf_counter()
    for n in loop:
        last = n
        vals = node.step(n, sync)
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
    ex = sync.exchange
    res = {"rank": rank, "strategy": strategy, "source_acc": source_acc, "before": before,
           "after": after, "syncs": ex.syncs, "bytes_sent": ex.bytes_sent,
           "bytes_received": ex.bytes_received, "disc_bytes": sync.fp.nbytes,
           "init_bytes": init_bytes, "adapt_seconds": t_adapt, "steps_run": last - loop.first + 1,
           "rotation": domain.rotation, "label": domain.label, "stopped": loop.stopped}
    if loop.stopped:
        return res
    # copies: the parameters of D (and of E_t) are views of a flat buffer, whose whole (padded)
    # storage torch.save would write
    run.save_model(copy.deepcopy(net))
    run.save_model(copy.deepcopy(disc), "discriminator")
    targets = report_accuracies(comm, k, domain.rotation, before, after)
    if targets is not None:
        res["targets"] = targets
    res["seconds"] = time.perf_counter() - t_start
    if rank == 0 and summary:
        summary_distributed(run, args, strategy, res, k, domains=domains, networks=described)
    return res
