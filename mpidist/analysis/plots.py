"""The ``plot`` command's figures of one run (matplotlib, Agg backend, PNG files): traffic per
channel against steps, the rank x rank traffic heat map, the timeline of messages in flight per
rank (and a zoomed window of a long run), and the metrics against steps and wall clock.

Also the helpers other figures share: the matplotlib set-up (``_plt``), one colour per channel
(:func:`channel_colors`) and the lane layout of overlapping operations (``_lanes``, also used by
the Perfetto export).
"""
from __future__ import annotations

import math
import os

import numpy as np

from .formatting import byte_unit, fmt_bytes
from .loading import Run
from .tables import channels, mean_metric, metric_names, metric_series, traffic_mask, traffic_matrix


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False,
                         "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8})
    return plt


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5", "#393b79",
            "#637939", "#8c6d31", "#843c39", "#7b4173"]
_KNOWN = {"params": 0, "grads": 1, "feedback": 2, "swap": 3, "disc_grads": 4, "gen_batches": 9,
          "control": 7, "barrier": 6}


def channel_colors(names) -> dict:
    """A distinct colour per channel of one figure; the usual channel names ("params", "grads",
    "feedback", "swap", "disc_grads", ...) always get the same colour, the others the free ones
    in name order."""
    names = sorted(set(names))
    out = {n: _PALETTE[_KNOWN[n]] for n in names if n in _KNOWN}
    free = [c for c in _PALETTE if c not in out.values()]
    for n in names:
        if n not in out:
            out[n] = free.pop(0) if free else _PALETTE[sum(map(ord, n)) % len(_PALETTE)]
    return {n: out[n] for n in names}


def _title(run: Run) -> str:
    return f"{run.algorithm}, {len(run.ranks)} ranks — {run.label}" + (
        "  [killed/incomplete]" if run.status not in ("ok",) else "")


