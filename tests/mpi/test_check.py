"""``mpirun -n 2 python -m mpidist.check``: placement, the clock offset it measures (against one
injected with MPIDIST_TEST_CLOCK_SKEW), latency and bandwidth figures."""
from __future__ import annotations

import re

from mpi4py import MPI

from mpidist import clock
from mpirun import check, run_mpi


def test_two_ranks():
    out = check(run_mpi(2, ["-m", "mpidist.check", "--bytes", "65536", "--reps", "5"],
                        timeout=180, env={clock.SKEW_ENV: "1:0.75:0"}))
    lines = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    assert lines["MPI library"] == " ".join(MPI.Get_library_version().splitlines()[0].split())
    assert lines["ranks"].startswith("2 on 1 node(s)")
    node = next(v for k, v in lines.items() if k.startswith("node "))
    assert node == "2 rank(s): 0 (local 0), 1 (local 1)"
    off, unc = map(float, re.fullmatch(r"([-+0-9.e]+) s \+- ([-+0-9.e]+) s",
                                       lines["clock offset rank 1"]).groups())
    assert abs(off - 0.75) <= unc
    assert lines["pair"] == "rank 0 and rank 1 (the same node)"
    lat = float(lines["latency"].split()[0])
    bw = float(lines["bandwidth"].split()[0])
    assert lat > 0 and bw > 0
