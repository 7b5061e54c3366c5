"""AdaComm experiment: training loss against wall-clock time for fully synchronous SGD, PASGD with
fixed tau and AdaComm (with and without block momentum) over an emulated cluster network.

    python tools/experiment_adacomm.py                      # runs everything (a few minutes)
    python tools/experiment_adacomm.py --analyze runs/adacomm-experiment-<stamp>   # re-plot only

Each configuration is one ``mpiexec -n 4 python -m mpidist.adacomm`` run with the same wall-clock
budget and the link model of mpidist.comm set to a cluster-like network (default 1 Gbit/s and
50 us per message: an allreduce of n bytes over p ranks costs 2(p-1) L + 2(p-1)/p n / B). The
runs' traces give, per averaging step, the training loss F averaged over workers and the agreed
elapsed training time. Output in tools/results/adacomm/: ``loss_vs_time.png`` (one plot, all
methods, and the tau schedules), ``table.md`` (time each method needs to reach the training loss
synchronous SGD ends with, speed-up over sync) and ``results.json``.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mpidist.trace import read_run  # noqa: E402

OUT = os.path.join(REPO, "tools", "results", "adacomm")

# Two families, as in the paper: plain SGD (Fig. 5: no momentum anywhere) and momentum SGD
# (Fig. 7: sync with momentum 0.9 against local momentum 0.9 restarted at every averaging plus
# block momentum 0.3). name -> (label, family, flags)
PLAIN = ["--momentum", "0", "--global-momentum", "0"]
CONFIGS = {
    "sgd_sync": ("sync SGD", "plain", ["--method", "sync", *PLAIN]),
    "sgd_pasgd4": ("PASGD tau=4", "plain", ["--method", "pasgd", "--tau", "4", *PLAIN]),
    "sgd_pasgd16": ("PASGD tau=16", "plain", ["--method", "pasgd", "--tau", "16", *PLAIN]),
    "sgd_adacomm": ("AdaComm", "plain", ["--method", "adacomm", *PLAIN]),
    "mom_sync": ("sync SGD, momentum 0.9", "momentum", ["--method", "sync", "--momentum", "0.9"]),
    "mom_pasgd16": ("PASGD tau=16 + block momentum", "momentum",
                    ["--method", "pasgd", "--tau", "16"]),
    "mom_adacomm": ("AdaComm + block momentum 0.3", "momentum", ["--method", "adacomm"]),
    "mom_adacomm_nobm": ("AdaComm, no block momentum", "momentum",
                         ["--method", "adacomm", "--global-momentum", "0"]),
}
FAMILIES = {"plain": "plain SGD (paper Fig. 5)", "momentum": "momentum (paper Fig. 7)"}


def run_one(name: str, flags: list[str], args, root: str) -> dict:
    lr = args.lr_plain if CONFIGS[name][1] == "plain" else args.lr
    d = os.path.join(root, name)
    cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(args.np),
           sys.executable, "-m", "mpidist.adacomm", "--trace-dir", d, "--quiet",
           "--time-budget", str(args.budget), "--interval", str(args.interval),
           "--tau0", str(args.tau0), "--lr", str(lr), "--model", args.model,
           *sum((["--model-arg", a] for a in args.model_arg), []),
           "--link-latency", str(args.latency), "--link-bandwidth", str(args.bandwidth),
           "--seed", str(args.seed), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    load0 = os.getloadavg()[0]
    t = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=args.budget * 4 + 240)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    print(p.stdout.strip(), flush=True)
    return {"cmd": " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd),
            "load_before": load0, "load_after": os.getloadavg()[0], "wall": time.time() - t,
            "stdout": p.stdout}


def analyze(root: str, names, meta: dict, args) -> dict:
    res = {}
    for name in names:
        d = os.path.join(root, name)
        r0 = read_run(d).ranks[0]
        steps, _, loss = r0.metric("train_loss")
        _, _, t = r0.metric("train_time")
        final = {k: float(r0.metric(k)[2][-1]) for k in ("final_train_loss", "test_acc")}
        taus = r0.metric("tau")
        comm = r0.comm
        avg = comm[np.isin(comm["channel"], [b"params", b"grads"])]
        comm_s = float(np.sum(avg["t_done"] - avg["t_post"]))
        res[name] = dict(label=CONFIGS[name][0], family=CONFIGS[name][1], steps=steps.tolist(),
                         loss=loss.tolist(), time=t.tolist(), tau_t=[0.0] + r0.metric("interval_time")[2].tolist(),
                         tau=taus[2].tolist(), n_avg=int(len(avg)), comm_s=comm_s,
                         total_steps=int(steps[-1]) + 1, **final, **meta.get(name, {}))
    for fam in FAMILIES:
        sync = [n for n in res if CONFIGS[n][1] == fam and "sync" in n]
        if not sync:
            continue
        target = res[sync[0]]["loss"][-1]
        for name, r in res.items():
            if r["family"] != fam:
                continue
            hit = [tt for tt, ll in zip(r["time"], r["loss"]) if ll <= target]
            r["target"], r["t_target"] = target, (hit[0] if hit else None)
        ts = res[sync[0]]["t_target"]
        for r in res.values():
            if r["family"] == fam:
                r["speedup"] = ts / r["t_target"] if r["t_target"] else None
    return res


def plot(res: dict, args, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fams = [f for f in FAMILIES if any(r["family"] == f for r in res.values())]
    fig, axes = plt.subplots(2, len(fams), figsize=(6.5 * len(fams), 7.5), sharex=True,
                             sharey="row", squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.2]})
    colors = {"sync": "k", "pasgd4": "tab:blue", "pasgd16": "tab:cyan", "adacomm": "tab:red",
              "adacomm_nobm": "tab:orange"}
    for j, fam in enumerate(fams):
        ax, bx = axes[0, j], axes[1, j]
        for name, r in res.items():
            if r["family"] != fam:
                continue
            key = name.split("_", 1)[1]
            c = colors.get(key)
            ls = "--" if "pasgd" in key else "-"
            ax.plot(r["time"], r["loss"], color=c, ls=ls, lw=1.4, label=r["label"])
            if r.get("t_target"):
                ax.plot([r["t_target"]], [r["target"]], "o", color=c, ms=5)
            if "adacomm" in key:
                tt = r["tau_t"] + [r["time"][-1]]
                bx.step(tt, r["tau"] + [r["tau"][-1]], where="post", color=c, label=r["label"])
        tgt = [r["target"] for r in res.values() if r["family"] == fam and "target" in r]
        if tgt:
            ax.axhline(tgt[0], color="gray", lw=0.8, ls=":", label=f"sync's final loss {tgt[0]:.3f}")
        lr = args.lr_plain if fam == "plain" else args.lr
        ax.set_title(f"{FAMILIES[fam]}, lr {lr:g}", fontsize=10)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
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


def table(res: dict) -> str:
    lines = ["| family | method | steps / worker | averagings | time in averaging (s) | final F | "
             "final training loss (whole set) | test acc | time to sync's final F (s) | "
             "speed-up vs sync |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        tt = f"{r['t_target']:.1f}" if r.get("t_target") else "not reached"
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"| {r['family']} | {r['label']} | {r['total_steps']} | {r['n_avg']} | "
                     f"{r['comm_s']:.1f} | {r['loss'][-1]:.4f} | {r['final_train_loss']:.4f} | "
                     f"{r['test_acc']:.3f} | "
                     f"{tt} | {sp} |")
    return "\n".join(lines)


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    p.add_argument("--analyze", default=None, help="an existing experiment directory: re-plot")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    if args.model_arg is None:
        args.model_arg = ["hidden=512"] if args.model == "mlp" else []
    names = [n for n in args.only.split(",") if n]
    os.makedirs(args.out, exist_ok=True)
    meta = {}
    if args.analyze:
        root = args.analyze
        old = os.path.join(args.out, "results.json")
        if os.path.exists(old):
            meta = {k: {m: v[m] for m in ("cmd", "load_before", "load_after", "wall") if m in v}
                    for k, v in json.load(open(old)).get("runs", {}).items()}
        names = [n for n in names if os.path.isdir(os.path.join(root, n))]
    else:
        root = os.path.join(REPO, "runs", f"adacomm-experiment-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(root)
        for name in names:
            print(f"== {name}", flush=True)
            meta[name] = run_one(name, CONFIGS[name][2], args, root)
            meta[name].pop("stdout")
    res = analyze(root, names, meta, args)
    plot(res, args, os.path.join(args.out, "loss_vs_time.png"))
    md = table(res)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(stamp.line() + "\n\n" + md + "\n")
    setup = dict(vars(args), root=os.path.relpath(root, REPO), out=os.path.relpath(args.out, REPO))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"made_by": stamp.line(), "setup": setup, "runs": res}, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
