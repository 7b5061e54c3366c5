"""Several runs side by side (the ``compare`` command): labels from the arguments that differ,
one table row per run, each algorithm's headline metrics (:data:`HEADLINE`), where the outputs go
by default (next to the runs: :func:`default_out`), and one figure of traffic per run (or against
an argument) and of each metric against wall clock and steps; a metric of which no run logged
more than one value is a table in the figure, not a panel of single dots."""
from __future__ import annotations

import json
import os

import numpy as np

from ..trace import TraceError
from .formatting import byte_unit, fmt_bytes
from .loading import Run
from .plots import _plt, channel_colors
from .tables import channels, last_metric, mean_metric, metric_names, run_totals, traffic_mask


def differing_args(runs: list[Run]) -> list[str]:
    """Names of the arguments every run has and not all with the same value (the natural labels;
    an argument only some algorithms have says nothing about the difference)."""
    skip = {"trace_dir", "quiet", "progress_seconds", "flush_seconds", "comm_timeout", "resume"}
    keys = [k for k in runs[0].args if k not in skip and all(k in r.args for r in runs)]
    return [k for k in keys if len({json.dumps(r.args.get(k), sort_keys=True, default=str)
                                    for r in runs}) > 1]


def auto_labels(runs: list[Run], max_len: int = 48) -> list[str]:
    """One short label per run: the algorithm when they differ, and the differing arguments;
    the run directory's name where that is too long or not unique."""
    keys = differing_args(runs)
    algos = {r.algorithm for r in runs}
    labels = []
    for r in runs:
        parts = [r.algorithm] if len(algos) > 1 else []
        parts += [f"{k}={r.args.get(k)}" for k in keys]
        label = " ".join(parts)
        if not label or len(label) > max_len:
            label = " ".join(([r.algorithm] if len(algos) > 1 else []) + [os.path.basename(r.path)])
        labels.append(label)
    if len(set(labels)) < len(labels):
        labels = [f"{l} ({os.path.basename(r.path)})" for l, r in zip(labels, runs)]
    return labels


# the metrics a reader of each algorithm's paper looks at first (the names its trace logs)
HEADLINE = {"pcasgd": ["loss", "test_acc"], "dpsgd": ["loss", "test_acc"],
            "adacomm": ["train_loss", "test_acc"], "dada": ["target_acc", "d_loss"],
            "mdgan": ["score", "fid"], "demo": ["loss"]}


def default_metrics(runs: list[Run], limit: int = 3) -> list[str]:
    """The metrics ``compare`` shows without ``--metrics``: each run's algorithm's headline
    metrics (:data:`HEADLINE`) that some run logged, in order, at most ``limit``; for algorithms
    without headline metrics, ``loss`` or the first metrics all runs share."""
    out = []
    logged = [set(metric_names(r)) for r in runs]
    for r in runs:
        for m in HEADLINE.get(r.algorithm, []):
            if m not in out and any(m in lg for lg in logged):
                out.append(m)
    if not out:
        common = common_metrics(runs)
        out = ["loss"] if "loss" in common else common
    return out[:limit]


def default_out(runs: list[Run]) -> str:
    """Where ``compare`` writes without ``-o``: the directory that holds the runs (the deepest one
    they share; the first run's parent when they share only the file system's root)."""
    parents = [os.path.dirname(os.path.abspath(r.path if os.path.isdir(r.path)
                                               else os.path.dirname(r.path) or "."))
               for r in runs]
    try:
        common = os.path.commonpath(parents)
    except ValueError:
        common = ""
    if not common or common == os.path.dirname(common):  # "" or "/"
        common = parents[0]
    return common


def single_valued(runs: list[Run], metrics: list[str]) -> list[str]:
    """The metrics of which no run logged more than one value per rank (a final accuracy): shown
    as a table, not as a panel of single dots."""
    return [m for m in metrics if all(len(mean_metric(r, m)[2]) <= 1 for r in runs)]


def _once(runs: list[Run], metrics: list[str]) -> list[str]:
    """The metrics some run logged exactly once: those runs' values go into the table."""
    return [m for m in metrics if any(len(mean_metric(r, m)[2]) == 1 for r in runs)]


def compare_table(runs: list[Run], metrics: list[str]) -> list[dict]:
    rows = []
    for r in runs:
        t = run_totals(r)
        row = {k: t[k] for k in ("run", "algorithm", "ranks", "status", "duration_s", "steps",
                                 "messages", "bytes", "bytes_per_step")}
        for k in differing_args(runs)[:8]:  # as the flag, so that no argument shadows a column
            row["--" + k.replace("_", "-")] = r.args.get(k)
        row["path"] = r.path
        for m in metrics:
            row[f"last_{m}"] = last_metric(r, m)
        rows.append(row)
    return rows


def common_metrics(runs: list[Run]) -> list[str]:
    names = None
    for r in runs:
        n = metric_names(r)
        names = n if names is None else [x for x in names if x in n]
    return names or []


