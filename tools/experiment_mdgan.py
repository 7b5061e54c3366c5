"""Experiment (not a timed test): MD-GAN with k = 1 and k = floor(log2 N), FL-GAN and a
standalone GAN on the same data, scored against iterations (the paper's Figure 2), and MD-GAN with
a worker crash every I/N iterations (Figure 3).

    python tools/experiment_mdgan.py                       # digits, N = 4, seeds 0,1
    python tools/experiment_mdgan.py --iterations 3000 --seeds 0,1,2
    python tools/experiment_mdgan.py --mnist-root ~/data  # + MNIST, MLP networks

Every configuration and seed is one ``mpiexec -n <ranks> python -m mpidist.mdgan ... --seed S
--trace-dir <runs>/<data>/<label>-s<S>`` (a finished run found there is reused, so an interrupted
experiment resumes). The
script then reads the HDF5 traces (rank 0's ``score``, ``fid``, ``live_workers``; every rank's
``/comm`` rows) and writes into ``--out`` (default tools/results/mdgan/):

- ``score.png`` and ``fid.png``: the classifier score ("MNIST score") and the FID on the scoring
  classifier's features against iterations, one curve per configuration (the mean over seeds,
  the band spans the seeds) (Figure 2);
- ``crash.png``: score and FID of MD-GAN (k = floor(log2 N)) with and without crashes and of the
  standalone GANs, with the number of live workers (Figure 3);
- ``table.md``: final and best scores (mean over seeds [min, max]), wall time, and the bytes that
  crossed the network measured in the trace next to Table III's formulas; ``results.json``: the
  numbers.

Configurations (labels): mdgan-k1, mdgan-klog2, flgan, standalone-b (batch b), standalone-Nb
(batch N b: as many real samples per iteration as all MD-GAN workers together), mdgan-klog2-crash.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from mpidist import mdgan, trace  # noqa: E402
from mpidist.models import count_parameters  # noqa: E402
from mpidist.models import gan as gan_models  # noqa: E402


def configs(a) -> dict:
    """label -> (number of ranks, mpidist.mdgan arguments, curve style)."""
    n, b = a.workers, a.batch
    return {
        "mdgan-k1": (n + 1, ["-k", "1", "-b", str(b)], dict(color="tab:blue")),
        "mdgan-klog2": (n + 1, ["-k", "log2", "-b", str(b)], dict(color="tab:green")),
        "flgan": (n + 1, ["--mode", "flgan", "-b", str(b)], dict(color="tab:red")),
        "standalone-b": (1, ["--mode", "standalone", "-b", str(b)],
                         dict(color="0.4", ls="--")),
        "standalone-Nb": (1, ["--mode", "standalone", "-b", str(n * b)],
                          dict(color="0.1", ls=":")),
        "mdgan-klog2-crash": (n + 1, ["-k", "log2", "-b", str(b), "--crash-every"],
                              dict(color="tab:olive", lw=2)),
    }


def run_one(label, nranks, extra, run_dir, log_dir, timeout) -> float:
    """Run ``mpiexec -n nranks python -m mpidist.mdgan extra`` into run_dir (or reuse a finished
    run there); returns the launch's wall seconds (NaN when reused)."""
    if os.path.exists(os.path.join(run_dir, "rank0.h5")):
        try:
            if trace.read_run(run_dir).attrs.get("status") == "ok":
                print(f"{label}: reusing {run_dir}", flush=True)
                return float("nan")
        except trace.TraceError:
            pass
        raise SystemExit(f"{run_dir} holds an unfinished run; remove it and start again")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec, "-n", str(nranks), sys.executable, "-m", "mpidist.mdgan", *extra,
           "--trace-dir", run_dir, "--quiet"]
    print(f"{label}: {' '.join(cmd[3:])}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    with open(os.path.join(log_dir, f"{label}.log"), "w") as log:
        p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                           timeout=timeout)
    if p.returncode:
        raise SystemExit(f"{label} failed (exit {p.returncode}); see {log_dir}/{label}.log")
    print(f"{label}: done in {time.monotonic() - t0:.0f} s", flush=True)
    return time.monotonic() - t0


