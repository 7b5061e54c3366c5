"""DADA's discriminator strategies as pure rules (Table 1; Algorithm 1 lines 6-7, Algorithm 2 lines
7-8): when the nodes exchange, what they exchange, how they combine it, and what it costs. No MPI
here: the exchange is :mod:`mpidist.dada.exchange`, and the tests drive these rules in one process.

    sync    exchange and average D's gradients every step (p = 1): equal to centralized ADDA
    ga      Gradient Accumulation, DADA itself: accumulate G_acc for p steps, then exchange, average
            and apply it; D_s and D_t stay bitwise identical
    naive   apply local gradients; every p steps average the weights of D_s and D_t
    ma      Moving Average: apply local gradients, then average with D_sync, the last synchronised
            D; every p steps average the weights and store the average as D_sync
    dpsgd   the D-PSGD baseline (Lian et al. 2017) on the discriminators: every step average the
            weights, then apply the local gradient computed at the local weights
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError

STRATEGIES = {
    "sync": "exchange and average D's gradients every step (p = 1; equals centralized ADDA)",
    "ga": "Gradient Accumulation (DADA): accumulate p steps, exchange, average, apply",
    "naive": "apply local gradients, average D's weights every p steps",
    "ma": "Moving Average: local step, then average with D_sync; every p steps average weights "
          "and store D_sync",
    "dpsgd": "D-PSGD baseline: average D's weights every step, then apply the local gradient",
}

STOP_AGREEMENT_SYNCS = 10  # the ranks meet (stop signal, timed checkpoint) every this many sync-ups


@dataclass(frozen=True)
class Strategy:
    """What the discriminators exchange and when (Table 1): a pure schedule."""
    name: str
    period: int = 1

    @property
    def payload(self) -> str:
        """"grads" (sync, ga: the accumulated gradient G_acc) or "params" (the weights of D)."""
        return "grads" if self.name in ("sync", "ga") else "params"

    @property
    def channel(self) -> str:
        return "disc_grads" if self.payload == "grads" else "disc_params"

    def is_sync_step(self, n: int) -> bool:
        """Algorithm 1 line 7 / Algorithm 2 line 8: ``n % p == 0`` for the 1-based step n."""
        return n % self.period == 0

    def syncs(self, steps: int) -> int:
        """Sync-up steps among steps 1..N: floor(N / p)."""
        return steps // self.period

    @property
    def meet_every(self) -> int:
        """Steps between two meetings of the ranks (stop signal, timed checkpoint): every
        STOP_AGREEMENT_SYNCS sync-up steps, so that the meeting adds no coupling between them."""
        return STOP_AGREEMENT_SYNCS * self.period


def make_strategy(name: str, period: int | None = None) -> Strategy:
    """A Strategy by name; ``period`` None takes 1 for sync/dpsgd and 2 for naive/ma/ga."""
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    if period is None:
        period = 1 if name in ("sync", "dpsgd") else 2
    if period < 1:
        raise UsageError(f"--sync-period must be >= 1, got {period}")
    if name in ("sync", "dpsgd") and period != 1:
        raise UsageError(f"--strategy {name} exchanges every step (p = 1); for p = {period} use "
                         f"--strategy ga, naive or ma")
    return Strategy(name, period)


def exchange_bytes(strategy: Strategy, steps: int, disc_bytes: int, world_size: int = 2,
                   wire: bool = False) -> int | float:
    """Bytes of one rank on the discriminator channel in ``steps`` steps (Figure 3's cost, per
    node): one allreduce of D's size per sync-up step, so ``syncs * D`` handed to MPI (what the
    trace records), whatever the number of ranks. ``wire``: what a ring allreduce sends out of
    each of the ``world_size`` ranks instead, ``2 (n - 1) / n`` of that (n = 2: exactly D per
    sync-up, the one message each way of the two-node algorithm)."""
    recorded = strategy.syncs(steps) * disc_bytes
    if not wire:
        return recorded
    return recorded * 2 * (world_size - 1) / world_size


def rank_order_mean(parts, out: torch.Tensor) -> torch.Tensor:
    """``out = (((parts[0] + parts[1]) + ...) + parts[n-1]) / n``: the average of the ranks'
    payloads summed in rank order, so that every rank computes it with the same bits."""
    out.copy_(parts[0])
    for p in parts[1:]:
        out.add_(p)
    return out.div_(len(parts))


def adam(params, lr: float) -> torch.optim.Optimizer:
    """ADDA's optimizer for D and E_t: Adam, beta1 = 0.5."""
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


class DiscriminatorRule:
    """One node's discriminator under a strategy of Table 1, without communication.

    Per step n (1-based) the caller: exchanges what :meth:`before_grad` returns (D-PSGD's weights),
    lets backward ADD this step's gradient g^(n) into ``fp.grads`` (which is G_acc, Alg. 1 line 6),
    exchanges what :meth:`after_grad` returns, and hands the rank-average of the exchanged tensor
    to :meth:`combine`. A returned tensor must stay unchanged until ``combine``.
    ``fp``: the discriminator's FlatParams; ``opt``: its optimizer.
    """

    def __init__(self, strategy: Strategy, fp, opt: torch.optim.Optimizer):
        self.strategy, self.fp, self.opt = strategy, fp, opt
        self.d_sync = fp.params.clone() if strategy.name == "ma" else None  # D_sync (Table 1, MA)

    @property
    def updates_locally(self) -> bool:
        """Whether :meth:`after_grad` changes D's weights (naive, ma: the local step)."""
        return self.strategy.name in ("naive", "ma")

    def before_grad(self, n: int):
        """dpsgd: the weights the local gradient is computed at (averaged while it is computed)."""
        return self.fp.params if self.strategy.name == "dpsgd" else None

    def after_grad(self, n: int):
        """What to exchange once g^(n) is in ``fp.grads`` (None on a local step)."""
        s, fp = self.strategy, self.fp
        if s.payload == "grads":            # sync, ga: keep accumulating G_acc until n % p == 0
            return fp.grads if s.is_sync_step(n) else None
        if s.name == "dpsgd":
            return None
        self._apply(fp.grads)               # naive, ma: "apply local gradients" (local step)
        if s.is_sync_step(n):
            return fp.params                # "average weights of D_s and D_t"
        if s.name == "ma":                  # "then do average with D_sync"
            fp.params.add_(self.d_sync).mul_(0.5)
        return None

    def combine(self, n: int, mean: torch.Tensor) -> None:
        """Finish step n with ``mean``, the average over all ranks of the exchanged tensor."""
        s, fp = self.strategy, self.fp
        if s.payload == "grads":            # "average the accumulated gradients, then update D
            self._apply(mean)               #  and clear buffer G_acc"
        elif s.name == "dpsgd":             # x_i <- sum_j W_ij x_j - lr g_i(x_i)
            fp.params.copy_(mean)
            self._apply(fp.grads)
        else:
            fp.params.copy_(mean)
            if self.d_sync is not None:     # MA: "store the averaged model D_sync"
                self.d_sync.copy_(mean)

    def _apply(self, grad: torch.Tensor) -> None:
        """One optimizer step of D with ``grad`` as its gradient, then G_acc := 0."""
        if grad.data_ptr() != self.fp.grads.data_ptr():
            self.fp.grads.copy_(grad)
        self.opt.step()
        self.fp.zero_grad()
