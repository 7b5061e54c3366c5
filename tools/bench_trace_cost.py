"""What tracing costs: each algorithm's default run with tracing on and with ``--no-trace``.

    python tools/bench_trace_cost.py                       # every algorithm, its default ranks
    python tools/bench_trace_cost.py --algorithms dpsgd,dada --steps 200 --repeats 7
    python tools/bench_trace_cost.py --in-process --ranks 2   # one run each, tracing toggled

Not an MPI program itself: it launches ``mpiexec -n <ranks> python -m mpidist.<name> --steps T``
(the algorithm's default run, cut to T steps), ``--repeats N`` pairs of runs, one with tracing on
and one with ``--no-trace``, interleaved (on-off, off-on, on-off, ...), every run in its own
temporary directory. The time per step is read from rank 0's metric rows (the first row of each
step, from the second step to the last but one, :func:`seconds_per_step`), so start-up (imports,
data, model) and the end are left out and the two kinds of run are timed alike (``--no-trace``
still writes metrics). It prints per algorithm the median seconds per step on and off, the on/off
ratio of each pair and their median and spread (min, max, interquartile range), whether the goal
(median on / off <= 1.02, issue 15) holds, plus the trace rows per step of the busiest rank, the
ratio those rows cost by construction (rows per step x the cost of one row, measured here first
with a real TraceWriter, over the step time; a figure that scheduling noise does not blur, unlike
the measured ratio on a busy machine), and rank 0's bytes per step.

``--in-process``: one launch per algorithm instead, which turns tracing on and off itself, in
blocks of ``--block`` steps (default 10) in the order on, off, off, on, on, off, ... (ABBA: a drift
of the machine weighs on both alike). Off is exactly ``--no-trace``: the communicator's trace
writer is set to None (metrics are still written, as with ``--no-trace``), on puts it back. Rank 0
times every step (one ``Loop.end_step`` to the next); the first two blocks and the last are left
out, and evaluation is pushed past the end (``--eval-every``) so that it falls in no block. Each
neighbouring pair of blocks gives one on/off ratio of their mean step times; it prints their
median and interquartile range, the ratio of all on steps' mean to all off steps', and a 95 %
bootstrap interval of that ratio (blocks resampled in pairs). Between separate runs, the
placement of memory and processes moves step times by several percent; within one run it does
not, which is what a 2 % goal needs. The interval takes the pairs as independent; a slow
stretch of the machine that spans several blocks makes it too narrow (a 6000-step run of
PC-ASGD gave 1.022 [1.008, 1.035], a 12000-step run 0.997 [0.986, 1.008]): read it as a lower
bound of the uncertainty.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mpidist.algorithms import ALGORITHMS  # noqa: E402
from mpidist.trace import TraceWriter, read_run  # noqa: E402

GOAL = 1.02


def mpiexec() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return exe if os.path.exists(exe) else (shutil.which("mpiexec") or "mpiexec")


PCASGD_DEFAULT_AGENTS = (5, 8, 20)   # the paper's networks: PC-ASGD has default clusters for these


def pcasgd_clusters(n: int, size: int = 4) -> str:
    """``--clusters`` for n agents: clusters of ``size`` consecutive ranks, the last one smaller."""
    sizes = [size] * (n // size) + ([n % size] if n % size else [])
    return ",".join(map(str, sizes))


def needed_args(name: str, ranks: int) -> list[str]:
    """What ``name``'s default run needs at ``ranks`` ranks: PC-ASGD's clusters where the paper has
    no network of that size."""
    if name == "pcasgd" and ranks not in PCASGD_DEFAULT_AGENTS:
        return ["--clusters", pcasgd_clusters(ranks)]
    return []


def launch(name: str, ranks: int, steps: int, trace: bool, where: str, extra: list[str],
           timeout: float) -> str:
    """``mpiexec -n ranks python -m mpidist.<name> --steps T --quiet`` into a fresh run directory
    under ``where`` (``--no-trace`` unless ``trace``); returns the directory. A failed launch ends
    the benchmark with its command and the end of its output."""
    d = os.path.join(where, f"{name}-{ranks}-{'on' if trace else 'off'}-{time.monotonic_ns()}")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", f"mpidist.{name}", "--steps",
           str(steps), "--trace-dir", d, "--quiet", *needed_args(name, ranks), *extra] + (
               [] if trace else ["--no-trace"])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"bench: {' '.join(cmd)} ran past {timeout:.0f} s") from None
    if p.returncode:
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {p.returncode}):\n"
                         f"{(p.stderr or p.stdout)[-2000:]}")
    return d


def seconds_per_step(rank_trace, name: str = "") -> float:
    """Seconds per step from one rank's metric rows: the time of each step's first metric row,
    from the second step recorded to the last but one (so neither start-up nor the end's
    evaluation and saving count), over the steps between. Raises SystemExit with fewer than 4
    steps recorded."""
    steps_m, times = rank_trace.metrics["step"], rank_trace.metrics["t"]
    first = {}
    for s, t in zip(steps_m.tolist(), times.tolist()):
        if s not in first or t < first[s]:
            first[s] = t
    ks = sorted(first)
    if len(ks) < 4:
        raise SystemExit(f"bench: {name} logged metrics at {len(ks)} steps (fewer than 4); give "
                         "more --steps")
    a, b = ks[1], ks[-2]
    return (first[b] - first[a]) / (b - a)


def one_run(name: str, ranks: int, steps: int, trace: bool, where: str, extra: list[str],
            timeout: float) -> dict:
    """One launch; seconds per step (from rank 0's metric rows) and, traced, its messages."""
    d = launch(name, ranks, steps, trace, where, extra, timeout)
    run = read_run(d)
    t = run.ranks[0]
    out = {"s_per_step": seconds_per_step(t, name), "rows": max(len(r.comm) for r in run.ranks)}
    if trace:
        sent = t.comm[(t.comm["op"] == b"send") | (t.comm["peer"] < 0)]
        out["bytes"] = int(sent["nbytes"].sum())
    shutil.rmtree(d, ignore_errors=True)
    return out


def ratio_stats(on: list[float], off: list[float]) -> dict:
    """The on/off ratio of each pair of neighbouring runs (run i on against run i off), their
    median, min, max and interquartile range, and the ratio of the medians."""
    r = np.asarray(on, float) / np.asarray(off, float)
    q1, q3 = np.percentile(r, [25, 75])
    return {"ratios": r.tolist(), "median": float(np.median(r)), "min": float(r.min()),
            "max": float(r.max()), "iqr": float(q3 - q1),
            "of_medians": float(np.median(on) / np.median(off))}


def row_cost(where: str, rows: int = 200_000) -> float:
    """Seconds one trace row costs a rank: ``TraceWriter.comm`` as the handles call it, with the
    writer's own flushes to a real file (at its capacity and at the end) included."""
    clock = time.perf_counter
    tw = TraceWriter(os.path.join(where, "rowcost.h5"), {"algorithm": "bench"}, clock)
    args = (3, b"send", 1, 7, b"params", 4096, 0.5, 0.6)
    t0 = time.perf_counter()
    for _ in range(rows):
        tw.comm(*args)
    tw.close()
    return (time.perf_counter() - t0) / rows


# ------------------------------------------------------------------ --in-process: one run, toggled

def block_on(k: int) -> bool:
    """Tracing in block k: on, off, off, on, on, off, off, on, ... (ABBA)."""
    return k % 4 in (0, 3)


def ab_worker(name: str, block: int, out: str, rest: list[str]) -> None:
    """One rank of ``python -m mpidist.<name> <rest>``, tracing toggled every ``block`` steps;
    rank 0 writes [(step, on, seconds)] to ``out``."""
    from mpi4py import MPI

    from inprocess import run_algorithm
    times, state = [], {"last": None, "on": True}

    def wrap(original):
        def end_step(self, step, *args, **kw):
            stop = original(self, step, *args, **kw)
            now = time.perf_counter()
            if state["last"] is not None:
                times.append((step, state["on"], now - state["last"]))
            run = self.run
            on = block_on((step + 1) // block)  # the block of the next step (by step number)
            if run.trace is not None:
                run.comm.trace = run.trace if on else None
            state["on"], state["last"] = on, time.perf_counter()
            return stop
        return end_step
    code = run_algorithm(name, rest, wrap)
    if MPI.COMM_WORLD.Get_rank() == 0:
        with open(out, "w") as fh:
            json.dump(times, fh)
    sys.exit(code)


def block_stats(times, block: int, boot: int = 2000, seed: int = 0) -> dict:
    """From rank 0's [(step, on, seconds)]: mean step time on and off, the on/off ratio of each
    neighbouring pair of blocks (blocks 2..last-1, whole blocks only), their median and IQR, the
    ratio of the means and its 95 % bootstrap interval (pairs resampled)."""
    by = {}
    for step, on, sec in times:
        by.setdefault(step // block, []).append((on, sec))
    ks = sorted(k for k, v in by.items() if len(v) == block and len({o for o, _ in v}) == 1)
    ks = [k for k in ks if k >= 2 and k < max(by)]
    pairs = []
    for k in ks:
        if k % 2 == 0 and k + 1 in ks:
            a = np.mean([s for _, s in by[k]])
            b = np.mean([s for _, s in by[k + 1]])
            on_a = by[k][0][0]
            pairs.append((a, b) if on_a else (b, a))   # (on mean, off mean)
    if len(pairs) < 3:
        raise SystemExit(f"bench: {len(pairs)} pairs of blocks (fewer than 3); give more --steps")
    p = np.asarray(pairs)
    r = p[:, 0] / p[:, 1]
    q1, q3 = np.percentile(r, [25, 75])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(boot, len(p)))
    means = p[idx].mean(axis=1)
    boots = means[:, 0] / means[:, 1]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"pairs": len(p), "on": float(p[:, 0].mean()), "off": float(p[:, 1].mean()),
            "ratio": float(p[:, 0].mean() / p[:, 1].mean()), "median": float(np.median(r)),
            "iqr": float(q3 - q1), "lo": float(lo), "hi": float(hi)}


def in_process(args, names, extra) -> None:
    where = tempfile.mkdtemp(prefix="mpidist-trace-cost-")
    print(f"bench_trace_cost --in-process: {args.steps} steps per algorithm, tracing on and off in "
          f"blocks of {args.block} steps (on, off, off, on, ...); {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    try:
        for name in names:
            ranks = args.ranks or ALGORITHMS[name].ranks
            out = os.path.join(where, f"{name}.json")
            cmd = [mpiexec(), "-n", str(ranks), sys.executable, os.path.abspath(__file__),
                   "--ab-worker", name, "--block", str(args.block), "--out", out, "--",
                   "--steps", str(args.steps), "--trace-dir", os.path.join(where, name),
                   "--quiet", "--eval-every", str(10 * args.steps + 1000),
                   *needed_args(name, ranks), *extra]
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            try:
                p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=args.timeout)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"bench: {' '.join(cmd)} ran past {args.timeout:.0f} s") from None
            if p.returncode:
                raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {p.returncode}):\n"
                                 f"{(p.stderr or p.stdout)[-2000:]}")
            st = block_stats(json.load(open(out)), args.block)
            rows.append((name, ranks, st))
            print(f"  {name}: on {st['on'] * 1e3:.3f} ms/step, off {st['off'] * 1e3:.3f} ms/step, "
                  f"on/off {st['ratio']:.4f} [{st['lo']:.4f}, {st['hi']:.4f}]", flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"\n{'algorithm':>10} {'ranks':>5} {'on ms/step':>11} {'off ms/step':>12} "
          f"{'on/off':>7} {'95% interval':>16} {'pairs':>5} {'pair med':>8} {'IQR':>6} "
          f"{'goal <= ' + str(GOAL):>12}")
    for name, ranks, st in rows:
        verdict = ("HOLDS" if st["hi"] <= GOAL else "FAILS" if st["lo"] > GOAL
                   else "UNRESOLVED")
        interval = f"[{st['lo']:.4f}, {st['hi']:.4f}]"
        print(f"{name:>10} {ranks:>5} {st['on'] * 1e3:11.3f} {st['off'] * 1e3:12.3f} "
              f"{st['ratio']:7.4f} {interval:>16} "
              f"{st['pairs']:>5} {st['median']:8.4f} {st['iqr']:6.4f} {verdict:>12}")
    print("on/off: mean step time of the traced blocks over the untraced ones; 95% interval: "
          "bootstrap over the pairs of blocks; HOLDS when the whole interval is <= the goal, "
          "FAILS when it is all above, else UNRESOLVED")
    cores = os.cpu_count() or 1
    if any(r[1] > cores for r in rows):
        print(f"(more ranks than the {cores} CPUs: oversubscribed, times are noisy)")


