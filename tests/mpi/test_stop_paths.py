"""How a run ends when it cannot go on as asked (issue 16): a loss that is not finite, Ctrl-C, a
second job in a run directory that another job owns, a disk that fills during a checkpoint.

- Divergence: ``--lr 1e30`` makes the loss NaN within a few steps; every rank stops at the next
  agreement, no checkpoint of the diverged state is saved, rank 0 prints ONE line naming the rank,
  the step and the last finite loss (checked against the trace's own loss rows), the traces say
  ``diverged: ...`` and the job exits 3. PC-ASGD meets every 10 steps (max-allreduce of the stop
  code); AdaComm meets only at averagings, where the averaged loss itself is not finite.
- Ctrl-C (SIGINT to ``mpiexec``, which forwards it to every rank): the agreed stop with a
  checkpoint, no ``KeyboardInterrupt`` traceback, exit 130.
- Two jobs on one run directory: the second ``--resume R`` while the first runs is refused with
  one line naming the first (host, pid); the first goes on and ends normally.
- A full disk during a checkpoint (a small tmpfs; needs root): one line, exit 1, nothing of the
  failed checkpoint left, the previous one intact.

Every launch has a timeout; waits are for events (a line printed, a file made), not fixed sleeps.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from mpidist import rundir
from mpidist.trace import read_run
from mpirun import REPO, check, mpiexec, run_mpi


def _error_lines(stderr: str) -> list[str]:
    """stderr without MPICH's own warnings about requests left behind at MPI_Finalize."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("MPICH:")]


def _first_nonfinite(run, name="loss"):
    """(rank, step, value, last finite value, its step) of the earliest non-finite ``name``."""
    best = None
    for r in run.ranks:
        m = r.metrics
        rows = m[m["name"] == name.encode()]
        vals, steps = rows["value"], rows["step"]
        bad = np.flatnonzero(~np.isfinite(vals))
        if len(bad):
            i = bad[0]
            cand = (int(steps[i]), r.attrs["rank"], float(vals[i]),
                    float(vals[i - 1]) if i else None, int(steps[i - 1]) if i else None)
            best = min(best, cand) if best else cand
    return best


def _check_diverged(proc, run_dir, algo):
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"mpidist.{algo}: diverged: rank "), lines
    assert "Traceback" not in proc.stderr
    run = read_run(str(run_dir))
    for r in run.ranks:
        assert r.attrs["status"].startswith("diverged: rank "), r.attrs["status"]
    assert not os.path.exists(os.path.join(run_dir, "checkpoints")), "saved a diverged state"
    return lines[0], run


def test_diverged_pcasgd_names_rank_step_and_last_finite_loss(tmp_path):
    run_dir = tmp_path / "pc"
    proc = run_mpi(2, ["-m", "mpidist.pcasgd", "--clusters", "2", "--steps", "60", "--lr",
                       "1e30", "--checkpoint-every", "10", "--trace-dir", str(run_dir),
                       "--quiet"], timeout=300)
    line, run = _check_diverged(proc, run_dir, "pcasgd")
    step, rank, value, last, last_step = _first_nonfinite(run)
    # the rank that diverged first (lowest step; at a tie, the lowest rank: the one named)
    assert f"diverged: rank {rank} logged loss {value} at step {step}" in line, line
    assert f"the last finite loss was {last:.6g} at step {last_step}" in line, line
    # it stopped at the first meeting point (every 10 steps) after the divergence: no later rows
    for r in run.ranks:
        m = r.metrics
        assert m["step"].max() < (step // 10 + 1) * 10 + 1


def test_diverged_adacomm_stops_at_the_next_averaging(tmp_path):
    run_dir = tmp_path / "ada"
    proc = run_mpi(2, ["-m", "mpidist.adacomm", "--method", "pasgd", "--tau", "4", "--steps",
                       "400", "--time-budget", "0", "--lr", "1e30", "--checkpoint-every", "8",
                       "--trace-dir", str(run_dir), "--quiet"], timeout=300)
    line, run = _check_diverged(proc, run_dir, "adacomm")
    first = _first_nonfinite(run, "train_loss") or _first_nonfinite(run, "loss")
    assert first is not None
    step = first[0]
    assert f"at step {step}" in line, (line, first)
    for r in run.ranks:
        assert r.metrics["step"].max() <= step + 4          # the next averaging at the latest


def _start(args, out, err):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-m", *args], cwd=REPO,
                            env=env, stdout=open(out, "w"), stderr=open(err, "w"))


def _wait_for(cond, what, proc, err, limit=180.0):
    deadline = time.monotonic() + limit
    while not cond():
        assert proc.poll() is None, f"ended ({proc.returncode}) before {what}: {_text(err)[-2000:]}"
        assert time.monotonic() < deadline, f"still waiting for {what} after {limit} s"
        time.sleep(0.2)


