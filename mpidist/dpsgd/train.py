"""D-PSGD's training run on the shared loop: data shards, the model as one flat buffer, x_0 from
rank 0, then Algorithm 1 for T iterations (:class:`Worker`), with evaluation, checkpoints and the
summary.

Metrics (trace ``/metrics``): ``loss`` every iteration (the mini-batch loss at x_k), ``lr`` when eta
changes, ``test_acc`` / ``test_loss`` / ``consensus_dist`` (||x_i - x_bar||) at the evaluation
iterations and the last one; ``checkpoint`` rows from the loop.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .. import checkpoint, cli, data, models, topology
from ..comm import FlatParams
from ..errors import UsageError
from ..loop import Loop
from ..metrics import evaluate
from . import rules
from .exchange import broadcast_init, consensus
from .worker import Worker

DEFAULT_STEPS = 1000    # the default run: 8 ranks, embedded digits, about a minute on 2 cores
MEET_EVERY = 10         # the stop/checkpoint agreement (a global max-allreduce) every 10 iterations


def train(run) -> None:
    a, comm, n, i, dev = run.args, run.comm, run.world_size, run.rank, run.device
    t_start = time.perf_counter()
    topo = topology.build(n, (n,), a.graph, 0, a.mixing)
    train_ds = data.load(a.data, a.data_root, a.download, True, a.image_size)
    test_ds = data.load(a.data, a.data_root, a.download, False, a.image_size)
    shard = data.Shard(train_ds, i, n, a.batch_size, a.seed, dev)
    per_epoch = max(1, (len(train_ds) // n) // a.batch_size)   # alike on every rank
    steps = (a.steps if a.steps is not None else
             max(1, round(a.epochs * per_epoch)) if a.epochs else DEFAULT_STEPS)
    eval_every = a.eval_every or max(1, steps // 10)
    test_x, test_y = test_ds.x.to(dev), test_ds.y.to(dev)

    try:
        model = models.build(a.model, train_ds.shape, train_ds.num_classes, **dict(a.model_arg))
    except (TypeError, ValueError) as e:         # a --model-arg the builder refuses
        raise UsageError(f"--model {a.model}: {e}") from None
    model = model.to(dev)
    fp = FlatParams(model)
    saved = run.resumed_state
    if saved is None:
        broadcast_init(comm, fp.params)          # the same x_0 on every worker
    else:                                        # the runtime restored the RNGs and the step
        def restore():
            model.load_state_dict(saved["model"])
            shard.load_state_dict(saved["shard"])
        checkpoint.restore(comm, restore)
    worker = Worker(comm, topo, i, fp.numel, fp.params.dtype, dev)
    rho = rules.mixing_rate(topo.W)
    weights = "lazy Metropolis" if a.mixing == "lazy" else "Metropolis"
    run.say(f"D-PSGD: {n} workers on a {a.graph} graph ({weights} weights, rho {rho:.4f})",
            f"{a.model} ({fp.numel} parameters) on {a.data}: {len(train_ds)} training images split "
            f"over {n} workers, batch {a.batch_size}, {steps} iterations "
            f"({steps / per_epoch:.1f} epochs), eta {a.lr:g}")

    def gradient():
        xb, yb = shard.next()
        fp.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        return fp.grads, loss

    loop = Loop(run, total=steps, meet_every=MEET_EVERY,
                state=lambda t: {"model": model.state_dict(), "shard": shard.state_dict()})
    lr_prev, last = None, None
    for t in loop:
        lr = cli.lr_at(t / per_epoch, a.lr, a.lr_milestones, a.lr_decay)
        if lr != lr_prev:
            run.metric(t, "lr", lr)
            lr_prev = lr
        loss = worker.step(fp.params, gradient, lr).item()
        run.metric(t, "loss", loss)
        shown = {"loss": loss}
        if (t + 1) % eval_every == 0 or loop.is_last(t):
            last = score(run, t, model, fp, test_x, test_y)
            shown["test_acc"] = last[0]
        if loop.end_step(t, **shown):
            return                               # stopped by a signal, after its checkpoint
    if last is None:                             # no iteration left to run (a resumed end)
        last = score(run, loop.base + steps - 1, model, fp, test_x, test_y)
    summary(run, topo, model, fp, last, test_x, test_y, steps - loop.first,
            time.perf_counter() - t_start)


def score(run, t, model, fp, test_x, test_y):
    """(test accuracy, test loss, ||x_i - x_bar||, x_bar) of this worker after iteration t; the
    first three are logged."""
    acc, tl = evaluate(model, test_x, test_y, device=run.device)
    dist, mean = consensus(run.comm, fp.params)
    for name, v in (("test_acc", acc), ("test_loss", tl), ("consensus_dist", dist)):
        run.metric(t, name, v)
    return acc, tl, dist, mean


def summary(run, topo, model, fp, last, test_x, test_y, ran: int, wall: float) -> None:
    """Every worker's final test accuracy (mean +- std over the workers), the averaged model's."""
    n, i = run.world_size, run.rank
    acc, tl, dist, mean = last
    row = torch.zeros(n, 3, dtype=torch.float64)
    row[i] = torch.tensor([acc, tl, dist], dtype=torch.float64)
    run.comm.iallreduce(row, "sum", "eval").wait()
    accs, dists = row[:, 0].numpy() * 100, row[:, 2].numpy()
    run.trace.set_attrs(final_test_acc=[float(v) for v in accs], wall_seconds=wall)
    if i == 0:                                   # the averaged model x_bar, on rank 0
        x = fp.params.clone()
        fp.params.copy_(mean)
        acc_bar, _ = evaluate(model, test_x, test_y, device=run.device)
        fp.params.copy_(x)
        run.trace.set_attrs(mean_model_test_acc=float(acc_bar))
        run.say(f"D-PSGD, {topo.graph} graph: test accuracy of the {n} workers "
                f"{accs.mean():.2f} +- {accs.std():.2f} % (mean +- std; min {accs.min():.2f}, "
                f"max {accs.max():.2f}); averaged model x_bar {100 * acc_bar:.2f} %",
                f"per worker: {' '.join(f'{v:.1f}' for v in accs)}",
                f"consensus distance ||x_i - x_bar||: mean {dists.mean():.4g}, max "
                f"{dists.max():.4g}",
                f"{ran} iterations in {wall:.1f} s")
