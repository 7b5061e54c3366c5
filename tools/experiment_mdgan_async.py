"""Experiment (not a timed test): MD-GAN's synchronous server (Algorithm 1) against the
asynchronous one of Section VII (``--mode mdgan-async``) when one worker is slow.

    python tools/experiment_mdgan_async.py                  # N = 4, worker 2 sleeps 0.2 s/iteration
    python tools/experiment_mdgan_async.py --slow 2:0.5 --iterations 100 --seeds 0,1

Both runs apply the same number of error feedbacks F_n: the synchronous run I iterations of N
feedbacks each, the asynchronous one N I generator updates of one feedback each. Every run is
``mpiexec -n N+1 python -m mpidist.mdgan ... --slow-worker RANK:SECONDS --trace-dir
<runs>/<label>-s<seed>`` (a finished run found there is reused). From the traces:

- wall: the server's training time (its first to its last row of iteration/update >= 1);
- F_n/s: feedbacks the server applied per second; updates/s: generator updates per second;
- tickets per worker: the feedbacks each worker sent (its iterations) and its iterations/s;
- blocked: per rank, the time it sat in a wait (the trace rows' ``t_wait`` .. ``t_done``, as a
  union of intervals, over its rows of step >= 1: the start-up barrier is left out), in seconds
  and in % of that rank's training window;
- the final classifier score and FID of G (rank 0's last ``score``/``fid``).

Writes ``table.md`` (stamped with tools/stamp.py) and ``results.json`` into ``--out`` (default
tools/results/mdgan_async/).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from mpidist import trace  # noqa: E402
from mpidist.analysis.blocking import covered, intervals  # noqa: E402
from experiment_mdgan import run_one  # noqa: E402  (beside this script)


def training_rows(rt):
    c = rt.comm
    return c[c["step"] >= 1]


def window(rows) -> tuple[float, float]:
    return float(rows["t_post"].min()), float(rows["t_done"].max())


def measure(run_dir: str) -> dict:
    """The figures of one run (see the module's docstring)."""
    t = trace.read_run(run_dir)
    srv = t.ranks[0]
    lo, hi = window(training_rows(srv))
    wall = hi - lo
    fb = srv.comm[(srv.comm["op"] == b"recv") & (srv.comm["channel"] == b"feedback")]
    async_mode = "generator_updates" in srv.attrs
    updates = int(srv.attrs["generator_updates"]) if async_mode else \
        int(srv.metric("live_workers")[0].max())
    blocked = {}
    for rt in t.ranks:
        rows = training_rows(rt)
        a, b = window(rows)
        _, blk = intervals(rows)
        s = covered(blk)
        blocked[rt.rank] = (s, 100.0 * s / (b - a) if b > a else float("nan"))
    tickets = {}
    for rt in t.ranks[1:]:
        sends = rt.comm[(rt.comm["op"] == b"send") & (rt.comm["channel"] == b"feedback")]
        tickets[rt.rank] = int(len(sends))
    _, _, score = srv.metric("score")
    _, _, fid = srv.metric("fid")
    return {"wall_s": wall, "feedbacks": int(len(fb)), "updates": updates,
            "feedbacks_per_s": len(fb) / wall, "updates_per_s": updates / wall,
            "tickets": tickets, "tickets_per_s": {r: n / wall for r, n in tickets.items()},
            "blocked": blocked, "score": float(score[-1]), "fid": float(fid[-1]),
            "records_wait": bool(srv.records_wait)}


def fmt_blocked(b: dict) -> str:
    return ", ".join(f"{r}: {s:.1f} s ({p:.0f} %)" for r, (s, p) in sorted(b.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4, help="N (default 4)")
    ap.add_argument("--iterations", type=int, default=150,
                    help="I of the synchronous run; the asynchronous one runs N I updates "
                         "(default 150)")
    ap.add_argument("--slow", default="2:0.2", help="--slow-worker RANK:SECONDS (default 2:0.2)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--baselines", action="store_true",
                    help="also run both modes without the slow worker (labels *-noslow)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--async-lr", default="staleness", choices=["staleness", "workers", "constant"])
    ap.add_argument("--runs", default=os.path.join(REPO, "runs", "mdgan_async"))
    ap.add_argument("--out", default=os.path.join(REPO, "tools", "results", "mdgan_async"))
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    n, I = a.workers, a.iterations
    os.makedirs(a.runs, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    configs = {
        "sync": ["--mode", "mdgan", "-I", str(I)],
        "async": ["--mode", "mdgan-async", "-I", str(n * I), "--async-lr", a.async_lr],
    }
    slows = {"": ["--slow-worker", a.slow]}
    if a.baselines:
        slows["-noslow"] = []
    results = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for (label, extra), (tail, slow) in ((c, s) for s in slows.items()
                                             for c in configs.items()):
            name = f"{label}{tail}-s{seed}"
            d = os.path.join(a.runs, name)
            launch = run_one(name, n + 1, extra + ["-b", str(a.batch), "-k", "1", *slow,
                                                   "--seed", str(seed)],
                             d, a.runs, a.timeout)
            m = measure(d)
            m["launch_s"] = launch
            results[name] = m
            print(f"{name}: wall {m['wall_s']:.1f} s, F_n/s {m['feedbacks_per_s']:.1f}, "
                  f"updates/s {m['updates_per_s']:.1f}, tickets {m['tickets']}, blocked "
                  f"{fmt_blocked(m['blocked'])}, score {m['score']:.2f}, FID {m['fid']:.1f}",
                  flush=True)
    load = os.getloadavg()
    lines = [stamp.line(), "",
             f"N = {n} workers, b = {a.batch}, k = 1, worker {a.slow.split(':')[0]} sleeps "
             f"{a.slow.split(':')[1]} s per iteration (not in the *-noslow runs); sync I = {I} iterations, async "
             f"{n * I} updates (both {n * I} feedbacks), async learning-rate rule "
             f"{a.async_lr}. Load average at the end: {load[0]:.1f} (2-core machine shared "
             "with other jobs).", "",
             "| run | wall (s) | F_n/s | G updates/s | F_n per worker (rank: count) | "
             "blocked per rank (rank: s, % of its training time) | final score | final FID |",
             "|---|---|---|---|---|---|---|---|"]
    for label, m in results.items():
        lines.append(f"| {label} | {m['wall_s']:.1f} | {m['feedbacks_per_s']:.1f} | "
                     f"{m['updates_per_s']:.1f} | "
                     + ", ".join(f"{r}: {c}" for r, c in sorted(m["tickets"].items()))
                     + f" | {fmt_blocked(m['blocked'])} | {m['score']:.2f} | {m['fid']:.1f} |")
    if not all(m["records_wait"] for m in results.values()):
        lines += ["", "Blocked times: the traces do not record t_wait (format < 3): NaN."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"stamp": stamp.line(), "args": vars(a), "results": results}, f, indent=1,
                  default=lambda o: o if not isinstance(o, np.generic) else o.item())
    print(text)


if __name__ == "__main__":
    main()
