"""The per-rank HDF5 trace: every message a rank exchanged and every value it logged.

This module is the only one that knows HDF5. The file layout is a contract that `tools/`, the tests
and users' notebooks read (README.md, "The trace format"):

``<run dir>/rank<k>.h5``
    root attributes ``format`` (= ``"mpidist-trace"``), ``format_version``, ``algorithm``, ``rank``,
    ``world_size``, ``hostname``, ``args`` (JSON), ``versions`` (JSON), ``cuda_aware``,
    ``comm_path`` (``"cpu"``, ``"cuda-aware"`` or ``"staged"``), ``start_time`` (Unix seconds at
    the run's t = 0), and ``end_time`` / ``status`` once the rank closed its file.
``/comm``
    one row per completed operation: ``step`` i8, ``op`` S12, ``peer`` i4 (-1 for collectives),
    ``tag`` i4, ``channel`` S24, ``nbytes`` i8, ``t_post`` f8, ``t_done`` f8 (seconds since t = 0).
``/metrics``
    one row per logged value: ``step`` i8, ``t`` f8, ``name`` S32, ``value`` f8.

Damage is detected, not read as wrong values: the file is written with HDF5's newest format
(``libver="latest"``), whose metadata (superblock, object headers, attributes, chunk indexes)
carries checksums; both datasets have HDF5's fletcher32 checksum filter on their chunks (a flipped
bit in a row fails the read; ``checksum=False`` leaves it off; its blind spot, a 16-bit word
0xFFFF turned 0x0000, is partly covered by the reader's value checks); string attributes are
stored as fixed-length UTF-8 inside the checksummed attribute messages (h5py reads them as
``bytes``; :func:`read_rank` decodes them). Files written before these checksums (no filter,
variable-length string attributes in HDF5's global heap) read as before, but damage to their rows
or string attributes can go unnoticed (the reader refuses the global heap damage on which libhdf5
2.0 would loop forever). tests/programs/fuzz_trace.py fuzzes the reader and the tools with damaged
files (tools/results/reliability/fuzz.md).

Rows are recorded into preallocated numpy arrays (a fraction of a microsecond each) and appended to
the file in bulk by :meth:`TraceWriter.flush`, which opens, extends and closes the file: between
flushes the file on disk is closed and consistent, so a killed job leaves files that open and hold
every row up to the last flush.
"""
from __future__ import annotations

import json
import mmap
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

FORMAT = "mpidist-trace"
FORMAT_VERSION = 1

COMM_DTYPE = np.dtype([
    ("step", "<i8"), ("op", "S12"), ("peer", "<i4"), ("tag", "<i4"), ("channel", "S24"),
    ("nbytes", "<i8"), ("t_post", "<f8"), ("t_done", "<f8"),
])
METRIC_DTYPE = np.dtype([("step", "<i8"), ("t", "<f8"), ("name", "S32"), ("value", "<f8")])


class TraceError(Exception):
    """A file or directory that is not (or no longer) a readable mpidist trace."""


def rank_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, f"rank{rank}.h5")


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


# ----------------------------------------------------------------------------------------- reader

@dataclass
class RankTrace:
    """One rank's file, loaded: ``attrs`` (dict, JSON attributes decoded), ``comm`` and ``metrics``
    (numpy structured arrays with the fields of COMM_DTYPE and METRIC_DTYPE)."""
    path: str
    attrs: dict
    comm: np.ndarray
    metrics: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.attrs["rank"])

    def metric(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, times, values) of one metric, in the order logged."""
        rows = self.metrics[self.metrics["name"] == name.encode()]
        return rows["step"], rows["t"], rows["value"]


@dataclass
class RunTrace:
    """A run directory: one RankTrace per rank file found, ordered by rank."""
    path: str
    ranks: list = field(default_factory=list)

    @property
    def attrs(self) -> dict:
        return self.ranks[0].attrs

    @property
    def comm(self) -> np.ndarray:
        """All ranks' comm rows, with a ``rank`` field added."""
        return _stack([r.comm for r in self.ranks], [r.rank for r in self.ranks])

    @property
    def metrics(self) -> np.ndarray:
        return _stack([r.metrics for r in self.ranks], [r.rank for r in self.ranks])


