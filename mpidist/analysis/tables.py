"""The numbers of a run: tables per (rank, op, peer, channel), per channel and per run, the
rank x rank traffic matrix, metric series and their mean over ranks, and the ``summary``
command's text and CSV.

Conventions (see :mod:`mpidist.analysis`): *traffic* counts each point-to-point byte once, at its
sender, plus every rank's buffer of a collective; ``in_flight_s``, ``blocked_s`` and
``overlap_pct`` are measures of unions of intervals (:mod:`.blocking`), never sums of rows.
"""
from __future__ import annotations

import csv
import io

import numpy as np

from .blocking import (NOT_RECORDED, TIME_COLUMNS, group_times, intervals, records_wait,
                       run_time_totals, time_table)
from .formatting import _dec, fmt_bytes, text_table
from .loading import Run


COMM_COLUMNS = ["rank", "op", "peer", "channel", "messages", "bytes", "in_flight_s",
                "blocked_s", "overlap_pct", "first_step", "last_step"]


def comm_table(run: Run) -> list[dict]:
    """One row per (rank, op, peer, channel): messages, bytes, in_flight_s (time at least one of
    the group's operations was in flight: a union, so receives posted ahead count once),
    blocked_s (time the rank was blocked on one of them), overlap_pct (the share of in_flight_s
    during which the rank was not blocked on anything), first and last step (:mod:`.blocking`;
    blocked_s and overlap_pct NaN for traces that do not record t_wait)."""
    c = run.comm
    if not len(c):
        return []
    key = np.zeros(len(c), dtype=[("rank", "<i4"), ("op", "S12"), ("peer", "<i4"),
                                  ("channel", "S24")])
    for f in key.dtype.names:
        key[f] = c[f]
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    count = np.bincount(inv, minlength=len(uniq))
    nbytes = np.bincount(inv, weights=c["nbytes"].astype(float), minlength=len(uniq))
    first = np.full(len(uniq), np.iinfo(np.int64).max)
    last = np.full(len(uniq), -1)
    np.minimum.at(first, inv, c["step"])
    np.maximum.at(last, inv, c["step"])
    rec = {r.rank: getattr(r, "records_wait", True) for r in run.ranks}
    blocked = {rk: intervals(c[c["rank"] == rk])[1] for rk in rec}
    rows = []
    for i, k in enumerate(uniq):
        rk = int(k["rank"])
        g = group_times(c[inv == i], blocked[rk], rec[rk])
        rows.append({"rank": rk, "op": _dec(k["op"]),
                     "peer": int(k["peer"]) if k["peer"] >= 0 else "all",
                     "channel": _dec(k["channel"]), "messages": int(count[i]),
                     "bytes": int(nbytes[i]), **g,
                     "first_step": int(first[i]), "last_step": int(last[i])})
    return rows


def traffic_mask(c: np.ndarray) -> np.ndarray:
    """Rows that count as traffic: sends and collectives (receives mirror sends)."""
    return c["op"] != b"recv" if len(c) else np.zeros(0, bool)


def channel_totals(run: Run) -> list[dict]:
    """Per channel: messages and bytes of traffic (sends + collective buffers), receives,
    blocked_s (summed over ranks: rank-seconds blocked on this channel; NaN if not recorded), and
    the steps it was used on."""
    c = run.comm
    tt = time_table(run)
    out = []
    for ch in channels(run):
        rows = c[c["channel"] == ch.encode()]
        t = rows[traffic_mask(rows)]
        out.append({"channel": ch, "ops": ",".join(sorted({_dec(o) for o in rows["op"]})),
                    "messages": int(len(t)), "bytes": int(t["nbytes"].sum()),
                    "recvs": int((rows["op"] == b"recv").sum()),
                    "blocked_s": float(sum(r["blocked_s"] for r in tt if r["channel"] == ch)),
                    "steps_used": int(len(np.unique(rows["step"])))})
    return out


