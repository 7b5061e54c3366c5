"""Operations in flight: :class:`Handle` (``wait``/``test``/``cancel``), :func:`waitall`, and the
errors of communication (:class:`CommError`, :class:`CommTimeout`).

:class:`mpidist.comm.Communicator` creates the handles. A handle owns its pooled buffer until it
completes, waits with a deadline (spinning, then sleeping, see :func:`_poll`), holds back its
completion until the emulated link would have delivered it, and writes its one trace row when done.
"""
from __future__ import annotations

import os
import time

from mpi4py import MPI


class CommError(RuntimeError):
    """A communication that cannot be done as asked (bad tensor, wrong size, ...)."""


class CommTimeout(CommError):
    """A wait whose deadline passed; the message names rank, peer, tag and channel."""


_SPIN_SECONDS = 0.02  # poll without sleeping this long, then poll with short sleeps


class Handle:
    """One operation in flight. It owns its buffer(s) until it completes.

    ``wait(timeout)`` blocks until completion (and, with a link model, emulated arrival) and returns
    the result tensor (the received tensor for irecv, the reduced tensor for iallreduce, the sent
    tensor for isend); ``test()`` returns True once it has completed, without blocking.
    """
    __slots__ = ("comm", "req", "op", "peer", "tag", "channel", "nbytes", "step", "t_post",
                 "t_ready", "result", "buf", "finish", "mpi_done", "done", "t_done")

    def __init__(self, comm, req, op, peer, tag, channel, nbytes, t_post, result, buf=None,
                 finish=None, t_ready=0.0):
        self.comm, self.req, self.op, self.peer, self.tag = comm, req, op, peer, tag
        self.channel, self.nbytes, self.t_post, self.result = channel, nbytes, t_post, result
        self.buf, self.finish, self.t_ready = buf, finish, t_ready
        self.step = comm.step
        self.mpi_done = self.done = False
        self.t_done = 0.0

    def _mpi_complete(self) -> None:
        """MPI has finished with the buffers: unstage, reduce-average, set the emulated arrival."""
        self.mpi_done = True
        if self.finish is not None:
            self.finish(self)
        if self.buf is not None:
            self.comm.pool.put(self.buf)
            self.buf = None

    def _record(self, now: float) -> None:
        self.t_done = now
        self.done = True
        trace = self.comm.trace
        if trace is not None:
            trace.comm(self.step, self.op, self.peer, self.tag, self.channel, self.nbytes,
                       self.t_post, now)

    def test(self) -> bool:
        if self.done:
            return True
        if not self.mpi_done:
            if not self.req.Test():
                return False
            self._mpi_complete()
        now = self.comm.clock()
        if now < self.t_ready:  # the emulated network is still carrying it
            return False
        self._record(now)
        return True

    def wait(self, timeout: float | None = None):
        """Complete the operation; raise CommTimeout after ``timeout`` seconds (default: the
        communicator's ``timeout``; ``float('inf')`` waits for ever)."""
        if self.done:
            return self.result
        if not self.mpi_done:
            req = self.req
            if not req.Test():
                timeout = self.comm.timeout if timeout is None else timeout
                if timeout == float("inf"):
                    req.Wait()
                else:
                    _poll(req.Test, timeout, self)
            self._mpi_complete()
        now = self.comm.clock()
        if now < self.t_ready:
            time.sleep(self.t_ready - now)
            now = self.comm.clock()
        self._record(now)
        return self.result

    def cancel(self) -> bool:
        """Withdraw a posted receive that will never be matched (a peer that stopped for good, as
        in MD-GAN's fail-stop crashes) so that no request is left pending at the end. Returns True
        if it was cancelled before a message matched it (no trace row, the buffer keeps its old
        contents; a message not yet matched stays for a later receive), False if it had matched
        one (then it completes and is recorded as usual)."""
        if self.done:
            return False
        if self.op != b"recv":
            raise CommError(f"cancel: only receives can be cancelled, not {self.describe()}")
        if not self.mpi_done:
            self.req.Cancel()
            status = MPI.Status()
            self.req.Wait(status)
            if status.Is_cancelled():
                self.finish = None  # nothing arrived: no unstaging
                self._mpi_complete()  # gives any pooled buffer back
                self.done = True
                return True
            self._mpi_complete()
        self.wait()
        return False

    def describe(self) -> str:
        who = f"peer {self.peer}" if self.peer >= 0 else "the other ranks"
        return (f"{self.op.decode()} with {who} (tag {self.tag}, channel "
                f"'{self.channel.decode()}', step {self.step})")


def _poll(test, timeout: float, handle: Handle) -> None:
    """Poll ``test`` until true: spin first (latency), yielding the core between batches of polls
    so that a peer sharing this core (ranks oversubscribing the cores) runs instead of waiting for
    our time slice to end (as MPICH's own blocking wait does); after ``_SPIN_SECONDS`` sleep
    briefly between polls; raise CommTimeout past ``timeout``."""
    t0 = time.monotonic()
    spin_end, deadline = t0 + _SPIN_SECONDS, t0 + timeout
    nap = 20e-6
    yield_ = os.sched_yield
    while True:
        for _ in range(32):
            if test():
                return
        yield_()
        now = time.monotonic()
        if now >= deadline:
            c = handle.comm
            raise CommTimeout(f"rank {c.rank}: timed out after {timeout:g} s waiting for "
                              f"{handle.describe()}")
        if now >= spin_end:
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)


def waitall(handles, timeout: float | None = None) -> list:
    """Wait for every handle (each with the same deadline counted from now); return their results."""
    t0 = time.monotonic()
    out = []
    for h in handles:
        left = None
        if timeout is not None:
            left = max(timeout - (time.monotonic() - t0), 0.0)
        out.append(h.wait(left))
    return out
