"""Reading trace files: :func:`read_rank` (one ``rank<k>.h5``), :func:`read_run` (a run directory),
and the loaded forms :class:`RankTrace` and :class:`RunTrace`.

The reader trusts nothing it reads: a file that is not HDF5, not an mpidist trace, or damaged
(checksums, structure, values or attributes a writer cannot produce) is refused with one
:class:`TraceError` line naming the file, in one bounded read that never waits or loops.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .trace_format import COMM_DTYPE, FORMAT, FORMAT_VERSION, METRIC_DTYPE, TraceError


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
