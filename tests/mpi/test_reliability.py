"""Injected failures on the four real entry points (issue 8): ``--fail-at STEP:RANK[:raise|kill]``.

For every algorithm and both ways of failing: the whole job ends within seconds of the failure (the
run asks for thousands of steps, so a hang would hit the launch's timeout), the exit status is
non-zero, the message names the failed rank, every rank's trace file opens, the failed rank's file
holds its rows up to the failing step (it flushes right before failing) and the others' hold rows
up to their last flush (a survivor may also see its peer's death as an MPI error first and fail
itself, which is as good). The seconds from the failure message to the end of the job are printed
(``pytest -s``) for the closing note; the assertion bound (END_BOUND_S) is loose because CI
machines are busy, and the steps in the traces show what ended the job.

Then SIGTERM to every rank of a running job (what SLURM sends at the time limit and on preemption):
for every algorithm all ranks save a checkpoint of one step and the job exits 0.

The runtime's own failure tests (toy program, SIGUSR1/SIGTERM, deadlines) are in test_runtime.py;
bitwise-equal resumes are tested per algorithm in its own test file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from mpidist.trace import read_rank, read_run
from mpirun import REPO, mpiexec

FAIL_STEP = 6
END_BOUND_S = 120  # holds on a busy machine; an end by --comm-timeout (300 s) would not
LAUNCH_TIMEOUT_S = 280  # below --comm-timeout's 300 s: a job ended only by it fails as a hang

# algorithm -> (ranks, the failed rank, arguments that would run for minutes without the failure,
# the last step the failed rank has rows of: AdaComm with tau = 2 communicates and logs only at the
# averaging steps 1, 3, 5, ...; the others every step)
JOBS = {
    "pcasgd": (4, 2, ["--clusters", "2,2", "--delay", "3", "--steps", "5000"], FAIL_STEP),
    "adacomm": (2, 1, ["--steps", "5000", "--tau0", "2"], FAIL_STEP - 1),
    "dada": (2, 1, ["--steps", "5000", "--pretrain-steps", "20"], FAIL_STEP),
    "mdgan": (3, 2, ["-I", "5000"], FAIL_STEP),
}


def run_failing(n: int, args: list[str], timeout: float = LAUNCH_TIMEOUT_S):
    """Launch ``mpiexec -n n python args`` and time-stamp the stderr lines as they come.
    Returns (exit status, stdout, stderr, [(seconds since launch, line)], seconds to the end)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, *args], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    lines: list[tuple[float, str]] = []
    out: list[str] = []
    readers = [threading.Thread(target=lambda: [lines.append((time.monotonic() - t0, ln))
                                                for ln in p.stderr], daemon=True),
               threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)]
    for r in readers:
        r.start()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"mpiexec -n {n} {' '.join(args)}: still running after {timeout} s (hang)\n"
                    + "".join(ln for _, ln in lines[-40:]))
    end = time.monotonic() - t0
    for r in readers:
        r.join(5)
    return p.returncode, "".join(out), "".join(ln for _, ln in lines), lines, end


@pytest.mark.parametrize("how", ["raise", "kill"])
@pytest.mark.parametrize("algo", sorted(JOBS))
def test_fail_at_ends_the_job_and_keeps_the_traces(tmp_path, algo, how):
    n, bad, extra, last = JOBS[algo]
    run_dir = tmp_path / "run"
    code, out, err, lines, end = run_failing(
        n, ["-m", f"mpidist.{algo}", *extra, "--quiet", "--flush-seconds", "0.2",
            "--fail-at", f"{FAIL_STEP}:{bad}:{how}", "--trace-dir", str(run_dir)])
    assert code != 0, (out, err)
    marker = (f"[rank {bad}] failed: InjectedFailure: --fail-at: injected failure after step "
              f"{FAIL_STEP}" if how == "raise"
              else f"[rank {bad}] --fail-at: killing myself after step {FAIL_STEP}")
    hit = [t for t, ln in lines if marker in ln]
    assert hit, err[-3000:]
    after = end - hit[0]
    print(f"\n{algo} {how}: rank {bad} of {n} failed at step {FAIL_STEP}; the job ended "
          f"{after:.2f} s later (exit {code}, {end:.1f} s from launch)")
    assert after < END_BOUND_S, after
    # the job's last words name the rank that ended: the killed rank's watcher (mpidist.lastwords)
    # says "rank k (pid ...) ended ... without a word", or a peer that saw the death first says
    # "rank k is gone"; the ranks the launcher kills after it stay silent
    lost = [ln for _, ln in lines if "without a word" in ln]
    if how == "kill":
        named = [ln for _, ln in lines if f"rank {bad} is gone" in ln]
        assert (len(lost) == 1 and lost[0].startswith(f"mpidist: rank {bad} (pid ")) or \
            (not lost and named), err[-3000:]
    else:
        assert lost == [], err[-3000:]

    run = read_run(str(run_dir))  # every rank's file opens
    assert [r.rank for r in run.ranks] == list(range(n))
    failed = run.ranks[bad]
    steps = [int(failed.comm["step"].max(initial=-1)), int(failed.metrics["step"].max(initial=-1))]
    assert max(steps) == last, steps  # flushed up to the failing step, nothing later
    if how == "raise":
        assert failed.attrs["status"].startswith("failed: InjectedFailure")
    else:
        assert failed.attrs["status"] == "running"  # killed: no chance to close
    for r in run.ranks:
        if r is not failed:
            # ended by the launcher ("running"), or first saw its peer's death as an MPI error
            # and failed itself; either way the file reads, with the rows of its last flush
            # (none if the failure came before its first one)
            assert r.attrs["status"] == "running" or r.attrs["status"].startswith("failed: "), \
                r.attrs["status"]
            assert r.comm["step"].max(initial=0) <= FAIL_STEP + 2