def read(run_dir) -> dict:
    t = trace.read_run(run_dir)
    r0 = t.ranks[0]
    out = {}
    for name in ("score", "fid", "live_workers", "score_real", "fid_real"):
        s, tt, v = r0.metric(name)
        out[name] = (s.astype(int).tolist(), v.tolist(), tt.tolist())
    c = t.comm
    args = t.attrs["args"]
    iters = int(args.get("steps", args.get("iterations", 0)))  # -I ("iterations" in older traces)
    sent = c[(c["op"] == b"send")]
    by_channel = {}
    for ch in set(sent["channel"].tolist()):
        by_channel[ch.decode()] = int(sent["nbytes"][sent["channel"] == ch].sum())
    out["bytes_sent"] = by_channel
    # bytes per (worker, iteration) or per (worker, round) and per swap, measured in the trace
    per = {}
    for ch, who in (("gen_batches", 0), ("feedback", None), ("swap", None), ("fl_params", 0)):
        rows = sent[sent["channel"] == ch.encode()]
        if who is not None:
            rows = rows[rows["rank"] == who]
            pairs = len({(int(a), int(b)) for a, b in zip(rows["step"], rows["peer"])})
        else:
            pairs = len(rows)
        if pairs:
            per[ch] = int(rows["nbytes"].sum()) / pairs
    out["bytes_per"] = per
    out["iterations"] = iters
    out["world"] = int(t.attrs["world_size"])
    out["wall"] = float(max(r.attrs.get("end_time", 0) for r in t.ranks) - t.attrs["start_time"])
    out["args"] = t.attrs["args"]
    return out


def curve(runs: list, metric: str):
    """(steps, mean, min, max) of a metric over the seeds' runs (same steps in every run)."""
    steps = runs[0][metric][0]
    vals = np.array([r[metric][1] for r in runs], float)
    return np.array(steps), vals.mean(0), vals.min(0), vals.max(0)