def run_totals(run: Run) -> dict:
    """One run in one row: ranks, status, duration, steps, messages and bytes of traffic
    (p2p and collective), bytes per step, compute and blocked rank-seconds, blocked_pct and
    overlap_pct over all ranks (:func:`.blocking.run_time_totals`), and each metric's last value
    (mean over the ranks that logged it)."""
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
           "bytes_per_step": total / steps if steps > 0 else float("nan")}
    tt = run_time_totals(run)
    row.update(compute_s=tt["compute_s"], blocked_s=tt["blocked_s"],
               blocked_pct=tt["blocked_pct"], overlap_pct=tt["overlap_pct"])
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
    rec = records_wait(run)
    rows = comm_table(run)
    lines.append("")
    lines.append("communication per rank, op, peer and channel (in_flight_s: time at least one "
                 "was in flight; blocked_s: time the rank waited for one; overlap: in-flight "
                 "time not blocked)")
    if rows:
        lines.append(text_table(rows, COMM_COLUMNS, {
            "bytes": fmt_bytes, "in_flight_s": _secs, "blocked_s": _secs, "overlap_pct": _pct}))
    else:
        lines.append("(no messages recorded)")
    lines.append("")
    lines.append("time per rank and channel (compute = span - blocked; blocked_pct: of the rank's "
                 "span; overlap: share of in-flight time the rank was not blocked)")
    if not rec:
        lines.append(f"  {NOT_RECORDED}")
    tt = time_table(run)
    if tt:
        lines.append(text_table(tt, TIME_COLUMNS, {
            "span_s": _secs, "compute_s": _secs, "blocked_s": _secs, "blocked_pct": _pct,
            "in_flight_s": _secs, "overlap_pct": _pct}))
    ch = channel_totals(run)
    if ch:
        lines.append("")
        lines.append("per channel (messages/bytes: sends + collective buffers, each byte once; "
                     "blocked_s: rank-seconds)")
        lines.append(text_table(ch, ["channel", "ops", "messages", "bytes", "recvs",
                                     "blocked_s", "steps_used"],
                                {"bytes": fmt_bytes, "blocked_s": _secs}))
    lines.append("")
    lines.append("run totals")
    lines.append(f"  messages {tot['messages']}    traffic {fmt_bytes(tot['bytes'])} "
                 f"(point-to-point {fmt_bytes(tot['p2p_bytes'])}, collective "
                 f"{fmt_bytes(tot['collective_bytes'])})    per step "
                 f"{fmt_bytes(tot['bytes_per_step']) if np.isfinite(tot['bytes_per_step']) else '-'}")
    if rec:
        lines.append(f"  compute {tot['compute_s']:.3f} s, blocked {tot['blocked_s']:.3f} s "
                     f"({_pct(tot['blocked_pct'])} of {len(run.ranks)} ranks' time), overlap "
                     f"{_pct(tot['overlap_pct'])} of the time in flight")
    else:
        lines.append(f"  {NOT_RECORDED}")
    last = {k[5:]: v for k, v in tot.items() if k.startswith("last_")}
    if last:
        lines.append("  last metric values (mean over the ranks that logged them): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    return "\n".join(lines)


def _secs(x) -> str:
    return "-" if x != x else f"{x:.4f}"


def _pct(x) -> str:
    return "-" if x != x else f"{x:.1f} %"


def summary_csv(run: Run) -> str:
    """CSV of the per-rank table, then per-channel totals (rank 'all') and the run's total
    (rank 'all', channel '*'); bytes and seconds unformatted."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run"] + COMM_COLUMNS)
    for r in comm_table(run):
        w.writerow([run.label] + [r[c] for c in COMM_COLUMNS])
    for r in channel_totals(run):
        w.writerow([run.label, "all", r["ops"], "all", r["channel"], r["messages"], r["bytes"],
                    "", r["blocked_s"], "", "", ""])
    t = run_totals(run)
    w.writerow([run.label, "all", "*", "all", "*", t["messages"], t["bytes"], "", t["blocked_s"],
                t["overlap_pct"], 0, t["steps"] - 1])
    return buf.getvalue()


def time_csv(run: Run) -> str:
    """CSV of the time per rank and channel (:func:`.blocking.time_table`), seconds unformatted,
    NaN written as empty."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run"] + TIME_COLUMNS)
    for r in time_table(run):
        w.writerow([run.label] + ["" if isinstance(r[c], float) and r[c] != r[c] else r[c]
                                  for c in TIME_COLUMNS])
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
