"""Reading trace files: :func:`read_rank` (one ``rank<k>.h5``), :func:`read_run` (a run directory),
and the loaded forms :class:`RankTrace` and :class:`RunTrace`.

The reader trusts nothing it reads: a file that is not HDF5, not an mpidist trace, or damaged
(checksums, structure, values or attributes a writer cannot produce) is refused with one
:class:`TraceError` line naming the file, in bounded reads that never wait on a lock or loop. A
run directory must hold ONE run: regular files, one per rank, all with the same run id
(:func:`check_run`).
"""
from __future__ import annotations

import json
import mmap
import os
import stat
import time
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import clock
from .trace_format import COMM_DTYPE, FORMAT, FORMAT_VERSION, ROW_DTYPES, WAIT_VERSION, TraceError


@dataclass
class RankTrace:
    """One rank's file, loaded: ``attrs`` (dict, JSON attributes decoded), ``comm`` and ``metrics``
    (numpy structured arrays with the fields of COMM_DTYPE and METRIC_DTYPE, whatever the file's
    format version: rows of files older than version 3 get ``t_wait`` = NaN)."""
    path: str
    attrs: dict
    comm: np.ndarray
    metrics: np.ndarray

    @property
    def records_wait(self) -> bool:
        """Whether the file records ``t_wait`` (format version 3 and later): if not, its NaNs
        mean "not recorded", not "never blocked"."""
        return int(self.attrs.get("format_version", 1)) >= WAIT_VERSION

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


# what h5py and numpy raise on a damaged file (UnicodeDecodeError is a ValueError); anything else
# is a bug and is not hidden behind a TraceError
_DAMAGE_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
                  OverflowError)
# libhdf5's words -> what they mean for a trace file
_HINTS = (("filter returned failure", "damaged: a checksum of its rows does not match"),
          ("checksum", "damaged: a checksum of its HDF5 metadata does not match"),
          ("truncated file", "truncated"),
          ("file signature not found", "not an HDF5 file"))


READ_TRIES = 5  # reads of a file that changed while it was read, before giving up


def read_rank(path: str) -> RankTrace:
    """Load one ``rank<k>.h5``; raise TraceError with one clear line (naming the file) for
    anything else: not a regular file, not HDF5, not an mpidist trace, or damaged. A damaged
    trace is one that libhdf5 cannot read (HDF5's metadata checksums, and fletcher32 on the rows
    of files that have it, find flipped bits), or whose structure is not the format's: both
    datasets, 1-D, with the row types of its ``format_version`` and no more rows than the file has
    bytes for, values a writer can produce (see _check_rows), and a ``rank`` attribute
    (``world_size``, ``start_time``, ``end_time`` checked where present).

    Opens without HDF5's file lock, so that reading a running job's files (the tools, a notebook
    through this function) never blocks its next flush. A running writer replaces the file by
    rename at each flush and writes the file it replaced again at the flush after
    (mpidist.trace_commit), so a read lasting longer than the time between two flushes can see
    the file it opened change: a read during which the opened file's size or modification time
    changed is read again, up to READ_TRIES times; one during which they did not is the answer,
    damaged or not."""
    for attempt in range(READ_TRIES):
        before = _identity(path)
        seen = []  # the opened file's (size, mtime) when opened and when read
        try:
            result, error = _read_once(path, seen), None
        except TraceError as e:
            result, error = None, e
        if len(seen) == 2:
            changed = seen[0] != seen[1]
        else:  # it did not open: did the file at path change meanwhile?
            changed = _identity(path) != before
        if not changed:
            if error is not None:
                raise error
            return result
        time.sleep(0.01 * (attempt + 1))
    raise TraceError(f"{path}: changed during each of {READ_TRIES} reads (a writer flushing "
                     "faster than it can be read); try again")


def _identity(path: str) -> tuple:
    """What changes when a file is replaced or written: (device, inode, size, mtime). Raises
    TraceError for a path that is not a regular file (a FIFO would block the read forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise TraceError(f"{path}: not a regular file; not an mpidist trace")
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _opened(f) -> tuple | None:
    """(size, mtime) of the file h5py has open (its descriptor), or None if it cannot tell."""
    try:
        st = os.fstat(f.id.get_vfd_handle())
    except (OSError, ValueError, TypeError, RuntimeError):
        return None
    return (st.st_size, st.st_mtime_ns)


def _read_open(path: str, f, first) -> tuple:
    """(attrs, comm rows, metric rows) of an open file, checked (see read_rank)."""
    size = first[0] if first is not None else os.path.getsize(path)
    _check_global_heap(path, f)  # before any attribute value is read
    # not attrs.get(): it answers None when a damaged file cannot read the attribute
    fmt = _decode(f.attrs["format"]) if "format" in f.attrs else None
    if not (isinstance(fmt, str) and fmt == FORMAT):
        raise TraceError(f"{path}: not an mpidist trace (no format='{FORMAT}' attribute)")
    attrs = {k: _decode(f.attrs[k]) for k in f.attrs.keys()}
    version = attrs.get("format_version", 1)
    if not (isinstance(version, int) and not isinstance(version, bool) and version in ROW_DTYPES):
        raise TraceError(f"{path}: mpidist trace of format_version {version!r}, which this reader "
                         f"does not know (it reads {', '.join(map(str, ROW_DTYPES))}; written by "
                         "a newer mpidist?)")
    comm_dtype, metric_dtype = ROW_DTYPES[version]
    comm = _current(_rows(path, f, "comm", comm_dtype, size, attrs))
    metrics = _rows(path, f, "metrics", metric_dtype, size, attrs)
    return attrs, comm, metrics


def _current(comm: np.ndarray) -> np.ndarray:
    """Rows of an older format's /comm with the fields of COMM_DTYPE (``t_wait`` NaN)."""
    if comm.dtype.names == COMM_DTYPE.names:
        return comm
    out = np.zeros(len(comm), COMM_DTYPE)
    out["t_wait"] = np.nan
    for name in comm.dtype.names:
        out[name] = comm[name]
    return out


