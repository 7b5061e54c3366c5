"""AdaComm's run on the shared loop (``mpidist.loop.Loop``): build the workers, resume or search
tau_0, train until the stopping rule, evaluate the averaged model, report.

The ranks meet only at averaging steps, so the loop is made with ``meet_every=0`` and agrees at
each averaging through :meth:`Loop.agree`, with the stop code that already came out of the
averaging allreduce (the control slots, ``mpidist.loop.stop_term``): no extra message. The loop
owns the checkpoint-due rule, the save and the stop announcement.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .. import checkpoint, data, models
from ..errors import UsageError
from ..loop import Loop
from ..metrics import evaluate
from .exchange import FlatState, GradientAverager, ModelAverager
from .optimizer import FlatSGD, PeriodicAveragingSGD, Report
from .rules import CommSchedule
from .worker import Trainer, search_tau0

OPEN_ENDED = sys.maxsize  # the Loop's length when only --time-budget ends the run


def phase_steps(steps, epochs, steps_per_epoch: float) -> int | None:
    """Local steps of the training phase: ``--steps``, or the first count k whose epoch
    ``k / steps_per_epoch`` reaches ``--epochs`` (the smaller of the two); None when neither is
    given (0 = no limit)."""
    limits = [int(steps)] if steps else []
    if epochs:
        k = max(0, int(epochs * steps_per_epoch) - 1)
        while k / steps_per_epoch < epochs:
            k += 1
        limits.append(k)
    return min(limits) if limits else None


def build_model(a, train_ds) -> torch.nn.Module:
    try:
        return models.build(a.model, train_ds.shape, train_ds.num_classes, **dict(a.model_arg))
    except (TypeError, ValueError, RuntimeError) as e:  # an unknown or impossible keyword
        flags = " ".join([f"--model {a.model}"] + [f"--model-arg {k}={v}" for k, v in a.model_arg])
        raise UsageError(f"{flags}: cannot build it ({e})") from None


def evaluate_averaged(run, model, test, shard=None) -> tuple[float, float, float]:
    """(training loss on the whole training set, test loss, test accuracy) of the averaged model:
    each rank evaluates its own shard (when given; else the training loss is nan) and a slice of
    the test set, one allreduce (channel ``eval``) sums."""
    dev = run.device
    tr_loss, n_tr = 0.0, 0
    if shard is not None:
        _, tr_loss = evaluate(model, shard.x, shard.y, device=dev)
        n_tr = len(shard.y)
    idx = np.array_split(np.arange(len(test)), run.world_size)[run.rank]
    te_acc, te_loss = evaluate(model, test.x[idx], test.y[idx], device=dev) if len(idx) else (0, 0)
    n_te = len(idx)
    t = torch.tensor([tr_loss * n_tr, n_tr, te_loss * n_te, te_acc * n_te, n_te],
                     dtype=torch.float64)
    s = run.comm.iallreduce(t, "sum", "eval").wait().tolist()
    return (s[0] / s[1] if s[1] else float("nan")), s[2] / max(s[4], 1), s[3] / max(s[4], 1)


def train_phase(run, trainer: Trainer, loop: Loop, total: int | None, budget: float,
                test) -> Report | None:
    """Local steps until ``total`` steps, the agreed training time ``budget`` (s, 0 = none) or an
    agreed stop; after every averaging the metrics, the progress line, the test evaluation of
    ``--eval-every`` (at the first averaging at or after every N steps) and the loop's agreement.
    Always ends on an averaged model."""
    sched, every = trainer.opt.schedule, run.args.eval_every
    rep, evaluated = None, loop.done(loop.first - 1)
    for t in loop:
        r = trainer.one_step()
        if r is None:
            continue
        rep = r
        trainer.log(r)
        done = loop.done(t)
        run.progress(done, total, time=f"{r.time:.1f}" + (f"/{budget:g} s" if budget else " s"),
                     epoch=round(trainer.epoch(), 2), loss=r.F, tau=sched.tau, lr=sched.lr)
        if every and done // every > evaluated // every:
            _, loss, acc = evaluate_averaged(run, trainer.model, test)
            run.metric(t, "test_loss", loss)
            run.metric(t, "test_acc", acc)
            evaluated = done
        if loop.agree(t, code=r.code) or (budget and r.time >= budget):
            return rep
    if sched.since > 0:  # stopped by count between averagings: average now
        rep = trainer.opt.average(trainer.step)
        trainer.log(rep)
    return rep


def train(run) -> None:
    """The whole run of ``python -m mpidist.adacomm`` inside ``runtime.start``."""
    a = run.args
    train_ds = data.load(a.data, a.data_root, a.download, True, a.image_size)
    test_ds = data.load(a.data, a.data_root, a.download, False, a.image_size,
                        channels=train_ds.shape[0])
    if a.preset and run.world_size != 4:
        run.say(f"note: the paper used 4 workers; this run has {run.world_size}")
    model = build_model(a, train_ds)
    model.to(run.device).train()
    state = FlatState(model)
    # all workers start at the same x_1 (Eq. 1): rank 0's initial model
    run.comm.ibcast(state.model_state, 0, "init").wait()
    shard = data.Shard(train_ds, run.rank, run.world_size, a.batch_size, a.seed, run.device)

    tau0 = a.tau if a.method == "pasgd" else (8 if a.tau0 == "auto" else a.tau0)
    schedule = CommSchedule(a.method, tau0, a.interval, a.lr, a.gamma, a.slack,
                            a.lr_milestones, a.lr_decay, a.lr_decay_after_tau1)
    base = FlatSGD(state, a.lr, a.momentum, a.weight_decay)
    if a.method == "sync":
        exchange = GradientAverager(run.comm, state)
    else:
        exchange = ModelAverager(run.comm, state, a.global_momentum)
    trainer = Trainer(run, model, state, shard, len(train_ds), a.batch_size)
    opt = PeriodicAveragingSGD(base, state, exchange, schedule, trainer.clock, a.loss_window,
                               restart_momentum=a.method != "sync", stop_flag=run.stop_code)
    trainer.opt = opt
    run.say(f"adacomm: method {a.method}, {run.world_size} workers, {a.model} "
            f"({state.numel} parameters, {state.nbytes / 1e6:.2f} MB averaged), {a.data} "
            f"({len(train_ds)} train / {len(test_ds)} test), batch {a.batch_size} per worker")

    search_rows, search_s = [], 0.0
    resumed = run.resumed_state is not None
    if resumed:
        # a checkpoint of another --model (or image size): one line, not a traceback
        checkpoint.restore(run.comm, lambda: trainer.load_state_dict(run.resumed_state))
        run.comm.barrier()
    elif a.method == "adacomm" and a.tau0 == "auto":
        t_s = time.monotonic()
        tau0, search_rows = search_tau0(trainer, a.tau0_grid, a.tau0_search_epochs)
        search_s = time.monotonic() - t_s
        run.say("tau0 grid search (tau: loss after, seconds, loss decrease per s): " + ", ".join(
            f"{t}: {f:.3f} {s:.2f}s {r:.3f}/s" for t, f, s, r in search_rows)
            + f" -> tau0 = {tau0}")
        opt.set_window(a.loss_window)
    if not resumed:
        for name, v in (("tau0", schedule.tau0), ("tau", schedule.tau), ("lr", schedule.lr)):
            run.metric(trainer.step, name, v)
        trainer.begin()

    total = phase_steps(a.steps, a.epochs, trainer.steps_per_epoch)
    loop = Loop(run, total or OPEN_ENDED, first_step=trainer.start_step, meet_every=0,
                state=lambda t: trainer.state_dict())
    last = train_phase(run, trainer, loop, total, a.time_budget, test_ds)
    run.metric(trainer.step, "F0", schedule.F0)
    final_loss, test_loss, test_acc = evaluate_averaged(run, model, test_ds, shard)
    for name, v in (("final_train_loss", final_loss), ("test_loss", test_loss),
                    ("test_acc", test_acc)):
        run.metric(trainer.step, name, v)

    sched_txt = ", ".join(f"{r.tau} (t={r.time:.1f}s, lr {r.lr:.3g})" if r.index else
                          f"{r.tau} (t=0, lr {r.lr:.3g})" for r in schedule.history)
    last_F = f"{last.F:.4f}" if last is not None else "-"
    run.say(
        f"final training loss {final_loss:.4f} (averaged model, whole training set; "
        f"last F {last_F})",
        f"test accuracy {test_acc:.4f} (test loss {test_loss:.4f})",
        f"{trainer.step} steps per worker, {trainer.epoch():.1f} epochs, {exchange.count} "
        f"{'gradient' if a.method == 'sync' else 'model'} averagings, "
        f"{trainer.clock():.1f} s of training"
        + (f" (+{search_s:.1f} s tau0 search)" if search_rows else ""),
        f"tau schedule (tau per interval of T0 = {a.interval:g} s): {sched_txt}")
