"""AdaComm experiment: training loss against wall-clock time for fully synchronous SGD, PASGD with
fixed tau and AdaComm (with and without block momentum) over an emulated cluster network, over
several seeds.

    python tools/experiment_adacomm.py                      # 9 methods x 3 seeds (~30 minutes)
    python tools/experiment_adacomm.py --seeds 0,1,2 --only mom_sync,mom_adacomm
    python tools/experiment_adacomm.py --analyze runs/adacomm-experiment-<stamp>   # re-tabulate
                                                            # (also a run cut short)

Each configuration is one ``mpiexec -n 4 python -m mpidist.adacomm`` run with the same wall-clock
budget and the link model of mpidist.comm set to a cluster-like network (default 1 Gbit/s and
50 us per message: an allreduce of n bytes over p ranks costs 2(p-1) L + 2(p-1)/p n / B), under
``timeout`` and the shared lock /tmp/mpidist-mpi.lock (the lock ``flock`` takes), held for each
seed's runs together, so that no other multi-rank job of the project runs beside them. The runs are interleaved: for each seed every method runs once, in
an order rotated from seed to seed, so that the machine's load weighs on all methods alike. The
runs' traces give, per averaging step, the training loss F averaged over workers and the agreed
elapsed training time. The target of a seed is the training loss F that synchronous SGD of the same
family and seed ends with; a method's speed-up is sync's time to that loss divided by its own.
Output in tools/results/adacomm/: ``loss_vs_time.png`` (all methods, all seeds, and the tau
schedules), ``table.md`` (per method: mean and spread of the speed-up over the seeds, how many
seeds reached the target; then every run) and ``results.json``, both stamped (tools/stamp.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import mpilock  # noqa: E402  (tools/mpilock.py, beside this script)
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mpidist.trace import read_run  # noqa: E402

OUT = os.path.join(REPO, "tools", "results", "adacomm")

# Two families, as in the paper: plain SGD (Fig. 5: no momentum anywhere) and momentum SGD
# (Fig. 7: sync with momentum 0.9 against local momentum 0.9 plus block momentum 0.3).
# --momentum-restart: "always" is the paper's sentence read literally (the local momentum is
# cleared after every averaging, so at tau = 1 after every step); "while-tau-above-1" (the
# default) lets it run on between one-step periods, so that tau = 1 is synchronous momentum SGD.
# name -> (label, family, flags)
PLAIN = ["--momentum", "0", "--global-momentum", "0"]
KEEP = ["--momentum-restart", "while-tau-above-1"]
LITERAL = ["--momentum-restart", "always"]
CONFIGS = {
    "sgd_sync": ("sync SGD", "plain", ["--method", "sync", *PLAIN]),
    "sgd_pasgd4": ("PASGD tau=4", "plain", ["--method", "pasgd", "--tau", "4", *PLAIN]),
    "sgd_pasgd16": ("PASGD tau=16", "plain", ["--method", "pasgd", "--tau", "16", *PLAIN]),
    "sgd_adacomm": ("AdaComm", "plain", ["--method", "adacomm", *PLAIN]),
    "mom_sync": ("sync SGD, momentum 0.9", "momentum", ["--method", "sync", "--momentum", "0.9"]),
    "mom_pasgd16": ("PASGD tau=16 + block momentum 0.3", "momentum",
                    ["--method", "pasgd", "--tau", "16", *KEEP]),
    "mom_adacomm": ("AdaComm + block momentum 0.3 (momentum kept at tau=1)", "momentum",
                    ["--method", "adacomm", *KEEP]),
    "mom_adacomm_literal": ("AdaComm + block momentum 0.3 (restart at every averaging)",
                            "momentum", ["--method", "adacomm", *LITERAL]),
    "mom_adacomm_nobm": ("AdaComm, no block momentum (momentum kept at tau=1)", "momentum",
                         ["--method", "adacomm", "--global-momentum", "0", *KEEP]),
}
LOCK = mpilock.LOCK
FAMILIES = {"plain": "plain SGD (paper Fig. 5)", "momentum": "momentum (paper Fig. 7)"}


def run_one(name: str, seed: int, args, root: str) -> dict:
    """One run of configuration ``name`` with ``seed`` under the shared lock; its trace goes to
    ``root/seed<seed>/<name>``."""
    lr = args.lr_plain if CONFIGS[name][1] == "plain" else args.lr
    d = os.path.join(root, f"seed{seed}", name)
    mpi = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(args.np),
           sys.executable, "-m", "mpidist.adacomm", "--trace-dir", d, "--quiet",
           "--time-budget", str(args.budget), "--interval", str(args.interval),
           "--tau0", str(args.tau0), "--lr", str(lr), "--model", args.model,
           *sum((["--model-arg", a] for a in args.model_arg), []),
           "--link-latency", str(args.latency), "--link-bandwidth", str(args.bandwidth),
           "--seed", str(seed), *CONFIGS[name][2]]
    limit = int(args.budget * 4 + 240)
    cmd = ["timeout", str(limit), *mpi]      # the caller holds the shared lock (mpilock.held)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed ({p.returncode}):\n{p.stdout[-2000:]}\n"
                         f"{p.stderr[-3000:]}")
    print(p.stdout.strip(), flush=True)
    # the load average read once the lock is ours (the run's start) is the trace's own start time
    return {"cmd": " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in mpi),
            "load_after": os.getloadavg()[0], "wall": time.time() - t}


def analyze_one(d: str, name: str) -> dict:
    """One run's curves and totals from its trace (rank 0; every rank logs the same values)."""
    r0 = read_run(d).ranks[0]
    steps, _, loss = r0.metric("train_loss")
    _, _, t = r0.metric("train_time")
    final = {k: float(r0.metric(k)[2][-1]) for k in ("final_train_loss", "test_acc")}
    taus = r0.metric("tau")
    comm = r0.comm
    avg = comm[np.isin(comm["channel"], [b"params", b"grads"])]
    comm_s = float(np.sum(avg["t_done"] - avg["t_post"]))
    return dict(label=CONFIGS[name][0], family=CONFIGS[name][1], steps=steps.tolist(),
                loss=loss.tolist(), time=t.tolist(),
                tau_t=[0.0] + r0.metric("interval_time")[2].tolist(), tau=taus[2].tolist(),
                n_avg=int(len(avg)), comm_s=comm_s, total_steps=int(steps[-1]) + 1, **final)