def main():
    if "--ab-worker" in sys.argv:  # one rank of --in-process: ... -- <the algorithm's args>
        cut = sys.argv.index("--")
        w = argparse.ArgumentParser()
        w.add_argument("--ab-worker")
        w.add_argument("--block", type=int)
        w.add_argument("--out")
        known = w.parse_args(sys.argv[1:cut])
        return ab_worker(known.ab_worker, known.block, known.out, sys.argv[cut + 1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS),
                    help=f"comma-separated (default: all, {','.join(ALGORITHMS)})")
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per run (default 300; --in-process: 10000)")
    ap.add_argument("--repeats", "-N", type=int, default=5,
                    help="pairs of runs (one on, one off, in turn on-off and off-on) per "
                         "algorithm (default 5)")
    ap.add_argument("--ranks", type=int, default=0,
                    help="ranks of every run (default: each algorithm's default run's)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per launch (default 900)")
    ap.add_argument("--in-process", action="store_true",
                    help="one run per algorithm that toggles tracing every --block steps "
                         "(see above) instead of pairs of runs")
    ap.add_argument("--block", type=int, default=10,
                    help="--in-process: steps per block (default 10)")
    args, extra = ap.parse_known_args()
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ALGORITHMS]
    if unknown:
        ap.error(f"unknown algorithm(s) {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})")
    if args.in_process:
        args.steps = args.steps or 10000
        return in_process(args, names, extra)
    args.steps = args.steps or 300
    where = tempfile.mkdtemp(prefix="mpidist-trace-cost-")
    print(f"bench_trace_cost: {args.steps} steps, {args.repeats} pairs of runs (tracing on, "
          f"off) per algorithm, interleaved; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    cost = row_cost(where)
    print(f"one trace row costs {cost * 1e6:.2f} us (TraceWriter.comm, flushes included)",
          flush=True)
    try:
        for name in names:
            ranks = args.ranks or ALGORITHMS[name].ranks
            on, off = [], []
            for i in range(args.repeats):
                # pairs in turn on-off, off-on (ABBA): a drift of the machine's load in time
                # weighs on both kinds alike
                for tr in ((True, False) if i % 2 == 0 else (False, True)):
                    (on if tr else off).append(
                        one_run(name, ranks, args.steps, tr, where, extra, args.timeout))
                print(f"  {name} pair {i + 1}: on {on[-1]['s_per_step'] * 1e3:.3f} ms/step, off "
                      f"{off[-1]['s_per_step'] * 1e3:.3f} ms/step, on/off "
                      f"{on[-1]['s_per_step'] / off[-1]['s_per_step']:.3f}", flush=True)
            assert all(r["rows"] == 0 for r in off), "--no-trace runs recorded messages"
            a_on = [r["s_per_step"] for r in on]
            a_off = [r["s_per_step"] for r in off]
            rows.append((name, ranks, float(np.median(a_on)), float(np.median(a_off)),
                         on[0]["rows"] / args.steps, on[0]["bytes"] / args.steps,
                         ratio_stats(a_on, a_off)))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"\n{'algorithm':>10} {'ranks':>5} {'on ms/step':>11} {'off ms/step':>12} "
          f"{'on/off med':>10} {'min':>6} {'max':>6} {'IQR':>6} {'goal <= ' + str(GOAL):>12} "
          f"{'rows/step':>10} {'rows x cost':>12} {'bytes/step r0':>14}")
    for name, ranks, a, b, rps, bps, st in rows:
        ratio = st["median"]
        print(f"{name:>10} {ranks:>5} {a * 1e3:11.3f} {b * 1e3:12.3f} {ratio:10.3f} "
              f"{st['min']:6.3f} {st['max']:6.3f} {st['iqr']:6.3f} "
              f"{'HOLDS' if ratio <= GOAL else 'FAILS':>12} {rps:10.1f} "
              f"{1 + rps * cost / b:12.5f} {bps:14.0f}")
    print(f"on/off med: the median over the {args.repeats} pairs of (run on / the neighbouring "
          "run off), min/max/IQR their spread; on and off ms/step: medians of the runs; "
          "rows x cost: 1 + (rows per step of the busiest rank) x (one row's cost) / (step time "
          "off), what tracing adds by construction")
    cores = os.cpu_count() or 1
    if any(r[1] > cores for r in rows):
        print(f"(more ranks than the {cores} CPUs: oversubscribed, times are noisy)")


if __name__ == "__main__":
    main()
