"""The run directory: chosen and created on rank 0, never overwriting an earlier run's trace, and
owned by one job at a time.

Ownership: rank 0 holds a POSIX lock (``fcntl.lockf``) on ``<run dir>/.owner`` for as long as its
process lives, and writes who it is there (host, pid, SLURM job id, start time). A second job
(two ``--resume R`` at once) finds the lock taken and is refused with one line naming the first.
The kernel drops the lock when the owner dies, however it dies (SIGKILL, a node's reboot on a
local disk), so a stale ``.owner`` of a dead job is simply taken over. Clean exits remove it.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
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
            err = own(run_dir)
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


OWNER = ".owner"
_held: dict[str, int] = {}   # run directory -> the descriptor whose lock this process holds


def own(run_dir: str) -> str | None:
    """Take the run directory for this process (rank 0): None, or the one-line refusal naming the
    job that holds it. Taking it again in the same process (runs one after the other in one
    script) is allowed."""
    key = os.path.abspath(run_dir)
    if key in _held:
        return None
    path = os.path.join(run_dir, OWNER)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            who = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            who = {}
        os.close(fd)
        job = f", SLURM job {who['job']}" if who.get("job") else ""
        since = (f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(who['since']))}"
                 if who.get("since") else "")
        return (f"{run_dir} is in use by another job (host {who.get('host', '?')}, pid "
                f"{who.get('pid', '?')}{job}{since}); one job at a time may write a run "
                "directory: wait for it to end or choose another --trace-dir")
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "job": os.environ.get("SLURM_JOB_ID"), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    _held[key] = fd
    return None


def release(run_dir: str) -> None:
    """Give the run directory up (remove ``.owner``); a no-op where this process does not own it."""
    fd = _held.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        try:
            os.unlink(os.path.join(run_dir, OWNER))
        except OSError:
            pass
        os.close(fd)


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        release(key)


def remove_if_empty(run_dir: str, mine: bool) -> None:
    """Remove the run directory this run created (``mine``) if nothing is left in it."""
    release(run_dir)
    if mine:
        try:
            os.rmdir(run_dir)
        except OSError:
            pass
