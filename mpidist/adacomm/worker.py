"""The step of one AdaComm worker of the command line (every rank is one): a mini-batch from its
shard, forward/backward under the task's loss, and the wrapper (:class:`AdaComm`: the learning
rate, the local step, the averaging when due); and the paper's grid search for tau_0, made of such
steps.
"""
from __future__ import annotations

import math

from .optimizer import Report
from .wrapper import AdaComm


class Trainer:
    """One rank's worker: mini-batches from its shard, the model, the loss, the wrapped optimizer.

    ``step`` counts the local steps since the run began (the wrapper's count); the step of a metric
    or trace row is the 0-based index of the local step it happened in (a final averaging after the
    last step carries the step count). ``loss_fn(output, target)``: the task's loss.
    """

    def __init__(self, run, ada: AdaComm, shard, loss_fn, n_train: int, batch_size: int):
        self.run, self.ada, self.shard, self.loss_fn = run, ada, shard, loss_fn
        self.model = ada.model
        self.samples_per_step = batch_size * run.world_size  # all workers together
        self.n_train = n_train

    @property
    def steps_per_epoch(self) -> float:
        return self.n_train / self.samples_per_step

    @property
    def step(self) -> int:
        return self.ada.steps

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"adacomm": self.ada.state_dict(), "shard": self.shard.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        """Continue a checkpointed run: same model, momenta, schedule, data position, step count
        and training clock (the runtime continues the run's clock from the checkpoint). Takes
        the checkpoints of before the wrapper too (``step``, ``start_step``, ``offset`` beside
        ``wrapper``)."""
        if "adacomm" not in d:
            d = {"shard": d["shard"], "adacomm": {
                "method": self.ada.method, "numel": self.ada.state.x.numel(),
                "wrapper": d["wrapper"], "steps": d["step"], "phase_start": d["start_step"],
                "offset": d["offset"]}}
        self.ada.load_state_dict(d["adacomm"])
        self.shard.load_state_dict(d["shard"])

    # -------------------------------------------------------------- the step
    def one_step(self) -> Report | None:
        """Local step ``self.step`` (then the averaging, when due). Returns the averaging's
        :class:`Report`, else None. The caller marks the step done (``Loop.end_step`` or
        ``Run.step_done``)."""
        x, y = self.shard.next()
        self.ada.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        return self.ada.step(loss)


def search_tau0(trainer: Trainer, candidates, epochs: float) -> tuple[int, list]:
    """The paper's heuristic for tau_0: "a simple grid search over different tau run for one or
    two epochs each".

    From the same start x_1, each candidate tau runs PASGD for ``epochs`` epochs (rounded up to
    whole periods); its score is the decrease of the training loss per second of wall-clock time,
    ``(F(x_1) - F_end) / seconds``, with F_end the workers' mean loss over the trial's last epoch:
    the fastest decay rate, the criterion AdaComm applies to each interval (Fig. 4). Every
    quantity comes out of the averaging allreduce, so all ranks pick the same tau. Model, local and
    block momentum are restored after each trial; the trials' averagings are not logged as training
    metrics. Returns (tau0, [(tau, F_end, seconds, rate)]).
    """
    run, ada = trainer.run, trainer.ada
    opt, sched = ada.opt, ada.schedule
    method = sched.method
    x1 = ada.state.model_state.clone()
    spe = max(1, round(trainer.steps_per_epoch))
    rows, F0 = [], None
    logging, ada.metrics = ada.metrics, False   # trials: no train_loss rows (lr rows stay)
    try:
        for tau in candidates:
            ada.state.model_state.copy_(x1)
            opt.restart()
            opt.set_window(spe)
            sched.reset(tau, "pasgd")
            steps = max(1, math.ceil(epochs * spe / tau)) * tau
            ada.begin()
            rep = None
            for _ in range(steps):
                rep = trainer.one_step() or rep
                run.step_done(trainer.step - 1)
            F0 = sched.F0 if F0 is None else F0
            rate = (F0 - rep.F) / max(rep.time, 1e-9)
            rows.append((tau, rep.F, rep.time, rate))
            for name, v in (("search_tau", tau), ("search_F", rep.F),
                            ("search_seconds", rep.time), ("search_rate", rate)):
                run.metric(trainer.step, name, v)
    finally:
        ada.metrics = logging
    best = max(rows, key=lambda r: (r[3], -r[0]))[0]
    ada.state.model_state.copy_(x1)
    opt.restart()
    sched.reset(best, method)
    return best, rows
