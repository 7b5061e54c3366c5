"""The trace format's fixed names: the ``format`` attribute and its versions, the row types of
``/comm`` and ``/metrics``, the HDF5 file-format bounds, where a rank's file (and its writer's
private shadow copy) lives, the run id, and :class:`TraceError`.

Shared by :mod:`mpidist.trace_writer`, :mod:`mpidist.trace_commit` and :mod:`mpidist.trace_reader`;
the layout they implement is described in :mod:`mpidist.trace` (and README.md, "The trace format").

Versions (``format_version``), each read by this reader with its own row types (``ROW_DTYPES``):

1. written with HDF5's newest file format (``libver="latest"``): under HDF5 2.0 only HDF5 2.0
   reads it; rows appended in place (a writer killed while its file was open could leave it
   unreadable).
2. the same datasets and attributes, written with the HDF5 1.10 file format (``LIBVER``, read by
   HDF5 1.10 and every later release, metadata still checksummed), a ``run_id`` attribute shared
   by all ranks of a run, and each flush committed by an atomic rename (:mod:`mpidist.trace_commit`).
3. as 2, with one more ``/comm`` field at the end of each row, ``t_wait`` f8: when the rank began
   to wait for the operation (same clock as ``t_post``/``t_done``), NaN if it never blocked on it
   (see :class:`mpidist.handles.Handle`). The reader gives rows of versions 1 and 2 this field
   too, filled with NaN (``RankTrace.records_wait`` tells the two apart).

A later version adds its entry to ``ROW_DTYPES`` (and raises ``FORMAT_VERSION``); files of every
version listed still read.
"""
from __future__ import annotations

import os
import uuid

import numpy as np

FORMAT = "mpidist-trace"
FORMAT_VERSION = 3

# the rows of /comm in versions 1 and 2
COMM_DTYPE_V2 = np.dtype([
    ("step", "<i8"), ("op", "S12"), ("peer", "<i4"), ("tag", "<i4"), ("channel", "S24"),
    ("nbytes", "<i8"), ("t_post", "<f8"), ("t_done", "<f8"),
])
# the rows of /comm written now (version 3): t_wait added at the end
COMM_DTYPE = np.dtype(COMM_DTYPE_V2.descr + [("t_wait", "<f8")])
METRIC_DTYPE = np.dtype([("step", "<i8"), ("t", "<f8"), ("name", "S32"), ("value", "<f8")])

# format_version -> (row type of /comm, row type of /metrics): what the reader expects
ROW_DTYPES = {1: (COMM_DTYPE_V2, METRIC_DTYPE), 2: (COMM_DTYPE_V2, METRIC_DTYPE),
              3: (COMM_DTYPE, METRIC_DTYPE)}
WAIT_VERSION = 3  # the first format_version whose rows record t_wait

# HDF5 file-format bounds of the files written (h5py's libver): the HDF5 1.10 format, the oldest
# whose every metadata structure carries a checksum (superblock version 3, version-2 object
# headers, the version-4 layout message with its checksummed chunk index), and nothing newer
# (HDF5 2.0's "latest" writes datatype messages that HDF5 1.10-1.14 cannot read)
LIBVER = ("v110", "v110")


class TraceError(Exception):
    """A file or directory that is not (or no longer) a readable mpidist trace."""


def rank_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, f"rank{rank}.h5")


def shadow_path(path: str) -> str:
    """The writer's private copy of ``path`` (hidden, and not named ``rank*.h5``): flushes are
    written there and renamed over ``path`` (:mod:`mpidist.trace_commit`). Left over only by a
    writer that was killed; the next writer of ``path`` replaces it, readers never open it."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.next")


def previous_path(path: str) -> str:
    """A second name the committed file gets for a moment during a commit (see shadow_path)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.prev")


def new_run_id() -> str:
    """A fresh run id (32 hex digits): made once per run on rank 0 and given to every rank, so
    that the files of one run can be told from another's."""
    return uuid.uuid4().hex
