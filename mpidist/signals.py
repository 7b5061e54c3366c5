"""SIGUSR1, SIGTERM and SIGINT: the agreed stop (checkpoint and exit 0; 130 after SIGINT), with a
deadline that holds even while the main thread is blocked inside MPI.

SIGUSR1 is what ``sbatch --signal=USR1@...`` sends before a time limit; SIGTERM is the time limit
itself, preemption or ``scancel``; SIGINT is Ctrl-C (``mpirun`` forwards it to every rank). The Python handler only sets ``run.stop_signal``; the ranks agree
on it at their next meeting point (:mod:`mpidist.loop`). A watcher thread keeps SIGTERM's
``--term-grace`` deadline: past it (a dead peer, a very long step) the rank marks its trace and
SIGKILLs itself so that the launcher ends the job.
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
DEADLINE_SIGNALS = (int(signal.SIGTERM), int(signal.SIGINT))   # these keep --term-grace
_active_run = None               # the run the stop signals are for (None between runs)
_wakeup_fd: int | None = None    # read end of the pipe Python's C-level signal handler writes to


def install(run) -> None:
    """SIGUSR1 and SIGTERM ask ``run`` for the agreed stop. Python runs a handler only when the
    main thread is between bytecodes, which may be never if it waits inside MPI for a dead peer;
    so the C-level handler also writes the signal number to a pipe (``signal.set_wakeup_fd``) that
    a daemon thread watches to keep SIGTERM's deadline."""
    global _active_run, _wakeup_fd
    if _wakeup_fd is None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        _wakeup_fd = r
        threading.Thread(target=_watch, args=(r,), name="mpidist-signals", daemon=True).start()
    _active_run = run
    run._previous_handlers = {s: signal.signal(s, run._on_signal) for s in STOP_SIGNALS}


def uninstall(run) -> None:
    global _active_run
    for s, h in run._previous_handlers.items():
        signal.signal(s, h)
    run._previous_handlers = {}
    if _active_run is run:
        _active_run = None


def _watch(fd: int) -> None:
    """The watcher thread: the first SIGTERM (or SIGINT) of a run starts its --term-grace deadline; when the
    deadline passes (the rank could not agree and checkpoint: a peer is dead, a step is too long),
    the rank ends at once (``Run._terminate``). Further SIGTERMs change nothing (SLURM's and a
    batch script's may both arrive); SIGKILL is there for an immediate end."""
    armed, deadline = None, 0.0
    while True:
        wait = None if armed is None else max(0.0, deadline - time.monotonic())
        ready = select.select([fd], [], [], wait)[0]
        data = os.read(fd, 512) if ready else b""
        run = _active_run
        if run is None or run is not armed:
            armed = None
        if run is None:
            continue
        if armed is not None and not ready:
            run._terminate(f"no agreed checkpoint within --term-grace {run.args.term_grace:g} s")
        if armed is None and any(sig in data for sig in DEADLINE_SIGNALS):
            armed, deadline = run, time.monotonic() + run.args.term_grace
