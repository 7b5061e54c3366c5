"""The trace format's fixed names: the ``format`` attribute and its version, the row types of
``/comm`` and ``/metrics``, where a rank's file lives, and :class:`TraceError`.

Shared by :mod:`mpidist.trace_writer` and :mod:`mpidist.trace_reader`; the layout they implement is
described in :mod:`mpidist.trace` (and README.md, "The trace format").
"""
from __future__ import annotations

import os

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
