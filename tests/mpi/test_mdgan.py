"""The multi-rank launches of the MD-GAN tests. tests/unit/test_mdgan.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations
import os

import numpy as np

from mpidist import trace

from mpirun import check, check_program, run_mpi


# ------------------------------------------------------------------------ multi-rank runs

def _parse_checks(out: str) -> dict:
    res = {}
    for line in out.splitlines():
        if line.startswith(("PASS ", "FAIL ")):
            status, name = line.split()[:2]
            res[name] = (status, line)
    return res


def test_mpi_checks(tmp_path):
    """Under mpiexec -n 4 (server + 3 workers): the feedback assembled through MPI equals
    autograd; an MD-GAN run with k = floor(log2 N) and crashes matches Table III per iteration in
    the trace, its swaps are permutations of the live workers, it ends with the expected live
    workers; an FL-GAN run moves |theta| + |w| each way per worker and round."""
    proc = run_mpi(4, [os.path.join("tests", "programs", "mdgan_checks.py"), str(tmp_path)], timeout=420)
    out = check_program(proc)
    res = _parse_checks(out)
    expected = {"feedback_exact_mpi", "same_initial_discriminators", "mdgan_run_ok",
                "table3_server_to_worker",
                "table3_worker_to_server", "table3_swap", "swap_permutation",
                "crash_live_workers", "crash_trace", "samples_png", "flgan_table3",
                "mdgan_signal_stops_at_a_checkpoint", "mdgan_resume_bitwise",
                "mdgan_resume_refuses_other_k", "mdgan_resume_refuses_other_I",
                "flgan_resume_bitwise"}
    assert expected <= set(res), out
    failed = [line for status, line in res.values() if status == "FAIL"]
    assert not failed, "\n".join(failed) + "\n" + out


def test_standalone_one_process(tmp_path):
    """Standalone mode in one process (20 iterations, scores at 10 and 20), and the same run
    stopped by SIGUSR1 at its checkpoint of iteration 10 and resumed: bitwise the same end."""
    d = tmp_path / "sa"
    proc = run_mpi(1, [os.path.join("tests", "programs", "mdgan_checks.py"), str(tmp_path), "--standalone"],
                   timeout=240)
    out = check(proc)
    assert "standalone GAN" in out and f"trace: {d}" in out and "samples:" in out
    t = trace.read_run(str(d))
    steps, _, vals = t.ranks[0].metric("score")
    assert list(steps) == [10, 20] and np.all(vals >= 1)
    assert os.path.exists(d / "samples.png")
    res = _parse_checks(out)
    assert res.get("standalone_resume_bitwise", ("FAIL",))[0] == "PASS", out


def test_mdgan_on_one_rank_is_a_usage_error(tmp_path):
    proc = run_mpi(1, ["-m", "mpidist.mdgan", "--trace-dir", str(tmp_path / "x")], timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs the server" in lines[0], proc.stderr


def test_real_kill_of_a_worker_ends_the_job(tmp_path):
    """A SIGKILLed worker process (no notice: the runtime's --fail-at 15:2:kill) ends the whole
    job promptly with a message, and every rank's trace stays readable."""
    d = tmp_path / "kill"
    # the launch's timeout bounds the time (100000 iterations would take hours); the survivors'
    # traces show the end came with the kill
    proc = run_mpi(3, ["-m", "mpidist.mdgan", "-I", "100000", "--fail-at", "15:2:kill",
                       "--score-every", "100000", "--trace-dir", str(d)], timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "[rank 2] --fail-at: killing myself after step 15" in text
    assert "signal 9" in text or "Killed" in text or "KILLED" in text, text[-2000:]
    t = trace.read_run(str(d))
    assert len(t.ranks) == 3
    killed = t.ranks[2]
    # the killed rank never closed its file: no end status; it had trained up to iteration 15
    assert killed.attrs.get("status") == "running" and killed.attrs.get("pid")
    steps, _, _ = killed.metric("loss_d")
    assert steps.max() == 15
    # the server needs every live worker's feedback each iteration: no rank got far past 15
    last = [int(r.comm["step"].max(initial=-1)) for r in t.ranks]
    assert max(last) <= 20, last
