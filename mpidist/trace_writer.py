"""Writing one rank's trace file: :class:`TraceWriter` (the layout: :mod:`mpidist.trace`).

A message row is recorded as the tuple the handle gives (:meth:`TraceWriter.comm_row`: one
``list.append``, about 0.1 us, on the path of every message); the rows are packed at the flush
(``struct.pack_into`` into a preallocated buffer, about 0.35 us a row, which is a numpy structured
array as it is; setting a row of a numpy structured array costs about 1 us) and reach the file in
bulk. Metric rows are packed when recorded. A flush is a
commit of :class:`mpidist.trace_commit.CommittedFile`: the file at ``rank<k>.h5`` is only ever
replaced whole, by an atomic rename, so it is complete and closed at every instant, whatever
happens to the process (killed mid-flush, ``MPI_Abort``, full disk, I/O error) and whoever reads
it (a reader holding HDF5's file lock never blocks a flush). String attributes are stored where
HDF5's metadata checksums cover them (:func:`_attr_value`). A resumed run continues its file.

Tracing never ends training: a flush that cannot be written (full disk, I/O error, a damaged
directory) prints ONE warning line, keeps its rows in memory (at most ``max_pending_rows`` per
table: rows beyond are dropped and counted) and is retried at later flushes, the wait between
tries doubling from max(1 s, flush_seconds) up to a minute (an explicit :meth:`TraceWriter.flush`,
as at a checkpoint, tries at once); :meth:`TraceWriter.close` says how many rows were dropped, if any, and
records the counts in the file (``dropped_comm_rows``, ``dropped_metric_rows``).
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import sys
import threading
import time

import h5py
import numpy as np

from .trace_commit import CommitFailed, CommittedFile
from .trace_format import (COMM_DTYPE, FORMAT, FORMAT_VERSION, METRIC_DTYPE, ROW_DTYPES,
                           TraceError)
from .trace_reader import read_rank

MAX_BACKOFF_S = 60.0  # the longest wait between two tries of a failing flush


def _attr_value(v):
    """An attribute as stored: lists, tuples and dicts as JSON, strings as FIXED-length UTF-8.
    Fixed-length strings live in the attribute's own message, which HDF5's metadata checksums
    cover; h5py's default for a str (variable length) puts the bytes in a global heap, which has
    no checksum, and a damaged global heap can make libhdf5 read wrong text or loop forever."""
    if isinstance(v, (dict, list, tuple)):
        v = json.dumps(v)
    if isinstance(v, str):
        if "\x00" in v:  # as h5py refuses them in variable-length strings
            raise ValueError(f"a trace attribute cannot hold NUL characters: {v!r}")
        b = v.encode("utf-8")
        return np.array(b, dtype=h5py.string_dtype("utf-8", max(len(b), 1)))
    return v


NAN = float("nan")  # t_wait of an operation the rank never blocked on

_STRUCT_CODES = {"<i8": "q", "<i4": "i", "<f8": "d"}


def _struct_of(dtype: np.dtype) -> struct.Struct:
    """The struct layout of one row of a (packed, little-endian) numpy row type."""
    fmt = "<" + "".join(f"{dtype.fields[n][0].itemsize}s" if dtype.fields[n][0].kind == "S"
                        else _STRUCT_CODES[dtype.fields[n][0].str] for n in dtype.names)
    st = struct.Struct(fmt)
    assert st.size == dtype.itemsize, (fmt, dtype)
    return st


class _RowBuffer:
    """Rows packed one by one (``struct.pack_into``, about 0.3 us a row; at recording for
    metrics, at the flush for messages: :meth:`pack_all`) into a preallocated buffer of
    ``capacity`` rows of the ``full`` row type (the one written now), seen as a numpy array by
    :meth:`take` without any conversion. A file of an older format keeps its own row type
    ``dtype`` (a resumed run continues its file as it was written): :meth:`take` leaves out the
    fields it lacks."""

    def __init__(self, dtype: np.dtype, capacity: int, full: np.dtype | None = None):
        self.dtype = dtype
        self.full = full if full is not None else dtype
        st = _struct_of(self.full)
        self.pack, self.size = st.pack_into, st.size
        self.buf = bytearray(capacity * st.size)
        self.capacity = capacity
        self.n = 0

    def pack_all(self, rows: list) -> int:
        """Pack ``rows`` (tuples, at most ``capacity``) after the rows already packed; returns
        how many were dropped because their values do not fit the row type."""
        pack, size, buf = self.pack, self.size, self.buf
        off = self.n * size
        dropped = 0
        for row in rows:
            try:
                pack(buf, off, *row)
            except (struct.error, TypeError):
                dropped += 1
                continue
            off += size
        self.n = off // size
        return dropped

    def take(self) -> np.ndarray:
        """The rows recorded so far (a copy: they may wait for a later commit); empties it."""
        out = np.frombuffer(self.buf, self.full, count=self.n).copy()
        self.n = 0
        if self.dtype != self.full:
            old = np.zeros(len(out), self.dtype)
            for name in self.dtype.names:
                old[name] = out[name]
            out = old
        return out


# the ops of a commit, applied to both files of the pair (mpidist.trace_commit)
def _apply(f, op) -> None:
    kind = op[0]
    if kind == "rows":
        for name, rows in (("comm", op[1]), ("metrics", op[2])):
            if len(rows):
                ds = f[name]
                n = ds.shape[0]
                ds.resize((n + len(rows),))
                ds[n:] = rows
    elif kind == "attrs":
        for k, v in op[1].items():
            f.attrs[k] = v
    elif kind == "truncate":  # a resumed run: keep the rows of steps <= the checkpoint's
        for name in ("comm", "metrics"):
            rows = f[name][()]
            keep = rows[rows["step"] <= op[1]]
            f[name].resize((len(keep),))
            f[name][:] = keep
    else:
        raise ValueError(f"unknown trace op {kind!r}")


def _check(f, ops) -> None:
    """After a commit's ops were written and the file closed: the last rows appended to each
    dataset are the file's last rows (HDF5 may fail to write without raising, see
    mpidist.trace_commit)."""
    for i, name in ((1, "comm"), (2, "metrics")):
        last = next((op[i] for op in reversed(ops) if op[0] == "rows" and len(op[i])), None)
        if last is None:
            continue
        k = min(len(last), 16)
        ds = f[name]
        if ds.shape[0] < k or ds[ds.shape[0] - k:].tobytes() != last[-k:].tobytes():
            raise OSError(f"the rows just written to /{name} are not in the file")


class TraceWriter:
    """Records one rank's messages and metrics and appends them to ``rank<k>.h5``.

    ``clock`` returns seconds since the run's t = 0 (the runtime passes ``MPI.Wtime`` shifted by the
    start time that all ranks agreed on). ``flush_seconds``: the longest time rows wait in memory
    (while writing works). The file is created at construction, so an unwritable directory fails
    before training starts (TraceError or OSError); from then on nothing the file system does
    raises (see the module's docstring). An existing file is refused, unless ``resume_step`` is
    given (a resumed run continues it: the rows of later steps are dropped at its first write, so
    that a run refused before it started, see :meth:`abandon`, leaves the interrupted run's file
    exactly as it was).
    ``checksum``: fletcher32 on the rows' chunks (default; costs about 0.1-0.3 ms per flush, see
    ``tests/programs/fuzz_trace.py --bench-flush``). ``warn``: where the one warning line goes
    (default: stderr). ``capacity``: message rows buffered before a flush is forced (default
    65536: about 13 MB of tuples, packed into 5.5 MB); a flush costs about 8 ms whatever it holds
    (the commit of :mod:`mpidist.trace_commit`) plus the packing of its rows (about 0.35 us a
    row), so a rank sending small messages fast pays about 8 ms / capacity per row for the commit
    (0.12 us; 0.5 us at 16384). Metric rows: at most 16384.
    """

    def __init__(self, path: str, attrs: dict, clock, flush_seconds: float = 2.0,
                 capacity: int = 1 << 16, resume_step: int | None = None,
                 checksum: bool = True, max_pending_rows: int = 1 << 19, warn=None):
        self.path = path
        self.clock = clock
        self.flush_seconds = flush_seconds
        self.max_pending_rows = max_pending_rows
        self._warn = warn or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
        self._comm = _RowBuffer(COMM_DTYPE, capacity)  # packs the message rows at a flush
        self._comm_rows: list = []  # message rows (tuples) recorded since the last flush
        self._capacity = capacity
        self._metrics = _RowBuffer(METRIC_DTYPE, min(capacity, 1 << 14))
        self._next_flush = time.monotonic() + flush_seconds
        self.closed = False
        self.lock = threading.RLock()  # held while the file is written: see mark()
        self.created = False           # this writer made the file (it was not there)
        self._rows_written = False     # a commit holding rows succeeded
        self._pending: list = []       # ops not yet committed, oldest first
        self._pending_rows = [0, 0]    # comm and metric rows in self._pending
        self.dropped = [0, 0]          # comm and metric rows dropped (memory bound reached)
        self.failures = 0              # flushes that could not be written
        self._failing = 0              # consecutive failures (for the back-off)
        self._retry_at = 0.0
        self._resume = None            # the ops that continue a resumed file, until committed
        self._file = CommittedFile(path, _apply, _check)
        if os.path.lexists(path):
            if resume_step is None:
                raise TraceError(f"{path}: already exists; refusing to overwrite a previous run's "
                                 "trace (choose another --trace-dir)")
            old = read_rank(path)  # refuses a file that is not an mpidist trace, changing nothing
            # an older format's file is continued in its own format (its rows keep their type)
            self._comm.dtype = ROW_DTYPES[old.attrs.get("format_version", 1)][0]
            self._resume = [("truncate", resume_step),
                            ("attrs", {"status": _attr_value("running"),
                                       "resumed_at_step": resume_step,
                                       "resumed_args": _attr_value(attrs.get("args", {}))})]
            return
        values = {k: _attr_value(v) for k, v in attrs.items()}

        def build(f):
            f.attrs["format"] = _attr_value(FORMAT)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["hostname"] = _attr_value(socket.gethostname())
            f.attrs["status"] = _attr_value("running")  # close() replaces it; a killed rank's stays
            for k, v in values.items():
                f.attrs[k] = v
            f.create_dataset("comm", shape=(0,), maxshape=(None,), dtype=COMM_DTYPE,
                             chunks=(4096,), fletcher32=checksum)
            f.create_dataset("metrics", shape=(0,), maxshape=(None,), dtype=METRIC_DTYPE,
                             chunks=(1024,), fletcher32=checksum)
        self._file.create(build)
        self.created = True

    # ------------------------------------------------------------------ recording (hot path)
    def comm(self, step: int, op: bytes, peer: int, tag: int, channel: bytes, nbytes: int,
             t_post: float, t_done: float, t_wait: float = NAN) -> None:
        """One completed message. ``op`` and ``channel`` are bytes (encoded once by the caller);
        ``t_wait``: when the rank began to wait for it, NaN (default) if it never blocked on it."""
        self.comm_row((step, op, peer, tag, channel, nbytes, t_post, t_done, t_wait))

    def comm_row(self, row: tuple) -> None:
        """:meth:`comm` with its nine values as one tuple (the handles' path): kept as it is,
        packed at the flush. A row whose values do not fit the row type is dropped and counted
        there, never raised."""
        rows = self._comm_rows
        rows.append(row)
        if len(rows) >= self._capacity:
            self._flush(force=False)

    def metric(self, step: int, name: str, value: float) -> None:
        buf = self._metrics
        n = buf.n
        value = float(value)  # (a value that is no number raises, as always)
        try:
            buf.pack(buf.buf, n * buf.size, step, self.clock(), name.encode(), value)
        except (struct.error, TypeError):
            self.dropped[1] += 1
            return
        buf.n = n + 1
        if n + 1 >= buf.capacity:
            self._flush(force=False)

    # ------------------------------------------------------------------ flushing
    def maybe_flush(self) -> None:
        """Flush if the last flush is older than ``flush_seconds`` (call once per step)."""
        if time.monotonic() >= self._next_flush:
            self._flush(force=False)

    def flush(self) -> None:
        """Write every row recorded so far now (a failing file is tried again at once)."""
        self._flush(force=True)

    def _flush(self, force: bool) -> None:
        with self.lock:
            if self.closed:
                self._comm_rows.clear()  # rows recorded after close() go nowhere
                return
            self._take()
            if force or time.monotonic() >= self._retry_at:
                self._commit()
            self._next_flush = time.monotonic() + self.flush_seconds

    def _take(self) -> None:
        """The buffered rows become a pending op; beyond max_pending_rows they are dropped."""
        if not (self._comm_rows or self._metrics.n):
            return
        # pack, then remove, the rows there now: a row appended meanwhile (by a signal handler's
        # flush interrupting comm_row) stays in the list for the next flush
        recorded = self._comm_rows
        n = len(recorded)
        self.dropped[0] += self._comm.pack_all(itertools.islice(recorded, n))
        del recorded[:n]
        rows = [self._comm.take(), self._metrics.take()]
        for i in range(2):
            room = max(0, self.max_pending_rows - self._pending_rows[i])
            if len(rows[i]) > room:
                self.dropped[i] += len(rows[i]) - room
                rows[i] = rows[i][:room]
            self._pending_rows[i] += len(rows[i])
        if len(rows[0]) or len(rows[1]):
            self._pending.append(("rows", rows[0], rows[1]))

    def _commit(self) -> bool:
        """Commit the pending ops; False (after the one warning line) if the file system said no."""
        ops = (self._resume or []) + self._pending
        if not ops:
            return True
        try:
            self._file.commit(ops)
        except Exception as e:  # noqa: BLE001  tracing never ends training
            self.failures += 1
            self._failing += 1
            self._retry_at = time.monotonic() + min(
                MAX_BACKOFF_S, max(1.0, self.flush_seconds) * 2 ** min(self._failing, 8))
            if self.failures == 1:
                why = str(CommitFailed.of(e))  # "OSError: [Errno 28] ...": one line
                self._warn(f"mpidist: warning: cannot write the trace {self.path} ({why}); "
                           f"training goes on, rows are kept in memory (at most "
                           f"{self.max_pending_rows} per table) and written when it works again")
            return False
        self._rows_written |= self._pending_rows != [0, 0]
        self._resume, self._pending, self._pending_rows, self._failing = None, [], [0, 0], 0
        return True

    # ------------------------------------------------------------------ attributes and ending
    def set_attrs(self, **attrs) -> None:
        """Add or replace root attributes (e.g. the final status) now. A value that cannot be
        stored raises ValueError here; a file that cannot be written does not raise."""
        values = {k: _attr_value(v) for k, v in attrs.items()}
        with self.lock:
            if self.closed:
                return
            self._take()
            self._pending.append(("attrs", values))
            self._commit()

    def mark(self, status: str, timeout: float = 5.0) -> None:
        """From another thread, just before the process ends at once (the SIGTERM deadline): wait
        for a flush in progress to finish (at most ``timeout`` s), then write ``status`` with the
        rows already taken from the buffers, without touching the rows being recorded. The lock
        stays held, so no flush starts afterwards."""
        if self.closed or not self.lock.acquire(timeout=timeout) or self._resume is not None:
            return  # (a resumed file not yet continued stays as the interrupted run left it)
        self._pending.append(("attrs", {"status": _attr_value(status), "end_time": time.time()}))
        self._commit()

    def abandon(self, status: str) -> bool:
        """For a run refused before it began (bad input found by every rank): leave no trace of
        it. A file this writer created and never wrote a row to is removed (True); a resumed file
        not yet continued stays exactly as the interrupted run left it; any other file is closed
        with ``status``."""
        with self.lock:
            if self.closed:
                return False
            if self._resume is not None:  # (nothing of the directory touched, not even a
                self.closed = True          # shadow a killed writer left)
                return False
            if self.created and not self._rows_written:
                try:
                    self._file.remove()
                    self.closed = True
                    return True
                except OSError:
                    pass
            self.close(status)
            return False

    def close(self, status: str = "ok") -> None:
        """Write what is buffered, the end time and ``status`` ("ok", "failed", ...), and say on
        stderr how many rows could not be written, if any. Idempotent; never raises for the file
        system's sake."""
        with self.lock:
            if self.closed:
                return
            self._take()
            final = {"status": status, "end_time": time.time()}
            if any(self.dropped):
                final.update(dropped_comm_rows=self.dropped[0],
                             dropped_metric_rows=self.dropped[1])
            self._pending.append(("attrs", {k: _attr_value(v) for k, v in final.items()}))
            self._commit()
            self.closed = True
            self._file.discard_shadow()
            lost = [self.dropped[i] + self._pending_rows[i] for i in range(2)]
            if any(lost):
                self._warn(f"mpidist: warning: trace {self.path}: {lost[0]} message rows and "
                           f"{lost[1]} metric rows could not be written (dropped); the file holds "
                           "every row of every flush that was written")
