"""Experiment (not a timed test): PC-ASGD, P-ASGD, C-ASGD and the D-ASGD baseline with tau = 20 on
the paper's distributed network 1 in miniature, over several seeds, as the paper's Table 2.

    python tools/experiment_pcasgd.py                       # 4 variants x 5 seeds
    python tools/experiment_pcasgd.py --seeds 0,1 --variants pc,dasgd --extra "--lam 1"

For every variant and seed it runs ``mpiexec -n 8 python -m mpidist.pcasgd --variant V --seed S
--delay 20 --quiet --trace-dir <runs>/<label>-s<S>`` (a finished run found there is reused, so an
interrupted experiment resumes), then reads the HDF5 traces and writes into ``--out``
(default tools/results/pcasgd/):

- ``table.md``: per variant the mean +- std over seeds of the agents' average final test accuracy
  (the paper's metric, Sec. 5.2), "o.p." = its outperformance over D-ASGD with the same seed (mean
  +- std), the spread between agents, the share of steps on which the predicting step was used
  (after the first tau steps) and the wall time of a run; next to it the paper's Table 2 row;
- ``accuracy.png``: the agents' mean test accuracy against steps (mean over seeds, band = std) and
  the consensus distance ||x^i - mean x|| against steps;
- ``results.json``: every number behind them.

Variant labels: pc, p, c, dasgd, and pc-printed (PC-ASGD with Eq. 12 read as typeset).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from mpidist import trace  # noqa: E402
from mpidist.pcasgd import DEFAULT_STEPS  # noqa: E402

LABELS = {
    "pc": ("PC-ASGD", ["--variant", "pc"]),
    "p": ("P-ASGD", ["--variant", "p"]),
    "c": ("C-ASGD", ["--variant", "c"]),
    "dasgd": ("D-ASGD (baseline)", ["--variant", "dasgd"]),
    "pc-printed": ("PC-ASGD, Eq. 12 as printed", ["--variant", "pc", "--criterion", "printed"]),
}
#: Paper 001, Table 2, 8 agents, PreResNet-110 on CIFAR-10: accuracy and o.p. (%).
PAPER = {"pc": "87.3 +- 1.1 (o.p. 3.3 +- 1.1)", "p": "84.9 +- 0.9 (o.p. 0.9 +- 0.9)",
         "c": "86.0 +- 1.0 (o.p. 2.0 +- 1.0)", "dasgd": "84.0 +- 0.3"}


def run_one(label, seed, args, run_dir) -> float:
    """Run one variant/seed unless a finished trace of the same length is there; returns the wall
    seconds spent."""
    if os.path.exists(os.path.join(run_dir, "rank0.h5")):
        try:
            r = trace.read_run(run_dir)
            ok = r.attrs.get("status") == "ok"
        except trace.TraceError:
            ok = False
        if not ok:
            raise SystemExit(f"{run_dir} holds an unfinished run; remove it and start again")
        want = args.steps or DEFAULT_STEPS
        done = int(r.ranks[0].metric("theta")[0].max()) + 1
        if done != want:
            raise SystemExit(f"{run_dir} holds a run of {done} steps, this experiment asks for "
                             f"{want}; give another --tag or --runs")
        return 0.0
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec, "-n", str(args.np), sys.executable, "-m", "mpidist.pcasgd", *LABELS[label][1],
           "--seed", str(seed), "--delay", str(args.delay), "--quiet", "--trace-dir", run_dir,
           *(["--steps", str(args.steps)] if args.steps else []), *shlex.split(args.extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    p = subprocess.run(["timeout", str(args.timeout), *cmd], cwd=REPO, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    print("  " + " | ".join(ln for ln in p.stdout.splitlines() if "test accuracy" in ln), flush=True)
    return time.time() - t0


def read(run_dir, tau):
    """(final accuracies of the agents in %, eval steps, mean test acc per eval step in %,
    consensus distance per eval step, predicting share after tau, wall seconds)."""
    run = trace.read_run(run_dir)
    final = np.array(run.attrs["final_test_acc"], dtype=float)
    curves, cons, pred = [], [], []
    for r in run.ranks:
        s, _, v = r.metric("test_acc")
        curves.append(v * 100)
        cons.append(r.metric("consensus_dist")[2])
        st, _, th = r.metric("theta")
        pred.append(th[st >= tau])
    steps = s + 1
    pred = np.concatenate(pred)
    return (final, steps, np.mean(curves, 0), np.mean(cons, 0),
            float(pred.mean()) if len(pred) else float("nan"), float(run.attrs["wall_seconds"]))


def _share(p: float) -> str:
    """A share as a percentage that keeps small non-zero values visible."""
    if np.isnan(p):
        return "-"
    return f"{100 * p:.2f}%" if 0 < p < 0.01 else f"{100 * p:.0f}%"


def pm(v):
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.1f} +- {v.std():.1f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="pc,p,c,dasgd",
                    help=f"comma-separated labels ({', '.join(LABELS)}); default pc,p,c,dasgd")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--delay", type=int, default=20, help="tau (default 20, as the paper)")
    ap.add_argument("--steps", type=int, default=0, help="steps per run (default: the module's)")
    ap.add_argument("-n", "--np", type=int, default=8, help="agents (default 8: network 1)")
    ap.add_argument("--extra", default="", help="more flags for every run, e.g. '--lam 1'")
    ap.add_argument("--tag", default="",
                    help="names a second experiment: files table-TAG.md, accuracy-TAG.png, "
                         "results-TAG.json and runs under runs/experiment_pcasgd-TAG")
    ap.add_argument("--runs", default=None,
                    help="where the runs' traces go (default runs/experiment_pcasgd[-TAG])")
    ap.add_argument("--out", default=os.path.join(REPO, "tools", "results", "pcasgd"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    a = ap.parse_args(argv)
    sfx = f"-{a.tag}" if a.tag else ""
    a.runs = a.runs or os.path.join(REPO, "runs", f"experiment_pcasgd{sfx}")
    labels = a.variants.split(",")
    for lab in labels:
        if lab not in LABELS:
            ap.error(f"unknown variant label {lab} (known: {', '.join(LABELS)})")
    seeds = [int(s) for s in a.seeds.split(",")]
    os.makedirs(a.out, exist_ok=True)
    res = {}
    t0 = time.time()
    for seed in seeds:
        for lab in labels:
            d = os.path.join(a.runs, f"{lab}-s{seed}")
            run_one(lab, seed, a, d)
            res[(lab, seed)] = read(d, a.delay)
    print(f"all runs: {time.time() - t0:.0f} s", flush=True)

    # ---------------------------------------------------------------- table
    base = "dasgd" if "dasgd" in labels else None
    rows = []
    for lab in labels:
        means = [res[(lab, s)][0].mean() for s in seeds]
        spread = [res[(lab, s)][0].std() for s in seeds]
        op = ([res[(lab, s)][0].mean() - res[(base, s)][0].mean() for s in seeds]
              if base and lab != base else None)
        pred = [res[(lab, s)][4] for s in seeds]
        wall = [res[(lab, s)][5] for s in seeds]
        rows.append(dict(label=lab, title=LABELS[lab][0], acc=means, op=op, spread=spread,
                         pred=pred, wall=wall))
    cmd = ("python tools/experiment_pcasgd.py --seeds " + a.seeds + " --variants " + a.variants
           + (f" --delay {a.delay}" if a.delay != 20 else "")
           + (f" --steps {a.steps}" if a.steps else "") + (f" --extra '{a.extra}'" if a.extra else "")
           + (f" --tag {a.tag}" if a.tag else ""))
    lines = [f"`{cmd}` ({len(seeds)} seeds, {a.np} agents, tau = {a.delay}; each run: "
             f"`mpirun -n {a.np} python -m mpidist.pcasgd --variant V --seed S --delay {a.delay}"
             f"{' --steps ' + str(a.steps) if a.steps else ''}{' ' + a.extra if a.extra else ''}`)",
             "",
             "| variant | test acc. (%) | o.p. vs D-ASGD (%) | spread over agents (%) | "
             "predicting step used | training s / run | paper, Pre110 CIFAR-10 (Table 2) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pr = np.nanmean(r["pred"]) if not np.isnan(r["pred"]).all() else float("nan")
        lines.append(f"| {r['title']} | {pm(r['acc'])} | {pm(r['op']) if r['op'] else '-'} | "
                     f"{np.mean(r['spread']):.1f} | {_share(pr)} | {np.mean(r['wall']):.0f} | "
                     f"{PAPER.get(r['label'], '-')} |")
    lines += ["", "test acc.: mean +- std over seeds of the 8 agents' average final test accuracy; "
              "o.p.: difference to D-ASGD with the same seed; spread: std between agents, averaged "
              "over seeds; predicting step used: share of agent-steps with theta_t = 1 after the "
              "first tau steps; training s: wall seconds of a run after start-up (8 ranks on the 2 "
              "cores of the machine used, shared with other jobs)."]
    with open(os.path.join(a.out, f"table{sfx}.md"), "w") as f:
        f.write(stamp.line() + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))

    # ---------------------------------------------------------------- figure
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for lab in labels:
        steps = res[(lab, seeds[0])][1]
        acc = np.stack([res[(lab, s)][2] for s in seeds])
        con = np.stack([res[(lab, s)][3] for s in seeds])
        style = dict(ls="--", lw=2.2) if lab == "c" else dict(ls="-", lw=1.4)
        line, = ax.plot(steps, acc.mean(0), marker="o", ms=3, label=LABELS[lab][0], **style)
        ax.fill_between(steps, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0),
                        color=line.get_color(), alpha=0.15)
        bx.plot(steps, con.mean(0), marker="o", ms=3, color=line.get_color(), label=LABELS[lab][0],
                **style)
    ax.axvline(a.delay, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="step t", ylabel="test accuracy (%), mean of the agents",
           title=f"{a.np} agents, clusters 3+5, tau = {a.delay}, {len(seeds)} seeds (band: std)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    bx.set(xlabel="step t", ylabel="consensus distance ||x_i - mean x||, mean of the agents",
           yscale="log", title="disagreement between agents")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, f"accuracy{sfx}.png"), dpi=120)

    out = {f"{lab}-s{s}": dict(final=res[(lab, s)][0].tolist(), steps=res[(lab, s)][1].tolist(),
                               acc=res[(lab, s)][2].tolist(), consensus=res[(lab, s)][3].tolist(),
                               predicting=res[(lab, s)][4], wall_seconds=res[(lab, s)][5])
           for lab in labels for s in seeds}
    with open(os.path.join(a.out, f"results{sfx}.json"), "w") as f:
        json.dump(dict(made_by=stamp.line(), command=cmd, delay=a.delay, agents=a.np, runs=out),
                  f, indent=1)
    print(f"wrote {a.out}/table{sfx}.md, accuracy{sfx}.png, results{sfx}.json")


if __name__ == "__main__":
    main()
