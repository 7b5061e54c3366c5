"""Communication benchmark: mpidist.comm against raw mpi4py and torch.distributed (gloo).

Run on 2 ranks::

    mpirun -n 2 python tools/bench_comm.py [--quick] [--csv out.csv]

Point to point: a ping-pong of float32 tensors from 1 KiB to 64 MiB; the one-way time is half the
round trip (median of the repetitions) and the bandwidth is bytes / one-way time. The ways take
turns in blocks, so that all of them see the same machine. Four ways of moving the same bytes:

- ``mpi4py``: raw ``Isend``/``Irecv`` on numpy buffers and ``Waitall`` (the floor to beat);
- ``mpidist``: ``Communicator.isend(snapshot=False)``/``irecv`` on the same tensors, tracing ON
  (every message written to a real HDF5 trace in a temporary directory);
- ``mpidist+snap``: the default ``isend`` that first copies the tensor into a pooled snapshot;
- ``gloo``: ``torch.distributed.isend``/``irecv`` over TCP on the loopback.

Allreduce of 1M and 25M float32: mpi4py ``Allreduce``, mpidist ``iallreduce().wait()`` (traced),
gloo ``all_reduce``. Ratios are against mpi4py (bandwidth ratio > 1 = faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpidist.comm import Communicator, aligned_empty  # noqa: E402
from mpidist.trace import TraceWriter  # noqa: E402

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()


def reps_for(nbytes: int, quick: bool) -> int:
    r = 2000 if nbytes <= 64 << 10 else max(20, int(200 * (1 << 20) / nbytes) + 10)
    return max(10, r // 10) if quick else r


def pingpong(send, recv, reps: int) -> list:
    """One-way seconds of ``reps`` round trips (after a warm-up)."""
    peer = 1 - rank
    times = []
    world.Barrier()
    for i in range(reps + 2):
        t0 = time.perf_counter()
        if rank == 0:
            send(peer)
            recv(peer)
        else:
            recv(peer)
            send(peer)
        if i >= 2:
            times.append((time.perf_counter() - t0) / 2)
    return times


def interleaved(ways: dict, reps: int, rounds: int = 10) -> dict:
    """Median one-way seconds per way, the ways taking turns in ``rounds`` blocks so that every
    way sees the same machine (other load, scheduling) rather than one after the other."""
    samples = {w: [] for w in ways}
    per = max(2, reps // rounds)
    for _ in range(rounds):
        for w, (send, recv) in ways.items():
            samples[w] += pingpong(send, recv, per)
    return {w: float(np.median(t)) for w, t in samples.items()}


def bench_p2p(sizes, quick, comm: Communicator, gloo):
    rows = []
    for nbytes in sizes:
        n = nbytes // 4
        a = aligned_empty(n).fill_(rank)
        b = aligned_empty(n)
        an, bn = a.numpy(), b.numpy()
        reps = reps_for(nbytes, quick)

        def raw_send(p):
            MPI.Request.Waitall([world.Isend(an, p, 1)])

        def raw_recv(p):
            MPI.Request.Waitall([world.Irecv(bn, p, 1)])

        def md_send(p, snap=False):
            comm.isend(a, p, 2, "bench", snapshot=snap).wait()

        def md_recv(p):
            comm.irecv(b, p, 2, "bench").wait()

        ways = {"mpi4py": (raw_send, raw_recv), "mpidist": (md_send, md_recv),
                "mpidist+snap": (lambda p: md_send(p, True), md_recv)}
        if gloo is not None:
            import torch.distributed as dist
            ways["gloo"] = (lambda p: dist.isend(a, p).wait(), lambda p: dist.irecv(b, p).wait())
        res = {"bytes": nbytes, **interleaved(ways, reps)}
        assert b[0].item() == 1 - rank, "benchmark moved wrong data"
        rows.append(res)
        comm.trace.maybe_flush()
    return rows


def bench_allreduce(counts, comm: Communicator, gloo, quick):
    rows = []
    for n in counts:
        x = aligned_empty(n).fill_(1.0)
        xn = x.numpy()
        reps = 3 if quick else (20 if n <= 1 << 20 else 5)

        ways = {"mpi4py": lambda: world.Allreduce(MPI.IN_PLACE, xn, MPI.SUM),
                "mpidist": lambda: comm.iallreduce(x, "sum", "bench").wait()}
        if gloo is not None:
            import torch.distributed as dist
            ways["gloo"] = lambda: dist.all_reduce(x)
        samples = {w: [] for w in ways}
        for f in ways.values():
            f()  # warm-up
        for _ in range(reps):  # the ways take turns
            for w, f in ways.items():
                world.Barrier()
                t0 = time.perf_counter()
                f()
                samples[w].append(time.perf_counter() - t0)
        res = {"count": n, **{w: float(np.median(t)) for w, t in samples.items()}}
        rows.append(res)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--no-gloo", action="store_true", help="skip torch.distributed")
    ap.add_argument("--csv", default=None, help="also write the point-to-point table as CSV")
    args = ap.parse_args()
    if size != 2:
        if rank == 0:
            print("bench_comm: run with exactly 2 ranks (mpiexec -n 2)", file=sys.stderr)
        sys.exit(2)
    gloo = None
    if not args.no_gloo:
        import torch.distributed as dist
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        port = world.bcast(29500 + (os.getpid() % 1000) if rank == 0 else None)
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=size)
        gloo = dist
    tmp = world.bcast(tempfile.mkdtemp(prefix="mpidist-bench-") if rank == 0 else None)
    t0 = MPI.Wtime()
    clock = lambda: MPI.Wtime() - t0  # noqa: E731
    trace = TraceWriter(os.path.join(tmp, f"rank{rank}.h5"), {"algorithm": "bench", "rank": rank},
                        clock, capacity=1 << 16)
    comm = Communicator(world, trace, clock, timeout=60)

    sizes = [1 << k for k in range(10, 27, 2 if args.quick else 1)]
    p2p = bench_p2p(sizes, args.quick, comm, gloo)
    ar = bench_allreduce([1 << 20, 25 << 20], comm, gloo, args.quick)
    trace.close()
    if rank == 0:
        ways = [w for w in ("mpi4py", "mpidist", "mpidist+snap", "gloo") if w in p2p[0]]
        print("point to point, 2 ranks: one-way latency (us) | bandwidth (GB/s) | ratio to mpi4py")
        print(f"{'size':>8} " + " ".join(f"{w + ' us':>13}" for w in ways)
              + " " + " ".join(f"{w + ' GB/s':>15}" for w in ways)
              + " " + " ".join(f"{w + ' x':>13}" for w in ways[1:]))
        for r in p2p:
            n = r["bytes"]
            label = f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
            print(f"{label:>8} " + " ".join(f"{r[w] * 1e6:13.1f}" for w in ways)
                  + " " + " ".join(f"{n / r[w] / 1e9:15.2f}" for w in ways)
                  + " " + " ".join(f"{r['mpi4py'] / r[w]:13.2f}" for w in ways[1:]))
        small = p2p[0]
        print(f"added one-way latency at {small['bytes']} B, tracing on: mpidist "
              f"{(small['mpidist'] - small['mpi4py']) * 1e6:.1f} us, with snapshot "
              f"{(small['mpidist+snap'] - small['mpi4py']) * 1e6:.1f} us")
        big = [r for r in p2p if r["bytes"] >= 1 << 20]
        print("mpidist/mpi4py bandwidth, messages >= 1 MiB: min "
              f"{min(r['mpi4py'] / r['mpidist'] for r in big):.2f}x, "
              f"median {np.median([r['mpi4py'] / r['mpidist'] for r in big]):.2f}x")
        print("\nallreduce (float32, 2 ranks): milliseconds | ratio to mpi4py")
        for r in ar:
            ws = [w for w in ("mpi4py", "mpidist", "gloo") if w in r]
            print(f"{r['count'] >> 20:>4}M " + "  ".join(f"{w} {r[w] * 1e3:8.2f} ms" for w in ws)
                  + "  | " + "  ".join(f"{w} {r['mpi4py'] / r[w]:.2f}x" for w in ws[1:]))
        if args.csv:
            with open(args.csv, "w") as f:
                f.write("bytes," + ",".join(f"{w}_s" for w in ways) + "\n")
                for r in p2p:
                    f.write(f"{r['bytes']}," + ",".join(f"{r[w]:.9g}" for w in ways) + "\n")
    if gloo is not None:
        gloo.destroy_process_group()


if __name__ == "__main__":
    main()
