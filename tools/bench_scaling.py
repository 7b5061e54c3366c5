"""The scaling table: bytes and time per step against the number of ranks, measured here and
projected by a link model to clusters of 64, 256 and 1024 ranks.

    python tools/bench_scaling.py                        # 2, 4, 8, 16 ranks, every algorithm
    python tools/bench_scaling.py --ranks 2,4 --steps 20 # a smoke run
    python tools/bench_scaling.py --projection-only      # the link model alone, no launch

Not an MPI program itself. **Measured part**: for each algorithm and each N of ``--ranks`` it
launches ``mpiexec -n N python -m mpidist.<name> --steps T`` (the algorithm's default run, cut to T
steps, plus what N ranks need: PC-ASGD clusters of 4 consecutive ranks, DADA batches of 32 and a
short pre-training so that 15 targets still hold a batch each, ``--eval-every`` past the end so
that no evaluation falls inside the timed steps) and reads from the traces

- bytes per step per rank: the measured bytes of the algorithm's model channels per step of
  :func:`mpidist.analysis.bytes_vs_formula` (mean and max over the ranks, with the mean of its
  measured / formula ratio, which is 1.0000 when every message the paper's formula predicts was
  sent and nothing else); MD-GAN, which has no formula there, counts every send and collective
  row of its own (all channels but ``control``, ``barrier``, ``report`` and ``init*``) over T;
- seconds per step: rank 0's metric rows, first row of each step, from the second step to the
  last but one (``bench_trace_cost.seconds_per_step``).

With more ranks than CPUs the ranks share the cores (oversubscribed): the table says so, and such
step times measure this machine's scheduler more than the algorithm.

**Projected part**, the link model (the one :class:`mpidist.link.LinkModel` emulates): a message
of n bytes costs ``L + n / B`` (latency L, bandwidth B); a rank's outgoing messages share one link,
so k messages of n bytes to k peers take ``k n / B + L`` (the last one leaves after ``k n / B``
and arrives L later; receives come in on the other direction of a full-duplex link at the same
time); an allreduce of n bytes over p ranks takes the ring's ``2 (p - 1) L + 2 (p - 1) / p n / B``.
The model message is a ResNet-50-sized model: M = 25.6e6 parameters x 4 bytes (fp32) = 102.4 MB.
Per algorithm (bytes per step per rank from :mod:`mpidist.analysis.formulas`; time per step is
communication only, none of it hidden behind computation):

- D-PSGD, ring (its default): M to each of 2 neighbours per step: ``2 M / B + L``;
- PC-ASGD, PC variant, full graph (its default) with reliable clusters of 4: M to each of |R| = 3
  reliable and M + the gradient (M) to each of |U| = p - 4 delayed neighbours:
  ``M (|R| + 2 |U|)`` per step, ``M (|R| + 2 |U|) / B + L``;
- AdaComm / PASGD, tau = 8 (its tau0): one ring allreduce of M per 8 steps;
- DADA, GA with p = 2 (its default), the discriminator taken as big as M: one ring allreduce of M
  per 2 steps (before issue 15's change an exchange with every other rank: ``(p - 1) M / 2`` per
  step);
- MD-GAN, k = 1, b = 32 (its defaults), the server's link being the bottleneck: per iteration the
  server sends 2 batches of b generated ImageNet-sized samples (3 x 224 x 224 fp32, 602 KB) to each
  of the p - 1 workers and receives b feedback samples from each; a worker's discriminator (M)
  swaps with a peer every epoch of m / b iterations, m = 1.28e6 / (p - 1) images per worker:
  server ``2 (p - 1) b s / B + L`` per iteration, swaps add ``M b / m`` bytes per worker and
  iteration.

Latency: ``--latency10`` (default 20 us, TCP over 10 Gbit/s Ethernet) and ``--latency100``
(default 2 us, RDMA over 100 Gbit/s). The whole table at 2, 4, 8 and 16 ranks takes a few minutes
on an idle 2-core machine with the default 30 steps.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_trace_cost import (PCASGD_DEFAULT_AGENTS, launch, pcasgd_clusters,  # noqa: E402
                              seconds_per_step)
from mpidist.algorithms import ALGORITHMS  # noqa: E402
from mpidist.link import LinkModel  # noqa: E402

RESNET50_PARAMS = 25_600_000
FP32 = 4
M_RESNET50 = RESNET50_PARAMS * FP32          # 102.4 MB
IMAGENET_SAMPLE = 3 * 224 * 224 * FP32       # 602,112 bytes
IMAGENET_IMAGES = 1_281_167
PCASGD_CLUSTER = 4
ADACOMM_TAU = 8
DADA_PERIOD = 2
MDGAN_BATCH = 32
PROJECT_RANKS = (64, 256, 1024)
GBIT = 1e9 / 8                               # bytes per second in one Gbit/s
SKIP_CHANNELS = (b"control", b"barrier", b"report")


# ------------------------------------------------------------------ the projection (closed form)

def pcasgd_neighbours(p: int, cluster: int = PCASGD_CLUSTER) -> tuple[int, int]:
    """(|R|, |U|) of an agent on the full graph with reliable clusters of ``cluster`` consecutive
    ranks (the last cluster takes the remainder): |R| = cluster - 1, |U| = p - cluster."""
    c = min(cluster, p)
    return c - 1, p - c


def bytes_per_step(algorithm: str, p: int, m: float = M_RESNET50) -> float:
    """Bytes one rank sends per step for a model message of ``m`` bytes at ``p`` ranks (the
    busiest rank: MD-GAN's server). Allreduces count what a ring sends, ``2 (p - 1) / p m``."""
    ring = 2 * (p - 1) / p * m
    if algorithm == "dpsgd":
        return 2 * m
    if algorithm == "pcasgd":
        r, u = pcasgd_neighbours(p)
        return m * (r + 2 * u)
    if algorithm == "adacomm":
        return ring / ADACOMM_TAU
    if algorithm == "dada":
        return ring / DADA_PERIOD
    if algorithm == "dada-all-to-all":
        return (p - 1) * m / DADA_PERIOD
    if algorithm == "mdgan":
        return 2 * (p - 1) * MDGAN_BATCH * IMAGENET_SAMPLE
    raise ValueError(f"no projection for {algorithm}")


def seconds_per_step_model(algorithm: str, p: int, link: LinkModel,
                           m: float = M_RESNET50) -> float:
    """Communication seconds per step at ``p`` ranks on ``link`` (see the module's docstring)."""
    if algorithm in ("dpsgd", "pcasgd", "dada-all-to-all"):
        per = DADA_PERIOD if algorithm == "dada-all-to-all" else 1
        return (link.wire(bytes_per_step(algorithm, p, m) * per) + link.latency) / per
    if algorithm == "adacomm":
        return link.allreduce(m, p) / ADACOMM_TAU
    if algorithm == "dada":
        return link.allreduce(m, p) / DADA_PERIOD
    if algorithm == "mdgan":
        workers = p - 1
        per_worker_images = IMAGENET_IMAGES / workers
        swap = m * MDGAN_BATCH / per_worker_images    # a worker's swap bytes per iteration
        server = link.wire(bytes_per_step("mdgan", p, m)) + link.latency
        return max(server, link.wire(MDGAN_BATCH * IMAGENET_SAMPLE + swap) + link.latency)
    raise ValueError(f"no projection for {algorithm}")


PROJECTED = ("dpsgd", "pcasgd", "adacomm", "dada", "dada-all-to-all", "mdgan")


def projection_table(latency10: float, latency100: float) -> list[str]:
    links = ((10, LinkModel(latency10, 10 * GBIT)), (100, LinkModel(latency100, 100 * GBIT)))
    head = f"{'algorithm':>16} {'ranks':>6} {'MB/step/rank':>13}" + "".join(
        f" {f'{g} Gbit/s s/step':>17}" for g, _ in links)
    lines = [f"projection: ResNet-50-sized model, M = {RESNET50_PARAMS / 1e6:.1f}M fp32 = "
             f"{M_RESNET50 / 1e6:.1f} MB; latency {latency10 * 1e6:g} us at 10 Gbit/s, "
             f"{latency100 * 1e6:g} us at 100 Gbit/s; communication only", head]
    for alg in PROJECTED:
        for p in PROJECT_RANKS:
            b = bytes_per_step(alg, p)
            lines.append(f"{alg:>16} {p:>6} {b / 1e6:13.1f}" + "".join(
                f" {seconds_per_step_model(alg, p, link):17.4f}" for _, link in links))
    lines.append("(dada-all-to-all: DADA's exchange before issue 15, every rank to every other; "
                 "mdgan: the server's link, ImageNet-sized samples, b = 32)")
    return lines


# ------------------------------------------------------------------ the measured part

def extra_args(name: str, n: int, steps: int) -> list[str]:
    """What the default run of ``name`` needs at ``n`` ranks (see the module's docstring)."""
    out = ["--eval-every", str(10 * steps + 1000)]
    if name == "pcasgd" and n in PCASGD_DEFAULT_AGENTS:
        # clusters of 4 at every N (launch adds them where the paper has no network of N agents)
        out += ["--clusters", pcasgd_clusters(n, PCASGD_CLUSTER)]
    if name == "dada":
        out += ["--batch-size", "32", "--pretrain-steps", "20"]
    return out


def measured_bytes(run, name: str, steps: int) -> tuple[float, float, float]:
    """(mean over ranks of bytes per step, max over ranks, mean measured / formula ratio or nan)
    from the trace of ``run`` (mpidist.analysis.Run)."""
    from mpidist.analysis import bytes_vs_formula
    f = bytes_vs_formula(run)
    if f:
        per = [r["measured_per_step"] for r in f]
        return float(np.mean(per)), float(np.max(per)), float(np.mean([r["ratio"] for r in f]))
    per = []
    for r in run.ranks:
        c = r.comm
        own = (c["op"] == b"send") | (c["op"] == b"allreduce") | \
              ((c["op"] == b"bcast") & (c["peer"] < 0))
        own &= ~np.isin(c["channel"], SKIP_CHANNELS) & ~np.char.startswith(c["channel"], b"init")
        per.append(float(c["nbytes"][own].sum()) / steps)
    return float(np.mean(per)), float(np.max(per)), float("nan")


def measure(names, ranks, steps, timeout, where):
    from mpidist.analysis import load
    rows = []
    for name in names:
        for n in ranks:
            t0 = time.monotonic()
            d = launch(name, n, steps, True, where, extra_args(name, n, steps), timeout)
            run = load(d)
            mean_b, max_b, ratio = measured_bytes(run, name, steps)
            sps = seconds_per_step(run.ranks[0], name)
            rows.append((name, n, mean_b, max_b, ratio, sps))
            shutil.rmtree(d, ignore_errors=True)
            print(f"  {name} at {n} ranks: {mean_b / 1e3:.1f} kB/step/rank (max {max_b / 1e3:.1f}),"
                  f" {sps * 1e3:.1f} ms/step ({time.monotonic() - t0:.0f} s)", flush=True)
    return rows


def measured_table(rows, cores: int) -> list[str]:
    lines = [f"{'algorithm':>10} {'ranks':>6} {'kB/step/rank':>13} {'max rank':>10} "
             f"{'formula ratio':>14} {'ms/step':>9}  note"]
    for name, n, mean_b, max_b, ratio, sps in rows:
        r = f"{ratio:.4f}" if np.isfinite(ratio) else "-"
        note = f"oversubscribed ({n} ranks on {cores} cores)" if n > cores else ""
        lines.append(f"{name:>10} {n:>6} {mean_b / 1e3:13.1f} {max_b / 1e3:10.1f} {r:>14} "
                     f"{sps * 1e3:9.1f}  {note}")
    return lines


def parse_ranks(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(n < 2 for n in out):
        raise argparse.ArgumentTypeError(f"--ranks {text}: comma-separated counts >= 2, e.g. 2,4")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS),
                    help=f"comma-separated (default: all, {','.join(ALGORITHMS)})")
    ap.add_argument("--ranks", type=parse_ranks, default=[2, 4, 8, 16],
                    help="rank counts to run (default 2,4,8,16)")
    ap.add_argument("--steps", type=int, default=30, help="steps per run (default 30, >= 5)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per launch (default 300)")
    ap.add_argument("--latency10", type=float, default=20e-6,
                    help="link latency at 10 Gbit/s, seconds (default 20e-6)")
    ap.add_argument("--latency100", type=float, default=2e-6,
                    help="link latency at 100 Gbit/s, seconds (default 2e-6)")
    ap.add_argument("--projection-only", action="store_true", help="no launch: the model only")
    a = ap.parse_args(argv)
    names = [x.strip() for x in a.algorithms.split(",") if x.strip()]
    unknown = [x for x in names if x not in ALGORITHMS]
    if unknown:
        ap.error(f"unknown algorithm(s) {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})")
    if a.steps < 5:
        ap.error("--steps must be >= 5 (the time per step leaves out the first and last steps)")
    cores = os.cpu_count() or 1
    if not a.projection_only:
        print(f"bench_scaling: {', '.join(names)} at {','.join(map(str, a.ranks))} ranks, "
              f"{a.steps} steps each, {cores} CPUs" + (
                  f" (beyond {cores} ranks oversubscribed)" if max(a.ranks) > cores else ""),
              flush=True)
        where = tempfile.mkdtemp(prefix="mpidist-scaling-")
        try:
            rows = measure(names, a.ranks, a.steps, a.timeout, where)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        print("\nmeasured on this machine (bytes from the traces; ms/step from rank 0's metrics)")
        print("\n".join(measured_table(rows, cores)))
        print("(an allreduce row counts its buffer, M per rank: a ring sends 2 (p - 1) / p M; "
              "formula ratio: measured / mpidist.analysis's formula, 1.0000 = exactly the "
              "paper's messages; MD-GAN has no formula there: all its sends over the steps)")
        print()
    print("\n".join(projection_table(a.latency10, a.latency100)))


if __name__ == "__main__":
    main()
