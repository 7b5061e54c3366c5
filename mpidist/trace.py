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

Import everything from here; the code lives in modules of one job each, whose names this one
re-exports: :mod:`mpidist.trace_format` (``FORMAT``, ``FORMAT_VERSION``, ``COMM_DTYPE``,
``METRIC_DTYPE``, ``TraceError``, ``rank_path``), :mod:`mpidist.trace_writer` (``TraceWriter``) and
:mod:`mpidist.trace_reader` (``read_rank``, ``read_run``, ``RankTrace``, ``RunTrace``).
"""
from __future__ import annotations

from .trace_format import COMM_DTYPE, FORMAT, FORMAT_VERSION, METRIC_DTYPE, TraceError, rank_path
from .trace_reader import RankTrace, RunTrace, read_rank, read_run
from .trace_writer import TraceWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "COMM_DTYPE", "METRIC_DTYPE", "TraceError", "rank_path",
           "TraceWriter", "RankTrace", "RunTrace", "read_rank", "read_run"]