def plot_compare(runs: list[Run], path: str, metrics: list[str], x_arg: str | None = None,
                 smooth: int = 1) -> str:
    """One figure: traffic per run by channel (or total traffic against argument ``x_arg``), then
    for each metric its mean over ranks against wall clock and against steps, one line per run."""
    plt = _plt()
    singles = _once(runs, metrics)  # runs with one value of these: in the table
    metrics = [m for m in metrics if m not in single_valued(runs, metrics)]
    nm = len(metrics)
    tab_h = 0.5 + 0.25 * len(runs) if singles else 0
    fig = plt.figure(figsize=(12, 3.6 + 3.0 * nm + tab_h))
    gs = fig.add_gridspec(1 + nm + bool(singles), 2,
                          height_ratios=[1.2] + [1] * nm + ([tab_h / 3] if singles else []))
    ax0 = fig.add_subplot(gs[0, :])
    chs = sorted({ch for r in runs for ch in channels(r)})
    colors = channel_colors(chs)
    if x_arg:
        xs = [r.args.get(x_arg) for r in runs]
        try:
            xv = np.array([float(v) for v in xs])
        except (TypeError, ValueError):
            raise TraceError(f"--x {x_arg}: not a number in every run ({xs})") from None
        order = np.argsort(xv)
        tot = np.array([run_totals(r)["bytes"] for r in runs], float)
        div, unit = byte_unit(float(tot.max(initial=0)))
        ax0.plot(xv[order], tot[order] / div, "o-", color="black", lw=2, label="total")
        for ch in chs:
            per = np.array([_channel_bytes(r, ch) for r in runs], float)
            if per.any():
                ax0.plot(xv[order], per[order] / div, "o--", color=colors[ch], label=ch)
        ax0.set_xlabel(x_arg)
        ax0.set_ylabel(f"traffic ({unit})")
        ax0.set_title(f"Communication volume against {x_arg}")
        if np.all(xv > 0) and xv.max() / xv.min() >= 8:
            ax0.set_xscale("log")
        ux = np.unique(xv)
        if len(ux) <= 12:
            ax0.set_xticks(ux)
            ax0.set_xticklabels([f"{v:g}" for v in ux])
            ax0.minorticks_off()
        if tot.max() > 0 and tot.min() > 0 and tot.max() / tot.min() >= 30:
            ax0.set_yscale("log")
        for xi, yi in zip(xv, tot):
            ax0.annotate(fmt_bytes(yi), (xi, yi / div), textcoords="offset points",
                         xytext=(0, 6), ha="center", fontsize=7)
        ax0.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        xpos = np.arange(len(runs))
        bottom = np.zeros(len(runs))
        div, unit = byte_unit(max(run_totals(r)["bytes"] for r in runs))
        for ch in chs:
            per = np.array([_channel_bytes(r, ch) for r in runs], float)
            ax0.bar(xpos, per / div, bottom=bottom / div, color=colors[ch], label=ch, width=0.6)
            bottom += per
        for xi, yi in zip(xpos, bottom):
            ax0.annotate(fmt_bytes(yi), (xi, yi / div), textcoords="offset points",
                         xytext=(0, 3), ha="center", fontsize=8)
        ax0.set_ylim(0, max(bottom.max() / div, 1e-9) * 1.15)  # room for the labels on top
        ax0.set_xticks(xpos)
        ax0.set_xticklabels([r.label for r in runs], rotation=12 if len(runs) > 3 else 0,
                            ha="right" if len(runs) > 3 else "center")
        ax0.set_ylabel(f"traffic ({unit})")
        ax0.set_title("Communication volume per run (sends + collective buffers, by channel)")
        ax0.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(metrics):
        a1, a2 = fig.add_subplot(gs[1 + i, 0]), fig.add_subplot(gs[1 + i, 1])
        for j, r in enumerate(runs):
            s, t, v = mean_metric(r, m)
            if len(v) <= 1:
                continue  # nothing, or one value: in the table
            if smooth > 1 and len(v) > smooth:
                k = np.ones(smooth) / smooth
                v = np.convolve(v, k, mode="valid")
                s, t = s[smooth - 1:], t[smooth - 1:]
            kw = dict(color=cmap(j % 10), lw=1.5, label=r.label,
                      marker="o" if len(v) <= 30 else None, ms=3)
            a1.plot(t, v, **kw)
            a2.plot(s, v, **kw)
        a1.set_xlabel("seconds since start")
        a2.set_xlabel("step")
        a1.set_ylabel(m + (f" (moving mean of {smooth})" if smooth > 1 else ""))
        a1.set_title(f"{m} against wall clock (mean over ranks)")
        a2.set_title(f"{m} against steps")
        a1.legend(loc="best")
    if singles:  # one value per run: a table, not a panel of dots
        at = fig.add_subplot(gs[1 + nm, :])
        at.axis("off")
        cells = [[_fmt_value(mean_metric(r, m)[2]) for m in singles] for r in runs]
        keep = [i for i, r in enumerate(runs) if any(c != "-" for c in cells[i])]
        cells = [cells[i] for i in keep]
        tb = at.table(cellText=cells, rowLabels=[runs[i].label for i in keep], colLabels=singles,
                      loc="center", cellLoc="right")
        tb.auto_set_font_size(False)
        tb.set_fontsize(8)
        at.set_title("logged once in a run (mean over ranks; '-': drawn above, or not logged)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt_value(v) -> str:
    return f"{float(v[0]):.4g}" if len(v) == 1 else "-"  # (a series is drawn, not tabled)


def _channel_bytes(run: Run, ch: str) -> float:
    c = run.comm
    if not len(c):
        return 0.0
    r = c[(c["channel"] == ch.encode()) & traffic_mask(c)]
    return float(r["nbytes"].sum())
