"""What a run's trace says: communication tables, figures, comparisons and a Perfetto timeline.

The library behind ``tools/mpidist_trace.py`` (``summary``, ``plot``, ``compare``, ``export``),
importable from notebooks. It reads traces only through :mod:`mpidist.trace` (``read_run`` /
``read_rank``, which raise ``TraceError`` with one clear line) and knows nothing of any algorithm:
channels, peers and metric names come from the files, so it works on the traces of every mpidist
algorithm, and on the files of a killed run (rows up to each rank's last flush, status "running").

Conventions used in every table and figure (README, "The trace tools"):

- A *message group* is the rows of one (rank, op, peer, channel). ``in_flight_s`` sums each row's
  ``t_done - t_post`` (posting to completion as the rank saw it, so a receive posted early also
  counts the time it waited for its sender), and ``bandwidth`` is ``bytes / in_flight_s``: the
  average rate one message of the group saw.
- *Traffic* counts each point-to-point byte once, at its sender (``send`` rows), plus every rank's
  buffer of a collective (``allreduce``, ``bcast``, ...); ``recv`` rows mirror sends and are not
  added again.
- Times are seconds since the run's t = 0 (all ranks start their clocks after one barrier).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import trace as _trace
from .trace import TraceError


# ----------------------------------------------------------------------------------- loading

@dataclass
class Run:
    """A loaded run directory plus what the reader noticed about it (``notes``)."""
    path: str
    trace: _trace.RunTrace
    notes: list = field(default_factory=list)
    label: str = ""

    @property
    def ranks(self) -> list:
        return self.trace.ranks

    @property
    def attrs(self) -> dict:
        return self.trace.attrs

    @property
    def algorithm(self) -> str:
        return str(self.attrs.get("algorithm", "?"))

    @property
    def args(self) -> dict:
        a = self.attrs.get("args", {})
        return a if isinstance(a, dict) else {}

    @property
    def world_size(self) -> int:
        return int(self.attrs.get("world_size", len(self.ranks)))

    @property
    def comm(self) -> np.ndarray:
        if not hasattr(self, "_comm"):
            self._comm = self.trace.comm if self.ranks else np.zeros(0)
        return self._comm

    @property
    def metrics(self) -> np.ndarray:
        if not hasattr(self, "_metrics"):
            self._metrics = self.trace.metrics if self.ranks else np.zeros(0)
        return self._metrics

    @property
    def duration(self) -> float:
        """Seconds from t = 0 to the last thing any rank recorded (or closed its file)."""
        end = 0.0
        for r in self.ranks:
            if len(r.comm):
                end = max(end, float(r.comm["t_done"].max()))
            if len(r.metrics):
                end = max(end, float(r.metrics["t"].max()))
            if "end_time" in r.attrs and "start_time" in r.attrs:
                end = max(end, float(r.attrs["end_time"]) - float(r.attrs["start_time"]))
        return end

    @property
    def steps(self) -> int:
        """Number of steps seen (1 + the largest step of any row)."""
        s = -1
        if len(self.comm):
            s = max(s, int(self.comm["step"].max()))
        if len(self.metrics):
            s = max(s, int(self.metrics["step"].max()))
        return s + 1

    @property
    def status(self) -> str:
        st = {str(r.attrs.get("status", "?")) for r in self.ranks}
        if st == {"ok"} and len(self.ranks) == self.world_size:
            return "ok"
        if any(s.startswith("failed") for s in st):
            return "failed"
        if "running" in st:
            return "killed or still running"
        return ", ".join(sorted(st))


def load(path: str, skip_bad: bool = False, label: str | None = None) -> Run:
    """Read a run directory (or one rank file). Unreadable rank files raise TraceError, or with
    ``skip_bad`` are left out and named in ``notes``. Notes also name missing ranks and ranks whose
    file was never closed (a killed job)."""
    notes = []
    if skip_bad and os.path.isdir(path):
        files = sorted((f for f in os.listdir(path) if f.startswith("rank") and f.endswith(".h5")),
                       key=lambda f: int(f[4:-3]) if f[4:-3].isdigit() else 1 << 30)
        ranks = []
        for f in files:
            try:
                ranks.append(_trace.read_rank(os.path.join(path, f)))
            except TraceError as e:
                notes.append(f"skipped: {e}")
        if not ranks:
            raise TraceError(f"{path}: no readable rank<k>.h5 file"
                             + (f" ({notes[0][9:]})" if notes else "; not an mpidist run"))
        rt = _trace.RunTrace(path, ranks)
    else:
        rt = _trace.read_run(path)
    run = Run(path.rstrip("/") or path, rt, notes)
    ws = run.world_size
    have = {r.rank for r in rt.ranks}
    missing = sorted(set(range(ws)) - have)
    if missing and os.path.isdir(path):
        notes.append(f"world size {ws} but no readable file for rank(s) "
                     f"{', '.join(map(str, missing))}")
    for r in rt.ranks:
        st = str(r.attrs.get("status", "?"))
        if st == "running":
            last = max([0.0] + ([float(r.comm["t_done"].max())] if len(r.comm) else [])
                       + ([float(r.metrics["t"].max())] if len(r.metrics) else []))
            notes.append(f"rank {r.rank}: file never closed (status 'running'): the job was "
                         f"killed or is still running; rows up to its last flush (t = {last:.2f} s)")
        elif st != "ok":
            notes.append(f"rank {r.rank}: status '{st}'")
    resumed = sorted({r.attrs["resumed_at_step"] for r in rt.ranks if "resumed_at_step" in r.attrs})
    if resumed:
        notes.append(f"resumed from a checkpoint of step {', '.join(map(str, resumed))}: later rows "
                     "of the interrupted attempt were dropped, the clock continues")
    run.label = label or os.path.basename(run.path) or run.path
    return run


# ----------------------------------------------------------------------------------- formatting

def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1000 or unit == "TiB":  # 1000 not 1024: '1e+03 KiB' reads badly
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def fmt_rate(bps: float) -> str:
    if not np.isfinite(bps):
        return "-"
    return fmt_bytes(bps) + "/s"


def _dec(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def text_table(rows: list, columns: list, formats: dict | None = None) -> str:
    """Rows (dicts) as an aligned text table; numbers right-aligned."""
    formats = formats or {}
    cells = [[formats.get(c, str)(r[c]) if c in formats else _cell(r[c]) for c in columns]
             for r in rows]
    width = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(columns)]
    num = [all(isinstance(r[c], (int, float, np.integer, np.floating)) for r in rows)
           for c in columns]
    def line(vals):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, width, num)).rstrip()
    out = [line(columns), line(["-" * w for w in width])]
    out += [line(x) for x in cells]
    return "\n".join(out)


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------------- tables

COMM_COLUMNS = ["rank", "op", "peer", "channel", "messages", "bytes", "in_flight_s",
                "mean_ms", "bandwidth_Bps", "first_step", "last_step"]


def comm_table(run: Run) -> list[dict]:
    """One row per (rank, op, peer, channel): messages, bytes, seconds in flight (summed), mean
    milliseconds per message, bandwidth (bytes / seconds in flight), first and last step."""
    c = run.comm
    if not len(c):
        return []
    key = np.zeros(len(c), dtype=[("rank", "<i4"), ("op", "S12"), ("peer", "<i4"),
                                  ("channel", "S24")])
    for f in key.dtype.names:
        key[f] = c[f]
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    dur = np.maximum(c["t_done"] - c["t_post"], 0.0)
    count = np.bincount(inv, minlength=len(uniq))
    nbytes = np.bincount(inv, weights=c["nbytes"].astype(float), minlength=len(uniq))
    fly = np.bincount(inv, weights=dur, minlength=len(uniq))
    first = np.full(len(uniq), np.iinfo(np.int64).max)
    last = np.full(len(uniq), -1)
    np.minimum.at(first, inv, c["step"])
    np.maximum.at(last, inv, c["step"])
    rows = []
    for i, k in enumerate(uniq):
        rows.append({"rank": int(k["rank"]), "op": _dec(k["op"]),
                     "peer": int(k["peer"]) if k["peer"] >= 0 else "all",
                     "channel": _dec(k["channel"]), "messages": int(count[i]),
                     "bytes": int(nbytes[i]), "in_flight_s": float(fly[i]),
                     "mean_ms": 1e3 * float(fly[i]) / count[i],
                     "bandwidth_Bps": (float(nbytes[i] / fly[i]) if fly[i] > 0 and nbytes[i] > 0
                                       else float("nan")),
                     "first_step": int(first[i]), "last_step": int(last[i])})
    return rows


def traffic_mask(c: np.ndarray) -> np.ndarray:
    """Rows that count as traffic: sends and collectives (receives mirror sends)."""
    return c["op"] != b"recv" if len(c) else np.zeros(0, bool)


def channel_totals(run: Run) -> list[dict]:
    """Per channel: messages and bytes of traffic (sends + collective buffers), receives, seconds
    in flight (all rows), and the steps it was used on."""
    c = run.comm
    out = []
    for ch in channels(run):
        rows = c[c["channel"] == ch.encode()]
        t = rows[traffic_mask(rows)]
        dur = np.maximum(rows["t_done"] - rows["t_post"], 0.0)
        out.append({"channel": ch, "ops": ",".join(sorted({_dec(o) for o in rows["op"]})),
                    "messages": int(len(t)), "bytes": int(t["nbytes"].sum()),
                    "recvs": int((rows["op"] == b"recv").sum()),
                    "in_flight_s": float(dur.sum()),
                    "steps_used": int(len(np.unique(rows["step"])))})
    return out


def run_totals(run: Run) -> dict:
    """One run in one row: ranks, status, duration, steps, messages and bytes of traffic
    (p2p and collective), bytes per step, and each metric's last value (mean over the ranks
    that logged it)."""
    c = run.comm
    t = c[traffic_mask(c)] if len(c) else c
    p2p = t[t["op"] == b"send"] if len(t) else t
    coll = t[t["op"] != b"send"] if len(t) else t
    total = int(t["nbytes"].sum()) if len(t) else 0
    steps = run.steps
    row = {"run": run.label, "algorithm": run.algorithm, "ranks": len(run.ranks),
           "world_size": run.world_size, "status": run.status,
           "duration_s": round(run.duration, 4), "steps": steps,
           "messages": int(len(t)), "bytes": total,
           "p2p_bytes": int(p2p["nbytes"].sum()) if len(p2p) else 0,
           "collective_bytes": int(coll["nbytes"].sum()) if len(coll) else 0,
           "bytes_per_step": total / steps if steps > 0 else float("nan"),
           "in_flight_s": float(np.maximum(c["t_done"] - c["t_post"], 0).sum()) if len(c) else 0.0}
    for name in metric_names(run):
        row[f"last_{name}"] = last_metric(run, name)
    return row


def channels(run: Run) -> list[str]:
    c = run.comm
    return sorted({_dec(x) for x in np.unique(c["channel"])}) if len(c) else []


def metric_names(run: Run) -> list[str]:
    m = run.metrics
    if not len(m):
        return []
    names, first = np.unique(m["name"], return_index=True)
    return [_dec(n) for n in names[np.argsort(first)]]  # in the order first logged


def last_metric(run: Run, name: str) -> float:
    vals = []
    for r in run.ranks:
        _, _, v = r.metric(name)
        if len(v):
            vals.append(float(v[-1]))
    return float(np.mean(vals)) if vals else float("nan")


def metric_series(run: Run, name: str):
    """[(rank, steps, times, values)] for the ranks that logged ``name``."""
    out = []
    for r in run.ranks:
        s, t, v = r.metric(name)
        if len(v):
            out.append((r.rank, s, t, v))
    return out


def mean_metric(run: Run, name: str):
    """(steps, times, values): the metric averaged over the ranks that logged it, per step
    (time: the latest rank's time at that step); in a killed run only up to the earliest last
    step of the ranks whose file was never closed."""
    s_all, t_all, v_all = [], [], []
    status = {r.rank: str(r.attrs.get("status", "?")) for r in run.ranks}
    series = metric_series(run, name)
    for _, s, t, v in series:
        s_all.append(s), t_all.append(t), v_all.append(v)
    if not s_all:
        return np.zeros(0, int), np.zeros(0), np.zeros(0)
    s, t, v = np.concatenate(s_all), np.concatenate(t_all), np.concatenate(v_all)
    # a killed run: files end at each rank's last flush; past the earliest such end the mean
    # would jump as ranks drop out, so it stops there
    ends = [int(ss.max()) for rk, ss, _, _ in series if status[rk] == "running"]
    if ends:
        keep = s <= min(ends)
        s, t, v = s[keep], t[keep], v[keep]
    steps, inv = np.unique(s, return_inverse=True)
    n = np.bincount(inv)
    mean = np.bincount(inv, weights=v) / n
    tmax = np.full(len(steps), -np.inf)
    np.maximum.at(tmax, inv, t)
    return steps, tmax, mean


def summary_text(run: Run) -> str:
    """The ``summary`` command's text: header, notes, the per-rank table, per-channel totals,
    and the run's totals."""
    tot = run_totals(run)
    a = run.attrs
    lines = [f"run        {run.path}",
             f"algorithm  {run.algorithm}    ranks {len(run.ranks)}/{run.world_size}    "
             f"status {run.status}",
             f"host       {a.get('hostname', '?')}    device {a.get('device', '?')}    "
             f"comm path {a.get('comm_path', '?')}",
             f"duration   {tot['duration_s']:.3f} s    steps {tot['steps']}"]
    args = {k: v for k, v in run.args.items() if k not in ("trace_dir",)}
    if args:
        import textwrap
        lines += textwrap.wrap(" ".join(f"{k}={v}" for k, v in args.items()), 100,
                               initial_indent="args       ", subsequent_indent=" " * 11,
                               break_on_hyphens=False)
    for n in run.notes:
        lines.append(f"note       {n}")
    rows = comm_table(run)
    lines.append("")
    lines.append("communication per rank, op, peer and channel (in_flight_s: summed posting-to-"
                 "completion time; bandwidth = bytes / in_flight_s)")
    if rows:
        lines.append(text_table(rows, COMM_COLUMNS, {
            "bytes": fmt_bytes, "bandwidth_Bps": fmt_rate,
            "in_flight_s": lambda x: f"{x:.4f}", "mean_ms": lambda x: f"{x:.3f}"}))
    else:
        lines.append("(no messages recorded)")
    ch = channel_totals(run)
    if ch:
        lines.append("")
        lines.append("per channel (messages/bytes: sends + collective buffers, each byte once)")
        lines.append(text_table(ch, ["channel", "ops", "messages", "bytes", "recvs",
                                     "in_flight_s", "steps_used"],
                                {"bytes": fmt_bytes, "in_flight_s": lambda x: f"{x:.4f}"}))
    lines.append("")
    lines.append("run totals")
    lines.append(f"  messages {tot['messages']}    traffic {fmt_bytes(tot['bytes'])} "
                 f"(point-to-point {fmt_bytes(tot['p2p_bytes'])}, collective "
                 f"{fmt_bytes(tot['collective_bytes'])})    per step "
                 f"{fmt_bytes(tot['bytes_per_step']) if np.isfinite(tot['bytes_per_step']) else '-'}"
                 f"    time in flight {tot['in_flight_s']:.3f} s")
    last = {k[5:]: v for k, v in tot.items() if k.startswith("last_")}
    if last:
        lines.append("  last metric values (mean over the ranks that logged them): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    return "\n".join(lines)


def summary_csv(run: Run) -> str:
    """CSV of the per-rank table, then per-channel totals (rank 'all') and the run's total
    (rank 'all', channel '*'); bytes and seconds unformatted."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run"] + COMM_COLUMNS)
    for r in comm_table(run):
        w.writerow([run.label] + [r[c] for c in COMM_COLUMNS])
    for r in channel_totals(run):
        fly = r["in_flight_s"]
        w.writerow([run.label, "all", r["ops"], "all", r["channel"], r["messages"], r["bytes"],
                    fly, "", "", "", ""])
    t = run_totals(run)
    w.writerow([run.label, "all", "*", "all", "*", t["messages"], t["bytes"], t["in_flight_s"],
                "", "", 0, t["steps"] - 1])
    return buf.getvalue()


def dict_csv(rows: list[dict]) -> str:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- figures

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


def byte_unit(vmax: float) -> tuple[float, str]:
    """(divisor, name) of the binary unit that shows ``vmax`` as a number below 1000."""
    for k, unit in enumerate(("B", "KiB", "MiB", "GiB", "TiB")):
        if vmax < 1000 * 1024 ** k or unit == "TiB":
            return float(1024 ** k), unit
    return float(1024 ** 4), "TiB"


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


def traffic_matrix(run: Run):
    """(matrix[src, dst] of point-to-point bytes sent, collective bytes per rank)."""
    n = max(run.world_size, max((r.rank for r in run.ranks), default=0) + 1)
    m = np.zeros((n, n))
    coll = np.zeros(n)
    c = run.comm
    if len(c):
        s = c[(c["op"] == b"send") & (c["peer"] >= 0) & (c["peer"] < n)]  # a peer in the world
        np.add.at(m, (s["rank"], s["peer"]), s["nbytes"].astype(float))
        k = c[(c["op"] != b"send") & (c["op"] != b"recv")]
        np.add.at(coll, k["rank"], k["nbytes"].astype(float))
    return m, coll


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
    """One row per rank; a bar per operation in flight (t_post..t_done) coloured by channel, in
    as many lanes as the rank had operations overlapping; blank stretches are compute (or idle).
    Thin grey ticks mark where each step's first operation was posted."""
    plt = _plt()
    from matplotlib.patches import Patch
    c = run.comm
    colors = channel_colors(channels(run))
    if window is None:
        window = (0.0, max(run.duration, 1e-6))
    lo, hi = window
    span = hi - lo
    minw = span / 1500  # narrower bars are widened to stay visible
    ranks = sorted(r.rank for r in run.ranks)
    fig_h = min(1.2 + 0.75 * len(ranks), 12)
    shown = int(((c["t_done"] >= lo) & (c["t_post"] <= hi)).sum()) if len(c) else 0
    edges = shown <= 60 * max(len(ranks), 1)  # thin white edges part neighbouring bars when few
    fig, ax = plt.subplots(figsize=(12, fig_h))
    ax.grid(False)
    ax.grid(True, axis="x", alpha=0.3)
    for row, rk in enumerate(ranks):
        r = c[(c["rank"] == rk) & (c["t_done"] >= lo) & (c["t_post"] <= hi)] if len(c) else c
        ax.axhspan(row - 0.45, row + 0.45, color="#f4f4f4" if row % 2 else "#fbfbfb", zorder=0)
        if not len(r):
            continue
        lane, nl = _lanes(r["t_post"], r["t_done"])
        h = 0.78 / nl
        is_recv = r["op"] == b"recv"
        for ch in colors:
            sel = r["channel"] == ch.encode()
            for k in range(nl):
                for recv in (False, True):
                    s = sel & (lane == k) & (is_recv == recv)
                    if not s.any():
                        continue
                    x0 = r["t_post"][s]
                    w = np.maximum(r["t_done"][s] - x0, minw)
                    ax.broken_barh(list(zip(x0, w)), (row - 0.36 + k * h, h * 0.9),
                                   facecolors=colors[ch], alpha=0.5 if recv else 1.0,
                                   edgecolors="white" if edges else "none", linewidth=0.6,
                                   zorder=2)
        # step starts: first post of each step on this rank
        order = np.argsort(r["t_post"], kind="stable")
        rs = r[order]
        steps, first = np.unique(rs["step"], return_index=True)
        ts = rs["t_post"][first]
        if len(ts) <= 120:
            ax.vlines(ts, row - 0.45, row - 0.38, color="#333333", lw=0.9, zorder=3)
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
    ax.set_title(f"Messages in flight per rank (post to completion; lanes: overlapping "
                 f"operations; blank: compute/idle; ticks: step starts)\n{_title(run)}"
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


# ----------------------------------------------------------------------------------- compare

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
    nm = len(metrics)
    fig = plt.figure(figsize=(12, 3.6 + 3.0 * nm))
    gs = fig.add_gridspec(1 + nm, 2, height_ratios=[1.2] + [1] * nm)
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
            if not len(v):
                continue
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _channel_bytes(run: Run, ch: str) -> float:
    c = run.comm
    if not len(c):
        return 0.0
    r = c[(c["channel"] == ch.encode()) & traffic_mask(c)]
    return float(r["nbytes"].sum())


# ----------------------------------------------------------------------------------- export

def _us(t: float) -> float:
    return round(float(t) * 1e6, 3)


def chrome_trace(run: Run) -> dict:
    """The run as a Chrome trace-event / Perfetto JSON object.

    - one process per rank (``pid`` = rank, named "rank k (host)");
    - one thread (track) per peer and direction ("send to 3", "recv from 1") and per collective
      op ("allreduce"), split into numbered lanes where operations overlap, so that complete
      events ("X", ``name`` = channel) on one track never overlap;
    - flow events ("s" -> "f", ``bp`` "e") from each send to its receive, paired by (sender,
      receiver, tag, channel) in order of posting (MPI's non-overtaking rule); unmatched rows (a
      killed run) get no flow;
    - counters ("C") per rank: bytes in flight (send/recv/collective) and each metric's value.
    Times are microseconds since the run's t = 0.
    """
    c = run.comm
    ev: list[dict] = []
    host = {r.rank: r.attrs.get("hostname", "?") for r in run.ranks}
    for rk in sorted(host):
        ev.append({"ph": "M", "name": "process_name", "pid": rk, "tid": 0, "ts": 0,
                   "args": {"name": f"rank {rk} ({host[rk]})"}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": rk, "tid": 0, "ts": 0,
                   "args": {"sort_index": rk}})
    slice_of = np.zeros(len(c), dtype=[("tid", "<i8"), ("mid", "<f8")])
    for rk in sorted(host):
        idx = np.nonzero(c["rank"] == rk)[0] if len(c) else np.zeros(0, int)
        if not len(idx):
            continue
        rows = c[idx]
        ops = np.array([_dec(o) for o in rows["op"]])
        tracks = {}
        for i, (op, peer) in enumerate(zip(ops, rows["peer"])):
            if op == "send":
                name, order = f"send to {peer}", (1, int(peer), 0)
            elif op == "recv":
                name, order = f"recv from {peer}", (1, int(peer), 1)
            else:
                name, order = op, (0, 0, 0)
            tracks.setdefault((order, name), []).append(i)
        tid = 1
        for (order, name), members in sorted(tracks.items()):
            m = np.array(members)
            lane, nl = _lanes(rows["t_post"][m], rows["t_done"][m], cap=1 << 30)
            for k in range(nl):
                ev.append({"ph": "M", "name": "thread_name", "pid": rk, "tid": tid + k, "ts": 0,
                           "args": {"name": name if k == 0 else f"{name} #{k + 1}"}})
                ev.append({"ph": "M", "name": "thread_sort_index", "pid": rk, "tid": tid + k,
                           "ts": 0, "args": {"sort_index": tid + k}})
            lane = [int(x) for x in lane]
            for j, i in enumerate(m):
                row = rows[i]
                t0, t1 = _us(row["t_post"]), _us(max(row["t_done"], row["t_post"]))
                ev.append({"ph": "X", "name": _dec(row["channel"]), "cat": ops[i],
                           "ts": t0, "dur": round(t1 - t0, 3), "pid": rk, "tid": tid + lane[j],
                           "args": {"step": int(row["step"]), "bytes": int(row["nbytes"]),
                                    "peer": int(row["peer"]), "tag": int(row["tag"])}})
                slice_of[idx[i]] = (tid + lane[j], round((t0 + t1) / 2, 3))
            tid += nl
        # bytes in flight counter
        kinds = np.where(ops == "send", 0, np.where(ops == "recv", 1, 2))
        times = np.concatenate([rows["t_post"], rows["t_done"]])
        delta = np.concatenate([rows["nbytes"], -rows["nbytes"]]).astype(np.int64)
        kk = np.concatenate([kinds, kinds])
        order = np.lexsort((delta > 0, times))  # at equal times, ends before starts
        level = np.zeros(3, np.int64)
        for o in order:
            level[kk[o]] += delta[o]
            ev.append({"ph": "C", "name": "bytes in flight", "pid": rk, "tid": 0,
                       "ts": _us(times[o]),
                       "args": {"send": int(level[0]), "recv": int(level[1]),
                                "collective": int(level[2])}})
    # metrics as counters
    for r in run.ranks:
        for name in metric_names(run):
            s, t, v = r.metric(name)
            for ti, vi in zip(t, v):
                if np.isfinite(vi):
                    ev.append({"ph": "C", "name": name, "pid": r.rank, "tid": 0, "ts": _us(ti),
                               "args": {name: float(vi)}})
    # flows: send k of (src, dst, tag, channel) in posting order -> receive k of the same key
    n_flows = 0
    if len(c):
        sends = np.nonzero(c["op"] == b"send")[0]
        recvs = np.nonzero(c["op"] == b"recv")[0]
        def groups(ix, src_field, dst_field):
            g = {}
            for i in ix[np.argsort(c["t_post"][ix], kind="stable")]:
                key = (int(c[src_field][i]), int(c[dst_field][i]), int(c["tag"][i]),
                       bytes(c["channel"][i]))
                g.setdefault(key, []).append(i)
            return g
        gs, gr = groups(sends, "rank", "peer"), groups(recvs, "peer", "rank")
        for key, si in gs.items():
            ri = gr.get(key, [])
            for a, b in zip(si, ri):
                n_flows += 1
                ch = _dec(c["channel"][a])
                ev.append({"ph": "s", "id": n_flows, "name": ch, "cat": "message",
                           "ts": float(slice_of["mid"][a]), "pid": int(c["rank"][a]),
                           "tid": int(slice_of["tid"][a])})
                ev.append({"ph": "f", "bp": "e", "id": n_flows, "name": ch, "cat": "message",
                           "ts": float(slice_of["mid"][b]), "pid": int(c["rank"][b]),
                           "tid": int(slice_of["tid"][b])})
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "otherData": {"mpidist_run": run.path, "algorithm": run.algorithm,
                          "world_size": run.world_size, "status": run.status,
                          "flows": n_flows, "args": json.dumps(run.args, default=str)}}


def check_chrome_trace(obj: dict) -> list[str]:
    """Problems with a trace-event JSON object (empty list: none): every event has ph, ts, pid and
    tid; "X" durations are >= 0; X slices on one track never partly overlap; each flow id has one
    "s" and one "f", each inside a slice of its track."""
    problems = []
    evs = obj.get("traceEvents")
    if not isinstance(evs, list):
        return ["no traceEvents list"]
    slices: dict = {}
    flows: dict = {}
    for i, e in enumerate(evs):
        for k in ("ph", "ts", "pid", "tid"):
            if k not in e:
                problems.append(f"event {i} has no '{k}': {e}")
        ph = e.get("ph")
        if ph == "X":
            if not (e.get("dur", -1) >= 0):
                problems.append(f"event {i}: negative or missing dur: {e}")
            slices.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
        elif ph in ("s", "f"):
            flows.setdefault(e.get("id"), {}).setdefault(ph, []).append(e)
    for k, v in slices.items():
        v.sort()
        for (a0, a1), (b0, b1) in zip(v, v[1:]):
            if b0 < a1 and b1 > a1:
                problems.append(f"track {k}: slices partly overlap ({a0}-{a1}, {b0}-{b1})")
                break
    for fid, d in flows.items():
        if len(d.get("s", [])) != 1 or len(d.get("f", [])) != 1:
            problems.append(f"flow {fid}: {len(d.get('s', []))} starts, {len(d.get('f', []))} ends")
            continue
        for e in (d["s"][0], d["f"][0]):
            sl = slices.get((e["pid"], e["tid"]), [])
            if not any(a <= e["ts"] <= b for a, b in sl):
                problems.append(f"flow {fid}: '{e['ph']}' at {e['ts']} is in no slice of "
                                f"pid {e['pid']} tid {e['tid']}")
    return problems