#: the targets: sync's final F times these factors ("" : the final F itself; "2": twice it, a loss
#: well above the floor every method ends near, so less at the mercy of F's noise at the end)
TARGETS = {"": 1.0, "2": 2.0}


def speedups(res: dict) -> None:
    """For one seed's runs: the targets (sync's final F in each family, and twice it), each run's
    first time at or below them and its speed-up over sync (sync's own time to the target, which
    can be a little before its end, F being noisy, divided by the run's)."""
    for fam in FAMILIES:
        sync = [n for n in res if CONFIGS[n][1] == fam and n.endswith("_sync")]
        if not sync:
            continue
        for key, factor in TARGETS.items():
            target = factor * res[sync[0]]["loss"][-1]
            for r in res.values():
                if r["family"] == fam:
                    hit = [tt for tt, ll in zip(r["time"], r["loss"]) if ll <= target]
                    r["target" + key], r["t_target" + key] = target, (hit[0] if hit else None)
            ts = res[sync[0]]["t_target" + key]
            for r in res.values():
                if r["family"] == fam:
                    t = r["t_target" + key]
                    r["speedup" + key] = ts / t if t else None


def analyze(root: str, seeds, names, meta: dict) -> dict:
    """{seed: {name: run}} for every run found under ``root``."""
    out = {}
    for seed in seeds:
        res = {}
        for name in names:
            d = os.path.join(root, f"seed{seed}", name)
            if os.path.isdir(d):
                res[name] = dict(analyze_one(d, name), **meta.get(f"{seed}/{name}", {}))
        speedups(res)
        out[seed] = res
    return out


