"""The run directory: chosen and created on rank 0, never overwriting an earlier run's trace."""
from __future__ import annotations

import os
import time

from .trace import rank_path


def choose(trace_dir: str | None, algorithm: str, resume_dir: str | None):
    """(run directory, error or None, created): ``--trace-dir``, else the resumed run's directory,
    else ``runs/<algorithm>-<date>-<time>``. An existing trace there is refused unless this run
    continues it (``resume_dir``); the directory must be writable."""
    run_dir = trace_dir or resume_dir or os.path.join(
        "runs", f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")
    err, created = None, False
    try:
        created = not os.path.exists(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        continuing = resume_dir is not None and os.path.abspath(run_dir) == resume_dir
        if os.path.exists(rank_path(run_dir, 0)) and not continuing:
            err = (f"--trace-dir {run_dir} already holds a trace (rank0.h5); choose another "
                   "directory so that the earlier run is not overwritten")
        else:
            probe_writable(run_dir)
    except PermissionError as e:
        err = f"--trace-dir {run_dir} is not writable ({e.strerror})"
    except OSError as e:
        err = f"--trace-dir {run_dir}: cannot create it ({e.strerror})"
    return run_dir, err, created


def probe_writable(run_dir: str) -> None:
    """Create and remove a file in ``run_dir`` (raises OSError): a real test, where os.access
    says yes to root even on a read-only file system or a kernel directory."""
    import tempfile
    with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".mpidist-probe-"):
        pass


def remove_if_empty(run_dir: str, mine: bool) -> None:
    """Remove the run directory this run created (``mine``) if nothing is left in it."""
    if mine:
        try:
            os.rmdir(run_dir)
        except OSError:
            pass
