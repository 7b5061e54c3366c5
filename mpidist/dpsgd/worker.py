"""One D-PSGD worker's iteration (Algorithm 1 lines 2-5): post the model exchange, compute the
local stochastic gradient while the models fly, then mix and step.

:meth:`Worker.step` does the whole iteration around a ``gradient()`` callback; :meth:`Worker.post`,
:meth:`Worker.wait` and :meth:`Worker.mix` are its three parts, which the optimizer of a user's
script (:class:`mpidist.dpsgd.DPSGD`) calls around the user's own forward/backward pass.
"""
from __future__ import annotations

import torch

from . import rules
from .exchange import NeighbourExchange


class Worker:
    """Worker ``i`` of the graph ``topo`` (a :class:`mpidist.topology.Topology`): its row of W
    (``w_self`` = W_ii, ``weights`` = W_ij for ``peers`` = its neighbours in rank order) and its
    :class:`NeighbourExchange`."""

    def __init__(self, comm, topo, i: int, numel: int, dtype=torch.float32, device="cpu"):
        self.i = i
        self.peers = topo.neighbours(i)
        self.w_self = float(topo.W[i, i])
        self.weights = [float(topo.W[i, j]) for j in self.peers]
        self.exchange = NeighbourExchange(comm, self.peers, numel, dtype, device)

    def post(self, x: torch.Tensor) -> None:
        """Line 4, first half: send x_k (a snapshot) to the neighbours, post their receives."""
        self.exchange.post(x)

    def wait(self) -> list[torch.Tensor]:
        """Line 4, second half: the neighbours' x_k, in the order of ``peers``."""
        return self.exchange.wait()

    def mix(self, x: torch.Tensor, received, g: torch.Tensor | None, eta: float) -> torch.Tensor:
        """Lines 4-5 in place: ``x <- W_ii x + sum_j W_ij x_j - eta g`` (``g=None``: the mix
        only)."""
        return rules.mix_into(x, self.w_self, zip(self.weights, received), g, eta)

    def step(self, x: torch.Tensor, gradient, eta: float):
        """One iteration, ``x`` (this worker's x_k, flat) updated in place to x_{k+1}:
        send x_k to the neighbours and receive theirs (line 4, nonblocking), ``gradient()`` ->
        ``(g, out)`` with g = g_i(x_k) (line 3, computed meanwhile), then
        ``x <- W_ii x + sum_j W_ij x_j - eta g`` (lines 4-5). Returns ``out`` (e.g. the loss)."""
        self.post(x)
        g, out = gradient()
        self.mix(x, self.wait(), g, eta)
        return out
