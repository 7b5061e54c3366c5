"""Multi-rank checks of mpidist.comm, run under mpiexec by tests/mpi/test_comm_mpi.py.

Each check prints one line per rank, ``PASS <name>`` or ``FAIL <name>: <why>``; expected values are
in closed form or from a blocking mpi4py reference. Works at any world size >= 2.
"""
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
from mpi4py import MPI

from mpidist.comm import Communicator, LinkModel, waitall
from mpidist.trace import TraceWriter, read_rank

import checks

world = MPI.COMM_WORLD
r, n = world.Get_rank(), world.Get_size()
tmp = world.bcast(tempfile.mkdtemp(prefix="mpidist-checks-") if r == 0 else None)
t0 = world.bcast(MPI.Wtime())  # one t = 0 for all ranks (MPI_Wtime is global on one node)
clock = lambda: MPI.Wtime() - t0  # noqa: E731
trace = TraceWriter(os.path.join(tmp, f"rank{r}.h5"), {"rank": r}, clock)
comm = Communicator(world, trace, clock, timeout=20)
CHECKS = []


def check(f):
    CHECKS.append(f)
    return f


@check
def ring_exchange():
    """rank-valued tensors around the ring: rank r receives (r-1) mod n from its left."""
    x = torch.arange(1000, dtype=torch.float32) + 1000 * r
    left, right = torch.empty(1000), torch.empty(1000)
    hs = [comm.irecv(left, (r - 1) % n, 10, "ring"), comm.irecv(right, (r + 1) % n, 11, "ring"),
          comm.isend(x, (r + 1) % n, 10, "ring"), comm.isend(x, (r - 1) % n, 11, "ring")]
    waitall(hs)
    assert torch.equal(left, torch.arange(1000.) + 1000 * ((r - 1) % n)), left[:3]
    assert torch.equal(right, torch.arange(1000.) + 1000 * ((r + 1) % n)), right[:3]


@check
def snapshot_protects_send():
    """isend copies: changing the tensor right after posting does not change what arrives."""
    x = torch.full((50000,), float(r))
    out = torch.empty(50000)
    hr = comm.irecv(out, (r - 1) % n, 12, "snap")
    hs = comm.isend(x, (r + 1) % n, 12, "snap")
    x.fill_(-1.0)
    waitall([hr, hs])
    assert torch.all(out == (r - 1) % n), out[:3]


@check
def matches_blocking_reference():
    """nonblocking exchange of random tensors equals mpi4py's blocking Sendrecv of the same."""
    g = torch.Generator().manual_seed(r)
    x = torch.randn(4097, generator=g, dtype=torch.float64)
    got = torch.empty_like(x)
    waitall([comm.irecv(got, (r - 1) % n, 13, "ref"), comm.isend(x, (r + 1) % n, 13, "ref")])
    ref = np.empty(4097)
    world.Sendrecv(x.numpy(), (r + 1) % n, 14, ref, (r - 1) % n, 14)
    assert np.array_equal(got.numpy(), ref)


@check
def allreduce_sum_avg_max():
    for dtype in (torch.float32, torch.float64, torch.int64):
        y = torch.full((1 << 16,), r, dtype=dtype)
        comm.iallreduce(y, "sum", "ar").wait()
        assert torch.all(y == n * (n - 1) // 2), (dtype, y[:2])
    y = torch.full((7,), float(r))
    comm.iallreduce(y, "avg", "ar").wait()
    assert torch.allclose(y, torch.full((7,), (n - 1) / 2)), y
    y = torch.full((7,), float(r))
    comm.iallreduce(y, "max", "ar").wait()
    assert torch.all(y == n - 1)


@check
def overlapping_collectives():
    """two iallreduce in flight at once, waited in reverse order."""
    a, b = torch.full((1000,), float(r)), torch.full((3,), 2.0 * r)
    ha, hb = comm.iallreduce(a, "sum", "a"), comm.iallreduce(b, "sum", "b")
    hb.wait()
    ha.wait()
    assert a[0] == n * (n - 1) / 2 and b[0] == n * (n - 1)


@check
def bcast_from_last():
    z = torch.full((10,), float(r))
    comm.ibcast(z, n - 1, "bc").wait()
    assert torch.all(z == n - 1)
    assert comm.bcast_object({"k": r}, n - 1) == {"k": n - 1}


@check
def link_model_delays():
    """with L = 20 ms and B = 1e8 B/s a 1 MB message arrives >= L + n/B = 30 ms after posting,
    and the sender's link is busy n/B = 10 ms."""
    link = LinkModel(0.020, 1e8)
    c = Communicator(world, trace, clock, link=link, timeout=20)
    x, out = torch.full((250000,), float(r)), torch.empty(250000)
    hr = c.irecv(out, (r - 1) % n, 15, "link")
    hs = c.isend(x, (r + 1) % n, 15, "link")
    hs.wait()
    hr.wait()
    assert torch.all(out == (r - 1) % n)
    assert hs.t_done - hs.t_post >= 0.010 - 1e-4, hs.t_done - hs.t_post
    posts = world.allgather(hs.t_post)  # one clock: t0 was taken after a barrier on one node
    assert hr.t_done - posts[(r - 1) % n] >= 0.030 - 1e-3, hr.t_done - posts[(r - 1) % n]
    world.Barrier()
    y = torch.ones(250000)
    t = time.perf_counter()
    c.iallreduce(y, "sum", "link").wait()
    expect = 2 * (n - 1) * 0.020 + 2 * (n - 1) / n * 1e6 / 1e8
    assert time.perf_counter() - t >= expect - 1e-3, (time.perf_counter() - t, expect)
    assert torch.all(y == n)


@check
def trace_rows_are_exact():
    """after the checks above, this rank's file holds exactly the messages it exchanged."""
    trace.flush()
    t = read_rank(trace.path)
    ring = t.comm[t.comm["channel"] == b"ring"]
    assert len(ring) == 4 and set(ring["op"]) == {b"send", b"recv"}, ring
    assert set(ring["nbytes"]) == {4000}
    assert set(ring["peer"]) == {(r - 1) % n, (r + 1) % n}
    assert np.all(ring["t_done"] >= ring["t_post"])
    ar = t.comm[t.comm["channel"] == b"ar"]
    assert list(ar["nbytes"]) == [1 << 18, 1 << 19, 1 << 19, 28, 28], list(ar["nbytes"])
    assert np.all(ar["peer"] == -1)


def main():
    """Run every check; rank 0 prints all ranks' result lines (ranks printing themselves would
    interleave their lines in mpiexec's merged output)."""
    lines = []
    for f in CHECKS:
        world.Barrier()
        try:
            f()
            lines.append(f"PASS {f.__name__} rank {r}")
        except Exception as e:  # report and go on: one launch runs every check
            msg = "".join(traceback.format_exception_only(type(e), e)).strip().replace("\n", " ")
            lines.append(f"FAIL {f.__name__} rank {r}: {msg}")
            traceback.print_exc(file=sys.stderr)
    trace.close()
    everyone = world.gather(lines)
    if r == 0:
        for ln in (ln for rank_lines in everyone for ln in rank_lines):
            status, rest = ln.split(" ", 1)
            checks.line(status == "PASS", rest)
        shutil.rmtree(tmp, ignore_errors=True)  # every rank closed its trace before the gather
    checks.finish()


if __name__ == "__main__":
    main()
