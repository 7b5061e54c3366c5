"""PC-ASGD: Predicting Clipping Asynchronous SGD over a graph of agents with delayed neighbours.

Paper 001 ("Asynchronous Training Schemes in Distributed Learning with Time Delay"): Algorithm 1,
Eq. (2) and Eq. (12). Run it with::

    mpirun -n 8 python -m mpidist.pcasgd                    # distributed network 1 in miniature
    mpirun -n 8 python -m mpidist.pcasgd --variant dasgd    # the D-ASGD baseline
    mpirun -n 8 python -m mpidist.pcasgd --show-topology    # print the clusters, W and W~, exit
    mpirun -n 8 python -m mpidist.pcasgd --preset cifar10-preresnet110 --data-root DIR   # paper

N agents sit on a graph (mpidist.topology) split into reliable clusters; a neighbour in the agent's
cluster is reliable (R, Def. 1), one in another cluster is unreliable (R^c, Def. 2) and its state
reaches the agent ``tau`` steps late. At step t agent i holds x_t^i and

- line 6, predicting step: ``x_pre = sum_{j in R} w_ij x_t^j - eta g_i(x_t^i)
  + sum_{k in R^c} w_ik (x_{t-tau}^k - eta g_k^dc(x_{t-tau}^k))`` (``R`` includes i itself),
- Eq. 2, the delay-compensated gradient of an unreliable neighbour, a Taylor expansion with the
  Hessian estimated by ``lambda g (.) g`` and k's unknown trajectory replaced by i's own:
  ``g_k^dc = sum_{r=0}^{tau-1} [g_k(x_{t-tau}^k) + lambda g_k (.) g_k (.) (x_{t-tau+r}^i -
  x_{t-tau}^i)]``; so x_{t-tau}^k - eta g_k^dc predicts x_t^k by tau compensated SGD steps,
- line 7, clipping step: ``x_cli = sum_{j in R} w~_ij x_t^j - eta g_i(x_t^i)``,
- line 8: ``x_{t+1} = theta_t x_pre + (1 - theta_t) x_cli``.

Variants (``--variant``): ``pc`` chooses theta_t in {0, 1} each step by Eq. 12; ``p`` (P-ASGD)
theta = 1; ``c`` (C-ASGD) theta = 0; ``dasgd`` (the D-ASGD baseline) uses the stale x_{t-tau}^k
as they are (theta = 1, no compensation). ``--theta`` fixes theta_t for the general line 8.

Eq. 12, as implemented: the paper's words are "the prediction step is selected if it has the
larger cosine distance, which implies that the update due to the predicting step yields the larger
loss descent"; the printed inequality compares cosines with +g, whose sign reading would pick the
step that ascends. We implement the descent reading: the predicting step is chosen when
``cos(x_pre - x_t, -g_i(x_t)) >= cos(x_cli - x_t, -g_i(x_t))`` (ties go to predicting; a zero
update has cosine 0). The choice of every agent at every step is logged (metric ``theta``).

The exchange (deterministic emulation of the paper's fixed delay, all through mpidist.comm):

- reliable neighbours: right after its update of step t-1 an agent sends x_t to them (channel
  ``params``, posted at step t-1); they are consumed at step t ("one step late"; the iterate used is
  the current x_t^j of line 6). They overlap with step t's forward/backward;
- unreliable neighbours: after its backward pass of step s an agent sends x_s (channel ``params``)
  and, when Eq. 2 needs it, g_s (channel ``grads``); they are consumed at step s + tau exactly,
  whenever they arrive. Receives are posted tau + 1 messages ahead into a ring of buffers; MPI's
  non-overtaking order makes message s land in slot s mod (tau + 1);
- every message carries its step stamp in one extra element; the consumer checks it and logs the
  staleness it actually used. A message that would be consumed after the last step is not sent
  (both sides know it), so every send has its receive. Variants that never read unreliable
  neighbours (C-ASGD, theta = 0) do not send to them; D-ASGD sends no gradients;
- during the first tau steps no unreliable message exists yet: agents with unreliable neighbours
  take the clipping step (theta_t = 0 is logged);
- with tau = 0 there is no delay: every neighbour is reliable (W~ = W) and every variant is plain
  decentralized SGD.

Every agent starts from the same x_0 (broadcast from rank 0, channel ``init``). Each agent keeps
the history x_{t-tau}^i .. x_{t-1}^i of its own parameters that Eq. 2 reads (a ring of tau copies).

Checkpoints (``--checkpoint-every``, ``--resume``, SIGUSR1 from the job templates, SIGTERM from
SLURM; mpidist.runtime): a checkpoint after step c holds, per agent, the model (parameters and
buffers), the data position, the own-iterate history, the momentum buffer and every message that
arrived but is consumed after step c; a resumed job re-posts the receives of later messages and
continues exactly as the uninterrupted run would. The stop signal is looked at every 10 steps (an
allreduce over all ranks, not done every step so as not to couple the clusters).

Metrics in the trace (per rank, per step unless said): ``loss`` (local mini-batch), ``theta``
(theta_t used: 1 predicting, 0 clipping, or the fixed value), ``cos_pre`` / ``cos_cli`` (Eq. 12's
cosines with -g, when both steps were formed), ``staleness_reliable`` / ``staleness_unreliable``
(consuming step minus the step stamped in the message, largest over the neighbours of that class
consumed in the step; 1 and tau), ``lr``; at evaluation steps ``test_acc``, ``test_loss`` and
``consensus_dist`` (||x^i - mean_j x^j||, an allreduce on channel ``eval``).
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

from . import data as data_mod
from . import checkpoint, models, runtime, topology
from .comm import FlatParams, waitall
from .errors import UsageError
from .metrics import evaluate

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
    flat buffers allocated once; no communication (see :class:`Agent` for the exchange).

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


# ----------------------------------------------------------------------------------- exchange

TAG_RELIABLE, TAG_UNRELIABLE_PARAMS, TAG_UNRELIABLE_GRADS = 301, 302, 303
_STAMP_LIMIT = {torch.float32: 1 << 24, torch.float64: 1 << 53}


class Mailbox:
    """Messages from one neighbour, consumed exactly ``lag`` steps after the step stamped in them.

    Message ``s`` (stamps ``first`` .. ``last``) holds one tensor per channel, each ``numel``
    values plus the stamp. ``lag + 1`` slots: receives are posted ahead (message s into slot
    s mod (lag + 1)); :meth:`take` at step t waits for message t - lag, checks its stamp and
    :meth:`release` re-posts the slot for message t + 1. MPI's non-overtaking rule (same source,
    tag and communicator) makes the n-th posted receive get the n-th sent message.

    ``resume=(c, saved)``: continue after step c from a checkpoint; ``saved`` maps the stamps that
    had arrived but were not consumed yet (:meth:`snapshot`) to their buffers.
    """

    def __init__(self, comm, peer: int, channels, numel: int, dtype, device, lag: int,
                 first: int, last: int, resume=None):
        self.comm, self.peer, self.channels, self.numel = comm, peer, list(channels), numel
        self.lag, self.first, self.last = lag, first, last
        self.slots = lag + 1
        self.bufs = [[torch.zeros(numel + 1, dtype=dtype, device=device) for _ in self.channels]
                     for _ in range(self.slots)]
        self.handles: list = [None] * self.slots
        c, saved = resume if resume is not None else (first - 1, {})
        w0, w1 = self._window(c)
        for s in range(w0, w1 + 1):
            if s <= c:  # arrived before the checkpoint: restore it
                k = s % self.slots
                for b, v in zip(self.bufs[k], saved[s]):
                    b.copy_(v)
                self.handles[k] = []
            else:
                self._post(s)

    def _window(self, c: int) -> tuple[int, int]:
        """The stamps held or awaited after step c: from the next one to consume to the last
        posted ahead."""
        w0 = max(self.first, c + 1 - self.lag)
        return w0, min(w0 + self.slots - 1, self.last)

    def snapshot(self, c: int) -> dict:
        """After step c: the messages sent up to step c and not consumed yet, {stamp: [buffers]}
        (waits for them: their senders posted them by step c)."""
        w0, w1 = self._window(c)
        out = {}
        for s in range(w0, min(c, w1) + 1):
            k = s % self.slots
            waitall(self.handles[k])
            out[s] = [b.clone() for b in self.bufs[k]]
        return out

    def _post(self, s: int) -> None:
        k = s % self.slots
        assert self.handles[k] is None, "mailbox slot re-posted before it was consumed"
        self.handles[k] = [self.comm.irecv(b, self.peer, tag, name)
                           for b, (name, tag) in zip(self.bufs[k], self.channels)]

    def take(self, t: int):
        """The message of step t - lag: (list of views, one per channel, stamp). Blocks until it
        has arrived; raises if the stamp inside is not t - lag."""
        s = t - self.lag
        if not self.first <= s <= self.last:
            raise RuntimeError(f"no message {s} from agent {self.peer} (stamps {self.first}.."
                               f"{self.last})")
        k = s % self.slots
        waitall(self.handles[k])
        stamps = torch.stack([b[self.numel] for b in self.bufs[k]]).tolist()
        if any(int(v) != s for v in stamps):
            raise RuntimeError(f"step {t}: message from agent {self.peer} carries stamps {stamps}, "
                               f"expected {s} (lag {self.lag})")
        return [b[:self.numel] for b in self.bufs[k]], s

    def release(self, t: int) -> None:
        """After the message of step t - lag was used: post the receive of message t + 1."""
        s = t - self.lag
        k = s % self.slots
        self.handles[k] = None
        nxt = s + self.slots
        if nxt <= self.last:
            self._post(nxt)

    def pending(self) -> int:
        return sum(h is not None for h in self.handles)

    def withdraw(self) -> None:
        """Stopping early (a stop signal): cancel the receives posted ahead for later steps, so that
        no request is left pending at the end (a matched one completes as usual)."""
        for k, hs in enumerate(self.handles):
            if hs is not None:
                for h in hs:
                    h.cancel()
                self.handles[k] = None


class Outbox:
    """Send buffers (numel values + stamp) that stay untouched until every send from them is done:
    one copy per message step however many neighbours receive it, no allocation once warm."""

    def __init__(self, comm, numel: int, dtype, device):
        self.comm, self.numel, self.dtype, self.device = comm, numel, dtype, device
        self.free: list = []
        self.busy: list = []

    def _recycle(self) -> None:
        still = []
        for buf, hs in self.busy:
            if all(h.test() for h in hs):
                self.free.append(buf)
            else:
                still.append((buf, hs))
        self.busy = still

    def send(self, src: torch.Tensor, stamp: int, dests, tag: int, channel: str) -> None:
        if not dests:
            return
        self._recycle()
        buf = self.free.pop() if self.free else torch.empty(self.numel + 1, dtype=self.dtype,
                                                             device=self.device)
        buf[:self.numel].copy_(src)
        buf[self.numel] = stamp
        hs = [self.comm.isend(buf, d, tag, channel, snapshot=False) for d in dests]
        self.busy.append((buf, hs))

    def drain(self) -> None:
        for _, hs in self.busy:
            waitall(hs)
        self.free += [b for b, _ in self.busy]
        self.busy = []


@dataclass
class StepInfo:
    """What an agent did at one step (also logged as metrics)."""
    theta: float
    cos_pre: float
    cos_cli: float
    staleness_reliable: int | None
    staleness_unreliable: int | None


class Agent:
    """Agent ``i`` of Algorithm 1: its :class:`UpdateRule` and its nonblocking exchange.

    ``comm``: an object with ``isend(t, dest, tag, channel, snapshot)`` / ``irecv(t, src, tag,
    channel)`` returning handles with ``wait``/``test`` (mpidist.comm.Communicator, or a test
    double); ``steps``: T, known to every agent so that no message is sent that nobody consumes.
    ``metric(step, name, value)`` receives the per-step metrics (or None).

    Use: ``start(x_0)``; then for t in 0..T-1: compute g_i(x_t) (the reliable x_t^j are in flight
    meanwhile), ``step(t, x, g, lr)`` (x updated in place to x_{t+1}); finally ``finish()``.
    """

    def __init__(self, comm, topo: topology.Topology, i: int, variant: Variant, lam: float,
                 steps: int, numel: int, dtype=torch.float32, device="cpu", momentum: float = 0.0,
                 metric=None, resume=None):
        if steps + 1 >= _STAMP_LIMIT.get(dtype, 1 << 11):
            raise UsageError(f"{steps} steps do not fit the step stamps of {dtype} messages")
        self.comm, self.i, self.steps, self.numel = comm, i, steps, numel
        self.tau, self.variant, self.momentum = topo.tau, variant, momentum
        self.metric = metric or (lambda *a: None)
        self.rule = UpdateRule(i, topo, variant, lam, numel, dtype, device)
        self.reliable, self.unreliable = self.rule.reliable, self.rule.unreliable
        # what this agent sends: x_{t+1} to reliable neighbours after its update (stamps -1..T-2);
        # x_s (and g_s) to unreliable neighbours after its backward of step s, for s + tau <= T-1.
        # Sender and receiver derive the same plan from the variant and the topology.
        self.send_unreliable = topo.unreliable_neighbours(i) if variant.uses_unreliable else []
        self.send_grads = variant.compensate and topo.tau > 0
        c, st = resume if resume is not None else (None, None)
        self.resumed = resume is not None
        self.rel_box = [Mailbox(comm, j, [("params", TAG_RELIABLE)], numel, dtype, device, 1,
                                -1, steps - 2, None if st is None else (c, st["reliable"][n]))
                        for n, j in enumerate(self.reliable)]
        ch = [("params", TAG_UNRELIABLE_PARAMS)]
        if self.rule.needs_grads:
            ch.append(("grads", TAG_UNRELIABLE_GRADS))
        self.unrel_box = [Mailbox(comm, k, ch, numel, dtype, device, topo.tau, 0,
                                  steps - 1 - topo.tau,
                                  None if st is None else (c, st["unreliable"][n]))
                          for n, k in enumerate(self.unreliable)]
        self.out = Outbox(comm, numel, dtype, device)
        self.next = torch.zeros(numel, dtype=dtype, device=device)
        self.velocity = torch.zeros(numel, dtype=dtype, device=device) if momentum else None
        if st is not None:
            if self.velocity is not None:
                self.velocity.copy_(st["velocity"])
            h = self.rule.history
            if h is not None:
                h.ring.copy_(st["history"])
                h.count = st["history_count"]

    def state_dict(self, c: int) -> dict:
        """Everything needed to continue after step c (a checkpoint): the messages that arrived
        but are consumed later, the own-iterate history of Eq. 2 and the momentum buffer. Waits
        for this agent's sends to complete, so that nothing is in flight from it."""
        self.out.drain()
        h = self.rule.history
        return {"step": c,
                "reliable": [b.snapshot(c) for b in self.rel_box],
                "unreliable": [b.snapshot(c) for b in self.unrel_box],
                "history": None if h is None else h.ring.clone(),
                "history_count": 0 if h is None else h.count,
                "velocity": None if self.velocity is None else self.velocity.clone()}

    def start(self, x0: torch.Tensor) -> None:
        """Send x_0 to the reliable neighbours (stamp -1: consumed at step 0); nothing when
        resuming (the checkpoint holds what was in flight)."""
        if self.resumed:
            return
        old = getattr(self.comm, "step", 0)
        self.comm.step = -1
        if self.steps >= 1:
            self.out.send(x0, -1, self.reliable, TAG_RELIABLE, "params")
        self.comm.step = old

    def step(self, t: int, x: torch.Tensor, g: torch.Tensor, lr: float) -> StepInfo:
        """Step t: send to unreliable neighbours, consume what is due, update x to x_{t+1} in
        place (lines 6-8), send x_{t+1} to reliable neighbours."""
        if t + self.tau <= self.steps - 1 and self.send_unreliable:
            self.out.send(x, t, self.send_unreliable, TAG_UNRELIABLE_PARAMS, "params")
            if self.send_grads:
                self.out.send(g, t, self.send_unreliable, TAG_UNRELIABLE_GRADS, "grads")
        d = g
        if self.velocity is not None:  # heavy-ball on the local term (an extension; 0 = paper)
            d = self.velocity.mul_(self.momentum).add_(g)
        rel, st_rel = [], None
        for box in self.rel_box:
            (xj,), s = box.take(t)
            rel.append(xj)
            st_rel = max(st_rel or 0, t - s)
        unrel, st_unrel = None, None
        if self.unrel_box and t >= self.tau:
            unrel = []
            for box in self.unrel_box:
                msg, s = box.take(t)
                unrel.append((msg[0], msg[1] if len(msg) > 1 else None))
                st_unrel = max(st_unrel or 0, t - s)
        theta, cp, cc = self.rule(t, x, g, d, rel, unrel, lr, self.next)
        for box in self.rel_box:
            box.release(t)
        if unrel is not None:
            for box in self.unrel_box:
                box.release(t)
        x.copy_(self.next)
        if t <= self.steps - 2:
            self.out.send(x, t, self.reliable, TAG_RELIABLE, "params")
        m = self.metric
        m(t, "theta", theta)
        if not math.isnan(cp):
            m(t, "cos_pre", cp)
            m(t, "cos_cli", cc)
        if st_rel is not None:
            m(t, "staleness_reliable", st_rel)
        if st_unrel is not None:
            m(t, "staleness_unreliable", st_unrel)
        return StepInfo(theta, cp, cc, st_rel, st_unrel)

    def stop_early(self) -> None:
        """After the checkpoint of a stop signal: withdraw the receives posted ahead and complete
        every send (the peers posted their receives for them, up to the same step)."""
        for box in self.rel_box + self.unrel_box:
            box.withdraw()
        self.out.drain()

    def finish(self) -> None:
        """Complete every send (all receives were consumed by the last step)."""
        left = sum(b.pending() for b in self.rel_box + self.unrel_box)
        if left:
            raise RuntimeError(f"agent {self.i}: {left} receives still posted after the last step")
        self.out.drain()


