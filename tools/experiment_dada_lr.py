"""Experiment (not a timed test): why DADA's Gradient Accumulation loses accuracy with the sync-up
period p faster here than in the paper's Table 2 ("Distributed Asynchronous Domain Adaptation",
S. Gan et al.), and the table again with the remedy. The hypothesis it tests: with Adam (ADDA's
optimizer, scale-invariant), applying the accumulated gradient once per p steps (Alg. 1 line 7)
makes D take p times fewer steps of about the same length while E_t still takes one step per step
(Alg. 2 line 6), so D falls behind its adversary; if so, a D learning rate of p times the base
should give back what p takes away.

    python tools/experiment_dada_lr.py --launch --seeds 0,1,2,3,4 --rotations 30 45 60
    OMP_NUM_THREADS=1 mpiexec -n 2 python tools/experiment_dada_lr.py --seeds 0,1,2   # one job

For each seed, rotation and p of --periods it runs GA twice through the real traced
``mpidist.dada`` (rank 0 the source, rank 1 the target): with ``--lr-disc`` = base, and with
``--lr-disc`` = base * p; and sync (p = 1) once. The source's pre-training is reused within a seed.

``--launch`` (plain ``python``, no mpiexec) starts one ``mpiexec -n 2`` job per seed, each under
the machine's shared MPI lock (``flock /tmp/mpidist-mpi.lock``) and a timeout, keeps each seed's
runs in ``<runs-dir>/seed<S>.json`` (a seed found there is not run again, so an interrupted
experiment resumes) and writes the table from all of them. Writes ``<out>/table_lr.md`` and
``<out>/results_lr.json`` (default tools/results/dada).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

LOCK = "/tmp/mpidist-mpi.lock"
#: The paper's Table 2 (Rotated MNIST, 0 -> 60..300 degrees), column Avg: sync and GA at p = 2..4.
PAPER_AVG = {"sync": 49.25, "ga p=2": 48.65, "ga p=3": 48.37, "ga p=4": 47.35}


def configs(periods, base):
    """(label, strategy, p, lr_disc): sync, then GA at each p with the base and the p-times rate."""
    out = [("sync", "sync", 1, base)]
    for p in periods:
        out += [(f"ga p={p}", "ga", p, base), (f"ga p={p}, lr_D x p", "ga", p, base * p)]
    return out


def parser():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rotations", type=float, nargs="+", default=[30])
    ap.add_argument("--periods", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--lr-disc", type=float, default=2e-4, help="the base D learning rate")
    ap.add_argument("--out", default="tools/results/dada")
    ap.add_argument("--runs-dir", default=os.path.join("runs", "dada-lr"))
    ap.add_argument("--launch", action="store_true",
                    help="run with plain python: one mpiexec -n 2 job per seed, under the lock")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per seed's job (--launch)")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # --launch's job: write here
    return ap


def run_seeds(a, seeds):
    """The MPI job: every configuration of every seed and rotation; rank 0 returns the records."""
    from mpidist import dada, runtime
    from mpidist.comm import Communicator
    world = Communicator()
    if world.size != 2:
        sys.exit("run it with mpiexec -n 2 (rank 0 the source, rank 1 the target), or --launch")
    cache, results, t0 = {}, [], time.time()
    for seed in seeds:
        for rot in a.rotations:
            for label, strategy, p, lr in configs(a.periods, a.lr_disc):
                key = f"{label}-rot{rot:g}-seed{seed}".replace(" ", "").replace(",", "_")
                argv = ["--quiet", "--seed", str(seed), "--steps", str(a.steps), "--rotation",
                        str(rot), "--strategy", strategy, "--lr-disc", repr(lr),
                        "--trace-dir", os.path.join(a.runs_dir, key.replace("=", ""))]
                if strategy == "ga":
                    argv += ["--sync-period", str(p)]
                t = time.time()
                with runtime.start("dada", dada.make_parser(), argv, check=dada.check) as run:
                    res = dada.adapt_distributed(run, cache=cache, summary=False)
                if world.rank == 0:
                    (_, _, before, after), = res["targets"]
                    results.append({"config": label, "p": p, "lr_disc": lr, "rotation": rot,
                                    "seed": seed, "before": before, "after": after,
                                    "seconds": time.time() - t})
                    print(f"[{time.time() - t0:6.0f} s] seed {seed} rot {rot:g} {label:18s} "
                          f"{100 * before:5.1f}% -> {100 * after:5.1f}%", flush=True)
    return results if world.rank == 0 else None


def launch(a, seeds):
    """One mpiexec -n 2 job per seed not yet in <runs-dir>/seed<S>.json, each under the shared
    lock and a timeout; returns every seed's records."""
    here = os.path.abspath(__file__)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    results = []
    for seed in seeds:
        part = os.path.join(a.runs_dir, f"seed{seed}.json")
        if not os.path.exists(part):
            cmd = ["flock", LOCK, "timeout", str(a.timeout), mpiexec, "-n", "2", sys.executable,
                   here, "--seeds", str(seed), "--steps", str(a.steps), "--rotations",
                   *map(repr, a.rotations), "--periods", *map(str, a.periods), "--lr-disc",
                   repr(a.lr_disc), "--runs-dir", a.runs_dir, "--part", part]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, env=env, check=True)
        with open(part) as f:
            saved = json.load(f)
        if (saved["steps"], saved["rotations"], saved["periods"], saved["lr_disc"]) != (
                a.steps, a.rotations, a.periods, a.lr_disc):
            sys.exit(f"{part} holds another experiment's runs; give another --runs-dir")
        results += saved["runs"]
    return results


