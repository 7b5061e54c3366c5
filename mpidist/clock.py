"""Clock alignment: every rank's trace times on rank 0's clock, on one node or many.

Each rank reads its own clock, ``MPI_Wtime`` (:func:`raw_clock`). The clocks of different nodes
differ by microseconds to seconds and drift apart by some parts per million, so the runtime aligns
them as HPC tracers do (Cristian's algorithm, "Probabilistic clock synchronization", F. Cristian):

- :func:`estimate`, collective, at start and at the end of a run: rank r and rank 0 exchange
  ``rounds`` ping-pongs. Rank r reads its clock (a), rank 0 answers with its own reading (b), rank
  r reads again (c). Rank 0's reading happened between a and c, so the offset ``raw_r - raw_0``
  lies in ``[a - b, c - b]``: the estimate is ``(a + c) / 2 - b``, its uncertainty half the round
  trip ``(c - a) / 2``. The round trip with the smallest delay wins. When the library says
  ``MPI_WTIME_IS_GLOBAL`` (and no skew is injected) there is nothing to estimate: offset 0,
  uncertainty 0.
- The runtime puts rank r's t = 0 at rank 0's t = 0 plus the start offset, so every rank's trace
  (and the link model's arrival times, :mod:`mpidist.link`) is on rank 0's clock from the start,
  within the start estimate's uncertainty. The trace records both estimates as file attributes
  (``clock_start``, ``clock_end``: ``{"offset", "uncertainty", "t"}``, ``t`` the trace time of the
  estimate, and ``clock_method``).
- :func:`align` (applied by the trace reader) removes the drift measured between the two
  estimates, interpolated linearly in time between them, where their intervals are apart (a drift
  is removed only where the estimates prove it; :func:`offsets`). A run that never reached its end
  estimate (killed) is aligned by the start estimate alone.

Tests inject known clock errors with ``MPIDIST_TEST_CLOCK_SKEW="rank:offset_s:drift_ppm,..."``,
read here only: that rank's raw clock reads ``Wtime + offset_s + drift_ppm * 1e-6 * (Wtime -
Wtime at the clock's creation)``.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

SKEW_ENV = "MPIDIST_TEST_CLOCK_SKEW"
ROUNDS = 24          # ping-pongs per rank and estimate
_TAG = 31_000        # on a communicator of the clock's own (a Dup): never matches anything else


def parse_skew(text: str) -> dict[int, tuple[float, float]]:
    """``"rank:offset_s:drift_ppm,..."`` -> {rank: (offset_s, drift_ppm)}; ValueError (one line)
    for anything else."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        try:
            if len(fields) != 3:
                raise ValueError
            rank, off, ppm = int(fields[0]), float(fields[1]), float(fields[2])
            if rank < 0 or not (math.isfinite(off) and math.isfinite(ppm)) or abs(ppm) >= 1e5:
                raise ValueError
        except ValueError:
            raise ValueError(f"{SKEW_ENV}={text!r}: each entry must be rank:offset_s:drift_ppm "
                             f"(rank >= 0, |drift| < 1e5 ppm), not {part!r}") from None
        out[rank] = (off, ppm)
    return out


def skew_of(rank: int, env=None) -> tuple[float, float] | None:
    """This rank's injected (offset_s, drift_ppm), or None (the normal case)."""
    text = (os.environ if env is None else env).get(SKEW_ENV, "")
    return parse_skew(text).get(rank) if text.strip() else None


def raw_clock(rank: int, env=None):
    """This rank's raw clock: ``MPI.Wtime`` itself (the normal case: no extra call on the hot
    path), or with an injected skew (tests) a shifted and drifting copy of it, whose ``skew``
    attribute is (offset_s, drift_ppm, the MPI_Wtime it drifts from)."""
    skew = skew_of(rank, env)
    if skew is None:
        from mpi4py import MPI
        return MPI.Wtime
    from mpi4py import MPI
    off, rate, ref = skew[0], skew[1] * 1e-6, MPI.Wtime()
    read = lambda: (w := MPI.Wtime()) + off + rate * (w - ref)  # noqa: E731
    read.skew = (off, skew[1], ref)   # what the tests compare against
    return read


def wtime_is_global(comm) -> bool:
    """The library's MPI_WTIME_IS_GLOBAL attribute (False where it is not set)."""
    from mpi4py import MPI
    try:
        return bool(comm.Get_attr(MPI.WTIME_IS_GLOBAL))
    except MPI.Exception:
        return False