def _stack(arrays, ranks) -> np.ndarray:
    if not arrays:
        return np.zeros(0)
    # field types by .str: arrays read by h5py carry dtype metadata that .descr cannot rebuild
    first = arrays[0].dtype
    dt = np.dtype([("rank", "<i4")] + [(n, first.fields[n][0].str) for n in first.names])
    out = np.zeros(sum(len(a) for a in arrays), dtype=dt)
    i = 0
    for a, r in zip(arrays, ranks):
        out["rank"][i:i + len(a)] = r
        for name in a.dtype.names:
            out[name][i:i + len(a)] = a[name]
        i += len(a)
    return out


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


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


# what h5py and numpy raise on a damaged file (UnicodeDecodeError is a ValueError); anything else
# is a bug and is not hidden behind a TraceError
_DAMAGE_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
                  OverflowError)
# libhdf5's words -> what they mean for a trace file
_HINTS = (("filter returned failure", "damaged: a checksum of its rows does not match"),
          ("checksum", "damaged: a checksum of its HDF5 metadata does not match"),
          ("truncated file", "truncated"),
          ("file signature not found", "not an HDF5 file"))


def read_rank(path: str) -> RankTrace:
    """Load one ``rank<k>.h5``; raise TraceError with one clear line (naming the file) for
    anything else: not HDF5, not an mpidist trace, or damaged. A damaged trace is one that libhdf5
    cannot read (HDF5's metadata checksums, and fletcher32 on the rows of files that have it,
    find flipped bits), or whose structure is not the format's: both datasets, 1-D, with the
    fields of COMM_DTYPE and METRIC_DTYPE and no more rows than the file has bytes for, values
    a writer can produce (see _check_rows), and a ``rank`` attribute (``world_size``,
    ``start_time``, ``end_time`` checked where present).

    Opens without HDF5's file lock, so that reading a running job's files (the tools, a test
    watching progress) never blocks that job's next flush. A file caught in the middle of a flush
    may read as damaged (TraceError) or without (or with zeroed) rows of that flush: exact numbers
    come from files the writer has closed (or flushed before the read). Nothing here waits or
    retries: a damaged file is one bounded read."""
    try:
        size = os.path.getsize(path)
        with h5py.File(path, "r", locking=False) as f:
            _check_global_heap(path, f)  # before any attribute value is read
            # not attrs.get(): it answers None when a damaged file cannot read the attribute
            fmt = _decode(f.attrs["format"]) if "format" in f.attrs else None
            if not (isinstance(fmt, str) and fmt == FORMAT):
                raise TraceError(f"{path}: not an mpidist trace (no format='{FORMAT}' attribute)")
            attrs = {k: _decode(f.attrs[k]) for k in f.attrs.keys()}
            comm = _rows(path, f, "comm", COMM_DTYPE, size, attrs)
            metrics = _rows(path, f, "metrics", METRIC_DTYPE, size, attrs)
    except TraceError:
        raise
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except _DAMAGE_ERRORS as e:  # libhdf5 found the file damaged (or it is not HDF5 at all)
        msg = str(e).splitlines()[0] if str(e) else "damaged file"
        hint = next((h + "; " for k, h in _HINTS if k in msg), "")
        raise TraceError(f"{path}: not a readable mpidist trace ({hint}{type(e).__name__}: "
                         f"{msg})") from None
    _check_attrs(path, attrs)
    _check_rows(path, comm, metrics)
    return RankTrace(path, attrs, comm, metrics)


