"""Launches of issue 15's scaling tools on tiny settings: tools/bench_scaling.py (DADA and D-PSGD at
2 ranks: their traces hold exactly the messages of mpidist.analysis's formulas, ratio 1.0000, and
DADA's bytes per step are D / p), tools/profile_step.py (the classes of one rank's step add up to
the whole) and tools/bench_neighbour.py (every way moves the neighbours' bytes; the table's
format). No timing is asserted."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from mpirun import REPO, check, run_mpi

TOOLS = os.path.join(REPO, "tools")
D_BYTES = 4 * ((500 * 500 + 500) * 2 + 501)   # ADDA's discriminator, float32


def _tool(*argv, timeout=600):
    return subprocess.run([sys.executable, os.path.join(TOOLS, argv[0]), *argv[1:]], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_bench_scaling_two_ranks():
    out = check(_tool("bench_scaling.py", "--algorithms", "dada,dpsgd", "--ranks", "2",
                      "--steps", "8"))
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()
            if re.match(r"^\s*(dada|dpsgd)\s+2\s", ln)}
    assert set(rows) == {"dada", "dpsgd"}, out
    for name, cols in rows.items():
        assert cols[4] == "1.0000", (name, out)     # measured / formula
    # DADA, GA p = 2: one allreduce of D every other step, in kB per step and rank
    assert float(rows["dada"][2]) == round(D_BYTES / 2 / 1e3, 1), out
    assert "projection: ResNet-50-sized model" in out


def test_profile_step_classes_add_up():
    out = check(_tool("profile_step.py", "dpsgd", "--steps", "12"))
    rows = [ln.split() for ln in out.splitlines() if re.match(r"^\s*dpsgd\s+[01]\s", ln)]
    assert len(rows) == 2, out
    for cols in rows:
        pct = [float(c.rstrip("%")) for c in cols[3:11]]
        assert abs(sum(pct) - 100) < 0.5, cols                   # the eight classes
        # overhead = comm path + data + other (each printed to 0.1 %); +mpi adds the MPI calls
        assert abs(float(cols[11].rstrip("%")) - sum(pct[5:8])) < 0.2, cols
        assert cols[12] in ("HOLDS", "FAILS")
        assert abs(float(cols[13].rstrip("%")) - sum(pct[4:8])) < 0.2, cols


def test_bench_trace_cost_in_process_toggles_the_trace(tmp_path):
    """bench_trace_cost.py --in-process's ranks trace the steps of the 'on' blocks only: D-PSGD,
    60 steps in blocks of 10 (on, off, off, on, on, off): its model messages ('params') are rows
    of steps 0-9 and 30-49 and of no other step, on both ranks, and rank 0 timed every step."""
    import json

    from mpidist.trace import read_run
    out, run = tmp_path / "times.json", tmp_path / "run"
    check(run_mpi(2, [os.path.join(TOOLS, "bench_trace_cost.py"), "--ab-worker", "dpsgd",
                      "--block", "10", "--out", str(out), "--", "--steps", "60", "--trace-dir",
                      str(run), "--quiet", "--eval-every", "1000"], timeout=300))
    want = set(range(0, 10)) | set(range(30, 50))
    for t in read_run(str(run)).ranks:
        rows = t.comm[t.comm["channel"] == b"params"]
        assert set(rows["step"].tolist()) == want, t.rank
    times = json.load(open(out))
    assert [s for s, _, _ in times] == list(range(1, 60))       # step 0's start is not seen
    assert all(on == (s in want) for s, on, _ in times)


def test_bench_neighbour_format():
    out = check(run_mpi(2, [os.path.join(TOOLS, "bench_neighbour.py"), "--sizes", "1K,8K",
                            "--reps", "6", "--rounds", "2"], timeout=300))
    assert "ring exchange, 2 ranks (1 neighbour(s) each)" in out
    for size in (1024, 8192):
        assert re.search(rf"^\s+{size}" + r"\s+[\d.]+" * 4 + r"\s+[-+][\d.]+\s+[-+][\d.]+$", out,
                         re.M), out