def plots(res: dict, cfg: dict, out: str, tag: str, n: int) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    real = next(iter(res.values()))[0]
    nseeds = len(next(iter(res.values())))

    def draw(ax, label, metric):
        st, mean, lo, hi = curve(res[label], metric)
        line, = ax.plot(st, mean, label=label, **cfg[label][2])
        if nseeds > 1:
            ax.fill_between(st, lo, hi, color=line.get_color(), alpha=0.12, lw=0)

    seeds = f" ({nseeds} seeds)" if nseeds > 1 else ""
    for metric, ylabel, better in (("score", "classifier score (MNIST-score-like)", "higher"),
                                   ("fid", "FID on the classifier's features", "lower")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label in res:
            if not label.endswith("crash"):
                draw(ax, label, metric)
        ref = real[f"{metric}_real"][1][0]
        ax.axhline(ref, color="k", lw=0.8, alpha=0.5)
        ax.text(0.99, ref, " real images", transform=ax.get_yaxis_transform(), ha="right",
                va="bottom" if metric == "score" else "top", fontsize=8)
        if metric == "fid":
            ax.set_yscale("log")
        ax.set_xlabel("iteration (generator updates)")
        ax.set_ylabel(f"{ylabel} ({better} is better)")
        ax.set_title(f"{tag}: N = {n} workers{seeds} (Figure 2 in miniature)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(out, f"{metric}{'' if tag == 'digits' else '-' + tag}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    if "mdgan-klog2-crash" in res:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric in zip(axes, ("score", "fid")):
            for label in ("mdgan-klog2-crash", "mdgan-klog2", "standalone-b", "standalone-Nb"):
                if label in res:
                    draw(ax, label, metric)
            if metric == "fid":
                ax.set_yscale("log")
            ax.set_xlabel("iteration")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            tw = ax.twinx()
            s_, v, _ = res["mdgan-klog2-crash"][0]["live_workers"]
            tw.step(s_, v, where="post", color="tab:olive", alpha=0.35, lw=1)
            tw.set_ylabel("live workers (crash run)", color="tab:olive")
            tw.set_ylim(-0.2, n + 0.5)
            ax.legend(fontsize=8, loc="center right")
        fig.suptitle(f"{tag}: MD-GAN with a worker crash every I/N iterations{seeds} (Figure 3)")
        fig.tight_layout()
        p = os.path.join(out, f"crash{'' if tag == 'digits' else '-' + tag}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def table(res: dict, a, tag: str, shape, arch: str) -> str:
    G, D = gan_models.build_pair(arch, shape, 10)
    w, theta = count_parameters(G), count_parameters(D)
    d = int(np.prod(shape))
    n = a.workers
    k_log = max(1, int(math.floor(math.log2(n))))
    any_r = next(iter(res.values()))[0]
    nseeds = len(next(iter(res.values())))
    c3m = mdgan.table3_bytes("mdgan", n, a.batch, d, theta, w)
    c3f = mdgan.table3_bytes("flgan", n, a.batch, d, theta, w)
    lines = [f"### {tag}: N = {n} workers, b = {a.batch}, I = {a.iterations}, "
             f"{nseeds} seed(s) {a.seeds} "
             f"({arch} networks: |w| = {w:,}, |theta| = {theta:,}, d = {d})", "",
             "| configuration | final score | best score | final FID | best FID | wall (s) | "
             "bytes measured in the trace (Table III) |",
             "|---|---|---|---|---|---|---|"]
    def stat(values, fmt):
        v = np.asarray(values, float)
        return fmt.format(v.mean()) + (f" [{fmt.format(v.min())}, {fmt.format(v.max())}]"
                                       if len(v) > 1 else "")

    for label, runs in res.items():
        r = runs[0]
        per = r["bytes_per"]
        if label.startswith("mdgan"):
            note = (f"C->W {per.get('gen_batches', 0):,.0f} ({c3m['server_to_worker']:,}), "
                    f"W->C {per.get('feedback', 0):,.0f} ({c3m['worker_to_server']:,}) per "
                    f"worker and iteration; swap {per.get('swap', 0):,.0f} "
                    f"({c3m['swap_per_worker']:,}) per worker")
        elif label == "flgan":
            note = (f"{per.get('fl_params', 0):,.0f} ({c3f['server_to_worker']:,}) per worker "
                    "and round, each way")
        else:
            note = "none (one process)"
        live = ""
        if r["live_workers"][1] and label.startswith("mdgan"):
            live = f" (live at the end: {int(r['live_workers'][1][-1])})"
        lines.append(
            f"| {label}{live} | {stat([x['score'][1][-1] for x in runs], '{:.2f}')} | "
            f"{stat([max(x['score'][1]) for x in runs], '{:.2f}')} | "
            f"{stat([x['fid'][1][-1] for x in runs], '{:.1f}')} | "
            f"{stat([min(x['fid'][1]) for x in runs], '{:.1f}')} | "
            f"{np.mean([x['wall'] for x in runs]):.0f} | {note} |")
    n_ref = min(500, 359 if tag == "digits" else 10000)
    lines += ["", f"Real images (500 training images against the {n_ref} test images of the FID "
              f"reference): score {any_r['score_real'][1][0]:.2f}, FID "
              f"{any_r['fid_real'][1][0]:.2f}. k = floor(log2 {n}) = {k_log}."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=1200, help="I of every run (default 1200)")
    p.add_argument("--workers", type=int, default=4, help="N (default 4: mpiexec -n 5)")
    p.add_argument("--batch", type=int, default=32, help="b (default 32)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--only", default=None, help="comma-separated labels to run")
    p.add_argument("--mnist-root", default=None,
                   help="folder with MNIST in torchvision's layout: also run on MNIST (MLP)")
    p.add_argument("--runs", default=os.path.join(REPO, "runs", "experiment-mdgan"),
                   help="where the run directories go (reused when finished)")
    p.add_argument("--out", default=os.path.join(REPO, "tools", "results", "mdgan"))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    cfg = configs(a)
    labels = a.only.split(",") if a.only else list(cfg)
    datasets = [("digits", ["--arch", "small"], "small", (1, 16, 16))]
    if a.mnist_root:
        if os.path.isdir(os.path.join(a.mnist_root, "MNIST", "raw")):
            datasets.append(("mnist", ["--data", "mnist", "--data-root", a.mnist_root,
                                       "--arch", "mlp"], "mlp", (1, 28, 28)))
        else:
            print(f"no MNIST files under {a.mnist_root}/MNIST/raw: MNIST skipped", flush=True)
    summary, md = {}, []
    for tag, data_args, arch, shape in datasets:
        runs = os.path.join(a.runs, tag)
        logs = os.path.join(runs, "logs")
        os.makedirs(logs, exist_ok=True)
        res = {label: [] for label in labels}
        for seed in [int(x) for x in a.seeds.split(",")]:
            for label in labels:
                nranks, extra, _ = cfg[label]
                extra = [*extra, *data_args, "-I", str(a.iterations), "--seed", str(seed)]
                run_dir = os.path.join(runs, f"{label}-s{seed}")
                run_one(f"{label}-s{seed}", nranks, extra, run_dir, logs, a.timeout)
                res[label].append(read(run_dir))
        figs = plots(res, cfg, a.out, tag, a.workers)
        md.append(table(res, a, tag, shape, arch))
        summary[tag] = {"figures": [os.path.relpath(f, REPO) for f in figs],
                        "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "args"}
                                     for r in v] for k, v in res.items()}}
    cmd = "python tools/experiment_mdgan.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(stamp.line(["tools/experiment_mdgan.py", *cmd.split()[2:]]) + "\n\n"
                + "\n\n".join(md) + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"made_by": stamp.line(), **summary}, f, indent=1)
    print("\n\n".join(md))
    print(f"\nwritten: {a.out}/table.md, results.json, "
          + ", ".join(os.path.basename(f) for t in summary.values() for f in t["figures"]))


if __name__ == "__main__":
    main()
