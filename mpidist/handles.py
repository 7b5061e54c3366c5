"""Operations in flight: :class:`Handle` (``wait``/``test``/``cancel``), :func:`waitall`, and the
errors of communication (:class:`CommError`, :class:`CommTimeout`).

:class:`mpidist.comm.Communicator` creates the handles. A handle owns its pooled buffer until it
completes, waits with a deadline (spinning, then sleeping, see :func:`_poll`), holds back its
completion until the emulated link would have delivered it, and writes its one trace row when done.

Blocked time (the trace row's ``t_wait``, trace format 3). ``t_wait`` is when the rank began to
wait for the operation, on the trace clock of ``t_post``/``t_done``; the rank was blocked on it
from ``t_wait`` to ``t_done``. The rule:

- :meth:`Handle.wait` looks at MPI's completion (a few ``MPI_Test`` calls, well under a
  microsecond) and at the emulated link's arrival first. If both say done, the rank did not block:
  ``t_wait`` stays NaN. Otherwise ``t_wait`` is the clock read right then, before it polls or
  sleeps (so the blocked time ``t_done - t_wait`` misses at most that first look).
- Only the FIRST wait counts: a wait that timed out and is tried again keeps its ``t_wait``.
- :func:`waitall`: once it has blocked on one of its handles (from ``t_wait`` of that handle
  on), every later handle of the same call not yet completed gets that same ``t_wait``: the rank
  was waiting for all of them since then, even if MPI finished one meanwhile.
- ``test()`` is a poll, not a wait: an operation completed by ``test()`` has ``t_wait`` NaN,
  unless the caller waits by polling and says so with :meth:`Handle.waiting` (MD-GAN's server).
"""
from __future__ import annotations

import os
import time

from mpi4py import MPI


class CommError(RuntimeError):
    """A communication that cannot be done as asked (bad tensor, wrong size, ...)."""


class CommTimeout(CommError):
    """A wait whose deadline passed; the message names rank, peer, tag and channel."""


_NAN = float("nan")
_SPIN_SECONDS = 0.02  # poll without sleeping this long, then poll with short sleeps
_SPIN_PER_BYTE = 1e-9  # ... or as long as its bytes take at 1 GB/s, if longer (large messages)


