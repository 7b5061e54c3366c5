"""Experiment (not a timed test): the delay sweep of PC-ASGD's Figure 2 in miniature, on a
network and data split of your choice ("Asynchronous Training Schemes in Distributed Learning with
Time Delay"): final test accuracy of PC-, P-, C- and D-ASGD against tau over several seeds.

    python tools/experiment_pcasgd_sweep.py                                    # network 1, iid
    python tools/experiment_pcasgd_sweep.py --delays 0,5,20 --seeds 0,1,2 --steps 300
    python tools/experiment_pcasgd_sweep.py -n 5 --tag net2                    # network 2 (3+2)
    python tools/experiment_pcasgd_sweep.py --shards clusters:0.8 --tag skew   # class mix by cluster

Every run is ``mpiexec -n N python -m mpidist.pcasgd --variant V --seed S --delay TAU ...`` with its
trace in ``<runs>/<variant>-tau<TAU>-s<S>`` (a finished run there is reused, so an interrupted sweep
resumes, and the delays of an earlier sweep with the same --runs are not run again), each launch
holding the machine's shared MPI lock (``--lock``); the numbers come from the traces
(tools/experiment_pcasgd.py reads them). Writes into ``--out`` (default tools/results/pcasgd/):
``sweep[-TAG].md`` (accuracy mean +- std over seeds per variant and tau, and PC's margin over C and
over D-ASGD with the same seed), ``sweep[-TAG].png`` (accuracy against tau, band = std) and
``sweep[-TAG].json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import mpilock  # noqa: E402  (tools/mpilock.py, beside this script)
import stamp  # noqa: E402  (tools/stamp.py, beside this script)

import experiment_pcasgd as one  # noqa: E402  (run_one, read, LABELS: beside this script)

REPO = one.REPO
#: The machine's shared lock for multi-rank launches (the ``flock`` of the repository's rules).
LOCK = mpilock.LOCK


def diverged(run_dir: str) -> bool:
    """Whether the run there stopped as diverged (a non-finite loss: exit 3, trace status)."""
    try:
        return str(one.trace.read_run(run_dir).attrs.get("status", "")).startswith("diverged")
    except (one.trace.TraceError, OSError):
        return False


def run_or_diverge(label, seed, run_args, run_dir, lock=LOCK):
    """``read``'s numbers of the run (made unless already there, under ``lock``), or None if it
    diverged."""
    if not diverged(run_dir):
        try:
            with mpilock.held(lock if not os.path.exists(os.path.join(run_dir, "rank0.h5")) else ""):
                one.run_one(label, seed, run_args, run_dir)
        except SystemExit:
            if not diverged(run_dir):
                raise
            print("  diverged", flush=True)
    return None if diverged(run_dir) else one.read(run_dir, run_args.delay)


def cell(res, seeds, lab, tau) -> str:
    """Mean +- std over the seeds that did not diverge, and how many did."""
    acc = [res[(lab, tau, s)][0].mean() for s in seeds if res[(lab, tau, s)] is not None]
    div = len(seeds) - len(acc)
    if not acc:
        return "diverged"
    return one.pm(acc) + (f" ({div} diverged)" if div else "")


def margin(res, seeds, tau, a: str, b: str):
    """Per seed where neither diverged, variant a's mean final accuracy minus variant b's (same
    seed, same tau); None if a variant was not run."""
    if any((a, tau, s) not in res or (b, tau, s) not in res for s in seeds):
        return None
    return [res[(a, tau, s)][0].mean() - res[(b, tau, s)][0].mean() for s in seeds
            if res[(a, tau, s)] is not None and res[(b, tau, s)] is not None]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="pc,p,c,dasgd",
                    help=f"comma-separated labels ({', '.join(one.LABELS)}); default pc,p,c,dasgd")
    ap.add_argument("--delays", default="0,1,5,10,20,40", help="the values of tau (Figure 2's)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=0, help="steps per run (default: the module's)")
    ap.add_argument("-n", "--np", type=int, default=8,
                    help="agents: 8 = network 1 (3+5), 5 = network 2 (3+2), 20 = network 3")
    ap.add_argument("--shards", default="iid", help="iid or clusters:F (mpidist.pcasgd --shards)")
    ap.add_argument("--extra", default="", help="more flags for every run")
    ap.add_argument("--tag", default="", help="names the output files and the runs' folder")
    ap.add_argument("--runs", default=None, help="default runs/pcasgd_sweep[-TAG]")
    ap.add_argument("--out", default=os.path.join(REPO, "tools", "results", "pcasgd"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--lock", default=LOCK,
                    help=f"file whose flock every launch holds (default {LOCK}; '' for none)")
    a = ap.parse_args(argv)
    sfx = f"-{a.tag}" if a.tag else ""
    a.runs = a.runs or os.path.join(REPO, "runs", f"pcasgd_sweep{sfx}")
    labels, seeds = a.variants.split(","), [int(s) for s in a.seeds.split(",")]
    delays = [int(t) for t in a.delays.split(",")]
    for lab in labels:
        if lab not in one.LABELS:
            ap.error(f"unknown variant label {lab} (known: {', '.join(one.LABELS)})")
    extra = a.extra + ("" if a.shards == "iid" else f" --shards {a.shards}")
    os.makedirs(a.out, exist_ok=True)
    res, t0 = {}, time.time()
    for tau in delays:                  # in the order given (e.g. new values first), tabled sorted
        run_args = argparse.Namespace(np=a.np, delay=tau, steps=a.steps, extra=extra.strip(),
                                      timeout=a.timeout)
        for seed in seeds:
            for lab in labels:
                d = os.path.join(a.runs, f"{lab}-tau{tau}-s{seed}")
                res[(lab, tau, seed)] = run_or_diverge(lab, seed, run_args, d, a.lock)
    print(f"all runs: {time.time() - t0:.0f} s", flush=True)
    delays = sorted(delays)

    cmd = shlex.join(["python", "tools/experiment_pcasgd_sweep.py",
                      *(argv if argv is not None else sys.argv[1:])])
    head = "| variant | " + " | ".join(f"tau = {t}" for t in delays) + " |"
    lines = [f"`{cmd}` ({a.np} agents, shards {a.shards}, {len(seeds)} seeds"
             f"{', ' + str(a.steps) + ' steps' if a.steps else ''}): final test accuracy (%), "
             f"mean +- std over seeds of the agents' average", "", head,
             "|---" * (len(delays) + 1) + "|"]
    for lab in labels:
        lines.append(f"| {one.LABELS[lab][0]} | " + " | ".join(
            cell(res, seeds, lab, t) for t in delays) + " |")
    for a_, b_ in (("pc", "c"), ("pc", "dasgd"), ("p", "dasgd")):
        row = [margin(res, seeds, t, a_, b_) for t in delays]
        if all(m is not None for m in row):
            lines.append(f"| {one.LABELS[a_][0]} minus {one.LABELS[b_][0].split(' ')[0]} | "
                         + " | ".join(one.pm(m) if m else "-" for m in row) + " |")
    lines += ["", "Margins: per seed, the difference of the two variants' mean final accuracy "
              "(same seed, same tau), then mean +- std over seeds; a diverged run (a non-finite "
              "loss, mpidist.pcasgd's exit 3) is counted, not averaged, and its seed is left out "
              "of the margins."]
    with open(os.path.join(a.out, f"sweep{sfx}.md"), "w") as f:
        f.write(stamp.line() + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for lab in labels:
        acc = [[res[(lab, t, s)][0].mean() for s in seeds if res[(lab, t, s)] is not None]
               for t in delays]
        mean = np.array([np.mean(v) if v else np.nan for v in acc])
        std = np.array([np.std(v) if v else np.nan for v in acc])
        line, = ax.plot(delays, mean, marker="o", label=one.LABELS[lab][0])
        ax.fill_between(delays, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set(xlabel="delay tau (steps)", ylabel="final test accuracy (%), mean of the agents",
           title=f"{a.np} agents, shards {a.shards}, {len(seeds)} seeds (band: std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, f"sweep{sfx}.png"), dpi=120)
    out = {f"{lab}-tau{t}-s{s}": ("diverged" if res[(lab, t, s)] is None else
                                  dict(final=res[(lab, t, s)][0].tolist(),
                                       predicting=res[(lab, t, s)][4],
                                       wall_seconds=res[(lab, t, s)][5]))
           for lab in labels for t in delays for s in seeds}
    with open(os.path.join(a.out, f"sweep{sfx}.json"), "w") as f:
        json.dump(dict(made_by=stamp.line(), command=cmd, agents=a.np, shards=a.shards,
                       delays=delays, seeds=seeds, runs=out), f, indent=1)
    print(f"wrote {a.out}/sweep{sfx}.md, sweep{sfx}.png, sweep{sfx}.json")


if __name__ == "__main__":
    main()
