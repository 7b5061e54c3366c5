"""Communication benchmark: mpidist.comm against yardsticks nobody here wrote or tuned.

Run on 2 ranks (the exact command of the README's figures)::

    mpiexec -n 2 python tools/bench_comm.py                # about 75 s on 2 idle cores
    mpiexec -n 2 python tools/bench_comm.py --sizes 1K-64K --reps 0.1 --no-gloo  # a quick look

Point to point: a ping-pong from 1 KiB to 64 MiB; the one-way time is half the round trip (median
over the repetitions), the bandwidth bytes / one-way time. In ONE run, the ways take turns in
blocks (``--rounds``), so every way sees the same machine (other load, scheduling), each round
starting one way later (:func:`rotated`), so that none always follows gloo:

- ``numpy``: raw mpi4py ``Isend``/``Irecv`` + ``Wait`` on ``np.empty`` arrays (what
  ``python -m mpi4py.bench pingpong`` moves);
- ``torch``: raw mpi4py ``Isend``/``Irecv`` + ``Wait`` on naive ``torch.empty`` tensors (handed to
  mpi4py as they are, through DLPack);
- ``gloo``: ``torch.distributed.isend``/``irecv`` with the gloo backend on ``torch.empty`` tensors
  (initialised with ``env://`` from the MPI rank and size; skipped, saying why, if it cannot start);
- ``mpidist``: ``Communicator.isend(snapshot=False)``/``irecv`` on :func:`aligned_empty` buffers
  (what FlatParams and the receive rings use), tracing ON (every message a row of a real HDF5
  trace in a temporary directory);
- ``mpidist-notrace``: the same with tracing off (``Communicator(trace=None)``, ``--no-trace``);
- ``mpidist+snap``: the default ``isend``, which first copies the tensor into a pooled snapshot;
- ``mpidist-persistent``: ``send_init``/``recv_init`` made once, ``start().wait()`` per message
  (MPI's persistent requests, as D-PSGD's neighbour exchange uses them), traced.

Each rank's main thread is pinned to a core of its own (``--no-bind`` leaves it free) after
gloo has started its threads, which stay free: unpinned, the way right after gloo's turn was
several times slower at random sizes (:func:`bind_main_thread`).

Allreduce of 1M and 25M float32 (``--allreduce``): mpi4py ``Allreduce`` on numpy arrays, mpidist
``iallreduce().wait()`` (traced), gloo ``all_reduce``, interleaved likewise.

Then it prints the ratios and whether each goal holds (issue 15): mpidist >= 0.95x numpy's
bandwidth for every size >= 1 MiB; >= 2x naive torch's for 1-16 MiB; at most 1.0 us added one way
at 1 KiB over numpy, tracing on (and the same on the persistent requests' path). Each goal's
figure comes with a 95 % interval, a bootstrap over the rounds (:func:`interval`), and the verdict
is HOLDS, FAILS or UNRESOLVED (:func:`verdict`): at 8-64 MiB two ways on the same huge-paged
memory differ by several percent from run to run, as much as the 0.95x goal's margin. Per size, the
latency table says how many bytes of mpidist's receive buffer and of the numpy way's lie on
transparent huge pages (numpy advises them itself for arrays from 4 MiB, when the kernel has
them to give). Last (``--no-mpi4py-bench`` skips it) rank 0 runs
``mpiexec -n 2 python -m mpi4py.bench pingpong`` as a subprocess, while rank 1 sleeps, and prints
its figures beside the numpy way's.

``--cuda``: the same ping-pong on CUDA tensors through mpidist's CUDA-aware path (when the MPI
library says it is CUDA-aware) and its staged path (pinned host buffers), per size.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpidist.buffers import anon_huge_pages, huge_page_bytes, thp_mode  # noqa: E402
from mpidist.comm import Communicator, aligned_empty, cuda_aware_mpi  # noqa: E402
from mpidist.trace import TraceWriter  # noqa: E402

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
peer = 1 - rank

GOAL_BIG, GOAL_TORCH, GOAL_SMALL_US = 0.95, 2.0, 1.0
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1K, 64M, 4096)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def size_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    lo, hi = parse_size(lo), parse_size(hi or lo)
    if lo < 4 or hi < lo:
        raise argparse.ArgumentTypeError(f"--sizes {text}: want MIN-MAX with 4 B <= MIN <= MAX")
    out, n = [], 1 << (lo.bit_length() - 1)
    while n <= hi:
        if n >= lo:
            out.append(n)
        n <<= 1
    return out


def label(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else (f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B")


# ------------------------------------------------------------------------------ ping-pong

def pingpong(send, recv, reps: int) -> list:
    """One-way seconds of ``reps`` round trips (after one warm-up round trip)."""
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        if rank == 0:
            send()
            recv()
        else:
            recv()
            send()
        if i:
            times.append((time.perf_counter() - t0) / 2)
    return times


def loop_ns(n: int = 20000) -> float:
    """Nanoseconds per iteration of an empty Python loop: how fast this core runs Python just
    now. On the 2-core VM the same process saw 12 to 19.5 ns within a minute (the host's doing),
    and mpidist's per-message cost, which is Python, moves with it."""
    t = time.perf_counter()
    for _ in range(n):
        pass
    return (time.perf_counter() - t) / n * 1e9


def rotated(names: list, r: int) -> list:
    """The ways' order in round ``r``: each round starts one way later, so that no way always
    follows the same one. In a fixed order the traced mpidist way, which always came right after
    gloo's turn, was 3-11 % slower than the same way untraced at 4-16 MiB (idle run of
    2026-12-07 15:52, tools/results/bench_comm.txt), a gap one trace row per message cannot
    explain."""
    k = r % len(names)
    return names[k:] + names[:k]


def reps_for(nbytes: int, scale: float) -> int:
    """Round trips per way: from 1 MiB, where the goals' verdicts lie, about 0.2-0.8 s of each
    way (a quarter of that made two identical ways differ by up to 7 % at 16 MiB)."""
    if nbytes <= 64 << 10:
        r = 3000
    elif nbytes < 1 << 20:
        r = int(400 * (1 << 20) / nbytes) + 20
    else:
        r = int(1600 * (1 << 20) / nbytes) + 40
    return max(4, int(r * scale))


def interval(a_rounds, b_rounds, f, boot: int = 2000, seed: int = 0) -> tuple:
    """``f(median of a, median of b)`` over the pooled samples of two ways, with its 95 %
    bootstrap interval: the rounds resampled, the same rounds for both ways (they took turns in
    them, so a slow moment of the machine falls on both). Returns (value, low, high)."""
    a_rounds = [np.asarray(x, float) for x in a_rounds]
    b_rounds = [np.asarray(x, float) for x in b_rounds]
    value = f(np.median(np.concatenate(a_rounds)), np.median(np.concatenate(b_rounds)))
    k = len(a_rounds)
    vals = [f(np.median(np.concatenate([a_rounds[i] for i in idx])),
              np.median(np.concatenate([b_rounds[i] for i in idx])))
            for idx in np.random.default_rng(seed).integers(0, k, size=(boot, k))]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(value), float(lo), float(hi)


def verdict(lo: float, hi: float, goal: float, at_least: bool = True) -> str:
    """HOLDS when the whole interval meets the goal, FAILS when none of it does, else
    UNRESOLVED (this run cannot tell)."""
    if at_least:
        return "HOLDS" if lo >= goal else "FAILS" if hi < goal else "UNRESOLVED"
    return "HOLDS" if hi <= goal else "FAILS" if lo > goal else "UNRESOLVED"


def overall(verdicts) -> str:
    """A goal over several sizes: FAILS if one size fails, HOLDS if all hold, else UNRESOLVED."""
    v = set(verdicts)
    return "FAILS" if "FAILS" in v else "HOLDS" if v == {"HOLDS"} else "UNRESOLVED"


class Ways:
    """The ways of moving ``nbytes`` back and forth, each with its own buffers."""

    def __init__(self, nbytes: int, comm: Communicator, quiet: Communicator, gloo):
        n = nbytes // 4
        self.checks = []
        w = self.ways = {}

        a, b = np.empty(n, np.float32), np.empty(n, np.float32)
        a.fill(rank)
        self.np_recv = b  # its huge pages (numpy advises them itself from 4 MiB): after the run
        w["numpy"] = (lambda: world.Isend(a, peer, 1).Wait(), lambda: world.Irecv(b, peer, 1).Wait())
        self.checks.append(("numpy", lambda: b[-1] == peer))

        ta, tb = torch.empty(n), torch.empty(n)
        ta.fill_(rank)
        try:
            world.Isend(ta, MPI.PROC_NULL, 0).Wait()  # mpi4py takes CPU tensors through DLPack
            sa, sb = ta, tb
        except (TypeError, ValueError, BufferError):
            sa, sb = ta.numpy(), tb.numpy()  # an older mpi4py: the tensors' numpy views
        w["torch"] = (lambda: world.Isend(sa, peer, 2).Wait(), lambda: world.Irecv(sb, peer, 2).Wait())
        self.checks.append(("torch", lambda: tb[-1].item() == peer))

        if gloo is not None:
            ga, gb = torch.empty(n), torch.empty(n)
            ga.fill_(rank)
            w["gloo"] = (lambda: gloo.isend(ga, peer).wait(), lambda: gloo.irecv(gb, peer).wait())
            self.checks.append(("gloo", lambda: gb[-1].item() == peer))

        for name, c, snap, tag in (("mpidist", comm, False, 3), ("mpidist-notrace", quiet, False, 4),
                                   ("mpidist+snap", comm, True, 5)):
            ma, mb = aligned_empty(n), aligned_empty(n)
            ma.fill_(rank)
            mb.zero_()
            w[name] = ((lambda c=c, ma=ma, snap=snap, tag=tag:
                        c.isend(ma, peer, tag, "bench", snapshot=snap).wait()),
                       (lambda c=c, mb=mb, tag=tag: c.irecv(mb, peer, tag, "bench").wait()))
            self.checks.append((name, lambda mb=mb: mb[-1].item() == peer))
            self.huge = huge_page_bytes(mb)
        pa, pb = aligned_empty(n), aligned_empty(n)  # persistent requests, made once
        pa.fill_(rank)
        pb.zero_()
        ps, pr = comm.send_init(pa, peer, 6, "bench"), comm.recv_init(pb, peer, 6, "bench")
        w["mpidist-persistent"] = (lambda: ps.start().wait(), lambda: pr.start().wait())
        self.checks.append(("mpidist-persistent", lambda: pb[-1].item() == peer))
        self.persistent = (ps, pr)

    def run(self, reps: int, rounds: int) -> dict:
        """{way: median one-way seconds, way:p10: 10th percentile, way:rounds: the samples of
        each round}."""
        samples = {w: [] for w in self.ways}
        per = max(2, reps // rounds)
        names = list(self.ways)
        speed = []
        for r in range(rounds):
            speed.append(loop_ns())
            for w in rotated(names, r):
                send, recv = self.ways[w]
                world.Barrier()
                samples[w].append(pingpong(send, recv, per))
        for w, ok in self.checks:
            if not ok():
                raise SystemExit(f"bench_comm: way {w} moved wrong data")
        for p in self.persistent:
            p.free()
        out = {w: float(np.median(np.concatenate(t))) for w, t in samples.items()}
        out.update({f"{w}:p10": float(np.percentile(np.concatenate(t), 10))
                    for w, t in samples.items()})
        out.update({f"{w}:rounds": t for w, t in samples.items()})
        out["loop_ns"] = speed
        return out


def bench_p2p(sizes, comm, quiet, gloo, scale, rounds) -> list[dict]:
    rows = []
    for nbytes in sizes:
        ways = Ways(nbytes, comm, quiet, gloo)
        row = {"bytes": nbytes, **ways.run(reps_for(nbytes, scale), rounds),
               "huge": ways.huge, "huge_np": huge_page_bytes(torch.from_numpy(ways.np_recv))}
        rows.append(row)
        comm.trace.maybe_flush()
        if rank == 0:
            print(f"  {label(nbytes):>7}: " + "  ".join(
                f"{w} {row[w] * 1e6:.1f}" for w in ways.ways) + " us (medians)", flush=True)
    return rows


# ------------------------------------------------------------------------------ allreduce

def bench_allreduce(counts, comm, gloo, scale) -> list[dict]:
    rows = []
    for n in counts:
        xn = np.ones(n, np.float32)
        x = aligned_empty(n).fill_(1.0)
        g = torch.ones(n)
        ways = {"mpi4py": lambda: world.Allreduce(MPI.IN_PLACE, xn, MPI.SUM),
                "mpidist": lambda: comm.iallreduce(x, "sum", "bench").wait()}
        if gloo is not None:
            ways["gloo"] = lambda: gloo.all_reduce(g)
        reps = max(3, int((30 if n <= 1 << 20 else 8) * scale))
        samples = {w: [] for w in ways}
        for f in ways.values():
            f()  # warm-up
        for r in range(reps):  # the ways take turns, each round starting one way later
            for w in rotated(list(ways), r):
                f = ways[w]
                world.Barrier()
                t0 = time.perf_counter()
                f()
                samples[w].append(time.perf_counter() - t0)
        # every value started at 1 and was summed over 2 ranks (2 ** (reps + 1) times: exact)
        want = float(2 ** (reps + 1))
        if xn[-1] != want or x[-1].item() != want or (gloo is not None and g[-1].item() != want):
            raise SystemExit("bench_comm: an allreduce gave a wrong sum")
        rows.append({"count": n, **{w: float(np.median(t)) for w, t in samples.items()}})
    return rows


# ------------------------------------------------------------------------------ CUDA

def bench_cuda(sizes, clock, trace, scale, rounds) -> list[dict] | str:
    """mpidist's two CUDA paths on device tensors; a reason string where there is no GPU."""
    if not torch.cuda.is_available():
        return "no CUDA device here"
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    aware = cuda_aware_mpi()
    comms = {"staged": Communicator(world, trace, clock, timeout=60, cuda_aware=False)}
    if aware:
        comms["cuda-aware"] = Communicator(world, trace, clock, timeout=60, cuda_aware=True)
    rows = []
    for nbytes in sizes:
        n = nbytes // 4
        ways, checks = {}, []
        for name, c in comms.items():
            a = torch.full((n,), float(rank), device=dev)
            b = torch.zeros(n, device=dev)
            ways[name] = ((lambda c=c, a=a: c.isend(a, peer, 7, "bench", snapshot=False).wait()),
                          (lambda c=c, b=b: c.irecv(b, peer, 7, "bench").wait()))
            checks.append(b)
        samples = {w: [] for w in ways}
        per = max(2, reps_for(nbytes, scale) // rounds)
        for k in range(rounds):
            for w in rotated(list(ways), k):
                world.Barrier()
                samples[w] += pingpong(*ways[w], per)
        if any(b[-1].item() != peer for b in checks):
            raise SystemExit("bench_comm: a CUDA way moved wrong data")
        rows.append({"bytes": nbytes, **{w: float(np.median(t)) for w, t in samples.items()}})
    if not aware:
        rows.append("the MPI library is not CUDA-aware here: only the staged path ran")
    return rows


# ------------------------------------------------------------------------------ mpi4py.bench

def mpi4py_bench(lo: int, hi: int, quick: bool) -> dict[int, float] | str:
    """Rank 0: ``mpiexec -n 2 python -m mpi4py.bench pingpong`` in a clean environment; returns
    {bytes: one-way seconds} or why it could not run."""
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = exe if os.path.exists(exe) else shutil.which("mpiexec")
    if exe is None:
        return "no mpiexec found"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "MPI_LOCALRANKID",
                                "MPI_LOCALNRANKS", "OMPI_"))}
    cmd = [exe, "-n", "2", sys.executable, "-m", "mpi4py.bench", "pingpong", "-m", str(lo),
           "-n", str(hi), "-l", "200" if quick else "2000", "--loop-large", "100" if quick else "1000",
           "--loop-huge", "10" if quick else "50"]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "mpi4py.bench timed out after 600 s"
    out = {}
    for line in p.stdout.splitlines():
        m = re.match(r"\s*(\d+)\s+[\d.]+\s*\|\s*([\d.eE+-]+)", line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    if p.returncode or not out:
        return f"mpi4py.bench failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-300:]}"
    return out


# ------------------------------------------------------------------------------ gloo

def start_gloo(skip: bool):
    """torch.distributed with gloo, from MPI's rank and size through env://; (module, None) or
    (None, why not). Every rank agrees, so that no rank waits for a peer that gave up."""
    if skip:
        return None, "--no-gloo"
    err = ""
    try:
        import socket

        import torch.distributed as dist
        port = None
        if rank == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        port = world.bcast(port)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(size))
        import datetime
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=60))
    except Exception as e:  # noqa: BLE001 - any failure skips the way, with its reason
        err = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    errs = [e for e in world.allgather(err) if e]
    if errs:
        return None, f"torch.distributed (gloo) did not start: {errs[0]}"
    return dist, None