def plot_bytes_per_step(run: Run, path: str) -> str:
    """Traffic per channel against steps (binned when steps are many), and cumulative."""
    plt = _plt()
    c = run.comm
    t = c[traffic_mask(c)] if len(c) else c
    s0 = min(0, int(t["step"].min())) if len(t) else 0  # rows posted before step 0 (set-up)
    steps = max(run.steps - s0, 1)
    bin_ = max(1, int(math.ceil(steps / 200)))
    nb = (steps + bin_ - 1) // bin_
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    colors = channel_colors(channels(run))
    x = np.arange(nb) * bin_ + s0
    per_ch = {}
    for ch in channels(run):
        r = t[t["channel"] == ch.encode()]
        if len(r):
            per_ch[ch] = np.bincount((r["step"] - s0) // bin_, weights=r["nbytes"].astype(float),
                                     minlength=nb)[:nb]
    total = sum(per_ch.values()) if per_ch else np.zeros(nb)
    d1, u1 = byte_unit(float(np.max(total, initial=0)))
    d2, u2 = byte_unit(float(sum(p.sum() for p in per_ch.values())) if per_ch else 0.0)
    bottom = np.zeros(nb)
    for ch, per in per_ch.items():
        ax1.bar(x, per / d1, width=bin_ * 0.9, bottom=bottom / d1, align="edge",
                color=colors[ch], label=ch)
        bottom += per
        ax2.plot(x + bin_, np.cumsum(per) / d2, color=colors[ch], label=ch, lw=1.8)
    if len(per_ch) > 1:
        ax2.plot(x + bin_, np.cumsum(total) / d2, color="black", lw=1.2, ls="--", label="total")
    ax1.set_ylabel(f"{u1} per step" if bin_ == 1 else f"{u1} per {bin_} steps")
    ax1.set_title(f"Traffic per channel (sends + collective buffers, all ranks)\n{_title(run)}")
    ax2.set_ylabel(f"cumulative {u2}")
    ax2.set_xlabel("step")
    if per_ch:
        ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="channel")
        ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax1.text(0.5, 0.5, "no messages recorded", transform=ax1.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_heatmap(run: Run, path: str) -> str:
    """Rank x rank heat map of point-to-point bytes (sender row, receiver column) and, beside it,
    each rank's collective bytes on the same colour scale."""
    plt = _plt()
    from matplotlib.colors import LogNorm
    m, coll = traffic_matrix(run)
    n = len(m)
    vmax = max(m.max(), coll.max(), 1.0)
    pos = np.concatenate([m[m > 0], coll[coll > 0]])
    vmin = max(pos.min() / 2 if len(pos) else 1.0, vmax / 1e6)
    norm = LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))
    size = min(11, 4 + 0.45 * n)
    fig, (ax, axc) = plt.subplots(1, 2, figsize=(size + 2.4, size * 0.85),
                                  gridspec_kw={"width_ratios": [n, 0.9], "wspace": 0.08})
    cmap = plt.get_cmap("viridis").with_extremes(bad="#f0f0f0")
    im = ax.imshow(np.ma.masked_equal(m, 0), cmap=cmap, norm=norm, aspect="equal")
    axc.imshow(np.ma.masked_equal(coll[:, None], 0), cmap=cmap, norm=norm, aspect="auto")
    for a in (ax, axc):
        a.grid(False)
        a.set_yticks(range(n))
    ax.set_xticks(range(n))
    ax.set_xlabel("receiver rank")
    ax.set_ylabel("sender rank")
    ax.set_title("point-to-point bytes sent")
    axc.set_xticks([0])
    axc.set_xticklabels(["all"])
    axc.set_yticklabels([])
    axc.set_title("collective", fontsize=9)
    if n <= 12:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, fmt_bytes(v).replace(" ", "\n"), ha="center", va="center",
                        fontsize=7 if n > 6 else 8,
                        color="white" if norm(v) < 0.6 else "black")
        for i, v in enumerate(coll):
            if v:
                axc.text(0, i, fmt_bytes(v).replace(" ", "\n"), ha="center", va="center",
                         fontsize=7, color="white" if norm(v) < 0.6 else "black")
    cb = fig.colorbar(im, ax=[ax, axc], shrink=0.8, pad=0.03)
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator
    ticks = [m * 1024.0 ** k for k in range(6) for m in (1, 4, 16, 64, 256)]
    ticks = [t for t in ticks if norm.vmin <= t <= norm.vmax]
    if len(ticks) >= 2:  # binary sizes (1 KiB, 4 KiB, ... 1 MiB) rather than powers of ten
        cb.set_ticks(ticks[:: max(1, len(ticks) // 6)])
        cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v)))
    cb.ax.yaxis.set_minor_formatter(NullFormatter())
    cb.set_label("bytes (log scale; grey: none)")
    fig.suptitle(f"Traffic between ranks — {_title(run)}", fontsize=10, y=1.0)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _lanes(t0: np.ndarray, t1: np.ndarray, cap: int = 6) -> tuple[np.ndarray, int]:
    """Greedy lane per interval (sorted by start) so that bars of one lane never overlap; at most
    ``cap`` lanes (beyond that, the lane that frees first is reused)."""
    order = np.argsort(t0, kind="stable")
    lane = np.zeros(len(t0), int)
    ends: list[float] = []
    for i in order:
        for k, e in enumerate(ends):
            if e <= t0[i]:
                lane[i], ends[k] = k, t1[i]
                break
        else:
            if len(ends) < cap:
                lane[i] = len(ends)
                ends.append(t1[i])
            else:
                k = int(np.argmin(ends))
                lane[i], ends[k] = k, max(ends[k], t1[i])
    return lane, max(len(ends), 1)