def _check_global_heap(path: str, f) -> None:
    """Files written before the checksums keep their string attributes in HDF5 global heap
    collections ("GCOL"), which have no checksum. libhdf5 (2.0 and before) parses a collection
    object by object and stands still, forever and holding the GIL, on an object header of index 0
    and size 0, which is what zeroed bytes look like. Such a file is refused here, before libhdf5
    reads it: each collection found in the file is walked the way libhdf5 walks it (16-byte
    collection header, objects of a 16-byte header plus their size rounded up to 8 bytes; index 0
    is free space, its size taken as is). A valid collection never holds an index-0 object of size
    0. Files with no variable-length attribute (every file written since) are not scanned."""
    vlen = False
    for k in f.attrs:  # the names and types only: no value, so no global heap, is read here
        info = h5py.check_string_dtype(f.attrs.get_id(k).dtype)
        vlen |= info is not None and info.length is None
    if not vlen:
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = m.find(b"GCOL\x01")
        while pos >= 0:
            end = pos + int.from_bytes(m[pos + 8:pos + 16], "little")  # the collection's size
            p = pos + 16
            while p + 16 <= min(end, len(m)):
                idx = int.from_bytes(m[p:p + 2], "little")
                size = int.from_bytes(m[p + 8:p + 16], "little")
                step = size if idx == 0 else (16 + (size + 7) // 8 * 8) % (1 << 64)  # a size_t
                if step == 0:
                    raise TraceError(f"{path}: not a readable mpidist trace (damaged: its global "
                                     f"heap at byte {pos} holds an object header of size 0, on "
                                     "which libhdf5 would loop forever)")
                p += step
            pos = m.find(b"GCOL\x01", pos + 1)


def _rows(path: str, f, name: str, dtype: np.dtype, size: int, attrs: dict) -> np.ndarray:
    """The rows of dataset ``name``, after checking that it is the format's (a damaged object
    header could claim another type or a huge number of rows)."""
    if name not in f:
        raise TraceError(f"{path}: damaged mpidist trace: no /{name} dataset")
    ds = f[name]  # not f.get(): it answers None when a damaged file cannot open the dataset
    if not isinstance(ds, h5py.Dataset):
        raise TraceError(f"{path}: damaged mpidist trace: /{name} is not a dataset")
    if ds.ndim != 1 or ds.dtype != dtype:
        raise TraceError(f"{path}: mpidist trace with unexpected /{name} ({ds.shape} {ds.dtype}; "
                         f"format_version {attrs.get('format_version')}, this reader knows "
                         f"{FORMAT_VERSION})")
    if ds.shape[0] * dtype.itemsize > size:  # every row was written: the file holds its bytes
        raise TraceError(f"{path}: damaged mpidist trace: /{name} claims {ds.shape[0]} rows, "
                         f"more than the file's {size} bytes hold")
    return ds[()]


def _check_rows(path: str, comm: np.ndarray, metrics: np.ndarray) -> None:
    """Values no writer produces: a peer below -2 (ranks are >= 0, -1 marks a collective, -1/-2
    are MPI's ANY_SOURCE and PROC_NULL), a tag below -1 (MPI's tags are >= 0, ANY_TAG is -1), a
    negative byte count, a time that is not finite. Fletcher32 cannot tell a 16-bit word 0xFFFF
    from 0x0000, so bytes zeroed over a -1 can pass it: these checks catch those that leave a
    value below -2 (half of a -1 zeroed), and some damage to files written without checksums."""
    checks = (("comm", comm, "peer", comm["peer"] < -2, "a rank or -1"),
              ("comm", comm, "tag", comm["tag"] < -1, "a tag or -1"),
              ("comm", comm, "nbytes", comm["nbytes"] < 0, "a byte count"),
              ("comm", comm, "t_post", ~np.isfinite(comm["t_post"]), "seconds"),
              ("comm", comm, "t_done", ~np.isfinite(comm["t_done"]), "seconds"),
              ("metrics", metrics, "t", ~np.isfinite(metrics["t"]), "seconds"))
    for name, rows, column, bad, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise TraceError(f"{path}: damaged mpidist trace: /{name} row {i} has {column} = "
                             f"{rows[column][i].item()!r}, not {what}")


def _check_attrs(path: str, attrs: dict) -> None:
    """The attributes the readers rely on have the types the writer gives them."""
    def integer(k):
        v = attrs.get(k)
        return isinstance(v, int) and not isinstance(v, bool)
    problems = []
    if not integer("rank") or attrs["rank"] < 0:
        problems.append(f"rank = {attrs.get('rank')!r}")
    if "world_size" in attrs and (not integer("world_size") or attrs["world_size"] < 1):
        problems.append(f"world_size = {attrs['world_size']!r}")
    elif "world_size" in attrs and integer("rank") and attrs["rank"] >= attrs["world_size"]:
        problems.append(f"rank = {attrs['rank']} not below world_size = {attrs['world_size']}")
    for k in ("start_time", "end_time"):
        v = attrs.get(k, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
            problems.append(f"{k} = {v!r}")
    if problems:
        raise TraceError(f"{path}: damaged mpidist trace: attribute {', '.join(problems)}")


def read_run(path: str) -> RunTrace:
    """Load a run directory (all ``rank*.h5`` in it) or a single rank file."""
    if os.path.isfile(path):
        return RunTrace(os.path.dirname(path), [read_rank(path)])
    if not os.path.isdir(path):
        raise TraceError(f"{path}: no such run directory or trace file")
    files = sorted((f for f in os.listdir(path) if f.startswith("rank") and f.endswith(".h5")),
                   key=lambda f: int(f[4:-3]) if f[4:-3].isdigit() else 1 << 30)
    if not files:
        raise TraceError(f"{path}: no rank<k>.h5 files in this directory; not an mpidist run")
    return RunTrace(path, [read_rank(os.path.join(path, f)) for f in files])
