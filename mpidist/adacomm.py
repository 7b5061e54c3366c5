"""AdaComm: periodic-averaging SGD with an adaptive communication period, on MPI.

    mpirun -n 4 python -m mpidist.adacomm                          # AdaComm on the embedded digits
    mpirun -n 4 python -m mpidist.adacomm --method sync            # fully synchronous SGD
    mpirun -n 4 python -m mpidist.adacomm --method pasgd --tau 8   # PASGD, fixed period
    mpirun -n 4 python -m mpidist.adacomm --tau0 auto              # tau0 by the paper's grid search
    mpirun -n 4 python -m mpidist.adacomm --paper cifar10-vgg16 --data-root DIR

Wang & Joshi, "Adaptive communication strategies to achieve the best error-runtime trade-off in
local-update SGD" (shared/papers/003_ad11dabf3462a9eb.txt). What each part implements:

- Eq. (1), PASGD: every worker makes tau local SGD steps without communicating, then the models
  are averaged. :class:`ModelAverager` averages with ONE nonblocking allreduce (MPI's own, through
  ``mpidist.comm``) of one flat buffer that *is* the model (:class:`FlatState`); ``tau = 1`` is
  fully synchronous SGD, which ``--method sync`` runs the usual way instead (gradients averaged
  every step, :class:`GradientAverager`).
- Eq. (6) and its refinement, AdaComm: training is cut into wall-clock intervals of length T0
  (``--interval``); at the first averaging step of interval l the period becomes
  ``tau_l = ceil(sqrt(eta_0/eta_l * F(x_l)/F(x_0)) * tau_0)``, or ``gamma * tau_{l-1}`` when that is
  not strictly smaller than ``tau_{l-1}`` at an unchanged learning rate (a plateau):
  :func:`basic_tau`, :func:`next_tau`, :class:`CommSchedule` (pure: no MPI, no clock). tau0 is given
  or found by the short grid search the paper describes (:func:`search_tau0`). With a learning-rate
  schedule, "first decay tau to 1, then decay the learning rate": a due decay waits until tau = 1.
- Eqs. (7)-(8), block momentum: the averaged change of a period is one big gradient step
  ``G_j`` with a global momentum ``u_j = beta_glob u_{j-1} + G_j``,
  ``x_{(j+1)tau+1} = x_{j tau+1} - eta_j u_j`` (``--global-momentum``, 0.3 in the paper); the local
  optimizer's momentum (0.9) restarts at every averaging (:class:`PeriodicAveragingSGD`).

Agreement without a shared clock: every decision (is this the end of an interval? the new tau, the
learning rate, stopping at the time budget) is taken at an averaging step from values that came out
of the same allreduce as the model, so every rank sees the same bits: the workers' training loss
(averaged), their elapsed training time (averaged, so no single rank's clock decides) and the
initial loss F(x_0), and any stop signal (SIGUSR1 or SIGTERM: every rank checkpoints at the same
averaging step and stops). Four control slots at the end of the averaged buffer carry them. (This
relies on the allreduce giving every rank the same result, which MPI recommends and MPICH's
algorithms do; the tests check it bit for bit.)

Trace (``<run>/rank<k>.h5``): channels ``init`` (broadcast of x_1 from rank 0), ``params``
(PASGD/AdaComm averaging: the model, its float buffers and the 4 control slots), ``grads``
(synchronous SGD), ``eval`` (final evaluation). Metrics, identical on every rank: at every
averaging step ``train_loss`` (F: the workers' mini-batch loss over the last ``--loss-window``
local steps, averaged over workers) and ``train_time`` (agreed elapsed training seconds); at every
interval ``interval``, ``interval_time``, ``F``, ``tau``, ``lr``; ``lr`` again when it decays;
``F0``, ``tau0``; the grid search's ``search_tau``/``search_F``/``search_seconds``/``search_rate``;
at the end ``final_train_loss``, ``test_loss``, ``test_acc``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, data, models, runtime
from .comm import aligned_empty, flatten, trainable_tensors, unflatten
from .errors import UsageError
from .metrics import evaluate

METHODS = ("sync", "pasgd", "adacomm")

# ===================================================================== the schedule (pure)

_EPS = 1e-9  # ceil(4.000000001) must be 4: products like sqrt(x) * tau0 carry rounding noise


def _ceil(v: float) -> int:
    return math.ceil(v - _EPS * max(1.0, abs(v)))


def basic_tau(F_l: float, F_0: float, eta_l: float, eta_0: float, tau_0: int) -> int:
    """Eq. (6), the basic update rule: ``ceil(sqrt(eta_0/eta_l * F(x_{t=lT0})/F(x_{t=0})) tau_0)``,
    at least 1 (F_inf ~ 0 and eta_l L_l ~ 1, as the paper approximates Eq. (5))."""
    if not F_0 > 0 or not eta_l > 0 or not eta_0 > 0:
        raise ValueError(f"basic_tau: F_0, eta_l, eta_0 must be > 0 (got {F_0}, {eta_l}, {eta_0})")
    return max(1, _ceil(math.sqrt(max(F_l, 0.0) / F_0 * eta_0 / eta_l) * tau_0))


def next_tau(F_l: float, F_0: float, eta_l: float, eta_0: float, tau_0: int, tau_prev: int,
             eta_prev: float, gamma: float = 0.5, slack: int = 0) -> int:
    """Eq. (6) with the paper's refinement ("faster decay when training saturates").

    If ``basic_tau + slack >= tau_prev`` and the learning rate did not change (``eta_l == eta_prev``)
    the period decays geometrically instead: ``ceil(gamma * tau_prev)``, made strictly smaller than
    ``tau_prev`` (for gamma close to 1 the ceiling alone could keep it) and at least 1. Otherwise the
    basic rule holds, so after a learning-rate decay tau may grow again (eta_0/eta_l grows).
    """
    if not 0 < gamma < 1:
        raise ValueError(f"next_tau: gamma must be in (0, 1), got {gamma}")
    tau = basic_tau(F_l, F_0, eta_l, eta_0, tau_0)
    if eta_l == eta_prev and tau + slack >= tau_prev:
        return max(1, min(tau_prev - 1, _ceil(gamma * tau_prev)))
    return tau


def lr_decays_due(epoch: float, milestones) -> int:
    """How many learning-rate milestones (in epochs) ``epoch`` has reached."""
    return sum(1 for m in milestones if epoch >= m)


@dataclass
class Interval:
    """One row of the tau schedule: interval ``index`` began at the averaging step ``step`` at
    agreed training time ``time``; ``F`` is the training loss Eq. (6) used, ``tau`` and ``lr`` the
    period and learning rate chosen for it."""
    index: int
    step: int
    time: float
    F: float
    tau: int
    lr: float


class CommSchedule:
    """When to average and how often: the pure part of sync / PASGD / AdaComm (no MPI, no clock).

    It is fed only values every rank shares (its own step count, and at averaging steps the
    averaged loss and time), so it takes the same decisions on every rank.

    - predicate: :meth:`should_average` after ``tau`` local steps (Eq. (1): ``k mod tau = 0``);
    - learning rate: :meth:`lr_for` (step decay by ``lr_factor`` at ``milestones`` epochs; with
      ``defer_lr_decay`` a due decay waits until tau = 1, "first decay tau to 1, then the lr");
    - period: :meth:`averaged` starts interval ``l = floor(time / T0)`` when the agreed time reaches
      it and, for AdaComm, sets tau by :func:`next_tau`; ``sync`` and ``pasgd`` keep tau fixed (their
      intervals are logged all the same).
    """

    def __init__(self, method: str, tau0: int, interval: float, lr0: float, gamma: float = 0.5,
                 slack: int = 0, milestones=(), lr_factor: float = 0.1,
                 defer_lr_decay: bool | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
        if tau0 < 1 or not interval > 0 or not lr0 > 0:
            raise ValueError("CommSchedule: tau0 >= 1, interval > 0 and lr0 > 0 are required")
        self.method, self.adaptive = method, method == "adacomm"
        self.tau0 = 1 if method == "sync" else int(tau0)
        self.tau = self.tau0
        self.T0, self.gamma, self.slack = float(interval), gamma, slack
        self.lr0 = self.lr = float(lr0)
        self.milestones, self.lr_factor = sorted(float(m) for m in milestones), lr_factor
        self.n_decays = 0
        self.defer = self.adaptive if defer_lr_decay is None else bool(defer_lr_decay)
        self.F0: float | None = None
        self.index = 0          # current interval l
        self.eta_prev = self.lr  # the learning rate when the current tau was chosen
        self.since = 0          # local steps since the last averaging
        self.history = [Interval(0, 0, 0.0, float("nan"), self.tau, self.lr)]

    def should_average(self) -> bool:
        """The predicate: this local step ends a period."""
        return self.since >= self.tau

    def local_step(self) -> None:
        self.since += 1

    def lr_for(self, epoch: float) -> float:
        """The learning rate of the next step at ``epoch`` (data passes of all workers together)."""
        due = lr_decays_due(epoch, self.milestones)
        if due > self.n_decays and (not self.defer or self.tau == 1):
            self.n_decays = due
            self.lr = self.lr0 * self.lr_factor ** due
        return self.lr

    def averaged(self, step: int, F_avg: float, time_avg: float, F0: float | None = None):
        """An averaging step happened with the agreed loss ``F_avg`` and time ``time_avg``
        (``F0``: the agreed initial loss F(x_0), taken once). Returns the new :class:`Interval` when
        this step starts one, else None."""
        self.since = 0
        if self.F0 is None:
            self.F0 = float(F0 if F0 is not None else F_avg)
        index = int(time_avg // self.T0)
        if index <= self.index:
            return None
        self.index = index
        if self.adaptive:
            self.tau = next_tau(F_avg, self.F0, self.lr, self.lr0, self.tau0, self.tau,
                                self.eta_prev, self.gamma, self.slack)
        self.eta_prev = self.lr
        row = Interval(index, step, float(time_avg), float(F_avg), self.tau, self.lr)
        self.history.append(row)
        return row

    _STATE = ("method", "adaptive", "tau0", "tau", "lr", "n_decays", "F0", "index", "eta_prev",
              "since")

    def state_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self._STATE}
        d["history"] = [tuple(vars(h).values()) for h in self.history]
        return d

    def load_state_dict(self, d: dict) -> None:
        for k in self._STATE:
            setattr(self, k, d[k])
        self.history = [Interval(*h) for h in d["history"]]

    def reset(self, tau0: int | None = None, method: str | None = None) -> None:
        """Start over with ``tau0`` (and ``method``): the tau0 search runs its trials as fixed-tau
        PASGD and then restarts AdaComm from its choice."""
        self.__init__(method or self.method, tau0 or self.tau0, self.T0, self.lr0, self.gamma,
                      self.slack, self.milestones, self.lr_factor, self.defer)


# ===================================================================== the exchange

# control slots appended to every averaged buffer: the worker's recent training loss, its elapsed
# training time, its first loss F(x_0), and its stop signal (SIGUSR1/SIGTERM: checkpoint and stop)
CTRL = ("loss", "time", "loss0", "stop")
_LOSS, _TIME, _LOSS0, _STOP = range(len(CTRL))


class FlatState:
    """A model as two flat buffers whose slices ARE its tensors (views, no packing):
    ``x = [parameters | floating buffers (BatchNorm statistics) | control slots]`` and
    ``g = [gradients | control slots]``.

    Averaging the model (Eq. (1)) is then one allreduce of ``x``, synchronous SGD one allreduce of
    ``g``, and the few values every rank must agree on travel in the same message (:data:`CTRL`).
    Build it after the model is on its device; zero gradients with :meth:`zero_grad`.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.tensors = trainable_tensors(module, "FlatState")
        dtype, device = self.tensors[0].dtype, self.tensors[0].device
        self.buffers = [(m, name, b) for m in module.modules() for name, b in m._buffers.items()
                        if b is not None and b.dtype == dtype]
        n = sum(p.numel() for p in self.tensors)
        nb = sum(b.numel() for _, _, b in self.buffers)
        c = len(CTRL)
        self.numel, self.n_buffers = n, nb
        self.x = aligned_empty(n + nb + c, dtype, device)
        self.g = aligned_empty(n + c, dtype, device).zero_()
        self.params, self.model_state, self.ctrl = self.x[:n], self.x[:n + nb], self.x[n + nb:]
        self.grads, self.gctrl = self.g[:n], self.g[n:]
        flatten([p.detach() for p in self.tensors], self.params)
        self.ctrl.zero_()
        for p, v, gv in zip(self.tensors, unflatten(self.params, self.tensors),
                            unflatten(self.grads, self.tensors)):
            p.data, p.grad = v, gv
        if nb:
            bufs = [b for _, _, b in self.buffers]
            flatten(bufs, self.x[n:n + nb])
            for (m, name, _), v in zip(self.buffers, unflatten(self.x[n:n + nb], bufs)):
                m._buffers[name] = v

    def zero_grad(self) -> None:
        self.grads.zero_()
        for p, gv in zip(self.tensors, unflatten(self.grads, self.tensors)):
            if p.grad is None or p.grad.data_ptr() != gv.data_ptr():
                p.grad = gv  # someone set it to None: re-attach the view

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size()


