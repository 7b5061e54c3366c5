"""Running an entry point's ``main(argv)`` inside a test program, case after case, in one process.

:func:`catch_aborts` replaces the runtime's ``abort`` (which would end the whole job with
MPI_Abort) by an exception, so that a crash fails one case and the remaining cases still run;
:func:`call_main` runs one case with stdout and stderr captured and an alarm: a case still running
after ``alarm`` seconds has accepted what it should have refused.
"""
from __future__ import annotations

import contextlib
import io
import signal
import traceback


class Aborted(Exception):
    """What the runtime's abort (MPI_Abort) would have ended the job with."""


class Alarm(Exception):
    """The case ran past its alarm: the input was accepted."""


def catch_aborts(label: str) -> None:
    """From now on ``mpidist.runtime.abort`` closes the trace (status ``failed (label)``) and
    raises :class:`Aborted` instead of ending the job."""
    from mpidist import runtime

    def fake_abort(rank, exc, trace=None, code=1):
        if trace is not None:
            with contextlib.suppress(Exception):
                trace.close(status=f"failed ({label})")
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise Aborted(f"MPI_Abort after {type(exc).__name__}: {exc}\n{tb[-1500:]}")

    runtime.abort = fake_abort


def call_main(mod, argv, alarm: float) -> tuple[object, str, str, str]:
    """(exit code, stdout, stderr, crash) of ``mod.main(argv)`` in this process; ``crash`` is ""
    unless it aborted, ran past ``alarm`` seconds, or raised (with its traceback)."""
    def on_alarm(signum, frame):
        raise Alarm(f"still running after {alarm:g} s: the input was accepted")

    out, err = io.StringIO(), io.StringIO()
    code, crash = None, ""
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(alarm))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                mod.main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
    except (Aborted, Alarm) as e:
        crash = str(e)
    except Exception as e:  # noqa: BLE001 - anything uncaught would have been a traceback
        crash = f"uncaught {type(e).__name__}: {e}\n" + traceback.format_exc()[-1500:]
    finally:
        signal.alarm(0)
    return code, out.getvalue(), err.getvalue(), crash