def summary(by_seed: dict, names) -> dict:
    """Per method over the seeds: the speed-ups, how many seeds reached sync's final loss, their
    mean and sample standard deviation (over the seeds that reached it), min and max; the means of
    the final F, the final training loss and the test accuracy."""
    out = {}
    for name in names:
        runs = [res[name] for res in by_seed.values() if name in res]
        if not runs:
            continue
        out[name] = dict(label=CONFIGS[name][0], family=CONFIGS[name][1], n=len(runs))
        for key in TARGETS:
            sp = [r["speedup" + key] for r in runs if r.get("speedup" + key)]
            out[name].update({
                "reached" + key: len(sp), "speedups" + key: [r.get("speedup" + key) for r in runs],
                "mean" + key: float(np.mean(sp)) if sp else None,
                "sd" + key: float(np.std(sp, ddof=1)) if len(sp) > 1 else None,
                "min" + key: min(sp) if sp else None, "max" + key: max(sp) if sp else None})
        out[name].update(
            final_F=float(np.mean([r["loss"][-1] for r in runs])),
            final_train_loss=float(np.mean([r["final_train_loss"] for r in runs])),
            test_acc=float(np.mean([r["test_acc"] for r in runs])),
            steps=float(np.mean([r["total_steps"] for r in runs])),
            n_avg=float(np.mean([r["n_avg"] for r in runs])))
    return out


def _range(s: dict) -> str:
    return f"{_x(s['min'])}-{_x(s['max'])}" if s["min"] is not None else "-"


def _msd(s: dict, key: str) -> str:
    m, sd = s["mean" + key], s["sd" + key]
    return f"{m:.2f}x +- {sd:.2f}" if sd is not None else _x(m)


