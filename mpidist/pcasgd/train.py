"""PC-ASGD's training run on the shared loop (``python -m mpidist.pcasgd``): the task of the flags
(:func:`mpidist.task.load`: the built-in data and models or the user's ``MODULE:FUNCTION`` ones,
``--loss``), data shards, then Algorithm 1 for T steps through :class:`~mpidist.pcasgd.PCASGD` (the
object a user's own script wraps around its model: x_0 from rank 0, the exchange, lines 6-8), with
evaluation, checkpoints, the summary and every agent's final model.

Metrics (trace ``/metrics``, per rank): ``loss`` every step (the local mini-batch), ``lr`` when eta
changes, the agent's ``theta``, ``cos_pre``/``cos_cli``, ``staleness_reliable``/
``staleness_unreliable``; at evaluation steps ``test_acc`` (classification only), ``test_loss``,
``consensus_dist`` (||x^i - mean_j x^j||, an allreduce on channel ``eval``); ``checkpoint`` rows
from the loop. Root attributes ``final_test_acc`` (every agent's, %; a regression has
``final_test_loss``), ``wall_seconds``, ``task`` (model and data as given, parameter count) and
``parameters``. A completed run saves ``<run>/model/rank<k>.pt`` on every rank.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint, cli, data, task, topology
from ..errors import Diverged, UsageError
from ..loop import Loop
from ..metrics import evaluate
from .rules import get_variant
from .wrapper import MEET_EVERY, PCASGD  # noqa: F401  (MEET_EVERY: the name this module had)

DEFAULT_STEPS = 900     # the default run: 8 agents, embedded digits, about a minute on 2 cores


def augment_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per image (the CIFAR
    augmentation of the presets)."""
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    di = torch.randint(0, 2 * pad + 1, (n,), device=dev)
    dj = torch.randint(0, 2 * pad + 1, (n,), device=dev)
    rows = (di[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = xp[torch.arange(n, device=dev)[:, None, None, None],
             torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, device=dev) < 0.5)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


def lr_at(t: int, args, steps_per_epoch: int) -> float:
    """Learning rate eta at step t: ``--lr`` times ``--lr-decay`` per passed ``--lr-milestones``
    epoch (:func:`mpidist.cli.lr_at`)."""
    return cli.lr_at(t / steps_per_epoch, args.lr, args.lr_milestones, args.lr_decay)


def train(run) -> None:
    a, comm, rank, n, dev = run.args, run.comm, run.rank, run.world_size, run.device
    clusters = None if a.clusters is None else topology.parse_clusters(a.clusters)
    topo = topology.build(n, clusters, a.graph, a.delay, a.mixing)
    note = topology.default_note(n) if clusters is None else None
    if note:
        run.say(note)
    if a.show_topology:
        run.say(topo.describe())
        return
    variant = get_variant(a.variant, a.theta, a.criterion)
    t_start = time.perf_counter()

    tk = task.load(a, dev)  # --data, --model, --model-arg, --loss; one forward pass checks the fit
    if a.augment and tk.train.x.dim() != 4:
        raise UsageError(f"--augment crops and flips images; --data {a.data} has inputs of shape "
                         f"{tuple(tk.train.x.shape[1:])}")
    own = getattr(a, "shards", None)   # --shards clusters:F: class mixes that differ by cluster
    idx = None if own is None else data.cluster_shard_indices(tk.train.y, rank, topo.clusters,
                                                              a.seed, own)
    shard = data.Shard(tk.train, rank, n, a.batch_size, a.seed, dev, indices=idx)
    steps_per_epoch = max(1, (len(tk.train) // n) // a.batch_size)
    steps = cli.run_length(a, steps_per_epoch, DEFAULT_STEPS)
    eval_every = a.eval_every or max(1, steps // 10)
    test_x, test_y = tk.test.x.to(dev), tk.test.y.to(dev)

    model = tk.model
    agent = PCASGD(run, model, steps=steps, delay=a.delay, clusters=topo.clusters, lr=a.lr,
                   variant=a.variant, theta=a.theta, criterion=a.criterion, lam=a.lam,
                   graph=a.graph, mixing=a.mixing, momentum=a.momentum,
                   weight_decay=a.weight_decay)  # fresh run: x_0 from rank 0 (line 1), sent on
    saved, first = run.resumed_state, run.start_step
    if saved is not None:  # --resume: all ranks continue after step first - 1 (RNGs restored)
        def restore():
            model.load_state_dict(saved["model"])
            shard.load_state_dict(saved["shard"])
            state = saved["agent"]
            if "settings" not in state:  # saved before PCASGD: the Agent's state, "chosen" beside
                state = {"step": state["step"], "steps": steps, "settings": agent.settings(),
                         "lr": a.lr, "predicting": saved["chosen"], "agent": state}
            agent.load_state_dict(state)
        checkpoint.restore(comm, restore)  # another --model: one line, not a traceback
    described = tk.describe(a.model)
    run.trace.set_attrs(task=described, parameters=agent.fp.numel)
    if n == 1:
        run.say("note: one agent, so there are no neighbours: this run is plain SGD; for PC-ASGD "
                "launch several agents, e.g. mpirun -n 8 python -m mpidist.pcasgd")
    run.say(f"{variant.title} on {topo.name}",
            f"{described}, split over {n} agents, batch {a.batch_size}, {steps} steps "
            f"({steps / steps_per_epoch:.1f} epochs), eta {a.lr:g}, lambda {a.lam:g}")
    run.log.debug("agent %d: reliable %s unreliable %s", rank, agent.reliable, agent.unreliable)

    # no checkpoint after the last step: a longer run could not continue from it (no message to be
    # consumed after step T-1 was sent); a 40-step run with --checkpoint-every 20 saves step 19
    loop = Loop(run, total=steps, meet_every=agent.meet_every, save_last=False,
                state=lambda t: {"model": model.state_dict(), "shard": shard.state_dict(),
                                 "agent": agent.state_dict()})
    fp = agent.fp
    lr_prev, acc = None, float("nan")
    for t in loop:
        lr = agent.lr = lr_at(t, a, steps_per_epoch)
        if lr != lr_prev:
            run.metric(t, "lr", lr)
            lr_prev = lr
        xb, yb = shard.next()
        if a.augment:
            xb = augment_crop_flip(xb)
        fp.zero_grad()
        loss = tk.loss(model(xb), yb)
        loss.backward()
        info = agent.step(t)
        loss_v = loss.item()
        run.metric(t, "loss", loss_v)
        if (t + 1) % eval_every == 0 or loop.is_last(t):
            acc = score(run, tk, t, model, fp, test_x, test_y)
        shown = {"loss": loss_v, "theta": info.theta}
        if not math.isnan(acc):
            shown["test_acc"] = acc
        try:
            stop = loop.end_step(t, **shown)
        except Diverged:
            agent.finish()  # a loss was not finite: settle what is in flight, then end
            raise
        if stop:
            agent.finish()  # stopped by a signal, after its checkpoint: nothing left in flight
            return
    agent.finish()
    summary(run, tk, topo, variant, model, test_x, test_y, agent.predicting_share, steps - first,
            t_start)
    run.save_model(model)


def evaluate_agent(tk, model, test_x, test_y, device):
    """(accuracy or NaN, mean test loss) of this agent: for cross-entropy the numbers of
    :func:`mpidist.metrics.evaluate` (bit for bit what the module printed before it took a user's
    task), else the task's loss and no accuracy (:meth:`mpidist.task.Task.evaluate`)."""
    if tk.loss_name == "cross_entropy":
        return evaluate(model, test_x, test_y, device=device)
    return tk.evaluate(model, device)


def score(run, tk, t: int, model, fp, test_x, test_y) -> float:
    """Evaluate this agent after step t: ``test_acc`` (classification only), ``test_loss`` and
    ``consensus_dist`` (||x^i - mean_j x^j||, an allreduce over all agents); returns the accuracy
    (NaN for a regression)."""
    acc, tl = evaluate_agent(tk, model, test_x, test_y, run.device)
    if tk.classification:
        run.metric(t, "test_acc", acc)
    run.metric(t, "test_loss", tl)
    mean = fp.params.clone()
    run.comm.iallreduce(mean, "avg", "eval").wait()
    run.metric(t, "consensus_dist", float(torch.linalg.vector_norm(fp.params - mean)))
    return acc


def summary(run, tk, topo, variant, model, test_x, test_y, predicting: float, ran: int,
            t_start: float) -> None:
    """Every agent's final test accuracy (the paper's metric: the agents' average; for a
    regression the test loss), and the share of agent-steps after the first tau on which the
    predicting step was chosen; ``ran`` steps ran since ``t_start`` (``time.perf_counter``)."""
    n, rank = run.world_size, run.rank
    acc, tl = evaluate_agent(tk, model, test_x, test_y, run.device)
    row = torch.zeros(n, 3, dtype=torch.float64)
    row[rank] = torch.tensor([acc, tl, predicting])
    run.comm.iallreduce(row, "sum", "eval").wait()
    wall = time.perf_counter() - t_start
    if tk.classification:
        vals, what, unit = row[:, 0].numpy() * 100, "test accuracy", " %"
        run.trace.set_attrs(final_test_acc=[float(v) for v in vals], wall_seconds=wall)
    else:
        vals, what, unit = row[:, 1].numpy(), f"test loss ({tk.loss_name})", ""
        run.trace.set_attrs(final_test_loss=[float(v) for v in vals], wall_seconds=wall)
    pred = row[:, 2].numpy()
    pred_txt = ("" if np.isnan(pred).all() else
                f"; predicting step chosen in {100 * np.nanmean(pred):.0f}% of the agent-steps "
                f"after the first tau")
    first = run.start_step
    digits = 2 if tk.classification else 4
    run.say(f"{variant.title}, tau {topo.tau}: {what} of the {n} agents "
            f"{vals.mean():.{digits}f} +- {vals.std():.{digits}f}{unit} (mean +- std; min "
            f"{vals.min():.{digits}f}, max {vals.max():.{digits}f}){pred_txt}",
            f"per agent: {' '.join(f'{v:.{digits - 1}f}' for v in vals)}",
            f"{ran} steps in {wall:.1f} s" + (f" (resumed after step {first - 1})"
                                              if first else ""))
