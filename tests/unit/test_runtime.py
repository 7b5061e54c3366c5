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
