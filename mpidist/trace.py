"""The per-rank HDF5 trace: every message a rank exchanged and every value it logged.

This module is the only one that knows HDF5. The file layout is a contract that `tools/`, the tests
and users' notebooks read (README.md, "The trace format"):

``<run dir>/rank<k>.h5``
    root attributes ``format`` (= ``"mpidist-trace"``), ``format_version``, ``run_id`` (the same
    in every rank's file of one run), ``algorithm``, ``rank``, ``world_size``, ``hostname``,
    ``args`` (JSON), ``versions`` (JSON), ``cuda_aware``, ``comm_path`` (``"cpu"``,
    ``"cuda-aware"`` or ``"staged"``), ``start_time`` (Unix seconds at the run's t = 0), and
    ``end_time`` / ``status`` once the rank closed its file (``dropped_comm_rows`` /
    ``dropped_metric_rows`` if the file system refused rows for too long).
``/comm``
    one row per completed operation: ``step`` i8, ``op`` S12, ``peer`` i4 (-1 for collectives),
    ``tag`` i4, ``channel`` S24, ``nbytes`` i8, ``t_post`` f8, ``t_done`` f8, ``t_wait`` f8
    (seconds since t = 0; ``t_wait``: when the rank began to wait for the operation, NaN if it never
    blocked on it, so that it was blocked ``t_done - t_wait`` seconds; the rule is in
    :mod:`mpidist.handles`; format version 3, the reader gives older files' rows NaN there).
``/metrics``
    one row per logged value: ``step`` i8, ``t`` f8, ``name`` S32, ``value`` f8.

Files open in HDF5 1.10 and every later release: they are written in the HDF5 1.10 file format
(``trace_format.LIBVER``), whose metadata (superblock, object headers, attributes, chunk indexes)
carries checksums; (format version 1 used ``libver="latest"``, which under HDF5 2.0 only HDF5 2.0
reads; those files still read here). Damage is detected, not read as wrong values: both datasets
have HDF5's fletcher32 checksum filter on their chunks (a flipped bit in a row fails the read;
``checksum=False`` leaves it off; its blind spot, a 16-bit word 0xFFFF turned 0x0000, is partly
covered by the reader's value checks); string attributes are stored as fixed-length UTF-8 inside
the checksummed attribute messages (h5py reads them as ``bytes``; :func:`read_rank` decodes
them). Files written before these checksums (no filter, variable-length string attributes in
HDF5's global heap) read as before, but damage to their rows or string attributes can go
unnoticed (the reader refuses the global heap damage on which libhdf5 2.0 would loop forever).
tests/programs/fuzz_trace.py fuzzes the reader and the tools with damaged files
(tools/results/reliability/fuzz.md).

Rows are recorded as tuples appended to a list (about 0.1 us each; one numpy array per flush) and
reach the file in bulk at each :meth:`TraceWriter.flush`, a commit by rename (:mod:`mpidist.trace_commit`):
the file at ``rank<k>.h5`` is complete and closed at every instant, so a rank killed anywhere
leaves a file that opens and holds every row of every flush that returned, and a reader never
delays a flush. A flush the file system refuses never ends training (:mod:`mpidist.trace_writer`).

Import everything from here; the code lives in modules of one job each, whose names this one
re-exports: :mod:`mpidist.trace_format` (``FORMAT``, ``FORMAT_VERSION``, ``ROW_DTYPES``,
``COMM_DTYPE``, ``METRIC_DTYPE``, ``LIBVER``, ``TraceError``, ``rank_path``, ``new_run_id``),
:mod:`mpidist.trace_writer` (``TraceWriter``, on :mod:`mpidist.trace_commit`) and
:mod:`mpidist.trace_reader` (``read_rank``, ``read_run``, ``rank_files``, ``check_run``,
``RankTrace``, ``RunTrace``).
"""
from __future__ import annotations

from .trace_format import (COMM_DTYPE, COMM_DTYPE_V2, FORMAT, FORMAT_VERSION, LIBVER,
                           METRIC_DTYPE, ROW_DTYPES, TraceError, new_run_id, rank_path)
from .trace_reader import RankTrace, RunTrace, check_run, rank_files, read_rank, read_run
from .trace_writer import TraceWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "COMM_DTYPE", "COMM_DTYPE_V2", "METRIC_DTYPE", "ROW_DTYPES",
           "LIBVER",
           "TraceError", "rank_path", "new_run_id", "TraceWriter", "RankTrace", "RunTrace",
           "read_rank", "read_run", "rank_files", "check_run"]
