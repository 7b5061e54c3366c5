"""The multi-rank launch of MD-GAN's asynchronous server (``--mode mdgan-async``):
tests/programs/mdgan_async_checks.py describes each check (a run with a slow worker, its resume, a
run with crashes, bad combinations)."""
from __future__ import annotations

import os

from bad_cases import assert_refused
from mpirun import check_program, run_mpi

N = 4  # the server and 3 workers

BAD_MESSAGES = {
    "async_slow_worker_not_a_worker": "--slow-worker 4:1: rank 4 is not a worker (workers are "
                                      "ranks 1..3)",
    "slow_worker_under_flgan": "--slow-worker slows one MD-GAN worker; use it with --mode mdgan "
                               "or mdgan-async",
    "slow_worker_malformed": "argument --slow-worker: expected RANK:SECONDS",
    "async_lr_without_async": "--async-lr is the learning-rate rule of --mode mdgan-async",
    "async_k_above_n": "-k 4: the server draws at most N = 3 batches (k <= N)",
}

EXPECTED = {"async_run_ok", "async_feedback_applied_once", "async_messages_matched",
            "async_lr_staleness", "async_slow_worker", "async_swap_at_meeting",
            "async_blocked_intervals", "async_resume", "async_crash"}


def test_mdgan_async(tmp_path):
    proc = run_mpi(N, [os.path.join("tests", "programs", "mdgan_async_checks.py"),
                       str(tmp_path)], timeout=600)
    out = check_program(proc)
    res = {}
    for line in out.splitlines():
        if line.startswith(("PASS ", "FAIL ")):
            status, name = line.split()[:2]
            res[name] = (status, line)
    assert EXPECTED <= set(res), out
    failed = [line for status, line in res.values() if status == "FAIL"]
    assert not failed, "\n".join(failed) + "\n" + out
    assert_refused(proc.stdout, BAD_MESSAGES, "mpidist.mdgan", N)
