"""The pieces a user wraps around an optimizer.

- :class:`AdaComm` (in :mod:`mpidist.adacomm.wrapper`): the whole algorithm around the user's model and torch optimizer in a script
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
local momentum (when: ``restart_momentum``, :func:`mpidist.adacomm.rules.momentum_restart_due`);
``state_dict`` carries everything a resumed job needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..loop import DIVERGED, decode_stop, stop_from_mean, stop_term
from .exchange import LOSS, LOSS0, STOP, TIME, FlatState, GradientAverager
from .rules import MOMENTUM_RESTARTS, CommSchedule, Interval, momentum_restart_due


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
    ``restart_momentum``: when the local momentum is cleared after an averaging, one of
    :data:`~mpidist.adacomm.rules.MOMENTUM_RESTARTS` (``"while-tau-above-1"``: not between two
    one-step periods, so tau = 1 is synchronous momentum SGD; ``"always"``: after every averaging,
    the paper's sentence read literally; ``"never"``), or a bool (True: ``"always"``, False:
    ``"never"``).
    """

    def __init__(self, optimizer, state: FlatState, exchange, schedule: CommSchedule, clock,
                 window: int = 20, restart_momentum: bool | str = "while-tau-above-1",
                 stop_flag=None):
        if isinstance(restart_momentum, bool):
            restart_momentum = "always" if restart_momentum else "never"
        if restart_momentum not in MOMENTUM_RESTARTS:
            raise ValueError(f"restart_momentum must be one of {', '.join(MOMENTUM_RESTARTS)} "
                             f"or a bool, got {restart_momentum!r}")
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
        if not math.isfinite(loss):     # some worker's loss was not finite: the mean is not either
            code += DIVERGED
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
        tau_ended = self.schedule.tau
        ctrl = self.exchange.average(self.schedule.lr)
        report = self._agree(ctrl, step)      # may start an interval with a new tau
        if momentum_restart_due(self.restart_momentum, tau_ended, self.schedule.tau):
            self._restart_momentum()
        return report

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
