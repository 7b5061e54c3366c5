"""AdaComm's pure rules: when to average, the adaptive period tau, the learning rate (no MPI, no
clock, no torch).

- Eq. (1), PASGD's predicate: average after every tau local steps (``k mod tau = 0``):
  :meth:`CommSchedule.should_average`.
- Eq. (6), the basic update rule of the period at the start of interval l:
  ``tau_l = ceil(sqrt(eta_0/eta_l * F(x_l)/F(x_0)) * tau_0)`` (:func:`basic_tau`), and its
  refinement "faster decay when training saturates": ``gamma * tau_{l-1}`` when Eq. (6) is not
  strictly below ``tau_{l-1}`` at an unchanged learning rate (:func:`next_tau`).
- With a learning-rate schedule, the paper's "first decay tau to 1, then decay the learning
  rate" (:meth:`CommSchedule.lr_for`).
- When the local momentum restarts after an averaging (Section 5, "Adaptive Communication in
  Momentum SGD"): :func:`momentum_restart_due`.

Every input is a value all ranks share (the step count, the loss and time averaged by the
allreduce), so every rank takes the same decisions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

METHODS = ("sync", "pasgd", "adacomm")

#: when each worker's local momentum is cleared after an averaging (:func:`momentum_restart_due`)
MOMENTUM_RESTARTS = ("while-tau-above-1", "always", "never")

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


def momentum_restart_due(mode: str, tau_ended: int, tau_next: int) -> bool:
    """Whether the local momentum restarts after the averaging that ends a period of ``tau_ended``
    local steps and begins one of ``tau_next`` (Section 5, "Adaptive Communication in Momentum
    SGD": "their local momentum buffer will be cleared at the beginning of each local update
    period. Namely, we restart momentum SGD on local models after each averaging step").

    - ``always``: the sentence read literally: after every averaging, so at tau = 1 after every
      step (the local momentum then never acts; only the block momentum of Eqs. (7)-(8) remains);
    - ``while-tau-above-1``: after every averaging that ends or begins a period of more than one
      local step; between two one-step periods the momentum runs on, so at tau = 1 the method is
      fully synchronous momentum SGD (Eq. (1) with tau = 1), the paper's "decay the communication
      period to 1 and then decay the learning rate as usual";
    - ``never``: the local momentum runs on across every averaging.
    """
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "while-tau-above-1":
        return tau_ended > 1 or tau_next > 1
    raise ValueError(f"momentum restart must be one of {', '.join(MOMENTUM_RESTARTS)}, "
                     f"got {mode!r}")


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

