"""PC-ASGD's training run on the shared loop: data shards, the model as one flat buffer, x_0 from
rank 0 (line 1), then Algorithm 1 for T steps (:class:`~mpidist.pcasgd.agent.Agent`), with
evaluation, checkpoints and the summary.

Metrics (trace ``/metrics``, per rank): ``loss`` every step (the local mini-batch), ``lr`` when eta
changes, the agent's ``theta``, ``cos_pre``/``cos_cli``, ``staleness_reliable``/
``staleness_unreliable``; at evaluation steps ``test_acc``, ``test_loss``, ``consensus_dist``
(||x^i - mean_j x^j||, an allreduce on channel ``eval``); ``checkpoint`` rows from the loop. Root
attributes ``final_test_acc`` (every agent's, %) and ``wall_seconds``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint, cli, data, task, topology
from ..comm import FlatParams
from ..loop import Loop
from ..metrics import evaluate
from .agent import Agent
from .rules import get_variant

DEFAULT_STEPS = 900     # the default run: 8 agents, embedded digits, about a minute on 2 cores
MEET_EVERY = 10         # the stop/checkpoint agreement, an allreduce over ALL ranks that would
#                         couple the clusters if it ran every step


class FinalLoop(Loop):
    """:class:`mpidist.loop.Loop` whose ranks never meet after the last step, not even for a
    ``--checkpoint-every`` checkpoint due there: the run ends anyway, and a checkpoint of the last
    step could not be continued by a longer run (no message to be consumed after step T-1 was
    sent). Behaviour of the module before the loop: a 40-step run with ``--checkpoint-every 20``
    saves step 19 only (tests/test_pcasgd.py)."""

    def meets(self, step: int) -> bool:
        return not self.is_last(step) and super().meets(step)


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
    if a.show_topology:
        run.say(topo.describe())
        return
    variant = get_variant(a.variant, a.theta, a.criterion)
    t_start = time.perf_counter()

    train_ds = data.load(a.data, a.data_root, a.download, True, a.image_size)
    test_ds = data.load(a.data, a.data_root, a.download, False, a.image_size)
    shard = data.Shard(train_ds, rank, n, a.batch_size, a.seed, dev)
    steps_per_epoch = max(1, (len(train_ds) // n) // a.batch_size)
    steps = a.steps or (max(1, round(a.epochs * steps_per_epoch)) if a.epochs else DEFAULT_STEPS)
    eval_every = a.eval_every or max(1, steps // 10)
    test_x, test_y = test_ds.x.to(dev), test_ds.y.to(dev)

    model = task.build_model(a, train_ds.shape, train_ds.num_classes).to(dev)
    fp = FlatParams(model)
    saved, first = run.resumed_state, run.start_step
    chosen = [0.0, 0]  # sum and count of theta_t after the first tau steps (the summary's share)
    if saved is None:
        comm.ibcast(fp.params, 0, "init").wait()  # line 1: every agent starts from the same x_0
    else:  # --resume: all ranks continue after step first - 1 (the runtime restored the RNGs)
        def restore():
            model.load_state_dict(saved["model"])
            shard.load_state_dict(saved["shard"])
        checkpoint.restore(comm, restore)  # another --model: one line, not a traceback
        chosen = list(saved["chosen"])
    agent = Agent(comm, topo, rank, variant, a.lam, steps, fp.numel, fp.params.dtype, dev,
                  a.momentum, run.metric,
                  resume=None if saved is None else (first - 1, saved["agent"]))
    run.say(f"{variant.title} on {topo.name}",
            f"{a.model} ({fp.numel} parameters) on {a.data}: {len(train_ds)} training images "
            f"split over {n} agents, batch {a.batch_size}, {steps} steps "
            f"({steps / steps_per_epoch:.1f} epochs), eta {a.lr:g}, lambda {a.lam:g}")
    run.log.debug("agent %d: reliable %s unreliable %s", rank, agent.reliable, agent.unreliable)

    agent.start(fp.params)
    loop = FinalLoop(run, total=steps, meet_every=MEET_EVERY,
                     state=lambda t: {"model": model.state_dict(), "shard": shard.state_dict(),
                                      "agent": agent.state_dict(t), "chosen": tuple(chosen)})
    lr_prev, acc = None, float("nan")
    for t in loop:
        lr = lr_at(t, a, steps_per_epoch)
        if lr != lr_prev:
            run.metric(t, "lr", lr)
            lr_prev = lr
        xb, yb = shard.next()
        if a.augment:
            xb = augment_crop_flip(xb)
        fp.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        if a.weight_decay:
            fp.grads.add_(fp.params, alpha=a.weight_decay)
        info = agent.step(t, fp.params, fp.grads, lr)
        if t >= a.delay:
            chosen[0] += info.theta
            chosen[1] += 1
        loss_v = loss.item()
        run.metric(t, "loss", loss_v)
        if (t + 1) % eval_every == 0 or loop.is_last(t):
            acc = score(run, t, model, fp, test_x, test_y)
        shown = {"loss": loss_v, "theta": info.theta}
        if not math.isnan(acc):
            shown["test_acc"] = acc
        if loop.end_step(t, **shown):
            agent.stop_early()  # stopped by a signal, after its checkpoint
            return
    agent.finish()
    summary(run, topo, variant, model, test_x, test_y, chosen, steps - first, t_start)


def score(run, t: int, model, fp, test_x, test_y) -> float:
    """Evaluate this agent after step t: ``test_acc``, ``test_loss`` and ``consensus_dist``
    (||x^i - mean_j x^j||, an allreduce over all agents); returns the accuracy."""
    acc, tl = evaluate(model, test_x, test_y, device=run.device)
    run.metric(t, "test_acc", acc)
    run.metric(t, "test_loss", tl)
    mean = fp.params.clone()
    run.comm.iallreduce(mean, "avg", "eval").wait()
    run.metric(t, "consensus_dist", float(torch.linalg.vector_norm(fp.params - mean)))
    return acc


def summary(run, topo, variant, model, test_x, test_y, chosen, ran: int, t_start: float) -> None:
    """Every agent's final test accuracy (the paper's metric: the agents' average), and the share
    of agent-steps after the first tau on which the predicting step was chosen; ``ran`` steps ran
    since ``t_start`` (``time.perf_counter``)."""
    n, rank = run.world_size, run.rank
    acc, tl = evaluate(model, test_x, test_y, device=run.device)
    row = torch.zeros(n, 3, dtype=torch.float64)
    row[rank] = torch.tensor([acc, tl, chosen[0] / chosen[1] if chosen[1] else float("nan")])
    run.comm.iallreduce(row, "sum", "eval").wait()
    accs = row[:, 0].numpy() * 100
    wall = time.perf_counter() - t_start
    run.trace.set_attrs(final_test_acc=[float(v) for v in accs], wall_seconds=wall)
    pred = row[:, 2].numpy()
    pred_txt = ("" if np.isnan(pred).all() else
                f"; predicting step chosen in {100 * np.nanmean(pred):.0f}% of the agent-steps "
                f"after the first tau")
    first = run.start_step
    run.say(f"{variant.title}, tau {topo.tau}: test accuracy of the {n} agents "
            f"{accs.mean():.2f} +- {accs.std():.2f} % (mean +- std; min {accs.min():.2f}, "
            f"max {accs.max():.2f}){pred_txt}",
            f"per agent: {' '.join(f'{v:.1f}' for v in accs)}",
            f"{ran} steps in {wall:.1f} s" + (f" (resumed after step {first - 1})"
                                              if first else ""))
