"""What D-PSGD moves, to whom and when, through :mod:`mpidist.comm` only.

- ``init``: x_0 from rank 0 to every worker (one broadcast), so that all start alike
  (Algorithm 1's input: the same initial point on every worker).
- ``params``: every iteration k, worker i sends its x_{k,i} to each neighbour j of the graph and
  receives each neighbour's x_{k,j} (Algorithm 1 line 4). :class:`NeighbourExchange` posts the
  receives and the sends (from a snapshot of x_k) before the gradient is computed and waits for
  them after it: the models fly while the worker computes. Every message is exactly the model,
  ``numel`` values (no stamp: iterations are matched in order, one message per neighbour and
  iteration, on one tag).
- ``eval``: the mean model over all workers (an allreduce) for the consensus distance
  ||x_i - x_bar|| and the summary.
"""
from __future__ import annotations

import torch

from ..comm import aligned_empty, waitall

TAG_PARAMS = 41


def broadcast_init(comm, x: torch.Tensor) -> None:
    """Every worker's ``x`` becomes rank 0's (channel ``init``)."""
    comm.ibcast(x, 0, "init").wait()


def mean_model(comm, x: torch.Tensor) -> torch.Tensor:
    """x_bar = mean over the workers of ``x`` (a new tensor; channel ``eval``)."""
    return comm.iallreduce(x.clone(), "avg", "eval").wait()


def consensus(comm, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(||x_i - x_bar|| of this worker, x_bar)."""
    mean = mean_model(comm, x)
    return float(torch.linalg.vector_norm(x - mean)), mean


class NeighbourExchange:
    """One worker's exchange of models with its neighbours (``peers``, in rank order).

    Use per iteration: ``post(x)``, compute the gradient, then ``wait()`` returns the neighbours'
    models in the order of ``peers``. Between ``post`` and ``wait`` the caller may change ``x``
    (the sends go from :attr:`snapshot`, one copy per iteration whatever the degree); the received
    models stay valid until the next ``post``. Nothing is in flight after ``wait``, so a
    checkpoint between iterations needs no state of this exchange.
    """

    def __init__(self, comm, peers, numel: int, dtype=torch.float32, device="cpu",
                 channel: str = "params", tag: int = TAG_PARAMS):
        self.comm, self.peers, self.channel, self.tag = comm, list(peers), channel, tag
        self.snapshot = aligned_empty(numel, dtype, device)
        self.inbox = [aligned_empty(numel, dtype, device) for _ in self.peers]
        self._handles: list = []
        self._plan = ([comm.recv_init(buf, j, tag, channel) for j, buf in zip(self.peers, self.inbox)]
                      + [comm.send_init(self.snapshot, j, tag, channel) for j in self.peers])

    def post(self, x: torch.Tensor) -> None:
        """Post the receives of the neighbours' models and the sends of ``x`` (copied first)."""
        if self._handles:
            raise RuntimeError("NeighbourExchange.post: the previous exchange was not waited for")
        self.snapshot.copy_(x)
        self._handles = [p.start() for p in self._plan]  # persistent requests (mpidist.comm)

    def wait(self) -> list[torch.Tensor]:
        """Complete every receive and send of the last ``post``; the neighbours' models."""
        waitall(self._handles)
        self._handles = []
        return self.inbox
