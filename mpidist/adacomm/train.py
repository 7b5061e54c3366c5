"""AdaComm's run on the shared loop (``mpidist.loop.Loop``): the task (``mpidist.task.load``: the
built-in data and networks or a user's ``MODULE:FUNCTION`` model, data and loss), the workers
around the same wrapper a user's script gets (:class:`mpidist.adacomm.AdaComm`), resume or search
tau_0, train until the stopping rule, evaluate the averaged model, report, save every rank's model.

The ranks meet only at averaging steps, so the loop is made with ``meet_every=0`` and agrees at
each averaging through :meth:`Loop.agree`, with the stop code that already came out of the
averaging allreduce (the control slots, ``mpidist.loop.stop_term``): no extra message. The loop
owns the checkpoint-due rule, the save and the stop announcement; ``total=None`` when only the
time budget ends the run.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import checkpoint, data, task as tasks
from ..loop import Loop
from ..metrics import evaluate
from .optimizer import Report
from .wrapper import AdaComm
from .worker import Trainer, search_tau0


#: seconds of training when no flag says when to stop (a short demonstration run)
DEFAULT_TIME_BUDGET = 30.0


def time_budget(args) -> float:
    """The time budget in seconds (0: none): ``--time-budget`` if given, else
    :data:`DEFAULT_TIME_BUDGET` when neither ``--steps`` nor ``--epochs`` is given, else 0 (the
    run goes on to the steps or epochs asked for)."""
    if args.time_budget is not None:
        return args.time_budget
    return DEFAULT_TIME_BUDGET if args.steps is None and args.epochs is None else 0.0


def phase_steps(steps, epochs, steps_per_epoch: float) -> int | None:
    """Local steps of the training phase: ``--steps``, or the first count k whose epoch
    ``k / steps_per_epoch`` reaches ``--epochs`` (the smaller of the two); None when neither is
    given (the time budget ends the run)."""
    limits = [int(steps)] if steps is not None else []
    if epochs is not None:
        k = max(0, int(epochs * steps_per_epoch) - 1)
        while k / steps_per_epoch < epochs:
            k += 1
        limits.append(k)
    return min(limits) if limits else None


def _loss_and_accuracy(task, model, x, y, device) -> tuple[float, float]:
    """(accuracy or nan, mean loss per sample) of ``model`` on (x, y): the summed cross-entropy of
    :func:`mpidist.metrics.evaluate` for a classification (the built-in runs' bits), else the
    task's own loss, batch means weighted by their sizes."""
    if task is None or task.classification:
        return evaluate(model, x, y, device=device)
    was = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(y), 512):
            xb, yb = x[i:i + 512].to(device), y[i:i + 512].to(device)
            total += float(task.loss(model(xb), yb)) * len(yb)
    model.train(was)
    return math.nan, total / max(len(y), 1)


def evaluate_averaged(run, model, test, shard=None, task=None) -> tuple[float, float, float]:
    """(training loss on the whole training set, test loss, test accuracy or nan) of the averaged
    model under ``task``'s loss (cross-entropy without one): each rank evaluates its own shard
    (when given; else the training loss is nan) and a slice of the test set, one allreduce
    (channel ``eval``) sums."""
    dev = run.device
    tr_loss, n_tr = 0.0, 0
    if shard is not None:
        _, tr_loss = _loss_and_accuracy(task, model, shard.x, shard.y, dev)
        n_tr = len(shard.y)
    idx = np.array_split(np.arange(len(test)), run.world_size)[run.rank]
    te_acc, te_loss = (_loss_and_accuracy(task, model, test.x[idx], test.y[idx], dev)
                       if len(idx) else (0, 0))
    n_te = len(idx)
    t = torch.tensor([tr_loss * n_tr, n_tr, te_loss * n_te, te_acc * n_te, n_te],
                     dtype=torch.float64)
    s = run.comm.iallreduce(t, "sum", "eval").wait().tolist()
    return (s[0] / s[1] if s[1] else float("nan")), s[2] / max(s[4], 1), s[3] / max(s[4], 1)


def train_phase(run, trainer: Trainer, loop: Loop, budget: float, task, test) -> Report | None:
    """Local steps until the loop's end, the agreed training time ``budget`` (s, 0 = none) or an
    agreed stop; after every step the loop's progress line and trace step; after every averaging
    the test evaluation of ``--eval-every`` (at the first averaging at or after every N steps) and
    the loop's agreement. Always ends on an averaged model."""
    ada, every = trainer.ada, run.args.eval_every
    sched = ada.schedule
    rep, evaluated, shown = None, loop.done(loop.first - 1), {}
    for t in loop:
        r = trainer.one_step()
        if r is not None:
            rep = r
            shown = dict(time=f"{r.time:.1f}" + (f"/{budget:g} s" if budget else " s"),
                         epoch=round(ada.epoch(), 2), loss=r.F, tau=sched.tau, lr=sched.lr)
        loop.end_step(t, **shown)        # meet_every=0: progress and trace step only
        if r is None:
            continue
        done = loop.done(t)
        if every and done // every > evaluated // every:
            _, loss, acc = evaluate_averaged(run, trainer.model, test, task=task)
            run.metric(t, "test_loss", loss)
            if task.classification:
                run.metric(t, "test_acc", acc)
            evaluated = done
        if loop.agree(t, code=r.code) or (budget and r.time >= budget):
            return rep
    return ada.finish() or rep   # stopped by count between averagings: average now