def _text(path):
    with open(path) as f:
        return f.read()


def test_ctrl_c_is_an_agreed_stop_with_a_checkpoint_and_exit_130(tmp_path):
    run_dir, out, err = tmp_path / "run", tmp_path / "out", tmp_path / "err"
    p = _start(["mpidist.adacomm", "--steps", "100000", "--time-budget", "0", "--tau0", "2",
                "--progress-seconds", "0.5", "--trace-dir", str(run_dir)], out, err)
    try:
        _wait_for(lambda: "[0] step" in _text(out), "the first progress line", p, err)
        p.send_signal(signal.SIGINT)                       # Ctrl-C in the terminal of mpirun
        code = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    stdout, stderr = _text(out), _text(err)
    assert code == 130, (code, stdout[-2000:], stderr[-2000:])
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "SIGINT: checkpoint of step" in stdout, stdout[-2000:]
    run = read_run(str(run_dir))
    assert [r.attrs["status"] for r in run.ranks] == ["stopped by signal"] * 2
    assert os.listdir(run_dir / "checkpoints")


def test_second_job_in_an_owned_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    check(run_mpi(2, ["-m", "mpidist.adacomm", "--steps", "16", "--time-budget", "0", "--tau0",
                      "2", "--checkpoint-every", "8", "--trace-dir", str(run_dir), "--quiet"],
                  timeout=300))
    out, err = tmp_path / "out", tmp_path / "err"
    first = _start(["mpidist.adacomm", "--steps", "100000", "--time-budget", "0", "--tau0", "2",
                    "--resume", str(run_dir), "--progress-seconds", "0.5"], out, err)
    try:
        _wait_for(lambda: "[0] step" in _text(out), "the first job's progress", first, err)
        assert os.path.exists(run_dir / rundir.OWNER)
        second = run_mpi(2, ["-m", "mpidist.adacomm", "--steps", "20", "--time-budget", "0",
                             "--tau0", "2", "--resume", str(run_dir), "--quiet"], timeout=300)
        lines = _error_lines(second.stderr)
        assert second.returncode == 2, (second.stdout, second.stderr)
        assert len(lines) == 1, lines
        assert (f"is in use by another job (host {os.uname().nodename}, pid " in lines[0]
                and "one job at a time may write a run directory" in lines[0]), lines
        assert first.poll() is None                        # the first job was not disturbed
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130, _text(err)[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    run = read_run(str(run_dir))
    assert [r.attrs["status"] for r in run.ranks] == ["stopped by signal"] * 2
    assert not os.path.exists(run_dir / rundir.OWNER)      # removed when the owner ended
    for r in run.ranks:                                     # one writer: rows in step order
        steps = r.metrics["step"]
        assert np.all(np.diff(steps) >= 0), steps


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmpfs):
    """A 3 MiB tmpfs: the first checkpoint (two 0.63 MB rank files) fits, the second does not. Every
    rank ends with one line and exit 1, nothing of the failed checkpoint stays (no temporary
    files), the previous checkpoint verifies against its manifest."""
    disk = tmpfs("3m")
    run_dir = disk / "run"
    proc = run_mpi(2, ["-m", "mpidist.adacomm", "--steps", "64", "--time-budget", "0",
                       "--tau0", "2", "--checkpoint-every", "8", "--trace-dir", str(run_dir),
                       "--quiet"], timeout=300)
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, lines          # rank 0 or 1 ran out first: either is named
    assert re.fullmatch(r"mpidist.adacomm: cannot write checkpoint step-000000015 \(rank [01]: "
                        r"No space left on device\); the previous checkpoint step-000000007 "
                        r"is intact; free space and resume with --resume "
                        + re.escape(str(run_dir)), lines[0]), lines
    files = sorted(str(f.relative_to(run_dir)) for f in run_dir.rglob("*") if f.is_file())
    assert files == ["checkpoints/step-000000007/MANIFEST.json",
                     "checkpoints/step-000000007/rank0.pt",
                     "checkpoints/step-000000007/rank1.pt", "rank0.h5", "rank1.h5"], files
    step = run_dir / "checkpoints" / "step-000000007"
    manifest = json.loads((step / "MANIFEST.json").read_text())
    for name, e in manifest["files"].items():
        data = (step / name).read_bytes()
        assert len(data) == e["bytes"] and hashlib.sha256(data).hexdigest() == e["sha256"]
    run = read_run(str(run_dir))
    assert all(r.attrs["status"].startswith("cannot write checkpoint step-000000015")
               for r in run.ranks)
