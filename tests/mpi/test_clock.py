"""Clock alignment across ranks (issue 17), with clock errors injected by
``MPIDIST_TEST_CLOCK_SKEW`` (read by mpidist.clock only).

- tests/programs/clock_checks.py: the offsets estimated against the injected ones in closed form,
  the run's clock on rank 0's at the start, the link model's delay on skewed clocks, the drift.
- A D-PSGD run with large offsets and drifts: the trace records the estimates, the drift recovered
  from them is the injected one, the reader's aligned times have no flow arrow backwards by more
  than the estimates' uncertainty (while the rows as written, without the drift correction, have
  some), and summary and export read the
  run. (Without the link model: with it, the receiver waits for the arrival on its own clock,
  which hides backward arrows; the link model on skewed clocks is in clock_checks.py.)
- A malformed MPIDIST_TEST_CLOCK_SKEW: one line, exit 2.
"""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np

from mpidist import clock
from mpidist.analysis.export import match_messages
from mpidist.trace import read_run
from mpirun import REPO, check, check_program, run_mpi

SKEW = "0:0.25:100,1:3.5:5000,2:-1.75:-5000"


def test_clock_checks():
    out = check_program(run_mpi(4, ["tests/programs/clock_checks.py"], timeout=240,
                                env={clock.SKEW_ENV: SKEW}))
    assert out.count("PASS ") == 5, out


def _backwards(comm: np.ndarray, unc: dict) -> int:
    """Flow arrows (send posted -> receive done) pointing backwards by more than the two ranks'
    alignment uncertainties (a receive cannot complete before its send was posted)."""
    return sum(1 for s, d in match_messages(comm)
               if comm["t_done"][d] < comm["t_post"][s] - unc[comm["rank"][s]] - unc[comm["rank"][d]])


def test_a_skewed_run_is_aligned(tmp_path):
    d = tmp_path / "run"
    check(run_mpi(3, ["-m", "mpidist.dpsgd", "--steps", "30", "--trace-dir", str(d), "--quiet"],
                  timeout=300, env={clock.SKEW_ENV: SKEW}))
    run = read_run(str(d))
    injected = clock.parse_skew(SKEW)
    a0 = injected[0][1] * 1e-6
    unc = {}
    for r in run.ranks:
        s, e = r.attrs["clock_start"], r.attrs["clock_end"]
        assert r.attrs["clock_method"] == "ping-pong"
        assert r.attrs["hostname"]
        off, ppm = injected[r.rank]
        a = ppm * 1e-6
        # the offset: the injected one (plus the drift since the clocks were made, < 1 min)
        assert abs(s["offset"] - (off - injected[0][0])) <= s["uncertainty"] + 60 * (abs(a) + abs(a0))
        # the drift between the two estimates: the injected rates' difference
        span = e["t"] - s["t"]
        assert span > 0
        assert abs(clock.drift(r.attrs) - (a - a0) / (1 + a)) <= (s["uncertainty"] + e["uncertainty"]) / span
        unc[r.rank] = max(s["uncertainty"], e["uncertainty"])
    comm = run.comm
    pairs = match_messages(comm)
    assert len(pairs) > 50
    assert _backwards(comm, unc) == 0
    # the rows as written (drift not removed) point backwards: the correction is what fixes them
    raw = []
    for r in run.ranks:
        with h5py.File(r.path, "r") as f:
            raw.append(f["comm"][()])
    from mpidist.trace_reader import _stack
    assert _backwards(_stack(raw, [r.rank for r in run.ranks]), unc) > 0
    # the tools read it, on the aligned clock
    tool = [sys.executable, f"{REPO}/tools/mpidist_trace.py"]
    p = subprocess.run(tool + ["summary", str(d)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "dpsgd" in p.stdout.lower(), p.stderr
    p = subprocess.run(tool + ["export", str(d), "-o", str(tmp_path / "t.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    other = json.loads((tmp_path / "t.json").read_text())["otherData"]
    assert other["flows"] > 50
    if max(unc.values()) < 1e-5:   # (the exporter counts any backward arrow, however small)
        assert other["flows_backwards"] == 0


def test_a_bad_skew_variable_is_one_line(tmp_path):
    p = run_mpi(2, ["-m", "mpidist.dpsgd", "--steps", "2", "--trace-dir", str(tmp_path / "x")],
                timeout=120, env={clock.SKEW_ENV: "1:zero:0"})
    check(p, 2)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and clock.SKEW_ENV in lines[0], p.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
