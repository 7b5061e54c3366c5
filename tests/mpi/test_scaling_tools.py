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
        pct = [float(c.rstrip("%")) for c in cols[3:10]]
        assert abs(sum(pct) - 100) < 0.5, cols                   # the seven classes
        # overhead = comm path + data + other (each printed to 0.1 %)
        assert abs(float(cols[10].rstrip("%")) - sum(pct[4:7])) < 0.2, cols
        assert cols[11] in ("HOLDS", "FAILS")


def test_bench_neighbour_format():
    out = check(run_mpi(2, [os.path.join(TOOLS, "bench_neighbour.py"), "--sizes", "1K,8K",
                            "--reps", "6", "--rounds", "2"], timeout=300))
    assert "ring exchange, 2 ranks (1 neighbour(s) each)" in out
    for size in (1024, 8192):
        assert re.search(rf"^\s+{size}" + r"\s+[\d.]+" * 4 + r"\s+[-+][\d.]+\s+[-+][\d.]+$", out,
                         re.M), out