# --------------------------------------------------------------------------- SIGTERM on every rank

def _rank_pids(launcher_pid: int, module: str) -> list[int]:
    """The pids of the ranks under an mpiexec (its descendants running ``-m module``)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [launcher_pid]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            todo.append(c)
            try:
                with open(f"/proc/{c}/cmdline", "rb") as f:
                    if module.encode() in f.read():
                        out.append(c)
            except OSError:
                pass
    return out


def _in_loop(path) -> bool:
    """The rank's trace (flushed every 0.2 s) holds a row of step 1 or later: it is training."""
    try:
        r = read_rank(str(path))
    except Exception:  # noqa: BLE001 - not written yet
        return False
    return max(int(r.comm["step"].max(initial=-1)), int(r.metrics["step"].max(initial=-1))) >= 1


def _wait_in_loop(p, run_dir, algo, n) -> list[int]:
    """Wait (deadline 300 s, for a busy machine) until all n rank processes are found and every
    rank's trace shows it training; returns the n pids."""
    deadline = time.monotonic() + 300
    pids: list[int] = []
    while True:
        pids = _rank_pids(p.pid, f"mpidist.{algo}")
        if len(pids) == n and all(_in_loop(run_dir / f"rank{k}.h5") for k in range(n)):
            return pids
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            out, err = p.communicate()
            pytest.fail(f"{algo}: found {len(pids)} of {n} rank pids {pids}; traces in the loop: "
                        f"{[_in_loop(run_dir / f'rank{k}.h5') for k in range(n)]} (exit "
                        f"{p.returncode})\n{out[-1500:]}\n{err[-1500:]}")
        time.sleep(0.3)


@pytest.mark.parametrize("algo", sorted(JOBS))
def test_sigterm_on_every_rank_checkpoints_and_stops(tmp_path, algo):
    """What SLURM does at the time limit or on preemption: SIGTERM to every task of a running job.
    Every rank finishes its step, all save a checkpoint of the same step and the job exits 0 with
    every trace "stopped by signal"."""
    import signal
    n, _, extra, _ = JOBS[algo]
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, "-m", f"mpidist.{algo}", *extra,
                          "--quiet", "--term-grace", "60", "--flush-seconds", "0.2",
                          "--trace-dir", str(run_dir)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = _wait_in_loop(p, run_dir, algo, n)
        t = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        out, err = p.communicate(timeout=300)  # seconds when idle: the bound is for busy machines
        took = time.monotonic() - t
    finally:
        p.kill()
    print(f"\n{algo}: SIGTERM to all {n} ranks; checkpoint saved and the job ended {took:.2f} s "
          "later")
    assert p.returncode == 0, err[-3000:]
    assert "SIGTERM: checkpoint of step" in out, out
    assert "has pending" not in err, err[-2000:]  # no request left behind (MPICH would say so)
    step = int(out.split("SIGTERM: checkpoint of step")[1].split()[0])
    run = read_run(str(run_dir))
    assert len(run.ranks) == n
    for r in run.ranks:
        assert r.attrs["status"] == "stopped by signal", (r.rank, r.attrs["status"])
        assert list(r.metric("checkpoint")[0])[-1] == step
    assert (run_dir / "checkpoints" / f"step-{step:09d}" / "MANIFEST.json").exists()
