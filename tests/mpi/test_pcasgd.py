"""The multi-rank launches of the PC-ASGD tests. tests/unit/test_pcasgd.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations
import os
import re

import numpy as np

from mpirun import check, check_program, run_mpi  # noqa: E402

from mpidist import models, topology, trace


# ------------------------------------------------------------------------------ multi-rank


def test_real_exchange_matches_reference_under_mpi(tmp_path):
    """8 ranks, one launch: the real Agent over mpidist.comm vs the blocking reference (tau 0, 2,
    3, 4, 20; all variants; fixed theta; momentum; ring); theta 1 = P and theta 0 = C."""
    out = check_program(run_mpi(8, ["tests/programs/pcasgd_checks.py", "--trace-dir", str(tmp_path / "t"),
                            "--quiet"], timeout=240))
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert len(lines) == 33, out
    assert all(ln.startswith("PASS") for ln in lines), "\n".join(lines)


def test_default_network_tau20_trace(tmp_path):
    """`python -m mpidist.pcasgd` on 8 ranks with tau = 20 (short): the summary, and a trace in
    which cross-cluster messages are consumed 20 steps and in-cluster ones 1 step after posting."""
    d = tmp_path / "run"
    T = 30
    out = check(run_mpi(8, ["-m", "mpidist.pcasgd", "--steps", str(T), "--eval-every", "15",
                            "--trace-dir", str(d), "--quiet"], timeout=240))
    m = re.search(r"PC-ASGD, tau 20: test accuracy of the 8 agents ([\d.]+) \+- ([\d.]+) %", out)
    assert m, out
    assert f"trace: {d}" in out
    run = trace.read_run(str(d))
    assert len(run.ranks) == 8
    topo = topology.build(8, None, "full", 20)
    for r in run.ranks:
        i = r.rank
        rel, unr = topo.reliable_neighbours(i), topo.unreliable_neighbours(i)
        s, _, v = r.metric("staleness_reliable")
        assert list(s) == list(range(T)) and set(v) == {1.0}
        s, _, v = r.metric("staleness_unreliable")
        assert list(s) == list(range(20, T)) and set(v) == {20.0}
        s, _, v = r.metric("theta")
        assert list(s) == list(range(T)) and set(v[:20]) == {0.0} and set(v) <= {0.0, 1.0}
        c = r.comm
        nbytes = (models.count_parameters(models.build("cnn", (1, 16, 16), 10)) + 1) * 4
        for chan, peers, steps in (("params", rel, range(-1, T - 1)), ("params", unr, range(T - 20)),
                                   ("grads", unr, range(T - 20))):
            rows = c[(c["op"] == b"send") & (c["channel"] == chan.encode())
                     & np.isin(c["peer"], peers)]
            assert sorted(zip(rows["peer"], rows["step"])) == sorted(
                (p, t) for p in peers for t in steps), (i, chan)
            assert set(rows["nbytes"]) == {nbytes}
            rec = c[(c["op"] == b"recv") & (c["channel"] == chan.encode())
                    & np.isin(c["peer"], peers)]
            assert len(rec) == len(peers) * len(steps)
        assert len(r.metric("test_acc")[2]) == 2 and len(r.metric("consensus_dist")[2]) == 2


def test_bad_clusters_and_show_topology(tmp_path):
    proc = run_mpi(2, ["-m", "mpidist.pcasgd", "--clusters", "3,5"], timeout=120)
    check(proc, 2)
    assert ("mpidist.pcasgd: error: --clusters 3,5 describes 8 agents but the job has 2 ranks"
            in proc.stderr), proc.stderr
    out = check(run_mpi(2, ["-m", "mpidist.pcasgd", "--show-topology",  # no --clusters: 1,1
                            "--mixing", "metropolis", "--trace-dir", str(tmp_path / "t")],
                        timeout=120))
    assert "clusters 1,1 (no network of the paper for 2 agents; --clusters to choose)" in out
    assert "cluster 0: agents 0" in out and "agent 0: reliable [], unreliable [1]" in out
    assert "W (all neighbours" in out and "0.5000 0.5000" in out
    assert "W~ (reliable neighbours only" in out and "1.0000 0.0000" in out


def test_resume_under_mpi_continues_exactly(tmp_path):
    """4 ranks (no --clusters: the default 2,2; tau 5): a run with --checkpoint-every 20, then a
    second job resumed from its step-19 checkpoint into a new trace; both end with the same agents'
    accuracies."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-m", "mpidist.pcasgd", "--delay", "5", "--steps", "40", "--quiet"]
    out = check(run_mpi(4, [*common, "--checkpoint-every", "20", "--trace-dir", str(a)],
                        timeout=180))
    assert "clusters 2,2 (no network of the paper for 4 agents; --clusters to choose)" in out
    ck = a / "checkpoints"
    assert sorted(os.listdir(ck)) == ["step-000000019"], os.listdir(ck)
    out2 = check(run_mpi(4, [*common, "--resume", str(ck / "step-000000019"), "--trace-dir",
                             str(b)], timeout=180))
    line = lambda o: next(ln for ln in o.splitlines() if ln.startswith("per agent:"))  # noqa: E731
    assert line(out) == line(out2)
    ra, rb = trace.read_run(str(a)), trace.read_run(str(b))
    assert ra.attrs["final_test_acc"] == rb.attrs["final_test_acc"]
    s, _, v = rb.ranks[0].metric("staleness_unreliable")
    assert list(s) == list(range(20, 40)) and set(v) == {5.0}
    la, lb = ra.ranks[1].metric("loss"), rb.ranks[1].metric("loss")
    assert np.array_equal(la[2][20:], lb[2])
