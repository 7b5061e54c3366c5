"""What tracing costs: each algorithm's default run with tracing on and with ``--no-trace``.

    python tools/bench_trace_cost.py                       # every algorithm, its default ranks
    python tools/bench_trace_cost.py --algorithms dpsgd,dada --steps 200 --repeats 3

Not an MPI program itself: it launches ``mpiexec -n <ranks> python -m mpidist.<name> --steps T``
(the algorithm's default run, cut to T steps), alternately with tracing on and off, ``--repeats``
times each, every run in its own temporary directory. The time per step is read from rank 0's
trace: (t of the last metric row - t of the first) / (their step difference), so start-up (imports,
data, model) is left out and the two kinds of run are timed alike (``--no-trace`` still writes
metrics). It prints per algorithm the median seconds per step on and off, their ratio and whether
the goal (on / off <= 1.02, issue 15) holds, plus the trace rows per step of the busiest rank, the
ratio those rows cost by construction (rows per step x the cost of one row, measured here first
with a real TraceWriter, over the step time; a figure that scheduling noise does not blur, unlike
the measured ratio on a busy machine), and rank 0's bytes per step.
"""
from __future__ import annotations

import argparse
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


def one_run(name: str, ranks: int, steps: int, trace: bool, where: str, extra: list[str],
            timeout: float) -> dict:
    """One launch; seconds per step (from rank 0's metric rows) and, traced, its messages."""
    d = os.path.join(where, f"{name}-{'on' if trace else 'off'}-{time.monotonic_ns()}")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", f"mpidist.{name}", "--steps",
           str(steps), "--trace-dir", d, "--quiet", *extra] + ([] if trace else ["--no-trace"])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise SystemExit(f"bench_trace_cost: {' '.join(cmd)} failed (exit {p.returncode}):\n"
                         f"{(p.stderr or p.stdout)[-2000:]}")
    run = read_run(d)
    t = run.ranks[0]
    steps_m, times = t.metrics["step"], t.metrics["t"]
    if len(set(steps_m.tolist())) < 2:
        raise SystemExit(f"bench_trace_cost: {name} logged metrics at fewer than 2 steps; "
                         "give more --steps")
    i, j = int(np.argmin(steps_m)), int(np.argmax(steps_m))
    per_step = float((times[j] - times[i]) / (steps_m[j] - steps_m[i]))
    out = {"s_per_step": per_step, "rows": max(len(r.comm) for r in run.ranks)}
    if trace:
        sent = t.comm[(t.comm["op"] == b"send") | (t.comm["peer"] < 0)]
        out["bytes"] = int(sent["nbytes"].sum())
    shutil.rmtree(d, ignore_errors=True)
    return out


def row_cost(where: str, rows: int = 200_000) -> float:
    """Seconds one trace row costs a rank: ``TraceWriter.comm`` as the handles call it, with the
    writer's own flushes to a real file (every 16384 rows and at the end) included."""
    clock = time.perf_counter
    tw = TraceWriter(os.path.join(where, "rowcost.h5"), {"algorithm": "bench"}, clock)
    args = (3, b"send", 1, 7, b"params", 4096, 0.5, 0.6)
    t0 = time.perf_counter()
    for _ in range(rows):
        tw.comm(*args)
    tw.close()
    return (time.perf_counter() - t0) / rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS),
                    help=f"comma-separated (default: all, {','.join(ALGORITHMS)})")
    ap.add_argument("--steps", type=int, default=300, help="steps per run (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    ap.add_argument("--ranks", type=int, default=0,
                    help="ranks of every run (default: each algorithm's default run's)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per launch (default 900)")
    args, extra = ap.parse_known_args()
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ALGORITHMS]
    if unknown:
        ap.error(f"unknown algorithm(s) {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})")
    where = tempfile.mkdtemp(prefix="mpidist-trace-cost-")
    print(f"bench_trace_cost: {args.steps} steps, {args.repeats} runs each with tracing on and "
          f"off, alternating; {os.cpu_count()} CPUs", flush=True)
    rows = []
    cost = row_cost(where)
    print(f"one trace row costs {cost * 1e6:.2f} us (TraceWriter.comm, flushes included)",
          flush=True)
    try:
        for name in names:
            ranks = args.ranks or ALGORITHMS[name].ranks
            on, off = [], []
            for _ in range(args.repeats):
                on.append(one_run(name, ranks, args.steps, True, where, extra, args.timeout))
                off.append(one_run(name, ranks, args.steps, False, where, extra, args.timeout))
                print(f"  {name}: on {on[-1]['s_per_step'] * 1e3:.3f} ms/step, off "
                      f"{off[-1]['s_per_step'] * 1e3:.3f} ms/step", flush=True)
            assert all(r["rows"] == 0 for r in off), "--no-trace runs recorded messages"
            m_on = float(np.median([r["s_per_step"] for r in on]))
            m_off = float(np.median([r["s_per_step"] for r in off]))
            rows.append((name, ranks, m_on, m_off, on[0]["rows"] / args.steps,
                         on[0]["bytes"] / args.steps))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"\n{'algorithm':>10} {'ranks':>5} {'on ms/step':>11} {'off ms/step':>12} "
          f"{'on/off':>7} {'goal <= ' + str(GOAL):>12} {'rows/step':>10} {'rows x cost':>12} "
          f"{'bytes/step r0':>14}")
    for name, ranks, a, b, rps, bps in rows:
        ratio = a / b
        print(f"{name:>10} {ranks:>5} {a * 1e3:11.3f} {b * 1e3:12.3f} {ratio:7.3f} "
              f"{'HOLDS' if ratio <= GOAL else 'FAILS':>12} {rps:10.1f} "
              f"{1 + rps * cost / b:12.5f} {bps:14.0f}")
    print("on/off: measured (medians of the runs); rows x cost: 1 + (rows per step of the busiest "
          "rank) x (one row's cost) / (step time off), what tracing adds by construction")
    cores = os.cpu_count() or 1
    if any(r[1] > cores for r in rows):
        print(f"(more ranks than the {cores} CPUs: oversubscribed, times are noisy)")


if __name__ == "__main__":
    main()
