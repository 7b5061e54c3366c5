"""The paper's rules, pure tensor arithmetic (no MPI, no communication): the variants of line 8,
Eq. 2 (the delay-compensated gradient), Eq. 12 (the choice of theta_t), the agent's own-iterate
history Eq. 2 reads, and lines 6-8 of Algorithm 1 (:class:`UpdateRule`).

Eq. 12, as implemented: the paper's words are "the prediction step is selected if it has the
larger cosine distance, which implies that the update due to the predicting step yields the larger
loss descent"; the printed inequality compares cosines with +g, whose sign reading would pick the
step that ascends. The default ("descent") reading chooses the predicting step when
``cos(x_pre - x_t, -g_i(x_t)) >= cos(x_cli - x_t, -g_i(x_t))`` (ties go to predicting; a zero
update has cosine 0); "printed" keeps the inequality as typeset, for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import topology
from ..errors import UsageError

# ----------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One way of setting theta_t in line 8. ``theta`` None: Eq. 12 criterion each step;
    ``compensate``: the predicting step uses Eq. 2 (False: D-ASGD's stale parameters as they are)."""
    name: str
    title: str
    theta: float | None
    compensate: bool = True
    criterion: str = "descent"

    @property
    def uses_unreliable(self) -> bool:
        """Whether the update ever reads unreliable neighbours' messages."""
        return self.theta is None or self.theta > 0


VARIANTS = {
    "pc": Variant("pc", "PC-ASGD", None),
    "p": Variant("p", "P-ASGD", 1.0),
    "c": Variant("c", "C-ASGD", 0.0),
    "dasgd": Variant("dasgd", "D-ASGD", 1.0, compensate=False),
}


CRITERIA = ("descent", "printed")


def get_variant(name: str, theta: float | None = None, criterion: str = "descent") -> Variant:
    """The variant by name; ``theta`` (only with "pc") fixes theta_t for the general line 8;
    ``criterion`` (only with "pc" and no theta) reads Eq. 12 as "descent" (default) or "printed"."""
    if name not in VARIANTS:
        raise UsageError(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})")
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}' (known: {', '.join(CRITERIA)})")
    if criterion != "descent":
        if name != "pc" or theta is not None:
            raise UsageError("--criterion chooses how Eq. 12 sets theta_t: only for --variant pc "
                             "without --theta")
        return Variant("pc", "PC-ASGD (Eq. 12 as printed)", None, criterion=criterion)
    if theta is None:
        return VARIANTS[name]
    if name != "pc":
        raise UsageError(f"--theta fixes theta for the general update (line 8) of --variant pc; "
                         f"--variant {name} has its own theta")
    if not 0.0 <= theta <= 1.0:
        raise UsageError(f"--theta must be in [0, 1], got {theta}")
    return Variant("pc", f"PC-ASGD (theta = {theta:g})", float(theta))


# ----------------------------------------------------------------------------------- the rules

def compensated_gradient(g_k: torch.Tensor, history_i, lam: float) -> torch.Tensor:
    """Eq. 2 for one unreliable neighbour k, written as the paper's sum (reference form):
    ``sum_{r=0}^{tau-1} g_k + lam g_k * g_k * (x^i_{t-tau+r} - x^i_{t-tau})``, where
    ``history_i = [x^i_{t-tau}, ..., x^i_{t-1}]`` (tau tensors). Allocates; for tests/reference."""
    base = history_i[0]
    out = torch.zeros_like(g_k)
    for x_r in history_i:
        out += g_k + lam * g_k * g_k * (x_r - base)
    return out


def descent_cosine(delta: torch.Tensor, g: torch.Tensor) -> float:
    """cos(delta, -g), the cosine of Eq. 12 read as descent; 0 when either vector is zero."""
    nd, ng = float(torch.linalg.vector_norm(delta)), float(torch.linalg.vector_norm(g))
    if nd == 0.0 or ng == 0.0:
        return 0.0
    return -float(torch.dot(delta, g)) / (nd * ng)


def criterion(cos_pre: float, cos_cli: float, reading: str = "descent") -> float:
    """Eq. 12. ``cos_pre``, ``cos_cli``: cosines of the two updates with -g (:func:`descent_cosine`).

    "descent" (the default, the paper's words): theta_t = 1 (predicting) if its update is at least
    as aligned with -g as the clipping step's, else 0 (clipping). "printed": the inequality as
    typeset, with the cosines taken with +g: predicting if cos(pre, g) >= cos(cli, g), i.e. if
    ``cos_pre <= cos_cli`` (the step that descends less); kept to compare the two readings."""
    if reading == "printed":
        return 1.0 if cos_pre <= cos_cli else 0.0
    return 1.0 if cos_pre >= cos_cli else 0.0


class ParamHistory:
    """The agent's own last ``tau`` iterates x_{t-tau} .. x_{t-1}, which Eq. 2 reads: a ring of
    ``tau`` flat copies (slot s mod tau holds x_s), filled by :meth:`push` at the end of each step."""

    def __init__(self, tau: int, numel: int, dtype, device):
        self.tau = tau
        self.ring = torch.zeros(tau, numel, dtype=dtype, device=device)
        self.count = 0  # iterates pushed so far (x_0 .. x_{count-1})

    def push(self, x: torch.Tensor) -> None:
        """Store x_t at the end of step t (t = number of pushes so far)."""
        self.ring[self.count % self.tau].copy_(x)
        self.count += 1

    def oldest(self) -> torch.Tensor:
        """x_{t-tau} at step t (valid once tau iterates were pushed)."""
        return self.ring[self.count % self.tau]

    def displacement(self, out: torch.Tensor) -> torch.Tensor:
        """``sum_{r=0}^{tau-1} (x_{t-tau+r} - x_{t-tau})`` into ``out``: the factor Eq. 2
        multiplies by ``lambda g (.) g``."""
        if self.count < self.tau:
            raise RuntimeError(f"history holds {self.count} iterates, Eq. 2 needs tau = {self.tau}")
        torch.sum(self.ring, 0, out=out)
        return out.add_(self.oldest(), alpha=-float(self.tau))