class FlatSGD:
    """Each worker's local optimizer: torch.optim.SGD's update (weight decay, heavy-ball momentum,
    dampening 0, no Nesterov) done as three ops on the whole flat buffer of a :class:`FlatState`.

    ``d = g + wd x; buf = mu buf + d; x -= lr buf`` (the first step after :meth:`restart` has
    ``buf = d``, as torch's fresh buffer). Same bits as torch.optim.SGD, without its per-tensor
    loops and without the seconds torch.optim's constructor spends importing its compiler.
    Exposes ``param_groups`` like a torch optimizer, so the wrapper sets the learning rate alike.
    """

    def __init__(self, state: "FlatState", lr: float, momentum: float = 0.0,
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


class ModelAverager:
    """Eq. (1)'s averaging step, and the block momentum of Eqs. (7)-(8) when ``beta_glob > 0``.

    :meth:`average` allreduces the whole ``state.x`` (model, buffers, control slots) with MPI's
    nonblocking allreduce (op avg, channel ``params``). With block momentum the averaged model
    ``x_bar`` only measures the period's step: ``G_j = (x_{j tau+1} - x_bar) / eta_j`` (the workers'
    accumulated local updates over one period, averaged: with plain local SGD exactly Eq. (7)'s
    ``(1/m) sum_i sum_k g(x^(i))``), ``u_j = beta_glob u_{j-1} + G_j`` (Eq. 7) and
    ``x_{(j+1) tau+1} = x_{j tau+1} - eta_j u_j`` (Eq. 8). ``beta_glob = 0`` is plain averaging.
    """

    def __init__(self, comm, state: FlatState, beta_glob: float = 0.0, channel: str = "params"):
        self.comm, self.state, self.beta, self.channel = comm, state, float(beta_glob), channel
        self.anchor = self.u = None
        if self.beta > 0:
            self.anchor = state.params.clone()  # x_{j tau + 1}: the model the period started from
            self.u = torch.zeros_like(self.anchor)
        self.count = 0

    def average(self, lr: float) -> torch.Tensor:
        """Average now (blocking: the next local step needs the result); return the averaged
        control slots."""
        self.comm.iallreduce(self.state.x, "avg", self.channel).wait()
        self.count += 1
        if self.u is not None:
            x = self.state.params
            # u = beta u + (anchor - x_bar) / eta ; anchor = anchor - eta u ; x = anchor
            self.u.mul_(self.beta).add_(self.anchor, alpha=1.0 / lr).add_(x, alpha=-1.0 / lr)
            self.anchor.add_(self.u, alpha=-lr)
            x.copy_(self.anchor)
        return self.state.ctrl

    def reset(self) -> None:
        """Forget the momentum; the current (identical) model starts the next period."""
        if self.u is not None:
            self.anchor.copy_(self.state.params)
            self.u.zero_()

    def state_dict(self) -> dict:
        return {"count": self.count, "anchor": None if self.u is None else self.anchor.clone(),
                "u": None if self.u is None else self.u.clone()}

    def load_state_dict(self, d: dict) -> None:
        self.count = d["count"]
        if self.u is not None:
            self.anchor.copy_(d["anchor"])
            self.u.copy_(d["u"])


class GradientAverager:
    """Fully synchronous SGD: the gradients (and the control slots) averaged at every step,
    channel ``grads``; the optimizer then makes the same step on every rank."""

    def __init__(self, comm, state: FlatState, channel: str = "grads"):
        self.comm, self.state, self.channel = comm, state, channel
        self.count = 0

    def average(self) -> torch.Tensor:
        self.comm.iallreduce(self.state.g, "avg", self.channel).wait()
        self.count += 1
        return self.state.gctrl

    def reset(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, d: dict) -> None:
        self.count = d["count"]


@dataclass
class Report:
    """What an averaging step agreed on: loss F averaged over workers, elapsed training time
    averaged over workers, the new interval if this step started one, and whether any worker
    asked to stop (SIGUSR1/SIGTERM)."""
    step: int
    F: float
    time: float
    interval: Interval | None
    stop: bool = False
    save: bool = False   # save a checkpoint: a stop, or --checkpoint-every DURATION has passed
    code: float = 0.0    # the agreed stop code (runtime.decode_stop)


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
    else (``runtime.stop_term`` / ``stop_from_mean``).
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
        ctrl[_LOSS] = self.ring[:k].mean()
        ctrl[_TIME] = self.clock()
        ctrl[_STOP] = runtime.stop_term(self.stop_flag(), self.exchange.comm.size)

    def _agree(self, ctrl: torch.Tensor, step: int) -> Report:
        loss, t, loss0, stop = ctrl.tolist()
        row = self.schedule.averaged(step, loss, t, loss0)
        code = runtime.stop_from_mean(stop, self.exchange.comm.size)  # the slots are averaged
        save, halt = runtime.decode_stop(code)
        return Report(step, loss, t, row, halt, save, code)

    # -------------------------------------------------------------- the step
    def step(self, loss: torch.Tensor, step: int = 0) -> Report | None:
        """One local step with the gradients already in ``state.g`` and the mini-batch ``loss``
        (a 0-d tensor); ``step``: the step's number for the reports. Returns a :class:`Report`
        after an averaging step, else None."""
        loss = loss.detach()
        self.ring[self.seen % self.window] = loss
        self.seen += 1
        if not self.loss0_set:  # F(x_0): the first mini-batch loss at the common start point
            self.state.ctrl[_LOSS0] = loss
            self.state.gctrl[_LOSS0] = loss
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


# ===================================================================== training

@dataclass
class Stop:
    """When training ends: agreed time budget (s), steps, epochs (0 = no limit)."""
    seconds: float = 0.0
    steps: int = 0
    epochs: float = 0.0

    def by_count(self, step: int, epoch: float) -> bool:
        return (self.steps > 0 and step >= self.steps) or (self.epochs > 0 and epoch >= self.epochs)

    def by_time(self, t: float) -> bool:
        return self.seconds > 0 and t >= self.seconds


class Trainer:
    """The training loop of one rank: mini-batches from its shard, the wrapped optimizer, the
    schedule's learning rate, metrics and progress.

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
        self.last: Report | None = None
        self.last_checkpoint = -1
        self._next_progress = 0.0

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
        self.last_checkpoint = self.step - 1

    def checkpoint(self, rep: Report) -> bool:
        """At an averaging step (the only points where the ranks meet): save every rank's state
        when ``--checkpoint-every`` steps have passed since the last checkpoint, or when any rank
        got a stop signal (agreed through the control slots, no extra message); True = stop now.

        The runtime's ``Run.checkpoint`` agrees with an allreduce at every step, which would make
        the workers of local SGD meet at every step; this saves in the same layout
        (``mpidist.checkpoint``), so ``--resume`` reads it."""
        run = self.run
        every = getattr(run.args, "checkpoint_every", 0)
        due = every and (rep.step + 1) // every > (self.last_checkpoint + 1) // every
        if rep.save or due:
            run.save_checkpoint(rep.step, self.state_dict())
            self.last_checkpoint = rep.step
        if rep.stop:
            run.announce_stop(rep.step, rep.code)
        return rep.stop

    def clock(self) -> float:
        """This rank's seconds since :meth:`begin` (only ever used averaged over the ranks)."""
        return self.run.comm.clock() - self.offset

    def one_step(self) -> Report | None:
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
        self.run.step_done(self.step)  # trace rows of this step carry its index
        self.step += 1
        return rep

    def log(self, rep: Report) -> None:
        run = self.run
        run.metric(rep.step, "train_loss", rep.F)
        run.metric(rep.step, "train_time", rep.time)
        if rep.interval is not None:
            r = rep.interval
            for name, v in (("interval", r.index), ("interval_time", r.time), ("F", r.F),
                            ("tau", r.tau), ("lr", r.lr)):
                run.metric(rep.step, name, v)

    def progress(self, rep: Report, total_s: float) -> None:
        run = self.run
        if run.rank != 0 or run.args.quiet:
            return
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + run.args.progress_seconds
        budget = f"/{total_s:.0f}" if total_s else ""
        print(f"[0] t {rep.time:5.1f}{budget} s  step {self.step}  epoch {self.epoch():.1f}  "
              f"loss {rep.F:.4f}  tau {self.opt.schedule.tau}  lr {self.opt.schedule.lr:.4g}",
              flush=True)

    def train(self, stop: Stop, log: bool = True) -> Report:
        """Train until ``stop``, decided from agreed values only (the averaged time at averaging
        steps, the step count); always end on an averaged model."""
        rep = None
        while not stop.by_count(self.step - self.start_step, self.epoch()):
            r = self.one_step()
            if r is not None:
                rep = self.last = r
                if log:
                    self.log(r)
                    self.progress(r, stop.seconds)
                if self.checkpoint(r) or stop.by_time(r.time):
                    return rep
        if self.opt.schedule.since > 0:  # stopped by count between averagings: average now
            rep = self.last = self.opt.average(self.step)
            if log:
                self.log(rep)
        return rep


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


# ===================================================================== command line

PAPER = {  # Section 5: 4 workers, batch 128 per worker, weight decay 5e-4, T0 = 60 s
    "cifar10-vgg16": dict(data="cifar10", model="vgg16", lr=0.2),
    "cifar10-resnet50": dict(data="cifar10", model="resnet50", lr=0.4),
    "cifar100-vgg16": dict(data="cifar100", model="vgg16", lr=0.2),
    "cifar100-resnet50": dict(data="cifar100", model="resnet50", lr=0.4),
}
PAPER_COMMON = dict(batch_size=128, weight_decay=5e-4, interval=60.0, time_budget=0.0,
                    epochs=240.0, lr_milestones="80,120,160,200", momentum=0.9,
                    global_momentum=0.3)


def _tau0(s: str):
    if s == "auto":
        return "auto"
    return runtime.positive_int(s)


def _milestones(s: str) -> list[float]:
    if not s.strip():
        return []
    try:
        out = sorted(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs separated by commas, got '{s}'")
    if any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError("milestones must be > 0 epochs")
    return out


def _int_list(s: str) -> list[int]:
    try:
        out = [int(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{s}'")
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError("every candidate tau must be >= 1")
    return out


def _gamma(s: str) -> float:
    v = float(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}")
    return v


def _model_arg(s: str):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected key=value, got '{s}'")
    k, v = s.split("=", 1)
    for cast in (int, float):
        try:
            return k, cast(v)
        except ValueError:
            pass
    return k, v


def make_parser() -> runtime.ArgumentParser:
    p = runtime.parser("adacomm", __doc__)
    g = p.add_argument_group("AdaComm (Wang & Joshi)")
    g.add_argument("--method", choices=METHODS, default="adacomm",
                   help="sync: fully synchronous SGD (gradients averaged every step); pasgd: "
                        "periodic averaging every --tau local steps (Eq. 1); adacomm: tau adapted "
                        "every --interval seconds (Eq. 6 with the refinement) (default adacomm)")
    g.add_argument("--tau", type=runtime.positive_int, default=8,
                   help="tau, the communication period of PASGD: local steps between averagings "
                        "(Eq. 1; --method pasgd) (default 8)")
    g.add_argument("--tau0", type=_tau0, default=8,
                   help="tau_0, AdaComm's initial period (Eq. 6), or 'auto' for the grid search "
                        "over --tau0-grid, --tau0-search-epochs each (default 8)")
    g.add_argument("--tau0-grid", type=_int_list, default=[1, 2, 4, 8, 16, 32],
                   help="candidate tau_0 values of the grid search (default 1,2,4,8,16,32)")
    g.add_argument("--tau0-search-epochs", type=runtime.positive_float, default=2.0,
                   help="epochs each candidate of the grid search runs (paper: one or two) "
                        "(default 2)")
    g.add_argument("--interval", type=runtime.positive_float, default=5.0, metavar="SECONDS",
                   help="T_0, the wall-clock length of an interval; tau is re-chosen at the first "
                        "averaging of each (paper: 60 s) (default 5)")
    g.add_argument("--gamma", type=_gamma, default=0.5,
                   help="gamma < 1, the faster decay tau_l = gamma tau_{l-1} when Eq. 6 does not "
                        "lower tau (refinement) (default 1/2)")
    g.add_argument("--slack", type=runtime.nonneg_int, default=0,
                   help="s, the refinement's slack: decay by gamma when Eq.6 + s >= tau_{l-1} "
                        "(default 0)")
    g.add_argument("--loss-window", type=runtime.positive_int, default=20, metavar="STEPS",
                   help="F(x): each worker's mean mini-batch loss over its last STEPS local steps, "
                        "averaged over workers (default 20)")
    o = p.add_argument_group("optimizer")
    o.add_argument("--lr", type=runtime.positive_float, default=0.05,
                   help="eta_0, the initial learning rate (paper: 0.2 VGG-16, 0.4 ResNet-50) "
                        "(default 0.05)")
    o.add_argument("--momentum", type=runtime.unit_float, default=0.9,
                   help="local momentum of every worker's SGD; restarted at every averaging "
                        "(paper: 0.9; for sync the usual momentum) (default 0.9)")
    o.add_argument("--global-momentum", type=runtime.unit_float, default=0.3,
                   help="beta_glob, the block momentum of Eqs. 7-8 applied at each averaging "
                        "(paper: 0.3; 0 = plain averaging, Eq. 1) (default 0.3)")
    o.add_argument("--weight-decay", type=runtime.nonneg_float, default=5e-4,
                   help="L2 weight decay (paper: 5e-4) (default 5e-4)")
    o.add_argument("--lr-milestones", type=_milestones, default=[], metavar="EPOCHS",
                   help="epochs at which the learning rate is multiplied by --lr-decay, e.g. "
                        "80,120,160,200 as in the paper (default none: fixed learning rate)")
    o.add_argument("--lr-decay", type=runtime.positive_float, default=0.1,
                   help="factor of each learning-rate decay (default 0.1)")
    o.add_argument("--lr-decay-after-tau1", action=argparse.BooleanOptionalAction, default=True,
                   help="AdaComm: a due learning-rate decay waits until tau has decayed to 1 "
                        "(paper: 'first decay tau to 1, then the learning rate') (default on)")
    t = p.add_argument_group("training")
    t.add_argument("--model", default="cnn", help="network from mpidist.models (default cnn)")
    t.add_argument("--model-arg", type=_model_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the network's builder, e.g. width=32 (cnn) or hidden=512 (mlp)")
    t.add_argument("--batch-size", type=runtime.positive_int, default=32,
                   help="mini-batch per worker (paper: 128) (default 32)")
    t.add_argument("--time-budget", type=runtime.nonneg_float, default=30.0, metavar="SECONDS",
                   help="stop at the first averaging after this much agreed training time "
                        "(0 = none) (default 30)")
    t.add_argument("--steps", type=runtime.nonneg_int, default=0,
                   help="stop after this many local steps per worker (0 = no limit)")
    t.add_argument("--epochs", type=runtime.nonneg_float, default=0.0,
                   help="stop after this many epochs of all workers together (0 = no limit)")
    t.add_argument("--paper", choices=sorted(PAPER), default=None,
                   help="the paper's setting in one flag: dataset and network, lr 0.2 (VGG-16) or "
                        "0.4 (ResNet-50), batch 128, weight decay 5e-4, T0 60 s, lr /10 at epochs "
                        "80/120/160/200, 240 epochs, momentum 0.9 / 0.3; run with 4 workers and "
                        "--data-root. Explicit flags still win.")
    data.add_arguments(p)
    return p


def check(args, world_size: int) -> str | None:
    if not (args.time_budget or args.steps or args.epochs):
        return "no stopping rule: give --time-budget, --steps or --epochs"
    if args.method != "adacomm" and args.tau0 == "auto":
        return "--tau0 auto is AdaComm's grid search; use it with --method adacomm"
    return None


def _presets(argv) -> dict:
    """The --paper setting as defaults (explicit flags override them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = None
    for i, a in enumerate(argv):
        if a == "--paper" and i + 1 < len(argv):
            name = argv[i + 1]
        elif a.startswith("--paper="):
            name = a.split("=", 1)[1]
    if name not in PAPER:
        return {}
    d = dict(PAPER_COMMON, **PAPER[name])
    d["lr_milestones"] = _milestones(d["lr_milestones"])
    return d


def _summary_eval(run, model, shard, test) -> tuple[float, float, float]:
    """(final training loss on the whole training set, test loss, test accuracy) of the averaged
    model: each rank evaluates its own shard and a slice of the test set, one allreduce sums."""
    dev = run.device
    _, tr_loss = evaluate(model, shard.x, shard.y, device=dev)
    idx = np.array_split(np.arange(len(test)), run.world_size)[run.rank]
    te_acc, te_loss = evaluate(model, test.x[idx], test.y[idx], device=dev) if len(idx) else (0, 0)
    n_tr, n_te = len(shard.y), len(idx)
    t = torch.tensor([tr_loss * n_tr, n_tr, te_loss * n_te, te_acc * n_te, n_te],
                     dtype=torch.float64)
    s = run.comm.iallreduce(t, "sum", "eval").wait().tolist()
    return s[0] / s[1], s[2] / max(s[4], 1), s[3] / max(s[4], 1)


# what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "epochs", "time_budget"})


def main(argv=None):
    p = make_parser()
    p.set_defaults(**_presets(argv))
    with runtime.start("adacomm", p, argv, check=check,
                       may_change=RESUME_MAY_CHANGE) as run:
        a = run.args
        size = a.image_size
        train_ds = data.load(a.data, a.data_root, a.download, True, size)
        test_ds = data.load(a.data, a.data_root, a.download, False, size,
                            channels=train_ds.shape[0])
        if a.paper and run.world_size != 4:
            run.say(f"note: the paper used 4 workers; this run has {run.world_size}")
        try:
            model = models.build(a.model, train_ds.shape, train_ds.num_classes,
                                 **dict(a.model_arg))
        except (TypeError, ValueError, RuntimeError) as e:  # an unknown or impossible keyword
            flags = " ".join([f"--model {a.model}"] + [f"--model-arg {k}={v}"
                                                        for k, v in a.model_arg])
            raise UsageError(f"{flags}: cannot build it ({e})") from None
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
                                   restart_momentum=a.method != "sync",
                                   stop_flag=run.stop_code)
        trainer.opt = opt
        nparams = state.numel
        run.say(f"adacomm: method {a.method}, {run.world_size} workers, {a.model} "
                f"({nparams} parameters, {state.nbytes / 1e6:.2f} MB averaged), {a.data} "
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
        last = trainer.train(Stop(a.time_budget, a.steps, a.epochs))
        run.metric(trainer.step, "F0", schedule.F0)
        final_loss, test_loss, test_acc = _summary_eval(run, model, shard, test_ds)
        for name, v in (("final_train_loss", final_loss), ("test_loss", test_loss),
                        ("test_acc", test_acc)):
            run.metric(trainer.step, name, v)

        n_avg = exchange.count
        sched_txt = ", ".join(f"{r.tau} (t={r.time:.1f}s, lr {r.lr:.3g})" if r.index else
                              f"{r.tau} (t=0, lr {r.lr:.3g})" for r in schedule.history)
        last_F = f"{last.F:.4f}" if last is not None else "-"
        run.say(
            f"final training loss {final_loss:.4f} (averaged model, whole training set; "
            f"last F {last_F})",
            f"test accuracy {test_acc:.4f} (test loss {test_loss:.4f})",
            f"{trainer.step} steps per worker, {trainer.epoch():.1f} epochs, {n_avg} "
            f"{'gradient' if a.method == 'sync' else 'model'} averagings, "
            f"{trainer.clock():.1f} s of training"
            + (f" (+{search_s:.1f} s tau0 search)" if search_rows else ""),
            f"tau schedule (tau per interval of T0 = {a.interval:g} s): {sched_txt}")


if __name__ == "__main__":
    main()
