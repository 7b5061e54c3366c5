"""Last words for a rank that dies without any: ``kill -9``, the out-of-memory killer, a crash in
native code. The launcher then says only ``BAD TERMINATION ... PID 26330 RUNNING AT node7`` (MPICH's
hydra) and kills the other ranks at once (SIGKILL), before any of them can report which peer they
lost. So the line that names the rank comes from outside the rank:

- :func:`watch` starts one small watcher process per rank (plain Python, no MPI, its own session
  so that the launcher's kill of the rank's process group does not reach it). It holds the read
  end of a pipe whose write end only the rank holds. The kernel closes that end when the rank
  ends, however it ends.
- A rank that ends by its own means says so first: a normal exit (``atexit``) and every failure
  that prints its own report (:func:`spoke`, called by :func:`mpidist.runtime.end_job`).
- A watcher that sees the pipe close without that word prints ONE line naming the rank, its pid,
  host and time, then goes. Only the first rank of a job to end on a node speaks (a claim file in
  the node's temporary directory, named by the run id): the others are the launcher's clean-up.
  On several nodes, each node's first ended rank would claim; the time in each line tells which
  one went first.

The watcher leaves the launcher's output alone once it has spoken (it closes its copies of stdout
and stderr, so hydra and srun are not kept waiting for end-of-file), keeps the claim for
``LINGER_S`` so that the clean-up kills that follow stay silent, and removes it.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile

LINGER_S = 10.0

_SPOKE, _CLAIMED = b"s", b"c"  # what a rank tells its watcher; nothing (EOF): it died

# the watcher: argv = rank, pid, host, claim path, linger seconds; stdin = the pipe's read end
_WATCHER = r"""
import os, sys, time
rank, pid, host, claim, linger = sys.argv[1:6]
try:
    word = os.read(0, 1)
except OSError:
    word = b""
def keep_claim():
    for fd in (0, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    time.sleep(float(linger))
    try:
        os.unlink(claim)
    except OSError:
        pass
if word == b"c":
    keep_claim()
elif word == b"":
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        sys.exit(0)        # another rank ended first: this one is the launcher's clean-up
    sys.stderr.write(f"mpidist: rank {rank} (pid {pid} on {host}) ended at "
                     f"{time.strftime('%H:%M:%S')} without a word: killed by a signal (kill -9, "
                     f"the out-of-memory killer: see dmesg) or crashed in native code; its trace "
                     f"keeps the rows of its last flush\n")
    sys.stderr.flush()
    keep_claim()
"""

_pipe_w: int | None = None
_claim: str | None = None


def claim_path(run_id: str) -> str:
    """The node-local file whose creation (O_EXCL) makes a rank the first of its job to end."""
    safe = "".join(c for c in str(run_id) if c.isalnum() or c in "-_") or "run"
    return os.path.join(tempfile.gettempdir(), f"mpidist-{safe}.ended")


def watch(rank: int, run_id: str) -> bool:
    """Start this rank's watcher (once). Returns False if it could not be started (no line will
    name this rank if it is killed, nothing else changes)."""
    global _pipe_w, _claim
    if _pipe_w is not None:
        return True
    claim = claim_path(run_id)
    r, w = os.pipe()   # both ends close-on-exec: only the watcher gets r, as its stdin
    try:
        subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHER, str(rank), str(os.getpid()),
                          socket.gethostname(), claim, str(LINGER_S)],
                         stdin=r, stdout=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(w)
        return False
    finally:
        os.close(r)
    _pipe_w, _claim = w, claim
    atexit.register(_say, _SPOKE)
    return True


def spoke() -> None:
    """This rank reports its own end (a failure it printed, MPI_Abort follows): claim the job's
    first end so that the ranks the launcher kills next stay silent, and tell the watcher."""
    if _pipe_w is None:
        return
    try:
        os.close(os.open(_claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        word = _CLAIMED   # the watcher removes the claim after LINGER_S
    except OSError:
        word = _SPOKE
    _say(word)


def _say(word: bytes) -> None:
    global _pipe_w
    if _pipe_w is None:
        return
    try:
        os.write(_pipe_w, word)
        os.close(_pipe_w)
    except OSError:
        pass
    _pipe_w = None
