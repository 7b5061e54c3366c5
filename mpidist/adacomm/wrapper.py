"""The AdaComm API around a user's model and torch optimizer (:class:`AdaComm`), built on the step
machine of :mod:`mpidist.adacomm.optimizer`. Usage: the docstring of that module and the package
README ("Your own model, data and loss")."""
from __future__ import annotations

import torch

from ..buffers import attach_grads, unflatten
from ..errors import UsageError
from .exchange import FlatState, GradientAverager, ModelAverager
from .optimizer import FlatSGD, PeriodicAveragingSGD, Report
from .rules import METHODS, MOMENTUM_RESTARTS, CommSchedule


class AdaComm:
    """AdaComm, PASGD or synchronous SGD of worker ``run.rank`` around the user's ``model`` and
    ``optimizer`` (STYLE.md 3 and 17); every rank of ``run`` is one worker.

    ``run``: the :class:`mpidist.runtime.Run` of ``mpidist.init`` (or a bare
    :class:`mpidist.comm.Communicator`: then no metrics, no stop signals); every message goes
    through ``run.comm`` (channels ``init``, ``params``/``grads``), so into the run's trace.
    ``model``: on ``run.device``, one dtype; its parameters (and floating buffers, e.g. BatchNorm
    statistics) become views into one flat buffer (:class:`FlatState`), so an averaging is one
    allreduce that copies nothing. ``optimizer``: the user's torch optimizer over ``model``'s
    parameters, the local step of every worker (its ``momentum_buffer``s are cleared after an
    averaging, as the paper restarts the local momentum; ``momentum_restart`` says which:
    ``"while-tau-above-1"``, the default, not between two one-step periods, so that tau = 1 is
    synchronous momentum SGD; ``"always"``, after every averaging, the paper's sentence read
    literally; ``"never"``); or None with ``lr`` (and ``momentum``,
    ``weight_decay``): AdaComm's own :class:`FlatSGD` (torch.optim.SGD's bits, what the command
    line uses).

    ``method``: ``"adacomm"`` (tau adapted every ``interval`` seconds of training by Eq. (6) and its
    refinement, starting from ``tau`` = tau_0), ``"pasgd"`` (models averaged after every ``tau``
    local steps, Eq. (1)), ``"sync"`` (gradients averaged at every step). ``global_momentum``:
    beta_glob of the block momentum, Eqs. (7)-(8) (0: plain averaging); ``gamma``, ``slack``: the
    refinement's; ``loss_window``: each worker's F(x) is its mean loss over that many recent local
    steps. The learning rate: the optimizer's, read at every step (a user's own scheduler may change
    it; Eq. (6) then uses the new eta_l); or, with ``lr_milestones`` (epochs) and
    ``steps_per_epoch`` (local steps per epoch of all workers together), decayed by ``lr_decay`` at
    each milestone, for AdaComm only once tau has reached 1 (``lr_decay_after_tau1``).
    ``metrics``: log every averaging's values into the run's trace (``train_loss``,
    ``train_time``, and at each new interval ``interval``, ``interval_time``, ``F``, ``tau``,
    ``lr``; a change of the learning rate is logged as ``lr`` in any case).

    Construction is collective: every worker starts from rank 0's model (broadcast here, Eq. (1)'s
    common x_1), except in a run resumed from a checkpoint (``run.resumed_state`` set), which gets
    its state from :meth:`load_state_dict`. :meth:`step` returns a :class:`Report` after an
    averaging (``Report.code`` is the stop code to hand to ``Loop.agree``: the ranks meet only
    there), else None. A setting that cannot work raises :class:`mpidist.errors.UsageError` (one
    line and exit 2 inside ``with run``).
    """

    def __init__(self, run, model: torch.nn.Module, optimizer=None, method: str = "adacomm",
                 tau: int = 8, interval: float = 5.0, *, lr: float | None = None,
                 momentum: float | None = None, weight_decay: float | None = None,
                 global_momentum: float = 0.0, gamma: float = 0.5, slack: int = 0,
                 loss_window: int = 20, lr_milestones=(), lr_decay: float = 0.1,
                 lr_decay_after_tau1: bool | None = None, steps_per_epoch: float | None = None,
                 metrics: bool = True, momentum_restart: str = "while-tau-above-1"):
        if method not in METHODS:
            raise UsageError(f"AdaComm: method must be one of {', '.join(METHODS)}, got {method!r}")
        if optimizer is None and lr is None:
            raise UsageError("AdaComm: give optimizer (your torch optimizer over the model's "
                             "parameters) or lr (AdaComm's own SGD)")
        if optimizer is not None and (lr, momentum, weight_decay) != (None, None, None):
            raise UsageError("AdaComm: lr, momentum and weight_decay set AdaComm's own SGD; with "
                             "your optimizer, set them in your optimizer")
        if lr_milestones and not steps_per_epoch:
            raise UsageError("AdaComm: lr_milestones are epochs; give steps_per_epoch too")
        if not 0 <= global_momentum < 1 or not 0 < gamma < 1 or int(loss_window) < 1:
            raise UsageError("AdaComm: global_momentum in [0, 1), gamma in (0, 1) and "
                             "loss_window >= 1 are required")
        if momentum_restart not in MOMENTUM_RESTARTS:
            raise UsageError(f"AdaComm: momentum_restart must be one of "
                             f"{', '.join(MOMENTUM_RESTARTS)}, got {momentum_restart!r}")
        self.run, self.model, self.method = run, model, method
        self.comm = getattr(run, "comm", run)
        try:
            self.state = FlatState(model)
        except ValueError as e:   # no trainable parameter, several dtypes
            raise UsageError(f"AdaComm: {e}") from None
        if getattr(run, "resumed_state", None) is None:
            # all workers start at the same x_1 (Eq. 1): rank 0's initial model (before anything
            # copies it: the block momentum's anchor, a user's optimizer state)
            self.comm.ibcast(self.state.model_state, 0, "init").wait()
        base = optimizer if optimizer is not None else FlatSGD(
            self.state, lr, momentum or 0.0, weight_decay or 0.0)
        self._lr = base.param_groups[0]["lr"]
        try:
            schedule = CommSchedule(method, int(tau), float(interval), float(self._lr), gamma,
                                    int(slack), lr_milestones or (), lr_decay,
                                    lr_decay_after_tau1)
        except ValueError as e:
            raise UsageError(f"AdaComm: {e}") from None
        if method == "sync":
            exchange = GradientAverager(self.comm, self.state)
        else:
            exchange = ModelAverager(self.comm, self.state, global_momentum)
        self.opt = PeriodicAveragingSGD(base, self.state, exchange, schedule, self.clock,
                                        int(loss_window),
                                        restart_momentum="never" if method == "sync"
                                        else momentum_restart,
                                        stop_flag=getattr(run, "stop_code", None))
        self.steps_per_epoch = float(steps_per_epoch) if steps_per_epoch else None
        self.metrics = metrics                   # log every averaging's metrics (log())
        self._traced = hasattr(run, "metric")
        self.steps = 0          # local steps taken (all phases)
        self.phase_start = 0    # the step the current phase (training, a tau0 trial) began at
        self._gviews = unflatten(self.state.grads, self.state.tensors)
        self._offset = self.comm.clock()

    # ------------------------------------------------------------------ what a user reads
    @property
    def optimizer(self):
        """The wrapped local optimizer."""
        return self.opt.opt

    @property
    def schedule(self) -> CommSchedule:
        return self.opt.schedule

    @property
    def exchange(self):
        return self.opt.exchange

    @property
    def tau(self) -> int:
        """The current communication period (local steps between averagings)."""
        return self.opt.schedule.tau

    @property
    def lr(self) -> float:
        return self.opt.schedule.lr

    @property
    def averagings(self) -> int:
        """Model (or, sync, gradient) averagings so far."""
        return self.opt.exchange.count

    @property
    def params(self) -> torch.Tensor:
        """This worker's parameters, flat (the model's parameters are views of it)."""
        return self.state.params

    def clock(self) -> float:
        """This rank's seconds of training since the phase began (only ever used averaged)."""
        return self.comm.clock() - self._offset

    def epoch(self) -> float | None:
        """Epochs of this phase (with ``steps_per_epoch``), else None."""
        if self.steps_per_epoch is None:
            return None
        return (self.steps - self.phase_start) / self.steps_per_epoch

    # ------------------------------------------------------------------ the step
    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients in the flat buffer (``set_to_none`` is accepted and ignored)."""
        self.state.zero_grad()

    def _take_gradient(self) -> None:
        """The flat gradient buffer must hold this step's gradient (sync averages it, FlatSGD reads
        it): a ``.grad`` that ``zero_grad(set_to_none=True)`` detached is copied in and the view
        re-attached; a parameter without a gradient counts as zero."""
        attach_grads(self.state.tensors, self._gviews)

    def _set_lr(self) -> None:
        """eta of this step: the user's (a change of the optimizer's lr is taken into the
        schedule, Eq. (6)'s eta_l), then the milestones' decay when due."""
        sched = self.opt.schedule
        current = self.optimizer.param_groups[0]["lr"]
        if current != self._lr:
            sched.lr = self._lr = float(current)
            self._metric(self.steps, "lr", self._lr)
        epoch = self.epoch()
        lr = sched.lr_for(epoch) if epoch is not None else sched.lr
        if lr != current:
            self.opt.set_lr(lr)
            self._lr = lr
            self._metric(self.steps, "lr", lr)

    def step(self, loss) -> Report | None:
        """One local step with the gradients of this worker's mini-batch ``loss`` (after
        ``loss.backward()``), then the averaging when the schedule says so. Returns the averaging's
        :class:`Report` (agreed loss F, time, a new interval, the stop code), else None."""
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss))
        self._set_lr()
        self._take_gradient()
        rep = self.opt.step(loss, self.steps)
        self.steps += 1
        if rep is not None:
            self.log(rep)
        return rep

    def average(self) -> Report:
        """Average the models now (collective), e.g. before stopping between averagings."""
        rep = self.opt.average(self.steps)
        self.log(rep)
        return rep

    def finish(self) -> Report | None:
        """Collective, after the last step: the final averaging when local steps are pending, so
        that every worker ends with the average model. Returns its Report, or None."""
        if self.method != "sync" and self.opt.schedule.since > 0:
            return self.average()
        return None

    # ------------------------------------------------------------------ phases, metrics
    def begin(self) -> None:
        """Start a phase (the command line's tau0 trials, then training): a barrier, then this
        phase's clock and epochs count from 0 on every rank."""
        self.comm.barrier()
        self._offset = self.comm.clock()
        self.phase_start = self.steps

    def _metric(self, step: int, name: str, value: float) -> None:
        if self._traced:
            self.run.metric(step, name, value)

    def log(self, rep: Report) -> None:
        """The metrics of an averaging step (the same on every rank): ``train_loss`` (F),
        ``train_time``, and at a new interval ``interval``, ``interval_time``, ``F``, ``tau``,
        ``lr`` (nothing with ``metrics=False``). A change of the learning rate is always logged
        (``lr``)."""
        if not self.metrics:
            return
        self._metric(rep.step, "train_loss", rep.F)
        self._metric(rep.step, "train_time", rep.time)
        if rep.interval is not None:
            r = rep.interval
            for name, v in (("interval", r.index), ("interval_time", r.time), ("F", r.F),
                            ("tau", r.tau), ("lr", r.lr)):
                self._metric(rep.step, name, v)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit: the model (with its buffers),
        the local optimizer, the block momentum, the schedule, the loss window, the step count and
        the training clock. The model is in it: no need to save ``model.state_dict()`` too."""
        return {"method": self.method, "numel": self.state.x.numel(),
                "wrapper": self.opt.state_dict(), "steps": self.steps,
                "phase_start": self.phase_start, "offset": self._offset}

    def load_state_dict(self, d: dict) -> None:
        """Continue from :meth:`state_dict` (ValueError for another method or model size). The
        runtime continues the run's clock from the checkpoint, so the training time goes on."""
        if d["method"] != self.method or d["numel"] != self.state.x.numel():
            raise ValueError(f"the saved AdaComm ran method {d['method']} on {d['numel']} "
                             f"values, not {self.method} on {self.state.x.numel()}")
        self.opt.load_state_dict(d["wrapper"])
        self.steps, self.phase_start, self._offset = d["steps"], d["phase_start"], d["offset"]
        self._lr = self.optimizer.param_groups[0]["lr"]