def plot_timeline(run: Run, path: str, window: tuple | None = None) -> str:
    """One row per rank; a bar per span the rank was BLOCKED waiting for an operation
    (t_wait..t_done) coloured by channel, in as many lanes as waits overlapped (one waitall over
    several operations); blank stretches are compute, messages in flight meanwhile included (the
    summary's overlap). Operations completed without blocking draw no bar, so that receives posted
    many messages ahead do not cover the lanes. Traces older than format 3 (no t_wait) draw each
    operation from posting to completion instead, as the title says. Thin grey ticks mark where
    each step's first operation was posted."""
    plt = _plt()
    from matplotlib.patches import Patch
    from .blocking import records_wait
    blocked_mode = records_wait(run)
    c = run.comm
    colors = channel_colors(channels(run))
    if window is None:
        window = (0.0, max(run.duration, 1e-6))
    lo, hi = window
    span = hi - lo
    minw = span / 1500  # narrower bars are widened to stay visible
    ranks = sorted(r.rank for r in run.ranks)
    fig_h = min(1.2 + 0.75 * len(ranks), 12)
    if blocked_mode and len(c):  # bars from the start of the wait (rows never waited on: none)
        c = c[np.isfinite(c["t_wait"])]
        start = np.clip(c["t_wait"], c["t_post"], np.maximum(c["t_done"], c["t_post"]))
    else:
        start = c["t_post"] if len(c) else np.zeros(0)
    shown = int(((c["t_done"] >= lo) & (start <= hi)).sum()) if len(c) else 0
    edges = shown <= 60 * max(len(ranks), 1)  # thin white edges part neighbouring bars when few
    fig, ax = plt.subplots(figsize=(12, fig_h))
    ax.grid(False)
    ax.grid(True, axis="x", alpha=0.3)
    for row, rk in enumerate(ranks):
        sel_r = (c["rank"] == rk) & (c["t_done"] >= lo) & (start <= hi) if len(c) else None
        r = c[sel_r] if len(c) else c
        r_start = start[sel_r] if len(c) else start
        ax.axhspan(row - 0.45, row + 0.45, color="#f4f4f4" if row % 2 else "#fbfbfb", zorder=0)
        all_r = run.comm[run.comm["rank"] == rk] if len(run.comm) else run.comm
        all_r = all_r[(all_r["t_post"] >= lo) & (all_r["t_post"] <= hi)] if len(all_r) else all_r
        if len(all_r):  # step starts: first post of each step on this rank
            order = np.argsort(all_r["t_post"], kind="stable")
            rs = all_r[order]
            _, first = np.unique(rs["step"], return_index=True)
            ts = rs["t_post"][first]
            if len(ts) <= 120:
                ax.vlines(ts, row - 0.45, row - 0.38, color="#333333", lw=0.9, zorder=3)
        if not len(r):
            continue
        lane, nl = _lanes(r_start, r["t_done"])
        h = 0.78 / nl
        is_recv = r["op"] == b"recv"
        for ch in colors:
            sel = r["channel"] == ch.encode()
            for k in range(nl):
                for recv in (False, True):
                    s = sel & (lane == k) & (is_recv == recv)
                    if not s.any():
                        continue
                    x0 = r_start[s]
                    w = np.maximum(r["t_done"][s] - x0, minw)
                    ax.broken_barh(list(zip(x0, w)), (row - 0.36 + k * h, h * 0.9),
                                   facecolors=colors[ch], alpha=0.5 if recv else 1.0,
                                   edgecolors="white" if edges else "none", linewidth=0.6,
                                   zorder=2)
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([f"rank {k}" for k in ranks])
    ax.set_ylim(len(ranks) - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("seconds since the run's start")
    handles = [Patch(color=col, label=ch) for ch, col in colors.items()]
    handles += [Patch(color="none", label=""),
                Patch(color="#555555", label="send, collective"),
                Patch(color="#555555", alpha=0.5, label="recv")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="channel",
              frameon=False)
    what = ("Time blocked per rank (bar: waiting for a message, t_wait to completion; blank: "
            "compute, messages may be in flight; ticks: step starts)" if blocked_mode else
            "Messages in flight per rank (post to completion: this trace (format < 3) does not "
            "record blocked time; blank: compute/idle; ticks: step starts)")
    ax.set_title(f"{what}\n{_title(run)}"
                 + (f", window {lo:.3f}-{hi:.3f} s" if window != (0.0, max(run.duration, 1e-6))
                    else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def zoom_window(run: Run, per_rank: int = 10) -> tuple | None:
    """A window in the middle of the run holding about ``per_rank`` operations of each rank (a
    readable timeline of a long run), or None when the whole run is not much longer than that."""
    c = run.comm
    want = per_rank * max(len(run.ranks), 1)
    if len(c) < 3 * want:
        return None
    order = np.argsort(c["t_post"], kind="stable")
    mid = len(order) // 2
    a = c[order[mid - want // 2: mid + want // 2]]
    lo, hi = float(a["t_post"].min()), float(a["t_done"].max())
    pad = 0.03 * (hi - lo)
    return max(0.0, lo - pad), hi + pad


def plot_metrics(run: Run, path: str, names: list | None = None, x: str = "step") -> str | None:
    """Every metric in its own panel (a grid, three across) against steps (``x="step"``) or seconds
    since start (``x="time"``): one line per rank that logged it, or the mean and the min-max band
    when more than 8 ranks did. Integer-valued metrics (tau, a period, a choice) are drawn as steps
    (the value holds until the next one)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    names = names or metric_names(run)
    if not names:
        return None
    ncol = min(3, len(names))
    nrow = (len(names) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol + 0.6, 2.9 * nrow + 0.9),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    by_step = x == "step"
    m = run.metrics
    if by_step:  # every panel spans the run, so that a value logged once sits in context
        lo, hi = float(m["step"].min()), float(m["step"].max())
    else:
        lo, hi = 0.0, max(float(m["t"].max()), run.duration)
    pad = max(0.03 * (hi - lo), 0.5 if by_step else 1e-3)
    xlim = (lo - pad, hi + pad)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        series = metric_series(run, name)
        ax.set_title(name)
        if not series:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center")
            continue
        few = max(len(v) for *_, v in series) <= 40
        ds = "steps-post" if all(np.all(v == np.round(v)) for *_, v in series) else "default"
        if len(series) > 8:
            s, t, v = mean_metric(run, name)
            vals = [np.interp(s, ss, vv) for _, ss, _, vv in series]
            xs = s if by_step else t
            ax.fill_between(xs, np.min(vals, 0), np.max(vals, 0), color=cmap(0), alpha=0.2,
                            label="min-max of ranks", step="post" if ds != "default" else None)
            ax.plot(xs, v, color=cmap(0), lw=1.5, label=f"mean of {len(series)} ranks",
                    drawstyle=ds)
        else:
            same = all(len(v) == len(series[0][3]) and np.array_equal(s, series[0][1])
                       and np.allclose(v, series[0][3], rtol=1e-9, atol=0)
                       for _, s, _, v in series[1:])
            if same and len(series) > 1:  # e.g. a value every rank computes alike: one line
                rk, s, t, v = series[0]
                series = [(f"ranks {series[0][0]}-{series[-1][0]} (alike)", s, t, v)]
            for rk, s, t, v in series:
                ax.plot(s if by_step else t, v, color=cmap(rk % 10 if isinstance(rk, int) else 0),
                        lw=1.3, label=f"rank {rk}" if isinstance(rk, int) else rk,
                        marker="o" if few else None, ms=3, drawstyle=ds)
        ax.set_xlim(*xlim)
        if by_step:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1:
            ax.legend(loc="best", ncol=2 if len(series) > 4 else 1, fontsize=7)
        else:
            rk = series[0][0]
            ax.set_title(f"{name}  ({f'rank {rk}' if isinstance(rk, int) else rk})")
    for ax in axes[-1]:
        ax.set_xlabel("step" if by_step else "seconds since start")
    for r in range(nrow - 1):  # a panel whose lower neighbour is hidden needs its own label
        for c in range(ncol):
            if not axes[r + 1][c].get_visible() and axes[r][c].get_visible():
                axes[r][c].set_xlabel("step" if by_step else "seconds since start")
    fig.suptitle(f"Metrics against {'steps' if by_step else 'wall clock'} — {_title(run)}",
                 fontsize=10)
    # fixed margins in inches (tight_layout would draw the whole grid once more: slow)
    W, H = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / W, right=1 - 0.2 / W, bottom=0.55 / H, top=1 - 0.72 / H,
                        wspace=0.75 / ((W - 0.95) / ncol - 0.75), hspace=0.75 / (2.9 - 0.75))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_run(run: Run, out_dir: str, metrics: list | None = None,
             window: tuple | None = None) -> list[str]:
    """Every figure of ``plot``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    out = [plot_bytes_per_step(run, os.path.join(out_dir, "bytes_per_step.png")),
           plot_heatmap(run, os.path.join(out_dir, "traffic_heatmap.png")),
           plot_timeline(run, os.path.join(out_dir, "timeline.png"), window)]
    if window is None:
        z = zoom_window(run)
        if z is not None:
            out.append(plot_timeline(run, os.path.join(out_dir, "timeline_zoom.png"), z))
    for x, name in (("step", "metrics_steps.png"), ("time", "metrics_time.png")):
        m = plot_metrics(run, os.path.join(out_dir, name), metrics, x)
        if m:
            out.append(m)
    return out