# ----------------------------------------------------------------------------------- training

#: The papers' settings (Sec. 5.2) with one flag. Training details follow bearpaw's
#: pytorch-classification [30], which the paper cites for its CIFAR settings (its Appendix E with
#: the exact values is not in our copy): SGD with momentum 0.9, weight decay 1e-4, learning rate 0.1
#: divided by 10 at 50% and 75% of the epochs, random crop and horizontal flip.
PRESETS = {
    "cifar10-preresnet110": dict(data="cifar10", model="preresnet110", batch_size=128, lr=0.1,
                                 momentum=0.9, weight_decay=1e-4, epochs=164,
                                 lr_decay_epochs="81,122", augment=True),
    "cifar100-preresnet110": dict(data="cifar100", model="preresnet110", batch_size=128, lr=0.1,
                                  momentum=0.9, weight_decay=1e-4, epochs=164,
                                  lr_decay_epochs="81,122", augment=True),
    "cifar10-densenet": dict(data="cifar10", model="densenet", batch_size=64, lr=0.1,
                             momentum=0.9, weight_decay=1e-4, epochs=300,
                             lr_decay_epochs="150,225", augment=True),
    "cifar100-densenet": dict(data="cifar100", model="densenet", batch_size=64, lr=0.1,
                              momentum=0.9, weight_decay=1e-4, epochs=300,
                              lr_decay_epochs="150,225", augment=True),
}

