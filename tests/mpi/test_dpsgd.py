"""The multi-rank launches of the D-PSGD tests. tests/unit/test_dpsgd.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import torch

from mpirun import REPO, check, check_program, run_mpi  # noqa: E402

from mpidist import models, topology, trace

GRAPHS = [(g, n, m) for g in topology.GRAPHS for n in (2, 5, 8) for m in topology.MIXINGS]


def test_job_template_is_the_shared_one():
    """jobs/dpsgd.sbatch parses and differs from jobs/pcasgd.sbatch only in D-PSGD's lines (its
    comments, job name, ALGORITHM): the plumbing is jobs/common.sh's."""
    path = os.path.join(REPO, "jobs", "dpsgd.sbatch")
    text = open(path).read()
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    assert re.search(r"^ALGORITHM=dpsgd$", text, re.M) and 'mpidist_job "$@"' in text
    assert re.search(r"^#SBATCH --job-name=dpsgd$", text, re.M)
    code = lambda s: [ln for ln in s.splitlines()  # noqa: E731
                      if ln.strip() and not ln.startswith("# ") and ln != "#"]
    ours = code(text)
    theirs = code(open(os.path.join(REPO, "jobs", "pcasgd.sbatch")).read())
    differ = [ln for ln in ours if ln not in theirs]
    assert differ == ["#SBATCH --job-name=dpsgd", "ALGORITHM=dpsgd"], differ


# ------------------------------------------------------------------------------ multi-rank


def test_real_exchange_matches_closed_form_under_mpi(tmp_path):
    """6 ranks, one launch: Worker over mpidist.comm = W X - eta G for ring, full, exponential
    (both mixings), one step and 4 steps; pure mixing contracts by rho (ring, exponential)."""
    d = tmp_path / "t"
    out = check_program(run_mpi(6, ["tests/programs/dpsgd_checks.py", "--trace-dir", str(d), "--quiet"],
                        timeout=240))
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert len(lines) == 2 * 6 + 4, out
    assert all(ln.startswith("PASS") for ln in lines), "\n".join(lines)
    # every params message is the model itself: 6 float64 values, one per neighbour and step
    for r in trace.read_run(str(d)).ranks:
        c = r.comm
        for op in (b"send", b"recv"):
            rows = c[(c["channel"] == b"params") & (c["op"] == op)]
            assert set(rows["nbytes"]) == {6 * 8}
            deg = {g: len(topology.build(6, (6,), g, 0).neighbours(r.rank))
                   for g in topology.GRAPHS}
            expect = 4 * 2 * (deg["ring"] + deg["full"] + deg["exponential"]) + \
                4 * (2 * deg["ring"] + 2 * deg["exponential"])
            assert len(rows) == expect, (r.rank, op)


def test_default_entry_point_and_trace(tmp_path):
    """`mpirun -n 8 python -m mpidist.dpsgd` with no flags: the summary, the trace directory, and
    a trace whose params messages are exactly the model (4 bytes x numel, no stamp), two per
    ring neighbour and iteration."""
    proc = run_mpi(8, ["-m", "mpidist.dpsgd"], timeout=400, cwd=str(tmp_path))
    out = check(proc)
    m = re.search(r"D-PSGD, ring graph: test accuracy of the 8 workers ([\d.]+) \+- ([\d.]+) %.*"
                  r"averaged model x_bar ([\d.]+) %", out)
    assert m, out
    assert float(m.group(1)) > 80 and float(m.group(3)) > 80, out
    d = re.search(r"^trace: (\S+)$", out, re.M).group(1)
    run = trace.read_run(os.path.join(str(tmp_path), d))
    assert len(run.ranks) == 8 and run.attrs["algorithm"] == "dpsgd"
    numel = models.count_parameters(models.build("cnn", (1, 16, 16), 10))
    T = 1000
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        c = r.comm
        peers = sorted({(r.rank - 1) % 8, (r.rank + 1) % 8})
        for op in (b"send", b"recv"):
            rows = c[(c["channel"] == b"params") & (c["op"] == op)]
            assert set(rows["nbytes"]) == {4 * numel}
            assert sorted(zip(rows["peer"], rows["step"])) == sorted(
                (p, t) for p in peers for t in range(T))
        assert len(c[c["channel"] == b"init"]) == 1
        s, _, v = r.metric("loss")
        assert list(s) == list(range(T))
        for name in ("test_acc", "test_loss", "consensus_dist"):
            s, _, v = r.metric(name)
            assert list(s) == list(range(99, T, 100)), name
    assert len(run.ranks[0].attrs["final_test_acc"]) == 8


def test_resume_is_bitwise_equal(tmp_path):
    """4 ranks, exponential graph: a run with --checkpoint-every 20 (checkpoints after
    iterations 19 and 39), and a second job resumed from the step-19 checkpoint; the models at
    step 39, the losses of iterations 20-39 and the final accuracies are bitwise equal."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-m", "mpidist.dpsgd", "--graph", "exponential", "--steps", "40",
              "--eval-every", "20", "--checkpoint-every", "20", "--quiet"]
    out = check(run_mpi(4, [*common, "--trace-dir", str(a)], timeout=180))
    ck = a / "checkpoints"
    assert sorted(os.listdir(ck)) == ["step-000000019", "step-000000039"], os.listdir(ck)
    out2 = check(run_mpi(4, [*common, "--resume", str(ck / "step-000000019"),
                             "--trace-dir", str(b)], timeout=180))
    assert "resuming from step 19" in out2
    line = lambda o: next(ln for ln in o.splitlines() if ln.startswith("per worker:"))  # noqa: E731
    assert line(out) == line(out2)
    for k in range(4):
        sa = torch.load(ck / "step-000000039" / f"rank{k}.pt", weights_only=False)
        sb = torch.load(b / "checkpoints" / "step-000000039" / f"rank{k}.pt", weights_only=False)
        for name, t in sa["algorithm"]["model"].items():
            assert torch.equal(t, sb["algorithm"]["model"][name]), (k, name)
        assert sa["algorithm"]["shard"] == sb["algorithm"]["shard"]
    ra, rb = trace.read_run(str(a)), trace.read_run(str(b))
    assert ra.attrs["final_test_acc"] == rb.attrs["final_test_acc"]
    for k in range(4):
        la, lb = ra.ranks[k].metric("loss"), rb.ranks[k].metric("loss")
        assert list(lb[0]) == list(range(20, 40)) and np.array_equal(la[2][20:], lb[2])
