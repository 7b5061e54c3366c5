"""The step of one AdaComm worker (every rank is one): a mini-batch from its shard, the schedule's
learning rate, forward/backward, and the wrapped optimizer (local step, averaging when due); and
the paper's grid search for tau_0, made of such steps.
"""
from __future__ import annotations

import math

import torch.nn.functional as F

from .exchange import FlatState
from .optimizer import PeriodicAveragingSGD, Report


class Trainer:
    """One rank's worker: mini-batches from its shard, the wrapped optimizer, the schedule's
    learning rate, and the metrics of every averaging.

    ``step`` counts the local steps since the run began; the step of a metric or trace row is the
    0-based index of the local step it happened in (a final averaging after the last step carries
    the step count). :meth:`begin` starts a phase (the tau0 search's trials, then training): its
    clock and its epoch count start at 0 there, on every rank just after a barrier.
    """

    def __init__(self, run, model, state: FlatState, shard, n_train: int, batch_size: int):
        self.run, self.model, self.state, self.shard = run, model, state, shard
        self.opt: PeriodicAveragingSGD | None = None
        self.samples_per_step = batch_size * run.world_size  # all workers together
        self.n_train = n_train
        self.step = 0
        self.start_step = 0
        self.offset = 0.0

    @property
    def steps_per_epoch(self) -> float:
        return self.n_train / self.samples_per_step

    def epoch(self) -> float:
        """Epochs of this phase: passes over the training set by all workers together."""
        return (self.step - self.start_step) / self.steps_per_epoch

    def begin(self) -> None:
        self.run.comm.barrier()
        self.offset = self.run.comm.clock()
        self.start_step = self.step

    def clock(self) -> float:
        """This rank's seconds since :meth:`begin` (only ever used averaged over the ranks)."""
        return self.run.comm.clock() - self.offset

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"wrapper": self.opt.state_dict(), "shard": self.shard.state_dict(),
                "step": self.step, "start_step": self.start_step, "offset": self.offset}

    def load_state_dict(self, d: dict) -> None:
        """Continue a checkpointed run: same model, momenta, schedule, data position, step
        count and training clock (the runtime continues the run's clock from the checkpoint)."""
        self.opt.load_state_dict(d["wrapper"])
        self.shard.load_state_dict(d["shard"])
        self.step, self.start_step, self.offset = d["step"], d["start_step"], d["offset"]

    # -------------------------------------------------------------- the step
    def one_step(self) -> Report | None:
        """Local step ``self.step`` (then the averaging, when due); the trace's step of its rows
        is set by ``Run.step_done``. Returns the averaging's :class:`Report`, else None."""
        sched, opt = self.opt.schedule, self.opt
        lr = sched.lr_for(self.epoch())
        if lr != opt.opt.param_groups[0]["lr"]:
            opt.set_lr(lr)
            self.run.metric(self.step, "lr", lr)
        x, y = self.shard.next()
        self.state.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        rep = opt.step(loss, self.step)
        self.run.step_done(self.step)
        self.step += 1
        return rep

    def log(self, rep: Report) -> None:
        """The metrics of an averaging step (the same on every rank)."""
        run = self.run
        run.metric(rep.step, "train_loss", rep.F)
        run.metric(rep.step, "train_time", rep.time)
        if rep.interval is not None:
            r = rep.interval
            for name, v in (("interval", r.index), ("interval_time", r.time), ("F", r.F),
                            ("tau", r.tau), ("lr", r.lr)):
                run.metric(rep.step, name, v)


def search_tau0(trainer: Trainer, candidates, epochs: float) -> tuple[int, list]:
    """The paper's heuristic for tau_0: "a simple grid search over different tau run for one or
    two epochs each".

    From the same start x_1, each candidate tau runs PASGD for ``epochs`` epochs (rounded up to
    whole periods); its score is the decrease of the training loss per second of wall-clock time,
    ``(F(x_1) - F_end) / seconds``, with F_end the workers' mean loss over the trial's last epoch:
    the fastest decay rate, the criterion AdaComm applies to each interval (Fig. 4). Every
    quantity comes out of the averaging allreduce, so all ranks pick the same tau. Model, local and
    block momentum are restored after each trial. Returns (tau0, [(tau, F_end, seconds, rate)]).
    """
    run, opt, sched = trainer.run, trainer.opt, trainer.opt.schedule
    method = sched.method
    x1 = trainer.state.model_state.clone()
    spe = max(1, round(trainer.steps_per_epoch))
    rows, F0 = [], None
    for tau in candidates:
        trainer.state.model_state.copy_(x1)
        opt.restart()
        opt.set_window(spe)
        sched.reset(tau, "pasgd")
        steps = max(1, math.ceil(epochs * spe / tau)) * tau
        trainer.begin()
        rep = None
        for _ in range(steps):
            rep = trainer.one_step() or rep
        F0 = sched.F0 if F0 is None else F0
        rate = (F0 - rep.F) / max(rep.time, 1e-9)
        rows.append((tau, rep.F, rep.time, rate))
        for name, v in (("search_tau", tau), ("search_F", rep.F), ("search_seconds", rep.time),
                        ("search_rate", rate)):
            run.metric(trainer.step, name, v)
    best = max(rows, key=lambda r: (r[3], -r[0]))[0]
    trainer.state.model_state.copy_(x1)
    opt.restart()
    sched.reset(best, method)
    return best, rows
