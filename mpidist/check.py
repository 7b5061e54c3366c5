"""``python -m mpidist.check``: what to look at first on a new cluster, before a real job.

Run it the way the job will run (``srun --mpi=pmi2 -N 2 -n 2 python -m mpidist.check``, or
``mpirun -n 2 python -m mpidist.check``); one rank works too. Rank 0 prints, one ``name: value``
line each:

- the MPI library (``MPI_Get_library_version``), its MPI standard version, mpi4py's version;
- the ranks, the nodes (MPI's shared-memory split, which places devices:
  :func:`mpidist.placement.local_rank`) with their host name and SLURM node name, each rank's
  node-local index, and ``SLURM_LOCALID`` when SLURM launched the ranks (it must agree);
- CUDA: the GPUs torch sees on rank 0's node, whether the library says it is CUDA-aware
  (``MPIX_Query_cuda_support``) and what mpidist will do (:func:`mpidist.cuda_aware.cuda_aware_mpi`);
- huge pages: the kernel's transparent huge page mode and the reserved huge pages;
- ``MPI_WTIME_IS_GLOBAL`` and every rank's clock offset to rank 0 with its uncertainty
  (:mod:`mpidist.clock`, the estimate a run records in its trace);
- latency (half the round trip of 8 bytes, median of ``--reps``) and bandwidth (``--bytes``
  one way, from the median round trip) between rank 0 and the first rank on another node (or
  rank 1 when all share one node).

Bad arguments: one line on rank 0, exit 2 on every rank.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

import numpy as np
from mpi4py import MPI

from . import clock
from .buffers import thp_mode
from .placement import local_rank

_TAG = 30_500


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def _args(argv, rank: int):
    """The arguments; ValueError (one line) for bad ones; --help printed by rank 0 only."""
    p = _Parser(prog="python -m mpidist.check",
                description="Check the MPI set-up of a job: library, placement, CUDA-awareness, "
                "huge pages, clocks, latency and bandwidth.")
    p.add_argument("--bytes", type=int, default=8 << 20,
                   help="message size of the bandwidth measurement (default 8 MiB)")
    p.add_argument("--reps", type=int, default=20,
                   help="round trips per measurement (default 20)")
    out = sys.stdout
    if rank:
        sys.stdout = open(os.devnull, "w")
    try:
        a = p.parse_args(argv)
    finally:
        if rank:
            sys.stdout.close()
            sys.stdout = out
    if a.bytes < 1 or a.reps < 1:
        raise ValueError("--bytes and --reps must be at least 1")
    return a


def library_cuda_support() -> str:
    """The loaded MPI library's own answer to ``MPIX_Query_cuda_support()``, as text."""
    from .cuda_aware import library_cuda_support as said
    answer = said()
    if answer is None:
        return "not said (the library has no MPIX_Query_cuda_support)"
    return "yes" if answer else "no"


def huge_pages() -> str:
    fields = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
    except OSError:
        pass
    reserved = (f"{fields['HugePages_Total']} reserved of {fields.get('Hugepagesize', '?')}"
                if "HugePages_Total" in fields else "no reserved pages reported")
    return f"transparent huge pages '{thp_mode()}'; {reserved}"


def pingpong(comm, me: int, peer: int, nbytes: int, reps: int) -> float:
    """Median round trip (s) of ``nbytes`` between ``me`` and ``peer`` (rank 0 of the pair starts),
    after one round trip of warm-up."""
    buf = np.zeros(max(nbytes, 1), np.uint8)[:nbytes]
    first = me < peer
    times = []
    for i in range(reps + 1):
        t = MPI.Wtime()
        if first:
            comm.Send(buf, peer, _TAG)
            comm.Recv(buf, peer, _TAG)
        else:
            comm.Recv(buf, peer, _TAG)
            comm.Send(buf, peer, _TAG)
        if i:
            times.append(MPI.Wtime() - t)
    return float(np.median(times))


def _node_leader(world, host: str) -> int:
    """The lowest world rank on this rank's node: MPI's shared-memory split (what places devices),
    or the host name where the library cannot split."""
    try:
        node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
        leader = node.bcast(world.Get_rank(), root=0)
        node.Free()
        return leader
    except MPI.Exception:
        return min(r for r, h in enumerate(world.allgather(host)) if h == host)