class Handle:
    """One operation in flight. It owns its buffer(s) until it completes.

    ``wait(timeout)`` blocks until completion (and, with a link model, emulated arrival) and returns
    the result tensor (the received tensor for irecv, the reduced tensor for iallreduce, the sent
    tensor for isend); ``test()`` returns True once it has completed, without blocking.

    What the trace row needs is one tuple, ``row`` = (step, op, peer, tag, channel, nbytes,
    t_post), made once at posting; ``op``, ``peer``, ... read it. The path of a small message is
    kept short, since it is most of what mpidist adds to MPI's latency (tools/README.md,
    "Benchmarks"): few attributes to set, MPI's completion polled before any deadline is set up,
    the trace row written by one call.
    """
    __slots__ = ("comm", "req", "row", "result", "buf", "finish", "t_ready", "state", "t_done",
                 "t_wait")

    def __init__(self, comm, req, op, peer, tag, channel, nbytes, t_post, result, buf=None,
                 finish=None, t_ready=0.0, step=None):
        # (the CPU point-to-point path makes its handles with :func:`posted`, the same fields)
        self.comm = comm
        self.req = req
        self.row = (comm.step if step is None else step, op, peer, tag, channel, nbytes, t_post)
        self.result = result
        self.buf = buf
        self.finish = finish
        self.t_ready = t_ready
        self.state = 0  # 0 posted, 1 MPI has finished with the buffers, 2 completed and recorded
        self.t_done = 0.0
        self.t_wait = _NAN  # when the rank began to wait for it (see the module's docstring)

    @property
    def step(self) -> int:
        return self.row[0]

    @step.setter
    def step(self, value: int) -> None:
        """Restamp the message's step (MD-GAN stamps a round's messages with its last step)."""
        self.row = (value,) + self.row[1:]

    op = property(lambda self: self.row[1])
    peer = property(lambda self: self.row[2])
    tag = property(lambda self: self.row[3])
    channel = property(lambda self: self.row[4])
    nbytes = property(lambda self: self.row[5])
    t_post = property(lambda self: self.row[6])
    mpi_done = property(lambda self: self.state >= 1)
    done = property(lambda self: self.state == 2)

    def _mpi_complete(self) -> None:
        """MPI has finished with the buffers: unstage, reduce-average, set the emulated arrival."""
        self.state = 1
        if self.finish is not None:
            self.finish(self)
        if self.buf is not None:
            self.comm.pool.put(self.buf)
            self.buf = None

    def _record(self, now: float) -> None:
        self.t_done = now
        self.state = 2
        trace = self.comm.trace
        if trace is not None:
            trace.comm_row(self.row + (now, self.t_wait))

    def waiting(self, now: float | None = None) -> None:
        """The rank begins to wait for this operation by polling :meth:`test` (MD-GAN's server
        waits for feedback or a crash notice, whichever comes): record ``now`` (default: the
        clock) as its ``t_wait``, unless it is complete or already has one."""
        if self.state != 2 and self.t_wait != self.t_wait:  # NaN: not waited on yet
            self.t_wait = self.comm.clock() if now is None else now

    def test(self) -> bool:
        if self.state == 2:
            return True
        if self.state == 0:
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
        state = self.state
        if state == 2:
            return self.result
        comm = self.comm
        if state == 0:
            req = self.req
            try:
                if not (req.Test() or req.Test() or req.Test() or req.Test()):
                    if self.t_wait != self.t_wait:  # NaN: the first wait that blocks
                        self.t_wait = comm.clock()
                    timeout = comm.timeout if timeout is None else timeout
                    if timeout == float("inf"):
                        req.Wait()
                    else:
                        _poll(req.Test, timeout, self)
            except MPI.Exception as e:   # a peer died (kill -9, a lost node): say which one
                who = f"rank {self.peer}" if self.peer >= 0 else "one of the other ranks"
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CommError(f"rank {comm.rank}: {self.describe()} failed: {who} is gone or "
                                f"unreachable (MPI: {first[:160]})") from None
            if self.finish is None and self.buf is None:
                self.state = 1
            else:
                self._mpi_complete()
        now = comm.clock()
        if now < self.t_ready:   # the emulated link delivers it later: that wait has a deadline too
            if self.t_wait != self.t_wait:
                self.t_wait = now
            timeout = comm.timeout if timeout is None else timeout
            if self.t_ready - now > timeout:
                time.sleep(timeout)
                raise CommTimeout(f"rank {comm.rank}: timed out after {timeout:g} s waiting for "
                                  f"{self.describe()} (the emulated link delivers it "
                                  f"{self.t_ready - now:.3g} s after the wait began)")
            time.sleep(self.t_ready - now)
            now = comm.clock()
        self.t_done = now
        self.state = 2
        trace = comm.trace
        if trace is not None:
            trace.comm_row(self.row + (now, self.t_wait))
        return self.result

    def cancel(self) -> bool:
        """Withdraw a posted receive that will never be matched (a peer that stopped for good, as
        in MD-GAN's fail-stop crashes) so that no request is left pending at the end. Returns True
        if it was cancelled before a message matched it (no trace row, the buffer keeps its old
        contents; a message not yet matched stays for a later receive), False if it had matched
        one (then it completes and is recorded as usual)."""
        if self.state == 2:
            return False
        if self.op != b"recv":
            raise CommError(f"cancel: only receives can be cancelled, not {self.describe()}")
        if self.state == 0:
            self.req.Cancel()
            status = MPI.Status()
            self.req.Wait(status)
            if status.Is_cancelled():
                self.finish = None  # nothing arrived: no unstaging
                self._mpi_complete()  # gives any pooled buffer back
                self.state = 2
                return True
            self._mpi_complete()
        self.wait()
        return False

    def describe(self) -> str:
        who = f"peer {self.peer}" if self.peer >= 0 else "the other ranks"
        return (f"{self.op.decode()} with {who} (tag {self.tag}, channel "
                f"'{self.channel.decode()}', step {self.step})")


_new = object.__new__


def posted(comm, req, row: tuple, result) -> Handle:
    """A :class:`Handle` of ``row`` = (step, op, peer, tag, channel, nbytes, t_post), without
    pooled buffer, finishing step or emulated arrival: what ``Handle(...)`` makes, for the CPU
    point-to-point path (``Communicator.isend``/``irecv``, ``Persistent.start``). A function
    that fills the slots is half the cost of calling the class (whose ``__init__`` takes 13
    arguments), on the path of every small message."""
    h = _new(Handle)
    h.comm = comm
    h.req = req
    h.row = row
    h.result = result
    h.buf = h.finish = None
    h.t_ready = h.t_done = 0.0
    h.state = 0
    h.t_wait = _NAN
    return h


def _poll(test, timeout: float, handle: Handle) -> None:
    """Poll ``test`` until true: spin first (latency), yielding the core between batches of polls
    so that a peer sharing this core (ranks oversubscribing the cores) runs instead of waiting for
    our time slice to end (as MPICH's own blocking wait does); after ``_SPIN_SECONDS``, or the
    time the message's bytes take at 1 GB/s if longer, sleep briefly between polls (a large
    message in MPI's shared-memory pipeline moves only while both ranks poll, so napping during
    it would slow it down); raise CommTimeout past ``timeout``."""
    t0 = time.monotonic()
    spin = max(_SPIN_SECONDS, handle.row[5] * _SPIN_PER_BYTE)
    spin_end, deadline = t0 + spin, t0 + timeout
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
    """Wait for every handle (each with the same deadline counted from now); return their results.
    From the moment it first blocks, the handles it has not completed yet share that ``t_wait``
    (see the module's docstring)."""
    t0 = time.monotonic()
    t_block = _NAN
    out = []
    for h in handles:
        left = None
        if timeout is not None:
            left = max(timeout - (time.monotonic() - t0), 0.0)
        fresh = h.t_wait != h.t_wait  # NaN: never waited on before
        if fresh and t_block == t_block and h.state != 2:
            h.t_wait = t_block
        out.append(h.wait(left))
        if fresh and t_block != t_block and h.t_wait == h.t_wait:  # the first it blocked on
            t_block = h.t_wait
    return out