def bind_main_thread(on: bool) -> str:
    """Pin this rank's main thread to the rank-th CPU it may use (as ``mpiexec -bind-to core``),
    after gloo started, so that gloo's threads stay free to run on any core. Unpinned, the way
    measured right after gloo's turn was several times slower at random sizes (12-21 us one way
    at 1-64 KiB instead of 2-9 us, in 4 of 4 runs on the 2-core VM; never with ``--no-gloo``):
    the scheduler had moved both ranks onto one core for milliseconds. Returns what was done."""
    if not on:
        return "unpinned (--no-bind)"
    if not hasattr(os, "sched_setaffinity"):
        return "unpinned (no sched_setaffinity here)"
    if len(CPUS) < size:
        return f"unpinned (only {len(CPUS)} CPUs for {size} ranks)"
    os.sched_setaffinity(0, {CPUS[rank]})  # (0: the calling thread only, on Linux)
    return f"main thread of rank r pinned to CPU r of {CPUS} (--no-bind: unpinned)"


# ------------------------------------------------------------------------------ report

def latency_goal(r: dict, p2p: list) -> None:
    """The 1 KiB goal's lines from that size's row ``r``."""
    us = lambda a, b: (b - a) * 1e6  # noqa: E731 - b's one-way time over a's, in us
    added = {w: interval(r["numpy:rounds"], r[w + ":rounds"], us)
             for w in ("mpidist", "mpidist-notrace", "mpidist+snap", "mpidist-persistent")}
    a, lo, hi = added["mpidist"]
    print(f"  at most {GOAL_SMALL_US:g} us added one way at {label(r['bytes'])}, tracing on: "
          f"{verdict(lo, hi, GOAL_SMALL_US, at_least=False)} "
          f"({a:.2f} us [{lo:.2f}, {hi:.2f}]; tracing off {added['mpidist-notrace'][0]:.2f} us; "
          f"with the snapshot copy {added['mpidist+snap'][0]:.2f} us; persistent requests, traced, "
          f"{added['mpidist-persistent'][0]:.2f} us)")
    sp = r["loop_ns"]
    print(f"    this core's Python speed in those rounds (rank 0, tools' loop_ns): median "
          f"{np.median(sp):.1f} ns per empty loop iteration, {min(sp):.1f}-{max(sp):.1f}; over "
          f"the whole run {np.median([x for q in p2p for x in q['loop_ns']]):.1f}")
    low = {w: (r[w + ":p10"] - r["numpy:p10"]) * 1e6 for w in added}
    print(f"    the same from the 10th percentiles (less scheduling noise): {low['mpidist']:.2f} us; "
          f"off {low['mpidist-notrace']:.2f}; snapshot {low['mpidist+snap']:.2f}; persistent "
          f"{low['mpidist-persistent']:.2f} (numpy {r['numpy:p10'] * 1e6:.2f} us one way)")
    p, lo, hi = added["mpidist-persistent"]
    print(f"  the same goal on the fixed exchanges' path (persistent requests, traced; D-PSGD's): "
          f"{verdict(lo, hi, GOAL_SMALL_US, at_least=False)} ({p:.2f} us [{lo:.2f}, {hi:.2f}])")