def _cuda() -> tuple[str, str]:
    from .cuda_aware import cuda_aware_mpi
    try:
        import torch
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        gpus = 0
    if not gpus:
        return "no GPU visible to torch on rank 0's host", "CPU tensors only"
    return (f"{gpus} GPU(s) visible to torch on rank 0's host",
            "device buffers to MPI directly" if cuda_aware_mpi() else
            "device buffers staged through pinned host memory")


def main(argv=None) -> int:
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    try:
        args = _args(argv, rank)
        raw = clock.raw_clock(rank)
    except ValueError as e:   # every rank finds it alike
        if rank == 0:
            print(f"mpidist.check: error: {e}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    host = socket.gethostname()
    local, node_size = local_rank(world)
    me = (_node_leader(world, host), local, node_size, os.environ.get("SLURM_LOCALID"),
          host, os.environ.get("SLURMD_NODENAME"))
    everyone = world.allgather(me)
    how = clock.method(world)
    sync = world.Dup()
    offsets = world.gather(clock.estimate(sync, raw, how, timeout=60.0), root=0)
    sync.Free()
    nodes: dict[int, list] = {}   # the ranks of each node (MPI's shared-memory split)
    for r, (leader, lr, ns, slurm, h, sn) in enumerate(everyone):
        nodes.setdefault(leader, []).append((r, lr, ns, slurm, h, sn))
    peer = next((r for r, e in enumerate(everyone) if e[0] != everyone[0][0]), 1 if size > 1 else None)
    lat = bw = None
    if peer is not None and rank in (0, peer):
        other = peer if rank == 0 else 0
        lat = pingpong(world, rank, other, 8, max(args.reps, 50)) / 2
        bw = args.bytes / (pingpong(world, rank, other, args.bytes, args.reps) / 2)
    world.Barrier()
    if rank != 0:
        return 0
    import mpi4py
    lines = [("MPI library", " ".join(MPI.Get_library_version().replace("\x00", "")
                                      .splitlines()[0].split())),  # (Open MPI's holds NULs)
             ("MPI standard", "{}.{}".format(*MPI.Get_version())),
             ("mpi4py", f"{mpi4py.__version__} ({os.path.dirname(mpi4py.__file__)})"),
             ("ranks", f"{size} on {len(nodes)} node(s) (MPI's shared-memory split)")]
    for members in nodes.values():
        h, sn = members[0][4], members[0][5]
        desc = ", ".join(f"{r} (local {lr}" + (f", SLURM_LOCALID {s}" if s is not None else "") + ")"
                         for r, lr, ns, s, _, _ in members)
        lines.append((f"node {h}" + (f" (SLURM node {sn})" if sn else ""),
                      f"{len(members)} rank(s): {desc}"))
    bad = [r for m in nodes.values() for r, lr, ns, s, _, _ in m if s is not None and int(s) != lr]
    if bad:
        lines.append(("WARNING", f"SLURM_LOCALID differs from MPI's shared-memory split on ranks "
                      f"{bad}: devices follow the split"))
    gpus, path = _cuda()
    lines += [("CUDA", gpus), ("CUDA-aware MPI (library)", library_cuda_support()),
              ("CUDA path (mpidist)", path), ("huge pages", huge_pages()),
              ("MPI_WTIME_IS_GLOBAL", str(int(clock.wtime_is_global(world)))),
              ("clock method", how)]
    for r, (off, unc, _) in enumerate(offsets):
        if r:
            lines.append((f"clock offset rank {r}", f"{off:+.9f} s +- {unc:.3g} s"))
    if peer is None:
        lines.append(("latency", "one rank: no pair to measure"))
    else:
        where = "another node" if everyone[peer][0] != everyone[0][0] else "the same node"
        lines += [("pair", f"rank 0 and rank {peer} ({where})"),
                  ("latency", f"{lat * 1e6:.2f} us (8 bytes, half the median round trip)"),
                  ("bandwidth", f"{bw / 1e9:.3f} GB/s ({args.bytes} bytes one way)")]
    w = max(len(k) for k, _ in lines)
    print("\n".join(f"{k + ':':<{w + 1}} {v}" for k, v in lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
