"""D-PSGD's training run on the shared loop: the task (:func:`mpidist.task.load`: data, model, loss,
the built-in ones or a user's ``MODULE:FUNCTION``), data shards, then Algorithm 1 for T iterations
through the same optimizer a user's script gets (:class:`mpidist.dpsgd.DPSGD`: x_0 from rank 0,
the exchange, the mix), with evaluation, checkpoints, the summary and every rank's final model
(``<run dir>/model/rank<k>.pt``).

Metrics (trace ``/metrics``): ``loss`` every iteration (the mini-batch loss at x_k), ``lr`` when eta
changes, ``test_acc`` (classification only) / ``test_loss`` / ``consensus_dist`` (||x_i - x_bar||)
at the evaluation iterations and the last one; ``checkpoint`` rows from the loop.
"""
from __future__ import annotations

import math
import time

import torch

from .. import checkpoint, cli, data, task as tasks
from ..loop import Loop
from ..metrics import evaluate as evaluate_cross_entropy
from .optimizer import DPSGD

DEFAULT_STEPS = 1000    # the default run: 8 ranks, embedded digits, about a minute on 2 cores
MEET_EVERY = 10         # the stop/checkpoint agreement (a global max-allreduce) every 10 iterations


def train(run) -> None:
    a, n, i, dev = run.args, run.world_size, run.rank, run.device
    t_start = time.perf_counter()
    task = tasks.load(a, dev)                    # data, model, loss; one batch checks the fit
    model = task.model
    smallest = len(task.train) // n              # the smallest shard: alike on every rank
    if smallest == 0:
        raise data.DataError(f"--data {a.data}: {len(task.train)} training samples cannot be "
                             f"split over {n} workers")
    if a.batch_size > smallest:
        raise data.DataError(f"--batch-size {a.batch_size} exceeds the smallest worker's shard "
                             f"of {smallest} samples ({a.data}, {n} workers)")
    shard = data.Shard(task.train, i, n, a.batch_size, a.seed, dev)
    per_epoch = max(1, smallest // a.batch_size)
    steps = cli.run_length(a, per_epoch, DEFAULT_STEPS)
    eval_every = a.eval_every or max(1, steps // 10)
    test = (task.test.x.to(dev), task.test.y.to(dev))

    saved = run.resumed_state
    opt = DPSGD(run, model, lr=a.lr, graph=a.graph, mixing=a.mixing)  # x_0: rank 0's (not resumed)
    if saved is not None:                        # the runtime restored the RNGs and the step
        def restore():
            model.load_state_dict(saved["model"])
            shard.load_state_dict(saved["shard"])
            if "dpsgd" in saved:                 # (checkpoints of before the API lack it)
                opt.load_state_dict(saved["dpsgd"])
        checkpoint.restore(run.comm, restore)
    described = task.describe(a.model)
    run.trace.set_attrs(task=described, loss=task.loss_name)
    weights = "lazy Metropolis" if a.mixing == "lazy" else "Metropolis"
    if n == 1:
        run.say("note: one worker, so there are no neighbours: this run is plain SGD; for D-PSGD "
                "launch several workers, e.g. mpirun -n 8 python -m mpidist.dpsgd")
    run.say(f"D-PSGD: {n} workers on a {a.graph} graph ({weights} weights, rho "
            f"{opt.mixing_rate:.4f})",
            f"{described}, split over {n} workers, batch {a.batch_size}, {steps} iterations "
            f"({steps / per_epoch:.1f} epochs), eta {a.lr:g}, loss {task.loss_name}")

    def gradient():
        xb, yb = shard.next()
        opt.zero_grad()
        loss = task.loss(model(xb), yb)
        loss.backward()
        return loss

    loop = Loop(run, total=steps, meet_every=MEET_EVERY,
                state=lambda t: {"model": model.state_dict(), "shard": shard.state_dict(),
                                 "dpsgd": opt.state_dict()})
    lr_prev, last = None, None
    for t in loop:
        lr = cli.lr_at(t / per_epoch, a.lr, a.lr_milestones, a.lr_decay)
        if lr != lr_prev:
            run.metric(t, "lr", lr)
            lr_prev = lr
        opt.lr = lr
        loss = opt.step(gradient).item()         # post x_k, gradient meanwhile, wait, mix, step
        run.metric(t, "loss", loss)
        shown = {"loss": loss}
        if (t + 1) % eval_every == 0 or loop.is_last(t):
            last = score(run, t, task, opt, test)
            shown["test_acc" if task.classification else "test_loss"] = \
                last[0] if task.classification else last[1]
        if loop.end_step(t, **shown):
            return                               # stopped by a signal, after its checkpoint
    if last is None:                             # no iteration left to run (a resumed end)
        last = score(run, loop.base + steps - 1, task, opt, test)
    summary(run, task, opt, last, test, steps - loop.first, time.perf_counter() - t_start)
    run.save_model(model)


def evaluate(run, task, model, test) -> tuple[float, float]:
    """(test accuracy or nan, mean test loss) of ``model``. Cross-entropy classification keeps
    :func:`mpidist.metrics.evaluate` (a summed loss: the built-in runs' test_loss to the last
    bit; :meth:`mpidist.task.Task.evaluate` averages batch means, which differs there), any other
    loss is the task's."""
    if task.classification and task.loss_name == "cross_entropy":
        return evaluate_cross_entropy(model, *test, device=run.device)
    return task.evaluate(model, run.device)


def score(run, t, task, opt, test):
    """(test accuracy or nan, test loss, ||x_i - x_bar||, x_bar) of this worker after iteration
    t; the first three are logged (the accuracy for classification only)."""
    acc, tl = evaluate(run, task, opt.model, test)
    dist, mean = opt.consensus()
    for name, v in (("test_acc", acc), ("test_loss", tl), ("consensus_dist", dist)):
        if name != "test_acc" or task.classification:
            run.metric(t, name, v)
    return acc, tl, dist, mean


def summary(run, task, opt, last, test, ran: int, wall: float) -> None:
    """Every worker's final test accuracy (classification) or test loss (mean +- std over the
    workers), the averaged model's."""
    n, i = run.world_size, run.rank
    acc, tl, dist, mean = last
    row = torch.zeros(n, 3, dtype=torch.float64)
    row[i] = torch.tensor([0.0 if math.isnan(acc) else acc, tl, dist], dtype=torch.float64)
    run.comm.iallreduce(row, "sum", "eval").wait()
    accs, losses, dists = row[:, 0].numpy() * 100, row[:, 1].numpy(), row[:, 2].numpy()
    if task.classification:
        run.trace.set_attrs(final_test_acc=[float(v) for v in accs], wall_seconds=wall)
    else:
        run.trace.set_attrs(final_test_loss=[float(v) for v in losses], wall_seconds=wall)
    if i != 0:
        return
    with opt.averaged(mean) as model:            # the averaged model x_bar, on rank 0
        acc_bar, loss_bar = evaluate(run, task, model, test)
    graph = opt.topology.graph
    if task.classification:
        run.trace.set_attrs(mean_model_test_acc=float(acc_bar))
        head = (f"D-PSGD, {graph} graph: test accuracy of the {n} workers {accs.mean():.2f} +- "
                f"{accs.std():.2f} % (mean +- std; min {accs.min():.2f}, max {accs.max():.2f}); "
                f"averaged model x_bar {100 * acc_bar:.2f} %")
        per = " ".join(f"{v:.1f}" for v in accs)
    else:
        run.trace.set_attrs(mean_model_test_loss=float(loss_bar))
        head = (f"D-PSGD, {graph} graph: test loss ({task.loss_name}) of the {n} workers "
                f"{losses.mean():.4g} +- {losses.std():.2g} (mean +- std; min {losses.min():.4g}, "
                f"max {losses.max():.4g}); averaged model x_bar {loss_bar:.4g}")
        per = " ".join(f"{v:.4g}" for v in losses)
    run.say(head, f"per worker: {per}",
            f"consensus distance ||x_i - x_bar||: mean {dists.mean():.4g}, max "
            f"{dists.max():.4g}",
            f"{ran} iterations in {wall:.1f} s")
