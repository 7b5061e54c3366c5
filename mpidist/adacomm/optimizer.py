"""The pieces a user wraps around an optimizer.

- :class:`AdaComm`: the whole algorithm around the user's model and torch optimizer in a script
  launched with ``mpirun`` (torch's ``PostLocalSGDOptimizer(optimizer, averager)`` in shape;
  STYLE.md 3 and 17). ``python -m mpidist.adacomm`` drives the same object
  (:mod:`mpidist.adacomm.train`)::

      with mpidist.init("adacomm", seed=0) as run:
          model = MyNet().to(run.device)
          opt = AdaComm(run, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        method="adacomm", tau=8, interval=5.0, global_momentum=0.3)
          for x, y in batches:
              opt.zero_grad()
              loss = F.cross_entropy(model(x), y)
              loss.backward()
              report = opt.step(loss)             # a Report after every averaging, else None
          opt.finish()                            # the last model is the workers' average

- :class:`PeriodicAveragingSGD`: the step machine underneath (any local optimizer, a
  :class:`FlatState`, an exchange, a :class:`CommSchedule` and a clock, built by hand);
- :class:`FlatSGD`: the fast local SGD on the flat parameter buffer (the command line's).

The step is the wrapped optimizer's step, then, when the schedule's predicate says so (Eq. (1):
after tau local steps), the exchange (with block momentum, Eqs. (7)-(8)) and the restart of the
local momentum; ``state_dict`` carries everything a resumed job needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..buffers import unflatten
from ..errors import UsageError
from ..loop import decode_stop, stop_from_mean, stop_term
from .exchange import LOSS, LOSS0, STOP, TIME, FlatState, GradientAverager, ModelAverager
from .rules import METHODS, CommSchedule, Interval


class FlatSGD:
    """Each worker's local optimizer: torch.optim.SGD's update (weight decay, heavy-ball momentum,
    dampening 0, no Nesterov) done as three ops on the whole flat buffer of a
    :class:`mpidist.comm.FlatParams` (such as :class:`FlatState`): ``state.params``/``state.grads``.

    ``d = g + wd x; buf = mu buf + d; x -= lr buf`` (the first step after :meth:`restart` has
    ``buf = d``, as torch's fresh buffer). Same bits as torch.optim.SGD, without its per-tensor
    loops and without the seconds torch.optim's constructor spends importing its compiler.
    Exposes ``param_groups`` like a torch optimizer, so the wrapper sets the learning rate alike.
    """

    def __init__(self, state, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.state = state
        self.param_groups = [{"lr": float(lr), "momentum": float(momentum),
                              "weight_decay": float(weight_decay)}]
        self.buf = torch.zeros_like(state.params) if momentum else None
        self.work = torch.empty_like(state.params) if weight_decay else None

    def step(self) -> None:
        g = self.param_groups[0]
        x, d = self.state.params, self.state.grads
        if g["weight_decay"]:
            d = torch.add(d, x, alpha=g["weight_decay"], out=self.work)
        if self.buf is not None:
            d = self.buf.mul_(g["momentum"]).add_(d)
        x.add_(d, alpha=-g["lr"])

    def restart(self) -> None:
        """Clear the momentum (a zero buffer makes the next step a fresh start)."""
        if self.buf is not None:
            self.buf.zero_()

    def state_dict(self) -> dict:
        return {"param_groups": [dict(g) for g in self.param_groups],
                "buf": None if self.buf is None else self.buf.clone()}

    def load_state_dict(self, d: dict) -> None:
        self.param_groups = [dict(g) for g in d["param_groups"]]
        if self.buf is not None:
            self.buf.copy_(d["buf"])


@dataclass
class Report:
    """What an averaging step agreed on: loss F averaged over workers, elapsed training time
    averaged over workers, the new interval if this step started one, whether any worker asked to
    stop (SIGUSR1/SIGTERM), and the agreed stop code itself (to hand to ``Loop.agree``)."""
    step: int
    F: float
    time: float
    interval: Interval | None
    stop: bool = False
    code: float = 0.0    # the agreed stop code (mpidist.loop.decode_stop; for Loop.agree)


class PeriodicAveragingSGD:
    """Wraps the local optimizer (:class:`FlatSGD`, or any torch optimizer; STYLE.md 3):
    :meth:`step` is the local optimizer step, then, when the schedule's predicate says so, the
    exchange (Eq. (1), with block momentum Eqs. (7)-(8)) and the restart of the local momentum.
    With a :class:`GradientAverager` (``sync``) the gradients are averaged before every optimizer
    step instead.

    ``clock()`` gives this rank's elapsed training seconds (only ever used averaged over ranks);
    ``window``: the number of recent local mini-batch losses whose mean each worker contributes to
    F; ``stop_flag()``: this worker's stop code (``Run.stop_code``: 2 x a stop signal's number, + 1
    when a timed checkpoint is due), agreed through the (averaged) control slots like everything
    else (``mpidist.loop.stop_term`` / ``stop_from_mean``).
    """

    def __init__(self, optimizer, state: FlatState, exchange, schedule: CommSchedule, clock,
                 window: int = 20, restart_momentum: bool = True, stop_flag=None):
        self.opt, self.state, self.exchange, self.schedule = optimizer, state, exchange, schedule
        self.clock, self.restart_momentum = clock, restart_momentum
        self.stop_flag = stop_flag or (lambda: 0)
        self._momenta: list[torch.Tensor] = []
        self.sync = isinstance(exchange, GradientAverager)
        self.ring = torch.zeros(max(int(window), 1), dtype=state.x.dtype, device=state.x.device)
        self.window = len(self.ring)
        self.seen = 0
        self.loss0_set = False

    # -------------------------------------------------------------- helpers
    def set_window(self, window: int) -> None:
        """Use the last ``window`` losses from now on (and forget the older ones)."""
        if window > len(self.ring):
            self.ring = torch.zeros(window, dtype=self.ring.dtype, device=self.ring.device)
        self.window, self.seen = max(int(window), 1), 0

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def _restart_momentum(self) -> None:
        """Clear the local momentum: ``optimizer.restart()`` when it has one (:class:`FlatSGD`),
        else zero torch.optim.SGD's buffers (dampening 0: a zero buffer is a restart)."""
        if hasattr(self.opt, "restart"):
            self.opt.restart()
            return
        if not self._momenta:  # torch creates them at the first step (none without momentum)
            self._momenta = [s["momentum_buffer"] for s in self.opt.state.values()
                             if s.get("momentum_buffer") is not None]
        if self._momenta:
            torch._foreach_zero_(self._momenta)

    def _fill(self, ctrl: torch.Tensor) -> None:
        k = max(1, min(self.seen, self.window))  # ring[:window]: the last `window` losses
        ctrl[LOSS] = self.ring[:k].mean()
        ctrl[TIME] = self.clock()
        ctrl[STOP] = stop_term(self.stop_flag(), self.exchange.comm.size)

    def _agree(self, ctrl: torch.Tensor, step: int) -> Report:
        loss, t, loss0, stop = ctrl.tolist()
        row = self.schedule.averaged(step, loss, t, loss0)
        code = stop_from_mean(stop, self.exchange.comm.size)  # the slots are averaged
        return Report(step, loss, t, row, decode_stop(code)[1], code)

    # -------------------------------------------------------------- the step
    def step(self, loss: torch.Tensor, step: int = 0) -> Report | None:
        """One local step with the gradients already in ``state.g`` and the mini-batch ``loss``
        (a 0-d tensor); ``step``: the step's number for the reports. Returns a :class:`Report`
        after an averaging step, else None."""
        loss = loss.detach()
        self.ring[self.seen % self.window] = loss
        self.seen += 1
        if not self.loss0_set:  # F(x_0): the first mini-batch loss at the common start point
            self.state.ctrl[LOSS0] = loss
            self.state.gctrl[LOSS0] = loss
            self.loss0_set = True
        if self.sync:
            self._fill(self.state.gctrl)
            ctrl = self.exchange.average()
            self.opt.step()
            self.schedule.local_step()
            return self._agree(ctrl, step)
        self.opt.step()
        self.schedule.local_step()
        if self.schedule.should_average():
            return self.average(step)
        return None

    def average(self, step: int = 0) -> Report:
        """Average the models now: the end of a period, or a final averaging before stopping."""
        if self.sync:
            raise RuntimeError("synchronous SGD averages gradients in step(), never models")
        self._fill(self.state.ctrl)
        ctrl = self.exchange.average(self.schedule.lr)
        if self.restart_momentum:
            self._restart_momentum()
        return self._agree(ctrl, step)

    def restart(self) -> None:
        """Back to a fresh start from the current model (after the tau0 search)."""
        self._restart_momentum()
        self.exchange.reset()
        self.seen = 0

    def state_dict(self) -> dict:
        """Everything a resumed job needs to continue bit for bit (STYLE.md 3): the model with its
        buffers and control slots, the local optimizer, the block momentum, the schedule (tau,
        interval, learning rate, F0) and the loss window."""
        return {"x": self.state.x.clone(), "gctrl": self.state.gctrl.clone(),
                "optimizer": self.opt.state_dict(), "exchange": self.exchange.state_dict(),
                "schedule": self.schedule.state_dict(), "ring": self.ring.clone(),
                "window": self.window, "seen": self.seen, "loss0_set": self.loss0_set}

    def load_state_dict(self, d: dict) -> None:
        self.state.x.copy_(d["x"])
        self.state.gctrl.copy_(d["gctrl"])
        self.opt.load_state_dict(d["optimizer"])
        self._momenta = []
        self.exchange.load_state_dict(d["exchange"])
        self.schedule.load_state_dict(d["schedule"])
        self.ring = d["ring"].to(self.ring.device).clone()
        self.window, self.seen, self.loss0_set = d["window"], d["seen"], d["loss0_set"]


class AdaComm:
    """AdaComm, PASGD or synchronous SGD of worker ``run.rank`` around the user's ``model`` and
    ``optimizer`` (STYLE.md 3 and 17); every rank of ``run`` is one worker.

    ``run``: the :class:`mpidist.runtime.Run` of ``mpidist.init`` (or a bare
    :class:`mpidist.comm.Communicator`: then no metrics, no stop signals); every message goes
    through ``run.comm`` (channels ``init``, ``params``/``grads``), so into the run's trace.
    ``model``: on ``run.device``, one dtype; its parameters (and floating buffers, e.g. BatchNorm
    statistics) become views into one flat buffer (:class:`FlatState`), so an averaging is one
    allreduce that copies nothing. ``optimizer``: the user's torch optimizer over ``model``'s
    parameters, the local step of every worker (its ``momentum_buffer``s are cleared after each
    averaging, as the paper restarts the local momentum); or None with ``lr`` (and ``momentum``,
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
                 metrics: bool = True):
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
                                        int(loss_window), restart_momentum=method != "sync",
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
        for p, view in zip(self.state.tensors, self._gviews):
            g = p.grad
            if g is None:
                view.zero_()
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g)
            else:
                continue
            p.grad = view

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
