"""Writing one rank's trace file: :class:`TraceWriter` (the layout: :mod:`mpidist.trace`).

Rows go into preallocated numpy arrays and reach the file in bulk at each flush, which opens,
extends and closes it, so the file on disk is consistent between flushes; string attributes are
stored where HDF5's metadata checksums cover them (:func:`_attr_value`). A resumed run continues
its file; a reader holding HDF5's file lock delays a flush, never fails it (:func:`_open_append`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import h5py
import numpy as np

from .trace_format import COMM_DTYPE, FORMAT, FORMAT_VERSION, METRIC_DTYPE, TraceError
from .trace_reader import read_rank


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


class _RowBuffer:
    """A preallocated numpy structured array filled row by row and emptied by flush."""

    def __init__(self, dtype: np.dtype, capacity: int):
        self.rows = np.zeros(capacity, dtype=dtype)
        self.capacity = capacity
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n == len(self.rows)

    def take(self) -> np.ndarray:
        out = self.rows[: self.n]
        self.n = 0
        return out


class TraceWriter:
    """Records one rank's messages and metrics and appends them to ``rank<k>.h5``.

    ``clock`` returns seconds since the run's t = 0 (the runtime passes ``MPI.Wtime`` shifted by the
    start time that all ranks agreed on). ``flush_seconds``: the longest time rows wait in memory.
    The file is created at construction, so an unwritable directory fails before training starts.
    An existing file is refused, unless ``resume_step`` is given (a resumed run continues it: the
    rows of later steps are dropped at its first write, so that a run refused before it started,
    see :meth:`abandon`, leaves the interrupted run's file exactly as it was).
    ``checksum``: fletcher32 on the rows' chunks (default; costs about 0.1-0.3 ms per flush, see
    ``tests/programs/fuzz_trace.py --bench-flush``).
    """

    def __init__(self, path: str, attrs: dict, clock, flush_seconds: float = 2.0,
                 capacity: int = 1 << 14, resume_step: int | None = None,
                 checksum: bool = True):
        self.path = path
        self.clock = clock
        self.flush_seconds = flush_seconds
        self._comm = _RowBuffer(COMM_DTYPE, capacity)
        self._metrics = _RowBuffer(METRIC_DTYPE, capacity)
        self._next_flush = time.monotonic() + flush_seconds
        self.closed = False
        self.lock = threading.RLock()  # held while the file is written: see mark()
        self.created = False           # this writer made the file (it was not there)
        self._rows_written = False
        self._resume = None            # (step, attrs) of a resumed file not yet continued
        if os.path.exists(path):
            if resume_step is None:
                raise TraceError(f"{path}: already exists; refusing to overwrite a previous run's "
                                 "trace (choose another --trace-dir)")
            read_rank(path)  # refuses a file that is not an mpidist trace, changing nothing
            self._resume = (resume_step, attrs)
            return
        self.created = True
        with h5py.File(path, "w", libver="latest") as f:
            f.attrs["format"] = _attr_value(FORMAT)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["hostname"] = _attr_value(socket.gethostname())
            f.attrs["status"] = _attr_value("running")  # close() replaces it; a killed rank's stays
            for k, v in attrs.items():
                f.attrs[k] = _attr_value(v)
            f.create_dataset("comm", shape=(0,), maxshape=(None,), dtype=COMM_DTYPE,
                             chunks=(4096,), fletcher32=checksum)
            f.create_dataset("metrics", shape=(0,), maxshape=(None,), dtype=METRIC_DTYPE,
                             chunks=(1024,), fletcher32=checksum)

    def _continue(self) -> None:
        """Before the first write of a resumed run: keep the rows of steps <= the checkpoint's,
        drop the later ones the interrupted run wrote, mark the file running again."""
        if self._resume is None:
            return
        (resume_step, attrs), self._resume = self._resume, None
        with h5py.File(self.path, "a") as f:
            for name in ("comm", "metrics"):
                rows = f[name][()]
                keep = rows[rows["step"] <= resume_step]
                f[name].resize((len(keep),))
                f[name][:] = keep
            f.attrs["status"] = _attr_value("running")
            f.attrs["resumed_at_step"] = resume_step
            f.attrs["resumed_args"] = _attr_value(attrs.get("args", {}))

    def comm(self, step: int, op: bytes, peer: int, tag: int, channel: bytes, nbytes: int,
             t_post: float, t_done: float) -> None:
        """One completed message. ``op`` and ``channel`` are bytes (encoded once by the caller)."""
        buf = self._comm
        n = buf.n
        buf.rows[n] = (step, op, peer, tag, channel, nbytes, t_post, t_done)
        buf.n = n + 1
        if n + 1 == buf.capacity:
            self.flush()

    def metric(self, step: int, name: str, value: float) -> None:
        buf = self._metrics
        buf.rows[buf.n] = (step, self.clock(), name.encode(), float(value))
        buf.n += 1
        if buf.full:
            self.flush()

    def maybe_flush(self) -> None:
        """Flush if the last flush is older than ``flush_seconds`` (call once per step)."""
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        self._continue()
        comm, metrics = self._comm.take(), self._metrics.take()
        if len(comm) or len(metrics):
            with _open_append(self.path) as f:
                for name, rows in (("comm", comm), ("metrics", metrics)):
                    if len(rows):
                        ds = f[name]
                        n = ds.shape[0]
                        ds.resize((n + len(rows),))
                        ds[n:] = rows
            self._rows_written = True
        self._next_flush = time.monotonic() + self.flush_seconds

    def set_attrs(self, **attrs) -> None:
        """Add or replace root attributes (e.g. the final status) now."""
        with self.lock:
            self.flush()
            self._write_attrs(attrs)

    def _write_attrs(self, attrs: dict) -> None:
        with _open_append(self.path) as f:
            for k, v in attrs.items():
                f.attrs[k] = _attr_value(v)

    def mark(self, status: str, timeout: float = 5.0) -> None:
        """From another thread, just before the process ends at once (the SIGTERM deadline): wait
        for a flush in progress to finish (at most ``timeout`` s), then write ``status`` without
        touching the rows being recorded. The lock stays held, so no flush starts afterwards."""
        if self.closed or not self.lock.acquire(timeout=timeout) or self._resume is not None:
            return  # (a resumed file not yet continued stays as the interrupted run left it)
        self._write_attrs({"status": status, "end_time": time.time()})

    def abandon(self, status: str) -> bool:
        """For a run refused before it began (bad input found by every rank): leave no trace of
        it. A file this writer created and never wrote a row to is removed (True); a resumed file
        not yet continued stays exactly as the interrupted run left it; any other file is closed
        with ``status``."""
        with self.lock:
            if self.closed:
                return False
            if self._resume is not None:
                self.closed = True
                return False
            if self.created and not self._rows_written:
                try:
                    os.remove(self.path)
                    self.closed = True
                    return True
                except OSError:
                    pass
            self.close(status)
            return False

    def close(self, status: str = "ok") -> None:
        """Write what is buffered, the end time and ``status`` ("ok", "failed", ...). Idempotent."""
        if self.closed:
            return
        self.set_attrs(status=status, end_time=time.time())
        self.closed = True


def _open_append(path: str, wait: float = 10.0):
    """Open a rank file for appending. A reader in another process that holds HDF5's file lock
    (h5py's default) makes the open fail with BlockingIOError: retry for up to ``wait`` seconds
    instead of failing the run. (mpidist's own readers do not lock: see read_rank.)"""
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, "a")
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
