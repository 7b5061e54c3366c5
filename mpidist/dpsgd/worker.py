"""One D-PSGD worker's iteration (Algorithm 1 lines 2-5): post the model exchange, compute the
local stochastic gradient while the models fly, then mix and step.

Usable from a user's own training script: ``FlatParams(model)`` gives the model as one flat
buffer, ``Worker(comm, topology.build(n, (n,), "ring", 0, "metropolis"), rank, fp.numel)``, and
each iteration ``worker.step(fp.params, gradient, eta)`` with a ``gradient()`` that runs the
forward/backward pass and returns ``(fp.grads, anything)``.
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

    def step(self, x: torch.Tensor, gradient, eta: float):
        """One iteration, ``x`` (this worker's x_k, flat) updated in place to x_{k+1}:
        send x_k to the neighbours and receive theirs (line 4, nonblocking), ``gradient()`` ->
        ``(g, out)`` with g = g_i(x_k) (line 3, computed meanwhile), then
        ``x <- W_ii x + sum_j W_ij x_j - eta g`` (lines 4-5). Returns ``out`` (e.g. the loss)."""
        self.exchange.post(x)
        g, out = gradient()
        received = self.exchange.wait()
        rules.mix_into(x, self.w_self, zip(self.weights, received), g, eta)
        return out
