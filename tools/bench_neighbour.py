"""A fixed neighbour exchange four ways: is an MPI-3 neighbourhood collective a win over what
D-PSGD (persistent requests) and PC-ASGD (isend/irecv) do now?

    mpiexec -n 2 python tools/bench_neighbour.py
    mpiexec -n 4 python tools/bench_neighbour.py --sizes 1K,150K,2M --reps 400

Every rank exchanges one buffer with each neighbour of a ring (``(r - 1) mod n`` and
``(r + 1) mod n``; one neighbour with two ranks), as D-PSGD's gossip step does, and waits for all of
it; a round is that exchange, timed over ``--reps`` rounds after a warm-up, the ways taking turns
in blocks (``--rounds``) so that all see the same machine. Median microseconds per round:

| way | what it does per round |
|---|---|
| ``isend`` | ``Communicator.irecv`` + ``isend(snapshot=False)`` per neighbour, ``waitall`` (traced; PC-ASGD's way) |
| ``persistent`` | ``recv_init``/``send_init`` once, ``start()`` per neighbour, ``waitall`` (traced; D-PSGD's way) |
| ``neighbour`` | raw mpi4py ``Ineighbor_allgather`` on a ``Create_dist_graph_adjacent`` communicator, ``Wait`` (untraced: the best a neighbourhood collective could do here) |
| ``raw`` | raw mpi4py ``Irecv``/``Isend`` per neighbour, ``Waitall`` (untraced; the floor) |

It prints the table and, per size, how much the neighbourhood collective saves (or loses) against
the persistent requests, per round and per message. Sizes: 1 KiB, D-PSGD's default model (38,390
float32 = 150 KiB: the digits MLP), ADDA's discriminator (2 MiB).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpidist.comm import Communicator, aligned_empty, waitall  # noqa: E402
from mpidist.trace import TraceWriter  # noqa: E402


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024 ** 2}.get(s[-1:], 1)
    return int(float(s.rstrip("KM")) * mult)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1K,150K,2M", help="bytes per message (default 1K,150K,2M)")
    ap.add_argument("--reps", type=int, default=300, help="rounds per way and size (default 300)")
    ap.add_argument("--rounds", type=int, default=6, help="blocks the ways take turns in")
    a = ap.parse_args()
    world = MPI.COMM_WORLD
    r, n = world.Get_rank(), world.Get_size()
    peers = sorted({(r - 1) % n, (r + 1) % n} - {r})
    tmp = world.bcast(os.path.join("/tmp", f"bench-neighbour-{os.getpid()}") if r == 0 else None)
    os.makedirs(tmp, exist_ok=True)
    t0 = world.bcast(MPI.Wtime())
    clock = lambda: MPI.Wtime() - t0  # noqa: E731
    trace = TraceWriter(os.path.join(tmp, f"rank{r}.h5"), {"rank": r}, clock)
    comm = Communicator(world, trace, clock)
    graph = world.Create_dist_graph_adjacent(peers, peers, reorder=False)
    results = {}
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    for size in sizes:
        numel = size // 4
        send = aligned_empty(numel, torch.float32, "cpu").fill_(r)
        inbox = [aligned_empty(numel, torch.float32, "cpu") for _ in peers]
        gathered = aligned_empty(numel * len(peers), torch.float32, "cpu")
        plan = ([comm.recv_init(b, j, 41, "params") for j, b in zip(peers, inbox)]
                + [comm.send_init(send, j, 41, "params") for j in peers])
        snp, inp, gnp = send.numpy(), [b.numpy() for b in inbox], gathered.numpy()

        def isend():
            waitall([comm.irecv(b, j, 42, "params") for j, b in zip(peers, inbox)]
                    + [comm.isend(send, j, 42, "params", snapshot=False) for j in peers])

        def persistent():
            waitall([p.start() for p in plan])

        def neighbour():
            graph.Ineighbor_allgather(snp, gnp).Wait()

        def raw():
            reqs = [world.Irecv(b, j, 43) for j, b in zip(peers, inp)]
            reqs += [world.Isend(snp, j, 43) for j in peers]
            MPI.Request.Waitall(reqs)

        ways = {"isend": isend, "persistent": persistent, "neighbour": neighbour, "raw": raw}
        times = {w: [] for w in ways}
        for w, f in ways.items():  # warm-up, and a check that every way moves the right bytes
            for _ in range(5):
                f()
        expect = [float(j) for j in peers]
        assert [float(b[0]) for b in inbox] == expect and \
            [float(gnp[k * numel]) for k in range(len(peers))] == expect
        per_block = max(1, a.reps // a.rounds)
        for _ in range(a.rounds):
            for w, f in ways.items():
                world.Barrier()
                for _ in range(per_block):
                    t = time.perf_counter()
                    f()
                    times[w].append(time.perf_counter() - t)
        for p in plan:
            p.free()
        results[size] = {w: float(np.median(v)) * 1e6 for w, v in times.items()}
    trace.close()
    graph.Free()
    allres = world.gather(results)
    if r == 0:
        ways = ["isend", "persistent", "neighbour", "raw"]
        print(f"ring exchange, {n} ranks ({len(peers)} neighbour(s) each), {os.cpu_count()} "
              f"CPUs, load {os.getloadavg()[0]:.2f}; median us per round, the slowest rank")
        print(f"{'size':>10} " + " ".join(f"{w:>11}" for w in ways)
              + f" {'neighbour - persistent':>24} {'per message':>12}")
        for size in sizes:
            row = {w: max(res[size][w] for res in allres) for w in ways}
            d = row["neighbour"] - row["persistent"]
            print(f"{size:>10} " + " ".join(f"{row[w]:11.2f}" for w in ways)
                  + f" {d:+24.2f} {d / (2 * len(peers)):+12.2f}")
        print("(per message: the difference over the 2 x neighbours messages of a round)")
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