def _read_once(path: str, seen: list) -> RankTrace:
    try:
        with h5py.File(path, "r", locking=False) as f:
            first = _opened(f)
            try:
                attrs, comm, metrics = _read_open(path, f, first)
            finally:
                last = _opened(f)
                if first is not None and last is not None:
                    seen += [first, last]
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
    clock.align_rows(attrs, comm, metrics)  # rank 0's clock: the drift since the start removed
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
    value below -2 (half of a -1 zeroed), and some damage to files written without checksums.
    (``t_wait`` may be NaN: the rank never blocked on that operation.)"""
    checks = (("comm", comm, "peer", comm["peer"] < -2, "a rank or -1"),
              ("comm", comm, "tag", comm["tag"] < -1, "a tag or -1"),
              ("comm", comm, "nbytes", comm["nbytes"] < 0, "a byte count"),
              ("comm", comm, "t_post", ~np.isfinite(comm["t_post"]), "seconds"),
              ("comm", comm, "t_done", ~np.isfinite(comm["t_done"]), "seconds"),
              ("comm", comm, "t_wait", np.isinf(comm["t_wait"]), "seconds or NaN"),
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
    for k in ("dropped_comm_rows", "dropped_metric_rows"):
        if k in attrs and (not integer(k) or attrs[k] < 0):
            problems.append(f"{k} = {attrs[k]!r}")
    bad_clock = clock.check_attrs(attrs)
    if bad_clock:
        problems.append(bad_clock)
    for k in ("start_time", "end_time"):
        v = attrs.get(k, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
            problems.append(f"{k} = {v!r}")
    if problems:
        raise TraceError(f"{path}: damaged mpidist trace: attribute {', '.join(problems)}")


def rank_files(path: str) -> list[str]:
    """The ``rank<k>.h5`` names in a run directory, ordered by k (names that are not
    ``rank<number>.h5`` last)."""
    return sorted((f for f in os.listdir(path) if f.startswith("rank") and f.endswith(".h5")),
                  key=lambda f: (int(f[4:-3]), f) if f[4:-3].isdigit() else (1 << 30, f))


def check_run(path: str, ranks: list) -> None:
    """Refuse (TraceError, one line) rank files that are not one run: two files claiming the same
    rank, or files of different runs: a different ``run_id`` (every file written since format
    version 2 has one, the same on every rank of a run), or, for files without one, a different
    algorithm or world size."""
    seen = {}
    for r in ranks:
        if r.rank in seen:
            raise TraceError(f"{path}: two files claim rank {r.rank} ({os.path.basename(seen[r.rank])}"
                             f" and {os.path.basename(r.path)}); one run has one file per rank")
        seen[r.rank] = r.path
    if len(ranks) < 2:
        return

    def run_of(r):
        if "run_id" in r.attrs:
            return f"run_id {r.attrs['run_id']}"
        return (f"no run_id, algorithm {r.attrs.get('algorithm', '?')}, "
                f"world_size {r.attrs.get('world_size', '?')}")
    first = ranks[0]
    for r in ranks[1:]:
        if run_of(r) != run_of(first):
            raise TraceError(f"{path}: files of different runs ({os.path.basename(first.path)}: "
                             f"{run_of(first)}; {os.path.basename(r.path)}: {run_of(r)}); "
                             "give each run its own directory")


def read_run(path: str) -> RunTrace:
    """Load a run directory (all ``rank*.h5`` in it, which must be one run: :func:`check_run`)
    or a single rank file."""
    if os.path.isfile(path):
        return RunTrace(os.path.dirname(path), [read_rank(path)])
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise TraceError(f"{path}: not a regular file or directory; not an mpidist run")
        raise TraceError(f"{path}: no such run directory or trace file")
    files = rank_files(path)
    if not files:
        raise TraceError(f"{path}: no rank<k>.h5 files in this directory; not an mpidist run")
    ranks = [read_rank(os.path.join(path, f)) for f in files]
    check_run(path, ranks)
    return RunTrace(path, ranks)
