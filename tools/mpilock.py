"""The machine's shared lock for multi-rank launches, for the experiment scripts beside this file.

On a small shared machine only one MPI job should run at a time (timings, and ranks that would
oversubscribe the cores twice over); every launch holds the lock that ``flock LOCK command`` takes.
"""
from __future__ import annotations

import contextlib
import fcntl

LOCK = "/tmp/mpidist-mpi.lock"


@contextlib.contextmanager
def held(path: str = LOCK):
    """Hold ``path``'s exclusive flock (the one ``flock(1)`` takes) while the body runs; no lock
    for an empty path."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