def method(comm) -> str:
    """How this run's offsets are found, the same on every rank: ``"MPI_WTIME_IS_GLOBAL"`` when
    the library says its clocks agree (and no skew is injected anywhere), else ``"ping-pong"``."""
    injected = bool(os.environ.get(SKEW_ENV, "").strip())
    return "MPI_WTIME_IS_GLOBAL" if wtime_is_global(comm) and not injected else "ping-pong"


def _wait(req, deadline: float, what: str, nap: float = 0.0):
    """Test ``req`` until it completes (spinning, or napping ``nap`` s between tests)."""
    while not req.Test():
        if time.monotonic() > deadline:
            req.Cancel()
            raise TimeoutError(f"clock alignment: no answer {what} within the deadline "
                               "(a rank did not reach the same point)")
        if nap:
            time.sleep(nap)


def estimate(comm, raw, how: str = "ping-pong", rounds: int = ROUNDS,
             timeout: float = 60.0) -> tuple[float, float, float]:
    """Collective over ``comm`` (use a communicator of its own, e.g. a Dup of the world): this
    rank's (offset to rank 0 in seconds, its uncertainty, this rank's raw clock at the estimate).
    Rank 0 answers each other rank in turn (a rank naps until rank 0 calls it and after its
    rounds, so that only the two ranks of the ping-pong compete for the CPUs); rank 0 itself gets
    (0, 0, now). Every wait
    has a deadline of ``timeout`` s (TimeoutError)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if how == "MPI_WTIME_IS_GLOBAL" or size == 1:
        return 0.0, 0.0, raw()
    deadline = time.monotonic() + timeout
    ping = np.zeros(1)
    pong = np.zeros(1)
    if rank == 0:
        for r in range(1, size):
            _wait(comm.Isend(ping, r, _TAG + 1), deadline, f"to rank {r}")  # your turn
            for _ in range(rounds):
                _wait(comm.Irecv(ping, r, _TAG), deadline, f"from rank {r}")
                pong[0] = raw()
                _wait(comm.Isend(pong, r, _TAG), deadline, f"to rank {r}")
        _wait(comm.Ibarrier(), deadline, "(the closing barrier)", nap=0.0005)
        return 0.0, 0.0, raw()
    _wait(comm.Irecv(ping, 0, _TAG + 1), deadline, "from rank 0", nap=0.0005)
    best = (math.inf, 0.0, 0.0)  # (round trip, offset, raw time at the middle)
    for _ in range(rounds):
        a = raw()
        _wait(comm.Isend(ping, 0, _TAG), deadline, "to rank 0")
        _wait(comm.Irecv(pong, 0, _TAG), deadline, "from rank 0")
        c = raw()
        if c - a < best[0]:
            best = (c - a, (a + c) / 2 - pong[0], (a + c) / 2)
    # done: nap (not spin) until all are, leaving the CPUs to the ranks still measuring
    _wait(comm.Ibarrier(), deadline, "(the closing barrier)", nap=0.0005)
    rtt, offset, mid = best
    return float(offset), float(rtt / 2), float(mid)


class RunClock:
    """A run's clock (made by :mod:`mpidist.startup`): the raw clock, the method, a communicator of
    its own for the estimates, t = 0, and the start estimate."""

    def __init__(self, world, rank: int, timeout: float):
        self.raw = raw_clock(rank)        # ValueError for a bad MPIDIST_TEST_CLOCK_SKEW
        self.how = method(world)
        self.comm = world.Dup()
        self.timeout = timeout
        self.t0 = 0.0
        self.start_estimate = None

    def start(self, agree) -> callable:
        """Collective: estimate the start offset, take t = 0 from rank 0 (``agree(value)``
        broadcasts rank 0's value, e.g. ``(its raw time, the resumed run's saved clock)``), and
        return the trace clock: seconds since t = 0 on rank 0's clock."""
        offset, unc, mid = estimate(self.comm, self.raw, self.how, timeout=self.timeout)
        t0_root, saved = agree(self.raw())
        self.t0 = t0_root + offset - saved
        self.start_estimate = record(offset, unc, mid - self.t0)
        raw, t0 = self.raw, self.t0
        from mpi4py import MPI
        if raw is MPI.Wtime:
            return lambda: MPI.Wtime() - t0
        return lambda: raw() - t0

    def attrs(self) -> dict:
        """The trace's start attributes."""
        return {"clock_method": self.how, "clock_start": self.start_estimate}

    def finish(self, trace) -> None:
        """Collective, at a run's normal end: the end estimate into the trace (``clock_end``),
        which gives the reader the drift. A failed estimate (a rank that does not come) is
        skipped: tracing never ends training."""
        try:
            offset, unc, mid = estimate(self.comm, self.raw, self.how, timeout=self.timeout)
        except TimeoutError:
            return
        if trace is not None:
            trace.set_attrs(clock_end=record(offset, unc, mid - self.t0))