def report(p2p, ar, cuda, pp, gloo_note, hp, bound="unpinned"):
    ways = [w for w in ("numpy", "torch", "gloo", "mpidist", "mpidist-notrace", "mpidist+snap",
                        "mpidist-persistent") if w in p2p[0]]
    print("\npoint to point, 2 ranks, one run, ways interleaved")
    print(f"binding: {bound}")
    if gloo_note:
        print(f"gloo: skipped ({gloo_note})")
    print(f"transparent huge pages: {thp_mode()}; AnonHugePages of rank 0: {hp[0] >> 10} kB at "
          f"start, {hp[1] >> 10} kB with the buffers of the last size")
    print("one-way latency (us)")
    print(f"{'size':>8} " + " ".join(f"{w:>15}" for w in ways) + f" {'huge pages':>11}"
          f" {'numpy huge':>11}")
    for r in p2p:
        hpage, nppage = ("-" if h < 0 else f"{h >> 10} kB" for h in (r["huge"], r["huge_np"]))
        print(f"{label(r['bytes']):>8} " + " ".join(f"{r[w] * 1e6:15.2f}" for w in ways)
              + f" {hpage:>11} {nppage:>11}")
    print("bandwidth (GB/s) and ratios (mpidist = traced, zero-copy)")
    print(f"{'size':>8} " + " ".join(f"{w:>15}" for w in ways)
          + f" {'md/numpy':>9} {'md/torch':>9} {'md-notr/np':>10}"
          + (f" {'md/gloo':>8}" if "gloo" in ways else ""))
    for r in p2p:
        n = r["bytes"]
        print(f"{label(n):>8} " + " ".join(f"{n / r[w] / 1e9:15.3f}" for w in ways)
              + f" {r['numpy'] / r['mpidist']:9.2f} {r['torch'] / r['mpidist']:9.2f}"
              + f" {r['numpy'] / r['mpidist-notrace']:10.2f}"
              + (f" {r['gloo'] / r['mpidist']:8.2f}" if "gloo" in ways else ""))

    print("\ngoals (issue 15): each ratio of medians with its 95 % interval (bootstrap over the "
          "rounds); HOLDS when the whole interval meets the goal, FAILS when none of it does, "
          "else UNRESOLVED")
    bw = lambda a, b: a / b  # noqa: E731 - a's one-way time over b's: b's bandwidth over a's
    for goal, base, lo_b, hi_b, what in ((GOAL_BIG, "numpy", 1 << 20, 1 << 62,
                                          "numpy bandwidth, every size >= 1 MiB"),
                                         (GOAL_TORCH, "torch", 1 << 20, 16 << 20,
                                          "naive torch bandwidth, 1-16 MiB")):
        rows = [r for r in p2p if lo_b <= r["bytes"] <= hi_b]
        if not rows:
            print(f"  mpidist >= {goal:g}x {what}: not measured (no such size)")
            continue
        per = [(r["bytes"], *interval(r[base + ":rounds"], r["mpidist:rounds"], bw)) for r in rows]
        vs = [verdict(lo, hi, goal) for _, _, lo, hi in per]
        n, x, lo, hi = min(per, key=lambda t: t[1])
        print(f"  mpidist >= {goal:g}x {what}: {overall(vs)} (worst {x:.2f}x [{lo:.2f}, {hi:.2f}] "
              f"at {label(n)})")
        print("    " + "; ".join(f"{label(n)} {x:.2f}x [{lo:.2f}, {hi:.2f}] {v}"
                                 for (n, x, lo, hi), v in zip(per, vs)))
    small = [r for r in p2p if r["bytes"] == 1 << 10]
    if small:
        latency_goal(small[0], p2p)
    else:
        print(f"  at most {GOAL_SMALL_US:g} us added one way at 1 KiB: not measured (no 1 KiB size)")

    if ar:
        print("\nallreduce (float32, 2 ranks): milliseconds | ratio of times, other / mpidist")
        for r in ar:
            ws = [w for w in ("mpi4py", "mpidist", "gloo") if w in r]
            n = r["count"]
            count = f"{n >> 20}M" if n % (1 << 20) == 0 else str(n)
            print(f"{count:>8} floats " + "  ".join(f"{w} {r[w] * 1e3:8.3f} ms" for w in ws)
                  + "  | " + "  ".join(f"{w}/mpidist {r[w] / r['mpidist']:.2f}x"
                                       for w in ws if w != "mpidist"))

    if cuda is not None:
        print("\nCUDA tensors, mpidist (traced): one-way us | GB/s")
        if isinstance(cuda, str):
            print(f"  skipped: {cuda}")
        else:
            notes = [c for c in cuda if isinstance(c, str)]
            rows = [c for c in cuda if not isinstance(c, str)]
            cw = [w for w in rows[0] if w != "bytes"] if rows else []
            for r in rows:
                print(f"{label(r['bytes']):>8} " + "  ".join(
                    f"{w} {r[w] * 1e6:10.1f} us {r['bytes'] / r[w] / 1e9:7.2f} GB/s" for w in cw))
            for n in notes:
                print(f"  note: {n}")

    if pp is not None:
        print("\npython -m mpi4py.bench pingpong (2 ranks, numpy, blocking Send/Recv; run "
              "afterwards) beside this run's numpy way")
        if isinstance(pp, str):
            print(f"  skipped: {pp}")
        else:
            print(f"{'size':>8} {'bench us':>10} {'bench GB/s':>11} {'numpy us':>10} "
                  f"{'numpy GB/s':>11} {'mpidist GB/s':>13}")
            for r in p2p:
                n = r["bytes"]
                if n in pp:
                    print(f"{label(n):>8} {pp[n] * 1e6:10.2f} {n / pp[n] / 1e9:11.3f} "
                          f"{r['numpy'] * 1e6:10.2f} {n / r['numpy'] / 1e9:11.3f} "
                          f"{n / r['mpidist'] / 1e9:13.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=size_range, default=size_range("1K-64M"),
                    help="ping-pong sizes MIN-MAX, powers of two (default 1K-64M)")
    ap.add_argument("--reps", type=float, default=1.0,
                    help="scale the repetitions (default 1; 0.1 for a quick look)")
    ap.add_argument("--rounds", type=int, default=20,
                    help="turns the ways take (default 20; the goals' intervals resample them)")
    ap.add_argument("--allreduce", default="1M,25M",
                    help="allreduce sizes in float32 values, comma-separated (default 1M,25M; "
                         "'' for none)")
    ap.add_argument("--no-bind", action="store_true",
                    help="leave the ranks' main threads unpinned (default: rank r's on the r-th "
                         "CPU it may use, see bind_main_thread)")
    ap.add_argument("--no-gloo", action="store_true", help="leave out torch.distributed")
    ap.add_argument("--no-mpi4py-bench", action="store_true",
                    help="do not run python -m mpi4py.bench pingpong afterwards")
    ap.add_argument("--cuda", action="store_true", help="also the CUDA paths (needs a GPU)")
    ap.add_argument("--csv", default=None, help="also write the point-to-point table as CSV")
    args = ap.parse_args()
    if size != 2:
        if rank == 0:
            print("bench_comm: run with exactly 2 ranks (mpiexec -n 2)", file=sys.stderr)
        sys.exit(2)
    counts = [parse_size(c) for c in args.allreduce.split(",") if c.strip()]

    gloo, gloo_note = start_gloo(args.no_gloo)
    bound = bind_main_thread(not args.no_bind)
    tmp = world.bcast(tempfile.mkdtemp(prefix="mpidist-bench-") if rank == 0 else None)
    t0 = MPI.Wtime()
    clock = lambda: MPI.Wtime() - t0  # noqa: E731
    trace = TraceWriter(os.path.join(tmp, f"rank{rank}.h5"), {"algorithm": "bench", "rank": rank},
                        clock, capacity=1 << 16)
    comm = Communicator(world, trace, clock, timeout=120)
    quiet = Communicator(world, None, clock, timeout=120)
    hp0 = anon_huge_pages()
    if rank == 0:
        print(f"bench_comm: sizes {label(args.sizes[0])}-{label(args.sizes[-1])}, reps x{args.reps:g}, "
              f"{args.rounds} rounds; one-way us per way as each size finishes", flush=True)
    p2p = bench_p2p(args.sizes, comm, quiet, gloo, args.reps, args.rounds)
    hp1 = anon_huge_pages()
    ar = bench_allreduce(counts, comm, gloo, args.reps)
    cuda = bench_cuda(args.sizes, clock, trace, args.reps, args.rounds) if args.cuda else None
    trace.close()
    world.Barrier()  # both files closed before rank 0 removes their directory
    if gloo is not None:
        gloo.destroy_process_group()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, CPUS)  # unpinned again: mpi4py.bench's ranks inherit it
    pp = None
    if not args.no_mpi4py_bench:
        done = world.Ibarrier() if rank == 1 else None
        if rank == 0:
            pp = mpi4py_bench(args.sizes[0], args.sizes[-1], args.reps < 1)
            world.Ibarrier().Wait()
        else:
            while not done.Test():  # sleep, so that mpi4py.bench has both cores
                time.sleep(0.01)
    if rank == 0:
        report(p2p, ar, cuda, pp, gloo_note, (hp0, hp1), bound)
        if args.csv:
            ways = [w for w in p2p[0] if w not in ("bytes", "huge", "huge_np", "loop_ns")
                    and not w.endswith(":rounds")]  # medians, p10s
            with open(args.csv, "w") as f:
                f.write("bytes," + ",".join(f"{w}_s" for w in ways) + "\n")
                for r in p2p:
                    f.write(f"{r['bytes']}," + ",".join(f"{r[w]:.9g}" for w in ways) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
