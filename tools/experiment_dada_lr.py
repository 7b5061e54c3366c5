"""Experiment (not a timed test): why DADA's Gradient Accumulation loses accuracy with the sync-up
period p faster here than in the paper's Table 2 ("Distributed Asynchronous Domain Adaptation",
S. Gan et al.). The hypothesis it tests: with Adam (ADDA's optimizer, scale-invariant), applying the
accumulated gradient once per p steps makes D take p times fewer steps of about the same length
while E_t still takes one step per step, so D falls behind its adversary; if so, a D learning rate
of p times the base should give back what p takes away.

    OMP_NUM_THREADS=1 mpiexec -n 2 python tools/experiment_dada_lr.py --seeds 0,1,2

For each seed, rotation and p of --periods it runs GA twice through the real traced
``mpidist.dada`` (rank 0 the source, rank 1 the target): with ``--lr-disc`` = base, and with
``--lr-disc`` = base * p; and sync (p = 1) once. Writes ``<out>/table_lr.md`` and
``<out>/results_lr.json`` (default tools/results/dada).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

from mpidist import dada, runtime
from mpidist.comm import Communicator


def configs(periods, base):
    """(label, strategy, p, lr_disc): sync, then GA at each p with the base and the p-times rate."""
    out = [("sync", "sync", 1, base)]
    for p in periods:
        out += [(f"ga p={p}", "ga", p, base), (f"ga p={p}, lr_D x p", "ga", p, base * p)]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rotations", type=float, nargs="+", default=[30])
    ap.add_argument("--periods", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--lr-disc", type=float, default=2e-4, help="the base D learning rate")
    ap.add_argument("--out", default="tools/results/dada")
    ap.add_argument("--runs-dir", default=os.path.join("runs", "dada-lr"))
    a = ap.parse_args()
    world = Communicator()
    if world.size != 2:
        sys.exit("run it with mpiexec -n 2 (rank 0 the source, rank 1 the target)")
    seeds = [int(s) for s in a.seeds.split(",")]
    cfgs = configs(a.periods, a.lr_disc)
    cache, results, t0 = {}, [], time.time()
    for seed in seeds:
        for rot in a.rotations:
            for label, strategy, p, lr in cfgs:
                key = f"{label}-rot{rot:g}-seed{seed}".replace(" ", "").replace(",", "_")
                argv = ["--quiet", "--seed", str(seed), "--steps", str(a.steps), "--rotation",
                        str(rot), "--strategy", strategy, "--lr-disc", repr(lr),
                        "--trace-dir", os.path.join(a.runs_dir, key.replace("=", ""))]
                if strategy == "ga":
                    argv += ["--sync-period", str(p)]
                with runtime.start("dada", dada.make_parser(), argv, check=dada.check) as run:
                    res = dada.adapt_distributed(run, cache=cache, summary=False)
                if world.rank == 0:
                    (_, _, before, after), = res["targets"]
                    results.append({"config": label, "p": p, "lr_disc": lr, "rotation": rot,
                                    "seed": seed, "before": before, "after": after})
                    print(f"[{time.time() - t0:6.0f} s] seed {seed} rot {rot:g} {label:18s} "
                          f"{100 * before:5.1f}% -> {100 * after:5.1f}%", flush=True)
    if world.rank != 0:
        return
    lines = ["| configuration | " + " | ".join(f"0 -> {r:g}" for r in a.rotations)
             + " | mean +- std over seeds (all rotations) |",
             "|" + "---|" * (len(a.rotations) + 2)]
    for label, *_ in cfgs:
        per_rot = [np.mean([r["after"] for r in results if r["config"] == label
                            and r["rotation"] == rot]) for rot in a.rotations]
        per_seed = [np.mean([r["after"] for r in results if r["config"] == label
                             and r["seed"] == s]) for s in seeds]
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in per_rot)
                     + f" | {100 * np.mean(per_seed):.1f} +- {100 * np.std(per_seed):.1f} |")
    head = (f"Target accuracy (%) after {a.steps} steps, GA with the base D learning rate "
            f"{a.lr_disc:g} and with p times it, seeds {a.seeds}.")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "table_lr.md"), "w") as f:
        f.write(stamp.line() + "\n\n" + head + "\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(a.out, "results_lr.json"), "w") as f:
        json.dump({"made_by": stamp.line(), "argv": sys.argv, "runs": results}, f, indent=1)
    print(head + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
