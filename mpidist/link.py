"""The emulated network: a link of given latency and bandwidth (off by default).

:class:`mpidist.comm.Communicator` asks :class:`LinkModel` when each message would leave and
arrive, and its handles complete no earlier, so that one machine shows the
communication/computation trade-offs of a cluster (DESIGN.md, "Asynchrony and delay").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinkModel:
    """An emulated network: every message costs ``latency`` seconds plus bytes / ``bandwidth``.

    A rank's outgoing messages share one link: message i starts when the link is free,
    ``start_i = max(t_post_i, free)``, leaves at ``start_i + n_i / B`` and arrives at
    ``start_i + L + n_i / B``. A send completes when it has left, a receive when it has arrived.
    The sender's arrival time travels in an 8-byte trailer, on the run's clock, which
    :mod:`mpidist.clock` puts on rank 0's clock on every rank, on one node or many: the emulated
    delay means the same across nodes, within the start clock estimate's uncertainty (microseconds)
    plus the drift since the start (parts per million of the elapsed time); a
    :class:`mpidist.comm.Communicator` made by hand needs a clock its ranks share. An allreduce of
    n bytes over p ranks costs the ring algorithm's ``2 (p-1) L + 2 (p-1)/p n / B`` after MPI
    completes it, a broadcast ``ceil(log2 p) (L + n / B)``.
    """
    latency: float = 0.0     # seconds per message
    bandwidth: float = 0.0   # bytes per second; 0 = infinite

    def __post_init__(self):
        if self.latency < 0 or self.bandwidth < 0:
            raise ValueError("link model: latency and bandwidth must be >= 0")
        self._free = 0.0

    @property
    def enabled(self) -> bool:
        return self.latency > 0 or self.bandwidth > 0

    def wire(self, nbytes: int) -> float:
        return nbytes / self.bandwidth if self.bandwidth > 0 else 0.0

    def send(self, t_post: float, nbytes: int) -> tuple[float, float]:
        """(time the last byte leaves, time it arrives) for a message posted at ``t_post``."""
        start = max(t_post, self._free)
        left = start + self.wire(nbytes)
        self._free = left
        return left, left + self.latency

    def allreduce(self, nbytes: int, p: int) -> float:
        return 2 * (p - 1) * self.latency + 2 * (p - 1) / p * self.wire(nbytes) if p > 1 else 0.0

    def bcast(self, nbytes: int, p: int) -> float:
        return int(np.ceil(np.log2(p))) * (self.latency + self.wire(nbytes)) if p > 1 else 0.0