DEFAULT_STEPS = 900


def augment_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per image (the CIFAR
    augmentation of the presets)."""
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    di = torch.randint(0, 2 * pad + 1, (n,), device=dev)
    dj = torch.randint(0, 2 * pad + 1, (n,), device=dev)
    rows = (di[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = xp[torch.arange(n, device=dev)[:, None, None, None],
             torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, device=dev) < 0.5)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


def lr_at(t: int, args, steps_per_epoch: int) -> float:
    """Learning rate eta at step t: ``--lr`` times ``--lr-decay`` per passed decay epoch."""
    epoch = t / steps_per_epoch
    k = sum(epoch >= e for e in args.lr_decay_epochs)
    return args.lr * args.lr_decay ** k


def _epochs_list(s: str):
    if s is None or s == "":
        return []
    try:
        epochs = sorted(float(v) for v in str(s).split(","))
    except ValueError:
        raise UsageError(f"--lr-decay-epochs {s}: expected comma-separated epochs such as 81,122") \
            from None
    if epochs[0] <= 0:
        raise UsageError(f"--lr-decay-epochs {s}: every epoch must be > 0 (eta starts at --lr)")
    return epochs


def _lam(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"lambda of Eq. 2 must be in (0, 1], got {s}")
    return v


def build_parser():
    p = runtime.parser("pcasgd", __doc__)
    g = p.add_argument_group("PC-ASGD (paper 001: Algorithm 1, Eq. 2, Eq. 12)")
    g.add_argument("--variant", choices=list(VARIANTS), default="pc",
                   help="pc: PC-ASGD, theta_t by the criterion of Eq. 12; p: P-ASGD (theta = 1, "
                        "predicting only); c: C-ASGD (theta = 0, clipping only); dasgd: the "
                        "D-ASGD baseline (stale neighbour parameters used as they are) "
                        "(default pc)")
    g.add_argument("--theta", type=runtime.unit_float, default=None,
                   help="fix the tradeoff parameter theta_t in [0, 1] of line 8 (with --variant pc; "
                        "default: chosen each step by Eq. 12)")
    g.add_argument("--criterion", choices=CRITERIA, default="descent",
                   help="how --variant pc reads Eq. 12: descent (default; predicting when its update "
                        "is at least as aligned with -g as clipping's, as the paper's text says) or "
                        "printed (the inequality as typeset, cosines with +g)")
    g.add_argument("--delay", type=runtime.nonneg_int, default=20, metavar="TAU",
                   help="tau, the delay in steps of unreliable neighbours (Def. 2), exactly "
                        "emulated; 0: no delay, every neighbour reliable (default 20)")
    g.add_argument("--lam", type=_lam, default=0.5, metavar="LAMBDA",
                   help="lambda of Eq. 2, the scale of the Hessian estimate lambda g (.) g, in "
                        "(0, 1] (default 0.5)")
    g.add_argument("--lr", type=runtime.positive_float, default=0.1, metavar="ETA",
                   help="eta, the learning rate of lines 6-7 (default 0.1)")
    g.add_argument("--lr-decay-epochs", type=_epochs_list, default=[],
                   help="epochs at which eta is multiplied by --lr-decay, e.g. 81,122 (default none)")
    g.add_argument("--lr-decay", type=runtime.positive_float, default=0.1,
                   help="factor applied to eta at each --lr-decay-epochs entry (default 0.1)")
    g.add_argument("--momentum", type=runtime.nonneg_float, default=0.0,
                   help="heavy-ball momentum on the local gradient term of lines 6-7; not part of "
                        "Algorithm 1 (default 0 = the paper's update)")
    g.add_argument("--weight-decay", type=runtime.nonneg_float, default=0.0,
                   help="L2 weight decay added to g_i (default 0)")
    g.add_argument("--batch-size", type=runtime.positive_int, default=16,
                   help="mini-batch per agent (default 16)")
    g.add_argument("--steps", type=runtime.positive_int, default=None, metavar="T",
                   help=f"number of iterations t (default {DEFAULT_STEPS}, or from --epochs)")
    g.add_argument("--epochs", type=runtime.positive_float, default=None,
                   help="train this many passes over each agent's shard instead of --steps")
    g.add_argument("--eval-every", type=runtime.nonneg_int, default=0, metavar="STEPS",
                   help="every agent evaluates on the test set every this many steps "
                        "(default 0: ten times per run; always at the end)")
    g.add_argument("--model", default="cnn",
                   help=f"network (default cnn; known: {', '.join(sorted(models.MODELS))})")
    g.add_argument("--augment", action="store_true",
                   help="random crop (padding 4) and horizontal flip of training images")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the paper's settings (Sec. 5.2) in one flag: dataset, network, batch "
                        "size, learning rate and schedule, epochs; explicit flags override them "
                        "(needs --data-root with the dataset; runs on GPU when present)")
    t = p.add_argument_group("topology (Sec. 5.2; mpidist.topology)")
    t.add_argument("--clusters", default=None, metavar="SIZES",
                   help="sizes of the reliable clusters of consecutive ranks, e.g. 3,5; their sum "
                        "must equal the number of ranks (default: the paper's network for 5, 8 or "
                        "20 agents: 3,2 / 3,5 / 6,6,6,2)")
    t.add_argument("--graph", choices=topology.GRAPHS, default="full",
                   help="the graph of agents: full (fully connected, the paper's) or ring "
                        "(default full)")
    t.add_argument("--mixing", choices=topology.MIXINGS, default="lazy",
                   help="mixing matrices W, W~: lazy = (I + Metropolis-Hastings)/2 (Assumption 2 "
                        "in full: symmetric, doubly stochastic, I >= W > 0) or metropolis (plain "
                        "averaging on the full graph) (default lazy)")
    t.add_argument("--show-topology", action="store_true",
                   help="print the clusters, neighbours, W and W~ (Assumption 2) and exit")
    data_mod.add_arguments(p)
    return p


def _with_preset(p, argv):
    """Apply ``--preset``'s values as defaults, so that explicit flags still override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for k, a in enumerate(argv):
        name = None
        if a == "--preset" and k + 1 < len(argv):
            name = argv[k + 1]
        elif a.startswith("--preset="):
            name = a.split("=", 1)[1]
        if name in PRESETS:
            d = dict(PRESETS[name])
            d["lr_decay_epochs"] = _epochs_list(d["lr_decay_epochs"])
            if any(x == "--steps" or x.startswith("--steps=") for x in argv):
                del d["epochs"]  # an explicit --steps replaces the preset's epochs
            p.set_defaults(**d)
    return argv


