"""The agent of Algorithm 1: step t of agent i, its update rule (lines 6-8, Eq. 2, Eq. 12) fed by
its exchange with the reliable and unreliable neighbours."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import topology
from .exchange import Exchange
from .rules import UpdateRule, Variant


@dataclass
class StepInfo:
    """What an agent did at one step (also logged as metrics)."""
    theta: float
    cos_pre: float
    cos_cli: float
    staleness_reliable: int | None
    staleness_unreliable: int | None


class Agent:
    """Agent ``i`` of Algorithm 1: its :class:`~mpidist.pcasgd.rules.UpdateRule` and its nonblocking
    :class:`~mpidist.pcasgd.exchange.Exchange`.

    ``comm``: an object with ``isend(t, dest, tag, channel, snapshot)`` / ``irecv(t, src, tag,
    channel)`` returning handles with ``wait``/``test`` (mpidist.comm.Communicator, or a test
    double); ``steps``: T, known to every agent so that no message is sent that nobody consumes.
    ``momentum``: heavy-ball on the local gradient term (0 = the paper's update).
    ``metric(step, name, value)`` receives the per-step metrics (or None). ``resume=(c, saved)``:
    continue after step c from :meth:`state_dict`.

    Use: ``start(x_0)``; then for t in 0..T-1: compute g_i(x_t) (the reliable x_t^j are in flight
    meanwhile), ``step(t, x, g, lr)`` (x updated in place to x_{t+1}); finally ``finish()``.
    """

    def __init__(self, comm, topo: topology.Topology, i: int, variant: Variant, lam: float,
                 steps: int, numel: int, dtype=torch.float32, device="cpu", momentum: float = 0.0,
                 metric=None, resume=None):
        self.comm, self.i, self.steps, self.numel = comm, i, steps, numel
        self.tau, self.variant, self.momentum = topo.tau, variant, momentum
        self.metric = metric or (lambda *a: None)
        self.rule = UpdateRule(i, topo, variant, lam, numel, dtype, device)
        self.reliable, self.unreliable = self.rule.reliable, self.rule.unreliable
        self.exchange = Exchange(comm, topo, i, variant, self.rule, steps, numel, dtype, device,
                                 resume)
        self.next = torch.zeros(numel, dtype=dtype, device=device)
        self.velocity = torch.zeros(numel, dtype=dtype, device=device) if momentum else None
        st = resume[1] if resume is not None else None
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
        h = self.rule.history
        return {"step": c, **self.exchange.state_dict(c),
                "history": None if h is None else h.ring.clone(),
                "history_count": 0 if h is None else h.count,
                "velocity": None if self.velocity is None else self.velocity.clone()}

    def start(self, x0: torch.Tensor) -> None:
        """Send x_0 to the reliable neighbours (consumed at step 0); nothing when resuming."""
        self.exchange.start(x0)

    def step(self, t: int, x: torch.Tensor, g: torch.Tensor, lr: float) -> StepInfo:
        """Step t: send to unreliable neighbours, consume what is due, update x to x_{t+1} in
        place (lines 6-8), send x_{t+1} to reliable neighbours."""
        ex = self.exchange
        ex.send_own(t, x, g)
        d = g
        if self.velocity is not None:  # heavy-ball on the local term (an extension; 0 = paper)
            d = self.velocity.mul_(self.momentum).add_(g)
        rel, st_rel = ex.take_reliable(t)
        unrel, st_unrel = ex.take_unreliable(t)
        out = ex.update_buffer(t)  # x_{t+1} written straight into its send buffer
        if out is None:
            out = self.next
        theta, cp, cc = self.rule(t, x, g, d, rel, unrel, lr, out)
        ex.release(t, unrel is not None)
        x.copy_(out)
        ex.send_update(t, x)
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
        """After the checkpoint of a stop signal: withdraw the receives posted ahead, complete
        every send."""
        self.exchange.stop_early()

    def settle(self, c: int) -> None:
        """End the exchange after step c when the plan went further (:meth:`Exchange.settle`):
        nothing is left in flight."""
        self.exchange.settle(c)

    def finish(self) -> None:
        """Complete every send (all receives were consumed by the last step)."""
        self.exchange.finish()
