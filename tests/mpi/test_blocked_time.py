"""Blocked time on two real ranks (tests/programs/blocked_time.py, one launch): a late sender
blocks the receiver max(0, Y - X) s, an early one does not, test() polls leave t_wait NaN, waitall
gives its handles one t_wait, Handle.waiting() marks polling as waiting; and the summary's
compute / blocked / overlap figures equal a short reference computed here from the rows (unions of
intervals by merging), in the library and in the tool's CSV.
"""
from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from mpirun import REPO, check, run_mpi

import blocked_time as prog
from mpidist import analysis
from mpidist.trace import read_run

SLACK = 0.1  # seconds a sleep, a barrier or a wake-up may be late on a shared 2-core machine


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("blocked")
    check(run_mpi(2, [os.path.join(REPO, "tests", "programs", "blocked_time.py"), str(d)],
                  timeout=240))
    return str(d)


def recv_rows(run_dir, step):
    rt = {r.rank: r for r in read_run(run_dir).ranks}[1]
    c = rt.comm
    return c[(c["step"] == step) & (c["op"] == b"recv")]


def test_late_sender_blocks_the_receiver_y_minus_x(run_dir):
    (r,) = recv_rows(run_dir, 0)
    want = prog.LATE_SEND - prog.COMPUTE
    assert np.isfinite(r["t_wait"]), r
    assert prog.COMPUTE - 0.01 <= r["t_wait"] - r["t_post"] <= prog.COMPUTE + SLACK, r
    assert want - SLACK <= r["t_done"] - r["t_wait"] <= want + SLACK, r


def test_early_sender_does_not_block(run_dir):
    (r,) = recv_rows(run_dir, 1)
    assert math.isnan(r["t_wait"]) or r["t_done"] - r["t_wait"] < 0.02, r


def test_a_receive_completed_by_test_has_nan(run_dir):
    (r,) = recv_rows(run_dir, 2)
    assert math.isnan(r["t_wait"]), r
    assert r["t_done"] - r["t_post"] >= prog.POLL_SEND - 0.01  # it was in flight that long


def test_waitall_gives_one_t_wait(run_dir):
    a, b = sorted(recv_rows(run_dir, 3), key=lambda r: r["tag"])
    assert np.isfinite(a["t_wait"]) and a["t_wait"] == b["t_wait"], (a, b)
    assert prog.WAITALL_A - SLACK <= a["t_done"] - a["t_wait"] <= prog.WAITALL_A + SLACK
    assert prog.WAITALL_B - SLACK <= b["t_done"] - b["t_wait"] <= prog.WAITALL_B + SLACK


def test_polling_declared_as_waiting(run_dir):
    (r,) = recv_rows(run_dir, 4)
    assert np.isfinite(r["t_wait"]), r
    assert prog.POLL_SEND - SLACK <= r["t_done"] - r["t_wait"] <= prog.POLL_SEND + SLACK, r


# ----------------------------------------------------------------- the summary against a reference

def union(iv):
    total, cur = 0.0, None
    for a, b in sorted(iv):
        if cur is None or a > cur[1]:
            total += (cur[1] - cur[0]) if cur else 0.0
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + ((cur[1] - cur[0]) if cur else 0.0)


def reference(rt):
    """compute, blocked, in flight, overlap of one rank from its rows, by merging intervals."""
    c = rt.comm
    fly = [(float(r["t_post"]), float(max(r["t_done"], r["t_post"]))) for r in c]
    blk = [(float(min(max(r["t_wait"], r["t_post"]), r["t_done"])), float(r["t_done"]))
           for r in c if np.isfinite(r["t_wait"])]
    lo = min([0.0] + [a for a, _ in fly] + list(rt.metrics["t"]))
    hi = max([0.0] + [b for _, b in fly] + list(rt.metrics["t"]))
    blocked = union(blk)
    in_flight = union(fly)
    hidden = union(fly + blk) - union(blk)  # |U F \ U B|
    return {"compute_s": (hi - lo) - blocked, "blocked_s": blocked, "in_flight_s": in_flight,
            "overlap_pct": 100 * hidden / in_flight}


def test_summary_equals_the_reference(run_dir):
    run = analysis.load(run_dir)
    tt = {r["rank"]: r for r in analysis.time_table(run) if r["channel"] == "all"}
    for rt in run.ranks:
        ref = reference(rt)
        for k, v in ref.items():
            assert tt[rt.rank][k] == pytest.approx(v, abs=1e-9), (rt.rank, k)
    # rank 1 blocked at least on the late message, the waitall and the declared polling
    least = (prog.LATE_SEND - prog.COMPUTE) + prog.WAITALL_B + prog.POLL_SEND
    assert tt[1]["blocked_s"] >= least - 3 * SLACK
    # the tool: text and the time CSV say the same
    tool = os.path.join(REPO, "tools", "mpidist_trace.py")
    p = subprocess.run([sys.executable, tool, "summary", run_dir, "--time-csv", "-"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [r for r in csv.DictReader(io.StringIO(p.stdout)) if r["channel"] == "all"]
    for r in rows:
        ref = reference({x.rank: x for x in run.ranks}[int(r["rank"])])
        assert float(r["blocked_s"]) == pytest.approx(ref["blocked_s"], abs=1e-9)
        assert float(r["overlap_pct"]) == pytest.approx(ref["overlap_pct"], abs=1e-9)
    p = subprocess.run([sys.executable, tool, "summary", run_dir], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "time per rank and channel" in p.stdout, p.stderr
    assert "not recorded" not in p.stdout