def train(run) -> None:
    """The whole run of ``python -m mpidist.adacomm`` inside ``runtime.start``."""
    a = run.args
    task = tasks.load(a, run.device)   # data, model, loss; one batch checks that they fit
    train_ds, test_ds, model = task.train, task.test, task.model
    if a.preset and run.world_size != 4:
        run.say(f"note: the paper used 4 workers; this run has {run.world_size}")
    model.train()
    shard = data.Shard(train_ds, run.rank, run.world_size, a.batch_size, a.seed, run.device)
    n_train = len(train_ds)
    steps_per_epoch = n_train / (a.batch_size * run.world_size)
    tau0 = a.tau if a.method == "pasgd" else (8 if a.tau0 == "auto" else a.tau0)
    # the same wrapper a user's script gets, around AdaComm's own FlatSGD (torch.optim.SGD's bits)
    ada = AdaComm(run, model, None, a.method, tau0, a.interval, lr=a.lr, momentum=a.momentum,
                  weight_decay=a.weight_decay, global_momentum=a.global_momentum,
                  gamma=a.gamma, slack=a.slack, loss_window=a.loss_window,
                  lr_milestones=a.lr_milestones, lr_decay=a.lr_decay,
                  lr_decay_after_tau1=a.lr_decay_after_tau1, steps_per_epoch=steps_per_epoch,
                  momentum_restart=a.momentum_restart)
    trainer = Trainer(run, ada, shard, task.loss, n_train, a.batch_size)
    schedule, state = ada.schedule, ada.state
    described = task.describe(a.model)
    run.trace.set_attrs(task=described, loss=task.loss_name)
    size = (f"{state.nbytes / 1e6:.2f} MB" if state.nbytes >= 1e5 else
            f"{state.nbytes / 1e3:.1f} kB")
    if run.world_size == 1:
        run.say("note: one worker, so no model is ever averaged: this run is plain local SGD; "
                "for AdaComm launch several workers, e.g. mpirun -n 4 python -m mpidist.adacomm")
    run.say(f"adacomm: method {a.method}, {run.world_size} workers, {described} "
            f"({len(test_ds)} test), loss {task.loss_name}, {size} averaged, batch "
            f"{a.batch_size} per worker")

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
        ada.opt.set_window(a.loss_window)
    if not resumed:
        for name, v in (("tau0", schedule.tau0), ("tau", schedule.tau), ("lr", schedule.lr)):
            run.metric(trainer.step, name, v)
        ada.begin()

    total = phase_steps(a.steps, a.epochs, steps_per_epoch)
    loop = Loop(run, total, first_step=ada.phase_start, meet_every=0,
                state=lambda t: trainer.state_dict())
    last = train_phase(run, trainer, loop, time_budget(a), task, test_ds)
    run.metric(trainer.step, "F0", schedule.F0)
    final_loss, test_loss, test_acc = evaluate_averaged(run, model, test_ds, shard, task)
    for name, v in (("final_train_loss", final_loss), ("test_loss", test_loss),
                    ("test_acc", test_acc)):
        if name != "test_acc" or task.classification:
            run.metric(trainer.step, name, v)

    sched_txt = ", ".join(f"{r.tau} (t={r.time:.1f}s, lr {r.lr:.3g})" if r.index else
                          f"{r.tau} (t=0, lr {r.lr:.3g})" for r in schedule.history)
    last_F = f"{last.F:.4f}" if last is not None else "-"
    scores = (f"test accuracy {test_acc:.4f} (test loss {test_loss:.4f})" if task.classification
              else f"test loss {test_loss:.6g} ({task.loss_name})")
    run.say(
        f"final training loss {final_loss:.4f} (averaged model, whole training set; "
        f"last F {last_F})",
        scores,
        f"{trainer.step} steps per worker, {ada.epoch():.1f} epochs, {ada.averagings} "
        f"{'gradient' if a.method == 'sync' else 'model'} averagings, "
        f"{ada.clock():.1f} s of training"
        + (f" (+{search_s:.1f} s tau0 search)" if search_rows else ""),
        f"tau schedule (tau per interval of T0 = {a.interval:g} s): {sched_txt}")
    if not loop.stopped:               # a completed run (not stopped by a signal)
        run.save_model(model)
