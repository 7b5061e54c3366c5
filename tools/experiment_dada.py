"""DADA's Table 2 and Figure 3 in miniature, on the embedded digits rotated by 60..300 degrees.

    OMP_NUM_THREADS=1 timeout 10800 mpiexec -n 2 python tools/experiment_dada.py --seeds 3
    ... --first-seed 3 --seeds 2 --append      # two more seeds added to results.json

One MPI job of two ranks (rank 0 the source, rank 1 the target) runs, for every seed and target
rotation, the real mpidist.dada adaptation (traced, each run in its own directory under --runs-dir)
with: sync (p = 1), D-PSGD, and Naive / MA / GA for each p of --periods; the centralized ADDA
baseline runs in one process on rank 0 (same seed, data and batches). The source's pre-training
is deterministic per seed and is reused across the runs of a seed.

Writes into --out (default tools/results/dada):
- ``table2.md``: target accuracy (%) per rotation and the average, mean over seeds (and the
  standard deviation of the average), with the source-only accuracy for reference;
- ``results.json``: every run's numbers (accuracies, bytes from the traces, times);
- ``figure3_communication.png``: total bytes exchanged (both ranks, from the traces) against p;
- ``figure2_accuracy.png``: target accuracy against steps for centralized, sync and D-PSGD.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

from mpidist import dada, runtime, trace
from mpidist.comm import Communicator


def config_list(periods):
    out = [("centralized", None), ("sync", 1), ("dpsgd", 1)]
    for p in periods:
        out += [("naive", p), ("ma", p), ("ga", p)]
    return out


def name(strategy, p):
    return strategy if p is None or strategy in ("sync", "dpsgd") else f"{strategy} p={p}"


def disc_bytes_from_trace(tdir):
    """Bytes of the discriminator allreduces of all ranks (D per rank and sync-up: the run's
    communication cost; with two ranks exactly what each rank sends)."""
    run = trace.read_run(tdir)
    rows = run.comm
    sel = (rows["op"] == b"allreduce") & np.char.startswith(rows["channel"], b"disc_")
    return int(rows["nbytes"][sel].sum()), {r.rank: r.metric("target_acc") for r in run.ranks}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds are first-seed .. first-seed + seeds - 1 (default 0)")
    ap.add_argument("--append", action="store_true",
                    help="add these runs to <out>/results.json instead of starting it anew")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rotations", type=float, nargs="+", default=[60, 120, 180, 240, 300])
    ap.add_argument("--periods", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--out", default="tools/results/dada")
    ap.add_argument("--runs-dir", default=None,
                    help="where the runs' traces go (default runs/dada-experiment-<time>)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="further mpidist.dada flags for every run (after everything else)")
    a = ap.parse_args()
    world = Communicator()
    if world.size != 2:
        sys.exit("run it with mpiexec -n 2 (rank 0 the source, rank 1 the target)")
    runs_dir = a.runs_dir or world.bcast_object(
        os.path.join("runs", f"dada-experiment-{time.strftime('%Y%m%d-%H%M%S')}"))
    configs = config_list(a.periods)
    cache = {}
    results = []
    if a.append and world.rank == 0:
        with open(os.path.join(a.out, "results.json")) as f:
            saved = json.load(f)
        if saved["steps"] != a.steps:
            sys.exit(f"--append: {a.out}/results.json holds runs of {saved['steps']} steps")
        results = saved["runs"]
    t0 = time.time()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for rot in a.rotations:
            for strategy, p in configs:
                key = f"{name(strategy, p).replace(' ', '').replace('=', '')}-rot{rot:g}-seed{seed}"
                tdir = os.path.join(runs_dir, key)
                argv = ["--quiet", "--seed", str(seed), "--steps", str(a.steps),
                        "--rotation", str(rot), "--trace-dir", tdir, *a.extra]
                t = time.time()
                if strategy == "centralized":
                    rec = None
                    if world.rank == 0:
                        args = dada.make_parser().parse_args(argv + ["--centralized"])
                        res = dada.adapt_centralized(args, torch.device("cpu"), cache=cache)
                        (_, rot_, before, after), = res["targets"]
                        rec = {"config": "centralized", "rotation": rot, "seed": seed,
                               "before": before, "after": after, "bytes": 0,
                               "source_acc": res["source_acc"], "seconds": time.time() - t}
                    world.barrier(timeout=1e9)
                else:
                    args_list = argv + ["--strategy", strategy]
                    if strategy not in ("sync", "dpsgd"):
                        args_list += ["--sync-period", str(p)]
                    with runtime.start("dada", dada.make_parser(), args_list,
                                       check=dada.check) as run:
                        res = dada.adapt_distributed(run, cache=cache, summary=False)
                    rec = None
                    if world.rank == 0:
                        nbytes, curves = disc_bytes_from_trace(tdir)
                        (_, rot_, before, after), = res["targets"]
                        steps_, _, accs = curves[1]
                        rec = {"config": name(strategy, p), "strategy": strategy, "p": p,
                               "rotation": rot, "seed": seed, "before": before, "after": after,
                               "bytes": nbytes, "source_acc": res["source_acc"],
                               "seconds": time.time() - t, "trace": tdir,
                               "curve": [steps_.tolist(), accs.tolist()]}
                if world.rank == 0:
                    results.append(rec)
                    print(f"[{time.time() - t0:7.0f} s] seed {seed} rot {rot:g} {rec['config']:12s}"
                          f" {100 * rec['before']:5.1f}% -> {100 * rec['after']:5.1f}%  "
                          f"{rec['bytes'] / 1e6:9.1f} MB  {rec['seconds']:.0f} s", flush=True)
                    os.makedirs(a.out, exist_ok=True)
                    with open(os.path.join(a.out, "results.json"), "w") as f:
                        json.dump({"made_by": stamp.line(), "argv": sys.argv, "steps": a.steps,
                               "runs": results}, f)
    if world.rank == 0:
        a.seeds = len({r["seed"] for r in results})
        write_outputs(a, configs, results)


def replot(out):
    """Rewrite the table and figures from ``<out>/results.json`` (no training)."""
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    runs = saved["runs"]
    a = argparse.Namespace(out=out, steps=saved["steps"],
                           rotations=sorted({r["rotation"] for r in runs}),
                           periods=sorted({r["p"] for r in runs if r.get("p", 1) not in (None, 1)}),
                           seeds=len({r["seed"] for r in runs}))
    write_outputs(a, config_list(a.periods), runs)


def mean_of_rot(results, cfg, rot):
    return np.mean([r["after"] for r in results if r["config"] == cfg and r["rotation"] == rot])


def write_outputs(a, configs, results):
    """table2.md and the two figures from the per-run records."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rots = a.rotations
    names = [name(s, p) for s, p in configs]

    def accs(cfg, rot):
        return [r["after"] for r in results if r["config"] == cfg and r["rotation"] == rot]
    lines = ["| method | " + " | ".join(f"0 -> {r:g}" for r in rots) + " | Avg | std of Avg over "
             "seeds | MB exchanged per run |",
             "|" + "---|" * (len(rots) + 4)]
    before = {rot: np.mean([r["before"] for r in results if r["rotation"] == rot
                            and r["config"] == "centralized"]) for rot in rots}
    lines.append("| source only | " + " | ".join(f"{100 * before[r]:.2f}" for r in rots)
                 + f" | {100 * np.mean(list(before.values())):.2f} | | |")
    summary = {}
    for cfg in names:
        per_rot = [np.mean(accs(cfg, r)) for r in rots]
        per_seed_avg = [np.mean([r["after"] for r in results if r["config"] == cfg
                                 and r["seed"] == s]) for s in sorted({r["seed"] for r in results})]
        mb = np.mean([r["bytes"] for r in results if r["config"] == cfg]) / 1e6
        summary[cfg] = np.mean(per_rot)
        lines.append(f"| {cfg} | " + " | ".join(f"{100 * v:.2f}" for v in per_rot)
                     + f" | **{100 * np.mean(per_rot):.2f}** | {100 * np.std(per_seed_avg):.2f} | "
                     f"{mb:.0f} |")
    head = (f"Target accuracy (%) after {a.steps} adaptation steps on the embedded digits (source "
            f"0 degrees, 719 images; target rotated, 719 other images; tested on 359 held-out "
            f"images rotated alike), mean over {a.seeds} seeds.\n\n")
    with open(os.path.join(a.out, "table2.md"), "w") as f:
        f.write(stamp.line() + "\n\n" + head + "\n".join(lines) + "\n")

    # Figure 3: communication cost against p, and accuracy against that cost
    def mean_of(cfg, field):
        return np.mean([r[field] for r in results if r["config"] == cfg])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    ps = [1] + list(a.periods)
    width = 0.25
    for j, (strat, color) in enumerate((("naive", "C1"), ("ma", "C2"), ("ga", "C0"))):
        cfgs = ["sync"] + [name(strat, p) for p in a.periods]
        mb = [mean_of(c, "bytes") / 1e6 for c in cfgs]
        ax.bar(np.arange(len(ps)) + (j - 1) * width, mb, width, color=color,
               label=strat if strat != "ga" else "ga (DADA)")
        acc = [100 * np.mean([mean_of_rot(results, c, r) for r in rots]) for c in cfgs]
        bx.plot(mb, acc, "o-", color=color, label=strat if strat != "ga" else "ga (DADA)")
        for m, v, p in zip(mb, acc, ps):
            bx.annotate(f"p={p}", (m, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
    sync_mb = mean_of("sync", "bytes") / 1e6
    ax.plot(np.arange(len(ps)), [sync_mb / p for p in ps], "k:", marker="_", ms=20, lw=1,
            label="sync / p")
    ax.set_xticks(np.arange(len(ps)), ["1 (sync)"] + [str(p) for p in a.periods])
    ax.set_xlabel("sync-up period p")
    ax.set_ylabel("MB on disc_* channels per run (both ranks)")
    ax.set_title(f"communication, {a.steps} steps (from the traces)")
    ax.legend(fontsize=8)
    cen = 100 * np.mean([mean_of_rot(results, "centralized", r) for r in rots])
    bx.axhline(cen, color="k", ls=":", lw=1, label="centralized ADDA")
    bx.set_xlabel("MB exchanged per run")
    bx.set_ylabel("target accuracy (%), average over rotations")
    bx.set_title("accuracy against communication")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "figure3_communication.png"), dpi=120)

    # Figure 2: accuracy against steps (centralized from the final values only)
    fig, axes = plt.subplots(1, len(rots), figsize=(3.2 * len(rots), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, rot in zip(axes, rots):
        for cfg in ("sync", "dpsgd", f"ga p={min(a.periods)}", f"ga p={max(a.periods)}",
                    f"ma p={min(a.periods)}", f"naive p={min(a.periods)}"):
            curves = [r["curve"] for r in results if r["config"] == cfg and r["rotation"] == rot]
            if not curves:
                continue
            steps = curves[0][0]
            acc = np.mean([c[1] for c in curves], axis=0)
            ax.plot(steps, 100 * acc, label=cfg)
        c = accs("centralized", rot)
        ax.axhline(100 * np.mean(c), color="k", ls=":", lw=1, label="centralized (final)")
        ax.set_title(f"0 -> {rot:g} deg")
        ax.set_xlabel("step")
    axes[0].set_ylabel("target accuracy (%)")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"target accuracy during adaptation (embedded digits), mean over {a.seeds} "
                 "seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "figure2_accuracy.png"), dpi=110)
    print("\n".join(lines))
    print(f"written: {a.out}/table2.md, figure3_communication.png, figure2_accuracy.png, "
          "results.json")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--replot"]:
        replot(sys.argv[2] if len(sys.argv) > 2 else "tools/results/dada")
    else:
        main()
