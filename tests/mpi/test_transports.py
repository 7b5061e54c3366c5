"""Every algorithm over a network transport (issue 17): MPICH's TCP path instead of shared memory.

``MPIR_CVAR_NOLOCAL=1`` stops MPICH from using shared memory between the ranks of one node and
``UCX_TLS=tcp`` restricts its UCX netmod to TCP, so every message crosses the TCP stack as it would
between nodes. For each algorithm the same seeded run goes once over shared memory and once over
TCP; their traces must hold the same messages and bytes on every channel (what the algorithm sends
does not depend on the transport; AdaComm runs PASGD, whose averagings do not depend on the clock).
"""
from __future__ import annotations

import collections

import pytest

from mpidist.trace import read_run
from mpirun import check, run_mpi

TCP = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp"}
RUNS = {
    "pcasgd": (4, ["--clusters", "2,2", "--delay", "3", "--steps", "20"]),
    "adacomm": (2, ["--method", "pasgd", "--tau", "4", "--steps", "24", "--time-budget", "0"]),
    "dada": (2, ["--steps", "20", "--pretrain-steps", "10"]),
    "mdgan": (3, ["-I", "10"]),
    "dpsgd": (3, ["--steps", "20"]),
}


def _bytes_per_channel(run_dir) -> dict:
    out = collections.Counter()
    for r in read_run(str(run_dir)).ranks:
        for ch, op, n in zip(r.comm["channel"], r.comm["op"], r.comm["nbytes"]):
            out[(ch.decode(), op.decode())] += int(n)
            out[(ch.decode(), op.decode(), "messages")] += 1
    return dict(out)


@pytest.mark.parametrize("algo", sorted(RUNS))
def test_same_bytes_over_tcp_as_over_shared_memory(tmp_path, algo):
    n, flags = RUNS[algo]
    got = {}
    for name, env in (("shm", {}), ("tcp", TCP)):
        d = tmp_path / name
        check(run_mpi(n, ["-m", f"mpidist.{algo}", *flags, "--seed", "3", "--trace-dir", str(d),
                          "--quiet"], timeout=300, env=env))
        got[name] = _bytes_per_channel(d)
    assert got["shm"] and got["tcp"] == got["shm"]
