"""The multi-rank launches of the runtime tests. tests/unit/test_runtime.py describes what each
launch checks and holds the checks that need no launch."""
import os
import time

import pytest

from mpidist.trace import read_run
from mpirun import check, run_mpi

TOY = "tests/programs/toy.py"


def test_clean_run_writes_traces(tmp_path):
    out = check(run_mpi(3, [TOY, "--steps", "5", "--trace-dir", str(tmp_path / "run")], 120))
    assert f"trace: {tmp_path / 'run'}" in out
    run = read_run(str(tmp_path / "run"))
    assert [t.rank for t in run.ranks] == [0, 1, 2]
    for t in run.ranks:
        assert t.attrs["status"] == "ok" and t.attrs["world_size"] == 3
        assert t.attrs["algorithm"] == "toy" and t.attrs["args"]["steps"] == 5
        assert t.attrs["comm_path"] == "cpu"
        assert t.attrs["cuda_aware"] in (False, 0) and not isinstance(t.attrs["cuda_aware"], str)
        assert {"mpidist", "torch", "mpi4py", "mpi"} <= set(t.attrs["versions"])
        ring = t.comm[t.comm["channel"] == b"ring"]
        assert len(ring) == 10 and set(ring["nbytes"]) == {4000}  # 5 sends + 5 receives
        assert sorted(set(ring["step"])) == [0, 1, 2, 3, 4]
        steps, _, values = t.metric("sum")
        assert list(steps) == [0, 1, 2, 3, 4] and set(values) == {3.0}  # 0 + 1 + 2
    # the same directory again: refused, nothing overwritten
    proc = run_mpi(2, [TOY, "--steps", "1", "--trace-dir", str(tmp_path / "run")], 60)
    assert proc.returncode == 2 and "already holds a trace" in proc.stderr
    assert read_run(str(tmp_path / "run")).ranks[0].attrs["world_size"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--steps", "0"], "must be a positive integer"),
    (["--need-ranks", "3"], "needs 3 ranks, the world has 2"),
    (["--link-bandwidth", "0.5"], "bytes per second"),
    # a directory even root cannot write in (os.access would say yes to root)
    pytest.param(["--trace-dir", "/sys/kernel"],
                 "--trace-dir /sys/kernel is not writable (Permission denied)",
                 marks=pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="no /sys")),
    (["--trace-dir", "/proc/self/nothing/run"], "--trace-dir /proc/self/nothing/run: cannot create"),
])
def test_bad_input_one_line_on_rank0_and_exit_2(tmp_path, argv, message):
    proc = run_mpi(2, [TOY, "--trace-dir", str(tmp_path / "r"), *argv], 300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpidist.toy: error:") and message in lines[0], \
        proc.stderr
    assert not os.path.exists(tmp_path / "r" / "rank0.h5")


def test_help_on_rank0_only():
    out = check(run_mpi(2, [TOY, "--help"], 60))
    assert out.count("usage: mpirun -n N python -m mpidist.toy") == 1 and "--link-latency" in out


def test_raising_rank_ends_the_job_and_traces_stay_readable(tmp_path):
    proc = run_mpi(4, [TOY, "--steps", "1000", "--step-seconds", "0.01", "--flush-seconds", "0.2",
                       "--raise-at", "30:2", "--trace-dir", str(tmp_path / "r")], 300)
    assert proc.returncode != 0
    assert "[rank 2] failed: RuntimeError: injected failure at step 30" in proc.stderr
    run = read_run(str(tmp_path / "r"))
    _ended_near(run, 30)  # ended by the failure, not by running 1000 steps
    assert len(run.ranks) == 4
    failed = run.ranks[2]
    assert failed.attrs["status"].startswith("failed: RuntimeError")
    assert max(failed.metric("sum")[0]) == 30  # the failed rank saved everything up to its failure
    for t in run.ranks:
        assert t.attrs["status"] in ("running", "ok") or t is failed
        assert len(t.comm) > 0  # rows up to the last flush


def test_silent_peer_times_out_naming_it(tmp_path):
    proc = run_mpi(2, [TOY, "--steps", "3", "--silent-rank", "0", "--comm-timeout", "2",
                       "--trace-dir", str(tmp_path / "r")], 90)
    assert proc.returncode != 0
    assert "[rank 1] failed: CommTimeout" in proc.stderr
    assert "recv with peer 0 (tag 1, channel 'ring'" in proc.stderr


def _ended_near(run, step):
    """Every rank's trace stops within a few steps of ``step`` (each rank waits for its ring
    neighbours every step, so none can run far past a rank that failed there): the job ended
    because of the failure, not by running its 1000 steps. (The launch's timeout bounds the
    time; the steps, not the clock, show why it ended.)"""
    last = {r.rank: int(max(r.metric("sum")[0], default=-1)) for r in run.ranks}
    assert all(v <= step + 5 for v in last.values()), last


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_fail_at_ends_the_job_promptly(tmp_path, how):
    proc = run_mpi(3, [TOY, "--steps", "1000", "--step-seconds", "0.01", "--flush-seconds", "0.2",
                       "--fail-at", f"20:1:{how}", "--trace-dir", str(tmp_path / "r")], 300)
    assert proc.returncode != 0, proc.returncode
    if how == "raise":
        assert "[rank 1] failed: InjectedFailure: --fail-at: injected failure after step 20" \
            in proc.stderr
    else:
        assert "[rank 1] --fail-at: killing myself after step 20" in proc.stderr
    run = read_run(str(tmp_path / "r"))  # every rank's file opens
    assert len(run.ranks) == 3
    assert max(run.ranks[1].metric("sum")[0]) == 20  # flushed right before failing
    _ended_near(run, 20)


def final_acc(out):
    line = [ln for ln in out.splitlines() if ln.startswith("final acc")][-1]
    return line.split()[2], int(line.split()[4])


def test_checkpoint_kill_resume_equals_uninterrupted(tmp_path):
    """Checkpoints every 4 steps; rank 1 is killed after step 9; the resumed run (from step 7)
    ends with bitwise the same state as a run that was never interrupted, and its trace goes on."""
    full = check(run_mpi(2, [TOY, "--steps", "14", "--trace-dir", str(tmp_path / "a")], 120))
    proc = run_mpi(2, [TOY, "--steps", "14", "--checkpoint-every", "4", "--fail-at", "9:1:kill",
                       "--flush-seconds", "0.1", "--trace-dir", str(tmp_path / "b")], 120)
    assert proc.returncode != 0
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["step-000000003",
                                                                  "step-000000007"]
    resumed = check(run_mpi(2, [TOY, "--steps", "14", "--resume", str(tmp_path / "b")], 120))
    assert "resuming from step 7" in resumed
    assert final_acc(resumed) == final_acc(full)
    run = read_run(str(tmp_path / "b"))
    steps = run.ranks[0].metric("sum")[0]
    assert list(steps) == list(range(14)), steps  # rows after step 7 of the killed run dropped
    assert run.ranks[0].attrs["status"] == "ok" and run.ranks[0].attrs["resumed_at_step"] == 7


def _start_toy(tmp_path, *argv):
    """A 2-rank toy job in the background, returned once both ranks are in their first step
    (each writes its pid file there); returns (process, pids of its ranks)."""
    import subprocess
    import sys
    from mpirun import mpiexec
    pid = tmp_path / "pid"
    cmd = [mpiexec(), "-n", "2", sys.executable, TOY, "--pid-file", str(pid),
           "--trace-dir", str(tmp_path / "r"), *argv]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300   # start-up of both ranks on a busy machine
    while not all(os.path.exists(f"{pid}.{k}") for k in (0, 1)):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            out, err = p.communicate()
            pytest.fail(f"the toy job did not reach its first step (exit {p.returncode})\n"
                        f"{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.1)
    return p, [int(open(f"{pid}.{k}").read()) for k in (0, 1)]


@pytest.mark.parametrize("sig, to", [("SIGUSR1", [1]), ("SIGTERM", [0, 1])])
def test_stop_signal_checkpoints_all_ranks_and_stops(tmp_path, sig, to):
    """SIGUSR1 on one rank (what the job templates pass on) or SIGTERM on every rank (what SLURM
    sends at the time limit or on preemption): all ranks agree on a step, checkpoint it, exit 0."""
    import signal
    p, pids = _start_toy(tmp_path, "--steps", "100000", "--step-seconds", "0.01")
    try:
        for k in to:
            os.kill(pids[k], getattr(signal, sig))
        out, err = p.communicate(timeout=120)  # agreed at the next step: seconds, not minutes
    finally:
        p.kill()
    assert p.returncode == 0, err
    acc, step = final_acc(out)
    assert step < 100000 - 1
    assert f"{sig}: checkpoint of step {step} saved" in out
    ckpts = os.listdir(tmp_path / "r" / "checkpoints")
    assert ckpts == [f"step-{step:09d}"]
    for r in read_run(str(tmp_path / "r")).ranks:
        assert r.attrs["status"] == "stopped by signal"
        assert max(r.metric("sum")[0]) == step  # every step up to the checkpoint, none after


def test_sigterm_without_agreement_ends_the_rank_after_the_grace(tmp_path):
    """Rank 1 waits for a silent rank 0 (inside a receive) when SIGTERM comes: it cannot reach
    the agreed checkpoint, so after --term-grace it kills itself, the launcher ends the job, and
    its trace says why; nothing waits for --comm-timeout."""
    import signal
    p, pids = _start_toy(tmp_path, "--steps", "5", "--silent-rank", "0", "--comm-timeout", "600",
                         "--term-grace", "2", "--flush-seconds", "0.1")
    try:
        t = time.monotonic()
        os.kill(pids[1], signal.SIGTERM)
        out, err = p.communicate(timeout=300)  # --comm-timeout 600 would fail here
        elapsed = time.monotonic() - t
    finally:
        p.kill()
    assert p.returncode != 0
    # the grace was waited for; the end came from it (well before --comm-timeout's 600 s; the
    # bound holds on a busy machine)
    assert 2 <= elapsed < 120, elapsed
    assert "[rank 1] SIGTERM: no agreed checkpoint within --term-grace 2 s; ending this rank now" \
        in err
    run = read_run(str(tmp_path / "r"))
    assert run.ranks[1].attrs["status"].startswith("terminated: SIGTERM, no agreed checkpoint")


@pytest.mark.parametrize("damage, message", [
    ("none", "no complete checkpoint"),
    ("world", "saved by 3 ranks, this run has 2"),
    ("corrupt", "rank1.pt is unreadable or corrupt"),
    ("foreign", "rank1.pt is not a checkpoint of the mpidist runtime (no rng, t)"),
])
def test_bad_resume_is_a_clear_error(tmp_path, damage, message):
    from mpidist import checkpoint
    root = tmp_path / "r" / "checkpoints"
    if damage != "none":
        world = 3 if damage == "world" else 2
        for k in range(world):
            checkpoint.save_rank(str(root), 5, k, {"algorithm": {}, "step": 5, "t": 1.0,
                                                   "rng": dict.fromkeys(checkpoint.RNG_KEYS)})
        checkpoint.complete(str(root), 5, "toy", world)
        if damage == "corrupt":
            (root / "step-000000005" / "rank1.pt").write_bytes(b"garbage")
        if damage == "foreign":  # a torch file, but not what the runtime saves
            checkpoint.save_rank(str(root), 5, 1, {"algorithm": {}, "step": 5})
        if damage in ("corrupt", "foreign"):   # the manifest vouches for it: the loader refuses
            checkpoint.complete(str(root), 5, "toy", world)
    else:
        root.mkdir(parents=True)
    proc = run_mpi(2, [TOY, "--resume", str(tmp_path / "r")], 60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1


def test_timed_checkpoints(tmp_path):
    """--checkpoint-every 1s on a ~4 s run: checkpoints at steps all ranks agreed on, about one
    per second (the newest two kept), and the run resumes from the last one."""
    out = check(run_mpi(2, [TOY, "--steps", "80", "--step-seconds", "0.05", "--checkpoint-every",
                            "1s", "--trace-dir", str(tmp_path / "r")], 120))
    run = read_run(str(tmp_path / "r"))
    saved = [list(r.metric("checkpoint")[0]) for r in run.ranks]
    # 80 steps of at least 0.05 s: at least 4 s, so at least two due times on any machine; a
    # busy machine makes the run longer and the checkpoints more (never closer than 1 s)
    assert saved[0] == saved[1] and len(saved[0]) >= 2, saved
    times = run.ranks[0].metric("checkpoint")[1]
    assert all(d >= 1.0 for d in times[1:] - times[:-1]), times
    from mpidist import checkpoint
    kept = [m["step"] for _, m in checkpoint.list_complete(str(tmp_path / "r" / "checkpoints"))]
    assert kept == saved[0][-2:]
    assert final_acc(out)[1] == 79


def test_usage_error_on_one_rank_ends_the_job(tmp_path):
    """A usage error only rank 1 finds (the others go on and wait for it): after the runtime's
    agreement window it names itself in one line and ends the whole job; no hang."""
    # a hang fails run_mpi's timeout; the time itself is not asserted (a busy machine stretches
    # the start-up of three ranks well past the agreement window)
    proc = run_mpi(3, [TOY, "--steps", "100000", "--bad-rank", "1", "--trace-dir",
                       str(tmp_path / "r")], 300)
    assert proc.returncode != 0
    assert "mpidist.toy: error: [rank 1] --bad-rank 1: a bad input only this rank sees" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_run(str(tmp_path / "r")).ranks[1].attrs["status"] == "usage-error"


END_JOB_PROBE = """
import sys, time
from mpi4py import MPI
from mpidist import runtime
if MPI.COMM_WORLD.Get_rank() == 1:
    runtime.end_job(3)
    open(sys.argv[1], "w").write("end_job returned")
time.sleep(3600)
"""


def test_end_job_never_returns(tmp_path):
    """MPICH 4's MPI_Abort returns to the caller (PMI_Abort only tells hydra, whose kill comes a
    moment later; measured: the next line ran in 2 of 3 tries, ~0.1 ms after the call).
    runtime.end_job must not: the code after it never runs, and the job ends with its code."""
    marker = tmp_path / "after"
    # rank 0 sleeps an hour: ending within the launch's timeout is the abort's doing
    proc = run_mpi(2, ["-c", END_JOB_PROBE, str(marker)], 300)
    assert proc.returncode == 3, proc.stderr
    assert not marker.exists()