def record(offset: float, uncertainty: float, t: float) -> dict:
    """An estimate as the trace stores it: ``t`` is the trace time at which it was made."""
    return {"offset": float(offset), "uncertainty": float(uncertainty), "t": float(t)}


def _valid(e) -> bool:
    return (isinstance(e, dict) and all(
        isinstance(e.get(k), (int, float)) and not isinstance(e.get(k), bool)
        and math.isfinite(e[k]) for k in ("offset", "uncertainty", "t"))
        and e["uncertainty"] >= 0)


def check_attrs(attrs: dict) -> str | None:
    """What is wrong with a trace's clock attributes (a damaged file), or None."""
    for k in ("clock_start", "clock_end"):
        if k in attrs and not _valid(attrs[k]):
            return f"{k} = {attrs[k]!r}"
    return None


def offsets(attrs: dict) -> tuple[float, float, float, float] | None:
    """The rank's offset to rank 0 at the start and at the end, ``(o_s, o_e, t_s, t_e)``. Two
    estimates whose intervals (``offset +- uncertainty`` at trace times ``t``) are apart prove a
    drift: their offsets as estimated. Intervals that overlap prove none: a constant offset, the
    point of the overlap nearest to the sharper estimate (so that a start estimate with a wide
    interval, e.g. taken on a busy machine, does not make a drift out of its own error). None
    without both estimates, or with a single instant."""
    s, e = attrs.get("clock_start"), attrs.get("clock_end")
    if not (_valid(s) and _valid(e)) or e["t"] <= s["t"]:
        return None
    lo = max(s["offset"] - s["uncertainty"], e["offset"] - e["uncertainty"])
    hi = min(s["offset"] + s["uncertainty"], e["offset"] + e["uncertainty"])
    if lo > hi:
        return s["offset"], e["offset"], s["t"], e["t"]
    sharp = s if s["uncertainty"] <= e["uncertainty"] else e
    o = min(max(sharp["offset"], lo), hi)
    return o, o, s["t"], e["t"]


def drift(attrs: dict) -> float:
    """The rank's clock rate relative to rank 0's minus 1 (seconds per second), measured between
    the start and end estimates (:func:`offsets`); 0 without both."""
    o = offsets(attrs)
    return 0.0 if o is None else (o[1] - o[0]) / (o[3] - o[2])


def align(attrs: dict, t: np.ndarray) -> np.ndarray:
    """Times ``t`` of one rank's trace, on rank 0's clock. The runtime wrote the trace on rank 0's
    clock as the start estimate gave it (it shifted its t = 0 by that offset); the offset at time
    t is :func:`offsets`' line, ``o(t) = o_s + drift * (t - t_s)``, so rank 0's time is
    ``t - (o(t) - offset_start)``. Returns ``t`` itself when there is nothing to remove (no end
    estimate: a killed run stays on its start estimate)."""
    o = offsets(attrs)
    if o is None:
        return t
    shift = o[0] - attrs["clock_start"]["offset"]
    rate = (o[1] - o[0]) / (o[3] - o[2])
    if rate == 0.0 and shift == 0.0:
        return t
    return t - shift - rate * (t - o[2])


def align_rows(attrs: dict, comm: np.ndarray, metrics: np.ndarray) -> None:
    """:func:`align` applied in place to a rank's /comm (t_post, t_done, t_wait where the format
    has it) and /metrics (t) rows."""
    o = offsets(attrs)
    if o is None or (o[0] == o[1] == attrs["clock_start"]["offset"]):
        return
    for rows, cols in ((comm, ("t_post", "t_done", "t_wait")), (metrics, ("t",))):
        for c in cols:
            if len(rows) and c in rows.dtype.names:
                rows[c] = align(attrs, rows[c])   # (a NaN stays NaN)