def table(a, seeds, results):
    """Table 2's layout: per configuration the mean over seeds per rotation, their average, the
    std over seeds of the per-seed average, and the paper's Avg for the same configuration."""
    rots = a.rotations
    lines = ["| configuration | " + " | ".join(f"0 -> {r:g}" for r in rots)
             + " | Avg | std of Avg over seeds | paper's Avg (0 -> 60..300) |",
             "|" + "---|" * (len(rots) + 4)]

    def mean(cfg, **where):
        return np.mean([r["after"] for r in results if r["config"] == cfg
                        and all(r[k] == v for k, v in where.items())])
    src = [np.mean([r["before"] for r in results if r["config"] == "sync" and r["rotation"] == rot])
           for rot in rots]
    lines.append("| source only | " + " | ".join(f"{100 * v:.2f}" for v in src)
                 + f" | {100 * np.mean(src):.2f} | | |")
    for label, *_ in configs(a.periods, a.lr_disc):
        per_rot = [mean(label, rotation=rot) for rot in rots]
        per_seed = [mean(label, seed=s) for s in seeds]
        paper = PAPER_AVG.get(label)
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in per_rot)
                     + f" | **{100 * np.mean(per_rot):.2f}** | {100 * np.std(per_seed):.2f} | "
                     + (f"{paper:.2f}" if paper else "") + " |")
    for p in a.periods:                 # the remedy's gain, paired by seed
        gain = [mean(f"ga p={p}, lr_D x p", seed=s) - mean(f"ga p={p}", seed=s) for s in seeds]
        lines.append(f"| gain of lr_D x p at p={p} (same seed) |" + " |" * len(rots)
                     + f" {100 * np.mean(gain):+.2f} | {100 * np.std(gain):.2f} | |")
    return lines


def main():
    a = parser().parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.launch:
        results = launch(a, seeds)
    else:
        results = run_seeds(a, seeds)
        if results is None:
            return
        if a.part:
            os.makedirs(os.path.dirname(a.part) or ".", exist_ok=True)
            with open(a.part, "w") as f:
                json.dump({"steps": a.steps, "rotations": a.rotations, "periods": a.periods,
                           "lr_disc": a.lr_disc, "runs": results}, f, indent=1)
            return
    lines = table(a, seeds, results)
    head = (f"Target accuracy (%) after {a.steps} adaptation steps on the embedded digits "
            f"(source 0 degrees, target rotated), GA with the base D learning rate {a.lr_disc:g} "
            f"and with p times it, mean over seeds {a.seeds}; the paper's column is its Table 2 "
            f"(Rotated MNIST) for comparison of the trend only.")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "table_lr.md"), "w") as f:
        f.write(stamp.line() + "\n\n" + head + "\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(a.out, "results_lr.json"), "w") as f:
        json.dump({"made_by": stamp.line(), "argv": sys.argv, "steps": a.steps,
                   "runs": results}, f, indent=1)
    print(head + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