def check(args, world: int) -> str | None:
    """Every rank alike: the clusters must fit the world size, --theta only with pc."""
    clusters = None if args.clusters is None else topology.parse_clusters(args.clusters)
    topology.build(world, clusters, args.graph, args.delay, args.mixing)  # raises TopologyError
    get_variant(args.variant, args.theta, args.criterion)
    if args.steps is not None and args.epochs is not None:
        return "give --steps or --epochs, not both"
    return None


# what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "epochs", "eval_every", "show_topology"})


def main(argv=None) -> None:
    p = build_parser()
    argv = _with_preset(p, argv)
    with runtime.start("pcasgd", p, argv, check=check,
                       may_change=RESUME_MAY_CHANGE) as run:
        train(run)


def train(run) -> None:
    a, comm, rank, n, dev = run.args, run.comm, run.rank, run.world_size, run.device
    clusters = None if a.clusters is None else topology.parse_clusters(a.clusters)
    topo = topology.build(n, clusters, a.graph, a.delay, a.mixing)
    if a.show_topology:
        run.say(topo.describe())
        return
    variant = get_variant(a.variant, a.theta, a.criterion)
    t_start = time.perf_counter()

    train_ds = data_mod.load(a.data, a.data_root, a.download, True, a.image_size)
    test_ds = data_mod.load(a.data, a.data_root, a.download, False, a.image_size)
    shard = data_mod.Shard(train_ds, rank, n, a.batch_size, a.seed, dev)
    steps_per_epoch = max(1, (len(train_ds) // n) // a.batch_size)
    steps = a.steps or (max(1, round(a.epochs * steps_per_epoch)) if a.epochs else DEFAULT_STEPS)
    eval_every = a.eval_every or max(1, steps // 10)
    test_x, test_y = test_ds.x.to(dev), test_ds.y.to(dev)

    model = models.build(a.model, train_ds.shape, train_ds.num_classes).to(dev)
    fp = FlatParams(model)
    saved, first = run.resumed_state, run.start_step
    chosen = [0.0, 0]  # sum and count of theta_t after the first tau steps (the summary's share)
    if saved is None:
        comm.ibcast(fp.params, 0, "init").wait()  # line 1: every agent starts from the same x_0
    else:  # --resume: all ranks continue after step first - 1 (the runtime restored the RNGs)
        def restore():
            model.load_state_dict(saved["model"])
            shard.load_state_dict(saved["shard"])
        checkpoint.restore(comm, restore)  # another --model: one line, not a traceback
        chosen = list(saved["chosen"])
    agent = Agent(comm, topo, rank, variant, a.lam, steps, fp.numel, fp.params.dtype, dev,
                  a.momentum, run.metric,
                  resume=None if saved is None else (first - 1, saved["agent"]))
    run.say(f"{variant.title} on {topo.name}",
            f"{a.model} ({fp.numel} parameters) on {a.data}: {len(train_ds)} training images "
            f"split over {n} agents, batch {a.batch_size}, {steps} steps "
            f"({steps / steps_per_epoch:.1f} epochs), eta {a.lr:g}, lambda {a.lam:g}")
    run.log.debug("agent %d: reliable %s unreliable %s", rank, agent.reliable, agent.unreliable)

    agent.start(fp.params)
    lr_prev, acc = None, float("nan")
    state = lambda t: {"model": model.state_dict(), "shard": shard.state_dict(),  # noqa: E731
                       "agent": agent.state_dict(t), "chosen": tuple(chosen)}
    every = a.checkpoint_every
    for t in range(first, steps):
        lr = lr_at(t, a, steps_per_epoch)
        if lr != lr_prev:
            run.metric(t, "lr", lr)
            lr_prev = lr
        xb, yb = shard.next()
        if a.augment:
            xb = augment_crop_flip(xb)
        fp.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        if a.weight_decay:
            fp.grads.add_(fp.params, alpha=a.weight_decay)
        info = agent.step(t, fp.params, fp.grads, lr)
        if t >= a.delay:
            chosen[0] += info.theta
            chosen[1] += 1
        loss_v = loss.item()
        run.metric(t, "loss", loss_v)
        if (t + 1) % eval_every == 0 or t == steps - 1:
            acc, tl = evaluate(model, test_x, test_y, device=dev)
            run.metric(t, "test_acc", acc)
            run.metric(t, "test_loss", tl)
            mean = fp.params.clone()
            comm.iallreduce(mean, "avg", "eval").wait()
            run.metric(t, "consensus_dist", float(torch.linalg.vector_norm(fp.params - mean)))
        shown = {"loss": loss_v, "theta": info.theta}
        if not math.isnan(acc):
            shown["test_acc"] = acc
        run.progress(t + 1, steps, **shown)
        run.step_done(t)
        # checkpoints (--checkpoint-every) and the stop signal (SIGUSR1/SIGTERM): the runtime
        # agrees on them with an allreduce over all ranks, which would couple the clusters every
        # step; asked every 10 steps (and on the --checkpoint-every steps) instead
        if ((t + 1) % 10 == 0 or (every and (t + 1) % every == 0)) and t < steps - 1:
            if run.checkpoint(t, lambda: state(t)):
                agent.stop_early()  # stopped by the signal: withdraw the receives posted ahead
                return
    agent.finish()

    # the summary: every agent's final test accuracy (the paper's metric: the agents' average)
    acc, tl = evaluate(model, test_x, test_y, device=dev)
    row = torch.zeros(n, 3, dtype=torch.float64)
    row[rank] = torch.tensor([acc, tl, chosen[0] / chosen[1] if chosen[1] else float("nan")])
    comm.iallreduce(row, "sum", "eval").wait()
    accs = row[:, 0].numpy() * 100
    wall = time.perf_counter() - t_start
    run.trace.set_attrs(final_test_acc=[float(v) for v in accs], wall_seconds=wall)
    pred = row[:, 2].numpy()
    pred_txt = ("" if np.isnan(pred).all() else
                f"; predicting step chosen in {100 * np.nanmean(pred):.0f}% of the agent-steps "
                f"after the first tau")
    run.say(f"{variant.title}, tau {topo.tau}: test accuracy of the {n} agents "
            f"{accs.mean():.2f} +- {accs.std():.2f} % (mean +- std; min {accs.min():.2f}, "
            f"max {accs.max():.2f}){pred_txt}",
            f"per agent: {' '.join(f'{v:.1f}' for v in accs)}",
            f"{steps - first} steps in {wall:.1f} s" + (f" (resumed after step {first - 1})"
                                                        if first else ""))


if __name__ == "__main__":
    main()