class UpdateRule:
    """Lines 6-8 of Algorithm 1 with Eq. 2 and Eq. 12 for agent ``i``: pure tensor arithmetic on
    flat buffers allocated once; no communication (the exchange: :mod:`mpidist.pcasgd.exchange`).

    ``__call__(t, x, g, d, rel, unrel, lr, out)``: ``x`` = x_t^i, ``g`` = g_i(x_t^i) (Eq. 12's
    gradient), ``d`` = the local descent direction of lines 6-7 (``g``, or a momentum buffer),
    ``rel`` = [x_t^j for j in R without i] in :attr:`reliable` order, ``unrel`` = [(x_{t-tau}^k,
    g_k(x_{t-tau}^k) or None) for k in R^c] in :attr:`unreliable` order, or None when none is
    available (t < tau). Writes x_{t+1} into ``out``, pushes x_t into the history and returns
    ``(theta_t, cos_pre, cos_cli)`` (cosines NaN when not computed).
    """

    def __init__(self, i: int, topo: topology.Topology, variant: Variant, lam: float,
                 numel: int, dtype=torch.float32, device="cpu"):
        self.i, self.variant, self.lam, self.tau = i, variant, float(lam), topo.tau
        self.reliable = topo.reliable_neighbours(i)
        self.unreliable = topo.unreliable_neighbours(i) if variant.uses_unreliable else []
        W, Wt = topo.W, topo.W_tilde
        self.w_self, self.wt_self = float(W[i, i]), float(Wt[i, i])
        self.w_rel = [float(W[i, j]) for j in self.reliable]
        self.wt_rel = [float(Wt[i, j]) for j in self.reliable]
        self.w_unrel = [float(W[i, k]) for k in self.unreliable]
        new = lambda: torch.zeros(numel, dtype=dtype, device=device)  # noqa: E731
        self.pre, self.cli, self.tmp = new(), new(), new()
        self.needs_grads = bool(self.unreliable) and variant.compensate and self.tau > 0
        if self.needs_grads:
            self.acc_g, self.acc_gg, self.disp = new(), new(), new()
            self.history = ParamHistory(self.tau, numel, dtype, device)
        else:
            self.history = None

    def predicting_available(self, t: int) -> bool:
        """Line 6 can be formed: no unreliable neighbour, or their step t - tau messages exist."""
        return not self.unreliable or t >= self.tau

    def clipping(self, x, d, rel, lr, out):
        """Line 7: ``sum_{j in R} w~_ij x_t^j - eta d`` into ``out``."""
        torch.mul(x, self.wt_self, out=out)
        for w, xj in zip(self.wt_rel, rel):
            out.add_(xj, alpha=w)
        return out.add_(d, alpha=-lr)

    def predicting(self, x, d, rel, unrel, lr, out):
        """Line 6 with Eq. 2 (D-ASGD: without it) into ``out``. By linearity the compensation of
        all unreliable neighbours is ``tau sum_k w_ik g_k + lam (sum_k w_ik g_k (.) g_k) (.) D``
        with D the displacement of i's own history (:meth:`ParamHistory.displacement`)."""
        torch.mul(x, self.w_self, out=out)
        for w, xj in zip(self.w_rel, rel):
            out.add_(xj, alpha=w)
        out.add_(d, alpha=-lr)
        if not self.unreliable:
            return out
        for w, (xk, _) in zip(self.w_unrel, unrel):
            out.add_(xk, alpha=w)
        if self.needs_grads:
            self.acc_g.zero_()
            self.acc_gg.zero_()
            for w, (_, gk) in zip(self.w_unrel, unrel):
                self.acc_g.add_(gk, alpha=w)
                self.acc_gg.addcmul_(gk, gk, value=w)
            self.history.displacement(self.disp)
            out.add_(self.acc_g, alpha=-lr * self.tau)
            out.addcmul_(self.acc_gg, self.disp, value=-lr * self.lam)
        return out

    def __call__(self, t, x, g, d, rel, unrel, lr, out):
        theta = self.variant.theta
        nan = float("nan")
        cos_pre = cos_cli = nan
        if not self.predicting_available(t) or unrel is None and self.unreliable:
            theta = 0.0  # nothing from unreliable neighbours yet: only the clipping step exists
        if theta is None or 0.0 < theta < 1.0:
            self.predicting(x, d, rel, unrel, lr, self.pre)
            self.clipping(x, d, rel, lr, self.cli)
            cos_pre = descent_cosine(torch.sub(self.pre, x, out=self.tmp), g)
            cos_cli = descent_cosine(torch.sub(self.cli, x, out=self.tmp), g)
            if theta is None:
                theta = criterion(cos_pre, cos_cli, self.variant.criterion)
            if theta == 1.0:
                out.copy_(self.pre)
            elif theta == 0.0:
                out.copy_(self.cli)
            else:
                torch.mul(self.pre, theta, out=out).add_(self.cli, alpha=1.0 - theta)
        elif theta == 1.0:
            self.predicting(x, d, rel, unrel, lr, out)
        else:
            self.clipping(x, d, rel, lr, out)
        if self.history is not None:
            self.history.push(x)
        return theta, cos_pre, cos_cli