def plot(by_seed: dict, args, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [(seed, name, r) for seed, res in by_seed.items() for name, r in res.items()]
    fams = [f for f in FAMILIES if any(r["family"] == f for _, _, r in runs)]
    fig, axes = plt.subplots(2, len(fams), figsize=(6.5 * len(fams), 7.5), sharex=True,
                             sharey="row", squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.2]})
    colors = {"sync": "k", "pasgd4": "tab:blue", "pasgd16": "tab:cyan", "adacomm": "tab:red",
              "adacomm_literal": "tab:purple", "adacomm_nobm": "tab:orange"}
    for j, fam in enumerate(fams):
        ax, bx = axes[0, j], axes[1, j]
        labelled = set()
        for seed, name, r in runs:
            if r["family"] != fam:
                continue
            key = name.split("_", 1)[1]
            c = colors.get(key)
            ls = "--" if "pasgd" in key else "-"
            lab = None if name in labelled else r["label"]
            labelled.add(name)
            ax.plot(r["time"], r["loss"], color=c, ls=ls, lw=1.1, alpha=0.75, label=lab)
            if r.get("t_target"):
                ax.plot([r["t_target"]], [r["target"]], "o", color=c, ms=4)
            if "adacomm" in key:
                tt = r["tau_t"] + [r["time"][-1]]
                bx.step(tt, r["tau"] + [r["tau"][-1]], where="post", color=c, alpha=0.75,
                        label=lab)
        lr = args.lr_plain if fam == "plain" else args.lr
        ax.set_title(f"{FAMILIES[fam]}, lr {lr:g}, seeds {','.join(map(str, by_seed))} "
                     f"(dots: sync's final loss of the seed reached)", fontsize=9)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        bx.set_yscale("log", base=2)
        bx.grid(alpha=0.3)
        bx.set_xlabel("wall-clock training time (s)")
    axes[0, 0].set_ylabel("training loss F (averaged over workers)")
    axes[1, 0].set_ylabel("AdaComm tau")
    fig.suptitle(f"{args.np} workers, {args.model} {' '.join(args.model_arg)}, emulated link "
                 f"{args.bandwidth * 8 / 1e9:g} Gbit/s + {args.latency * 1e6:g} us/message, "
                 f"T0 = {args.interval:g} s", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _x(v, fmt="{:.2f}x"):
    return fmt.format(v) if v is not None else "-"


def table(by_seed: dict, summ: dict, loads: list[float]) -> str:
    seeds = list(by_seed)
    head = (f"Seeds {','.join(map(str, seeds))}; load average (1 min, read after each run) "
            f"{min(loads):.1f}-{max(loads):.1f}, mean {np.mean(loads):.1f} (2 cores; 4 ranks per "
            f"run, each run alone under the shared lock)." if loads else f"Seeds {seeds}.")
    lines = [head, "",
             "| family | method | reached sync's final F | speed-up to it, mean +- sd | "
             "min-max | per seed | reached 2x sync's final F | speed-up to it, mean +- sd | "
             "steps / worker | averagings | final F | final training loss (whole set) | "
             "test acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summ.values():
        per = " / ".join(_x(v) if v else "not reached" for v in s["speedups"])
        lines.append(f"| {s['family']} | {s['label']} | {s['reached']}/{s['n']} | "
                     f"{_msd(s, '')} | {_range(s)} | {per} | "
                     f"{s['reached2']}/{s['n']} | {_msd(s, '2')} | {s['steps']:.0f} | "
                     f"{s['n_avg']:.0f} | {s['final_F']:.4f} | {s['final_train_loss']:.4f} | "
                     f"{s['test_acc']:.3f} |")
    lines += ["", "Every run:", "",
              "| seed | family | method | steps / worker | averagings | time in averaging (s) | "
              "final F | final training loss (whole set) | test acc | time to sync's final F (s) "
              "| speed-up vs sync | speed-up to 2x sync's final F |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, res in by_seed.items():
        for r in res.values():
            tt = f"{r['t_target']:.1f}" if r.get("t_target") else "not reached"
            lines.append(f"| {seed} | {r['family']} | {r['label']} | {r['total_steps']} | "
                         f"{r['n_avg']} | {r['comm_s']:.1f} | {r['loss'][-1]:.4f} | "
                         f"{r['final_train_loss']:.4f} | {r['test_acc']:.3f} | {tt} | "
                         f"{_x(r.get('speedup'))} | {_x(r.get('speedup2'))} |")
    return "\n".join(lines)


def order(names: list[str], i: int) -> list[str]:
    """The i-th seed's order of the methods: rotated by i, so that no method always runs first."""
    k = i % len(names) if names else 0
    return names[k:] + names[:k]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=4)
    p.add_argument("--budget", type=float, default=30.0, help="training seconds per run")
    p.add_argument("--interval", type=float, default=3.0, help="AdaComm's T0 in seconds")
    p.add_argument("--tau0", default="16")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate, momentum family")
    p.add_argument("--lr-plain", type=float, default=0.2, help="learning rate, plain-SGD family")
    p.add_argument("--model", default="mlp")
    p.add_argument("--model-arg", action="append", default=None)
    p.add_argument("--latency", type=float, default=50e-6)
    p.add_argument("--bandwidth", type=float, default=1.25e8, help="bytes/s (1.25e8 = 1 Gbit/s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    p.add_argument("--analyze", default=None, help="an existing experiment directory: re-tabulate")
    p.add_argument("--continue", dest="cont", default=None,
                   help="an experiment directory cut short: run only what it lacks")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    if args.model_arg is None:
        args.model_arg = ["hidden=512"] if args.model == "mlp" else []
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configurations {unknown} (known: {', '.join(CONFIGS)})")
    seeds = [int(v) for v in args.seeds.split(",") if v]
    os.makedirs(args.out, exist_ok=True)
    meta = {}
    if args.analyze:
        root = args.analyze
        if os.path.exists(os.path.join(root, "meta.json")):
            meta = json.load(open(os.path.join(root, "meta.json")))
    else:
        root = args.cont or os.path.join(REPO, "runs",
                                         f"adacomm-experiment-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(root, exist_ok=True)
        if os.path.exists(os.path.join(root, "meta.json")):
            meta = json.load(open(os.path.join(root, "meta.json")))
        for i, seed in enumerate(seeds):
            todo = [n for n in order(names, i) if f"{seed}/{n}" not in meta]
            if not todo:
                continue
            with mpilock.held():
                for name in todo:
                    print(f"== seed {seed}: {name}", flush=True)
                    meta[f"{seed}/{name}"] = run_one(name, seed, args, root)
                    with open(os.path.join(root, "meta.json"), "w") as f:  # --analyze/--continue
                        json.dump(meta, f, indent=1)
    by_seed = analyze(root, seeds, names, meta)
    summ = summary(by_seed, names)
    plot(by_seed, args, os.path.join(args.out, "loss_vs_time.png"))
    loads = [m["load_after"] for m in meta.values() if "load_after" in m]
    md = table(by_seed, summ, loads)
    made_by = stamp.line()
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(made_by + "\n\n" + md + "\n")
    setup = dict(vars(args), root=os.path.relpath(root, REPO), out=os.path.relpath(args.out, REPO))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"made_by": made_by, "setup": setup, "meta": meta, "summary": summ,
                   "runs": {str(k): v for k, v in by_seed.items()}}, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
