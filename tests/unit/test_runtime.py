"""The runtime's promises, tested by running a small traced program (tests/programs/toy.py):
clean runs, bad arguments, a rank that raises, a silent peer. Every launch has a timeout.

This file holds the checks that need no multi-rank launch; tests/mpi/test_runtime.py holds the launches."""
import time

import pytest


def test_checkpoint_period_and_stop_codes():
    from mpidist.runtime import checkpoint_period, decode_stop
    import argparse
    assert checkpoint_period("0") == (0, 0.0) and checkpoint_period("25") == (25, 0.0)
    assert checkpoint_period("90s") == (0, 90.0) and checkpoint_period("1.5m") == (0, 90.0)
    assert checkpoint_period("2h") == (0, 7200.0)
    for bad in ("-1", "0s", "m", "1d", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            checkpoint_period(bad)
    # the max over ranks of 2 x signal + timed-due: any signal stops (and saves), a due timer saves
    assert decode_stop(0) == (False, False) and decode_stop(1) == (True, False)
    assert decode_stop(2 * 10) == (True, True) and decode_stop(2 * 15 + 1) == (True, True)


@pytest.mark.parametrize("codes", [[0, 0], [30, 0], [0, 20, 0], [1, 0, 0, 0], [20, 30, 1],
                                   [21] * 7, [0] * 5 + [31], [1] * 3])
def test_stop_codes_agreed_through_a_mean(codes):
    """AdaComm agrees through averaged slots: the mean of the terms decides what the max over the
    ranks decides (save, stop, and which signal), also with a timer due beside a signal."""
    from mpidist.runtime import decode_stop, stop_from_mean, stop_term
    n = len(codes)
    agreed = stop_from_mean(sum(stop_term(c, n) for c in codes) / n, n)
    assert decode_stop(agreed) == decode_stop(max(codes))
    assert int(agreed) // 2 == max(codes) // 2                    # the signal named
    assert int(agreed) % 2 == any(c % 2 for c in codes)          # any rank's timer


def test_end_job_exits_when_mpi_abort_returns(monkeypatch):
    """The same in one process, deterministic: an MPI_Abort that returns as MPICH's does; end_job
    waits ABORT_WAIT_S for the kill, then exits with the code itself."""
    from mpidist import runtime
    calls = []

    class Exited(BaseException):
        pass

    class World:
        @staticmethod
        def Abort(code):
            calls.append(("Abort", code))

    def fake_exit(code):
        calls.append(("_exit", code))
        raise Exited

    monkeypatch.setattr(runtime.MPI, "COMM_WORLD", World)
    monkeypatch.setattr(runtime.os, "_exit", fake_exit)
    monkeypatch.setattr(runtime, "ABORT_WAIT_S", 0.2)
    t = time.monotonic()
    with pytest.raises(Exited):
        runtime.end_job(3)
    assert calls == [("Abort", 3), ("_exit", 3)]
    assert 0.2 <= time.monotonic() - t < 60  # waits ABORT_WAIT_S, then ends (bound for a busy machine)


def test_resume_mismatch_names_the_changed_flags():
    from mpidist.runtime import resume_mismatch
    saved = {"lr": 0.1, "steps": 5, "trace_dir": "a", "model": "cnn", "fail_at": None}
    assert resume_mismatch(saved, {**saved, "steps": 9, "trace_dir": "b", "fail_at": (1, 0, "kill")},
                           {"steps"}) is None  # the stopping rule and run flags may change
    msg = resume_mismatch(saved, {**saved, "lr": 0.2, "model": "mlp"}, {"steps"})
    assert msg.endswith("changes --lr 0.1 -> 0.2, --model 'cnn' -> 'mlp' (resume with the flags "
                        "of the interrupted run)"), msg
    assert "--steps" in resume_mismatch(saved, {**saved, "steps": 6}, frozenset())
    assert resume_mismatch(saved, {"lr": 0.1}, frozenset()) is None  # flags it does not know


def test_time_left_waits_for_a_measured_pace():
    """No estimate from the first steps (the audit saw "step 1/1500 ... 6515 s" for a 25 s run:
    start-up and pre-training counted as one step's time); then the pace since the first call."""
    from mpidist.loop import ESTIMATE_STEPS, time_left
    since = (100.0, 1)                                 # first call: after step 1, at t = 100 s
    assert time_left(100.0, 1, 1500, since) is None
    assert time_left(100.5, ESTIMATE_STEPS + 1, 1500, since) is None   # steps, but < 1 s
    assert time_left(200.0, ESTIMATE_STEPS, 1500, since) is None       # seconds, but too few steps
    assert time_left(102.0, 21, 1500, since) == pytest.approx(0.1 * 1479)  # 20 steps in 2 s
    assert time_left(102.0, 1600, 1500, since) == 0.0


def test_progress_line_says_left_not_eta(monkeypatch, capsys):
    """Rank 0's progress: ``| <elapsed> s, left <s> s`` once the pace is known; never ``eta``
    (the papers' learning rate, shown in the headers)."""
    import types
    from mpidist import loop
    clock = [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    run = types.SimpleNamespace(rank=0, args=types.SimpleNamespace(quiet=False, progress_seconds=0),
                                comm=types.SimpleNamespace(clock=lambda: 5.0 + clock[0]))
    progress = loop.Progress(run)
    for done in range(1, 12):                          # 10 steps of 0.25 s after the first call
        progress(done, 100, loss=0.5)
        clock[0] += 0.25
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[0] step 1/100 (  1%) loss 0.5 | 5.0 s"
    assert lines[-1] == "[0] step 11/100 ( 11%) loss 0.5 | 7.5 s, left 22 s"   # 89 x 0.25 s
    assert not any(" eta " in ln for ln in lines)
