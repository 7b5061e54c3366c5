"""Where each rank's time went: computing, or blocked waiting for communication, and how much of
its communication was hidden behind compute (the ``summary`` command's "time per rank and
channel" table).

Every trace row (trace format 3 and later) gives two intervals of the rank that recorded it:

- in flight ``F = [t_post, t_done]``: from posting to completion as that rank saw it;
- blocked ``B = [t_wait, t_done]`` where ``t_wait`` is finite (clamped into ``F``), else empty:
  the rank sat in a wait for this operation (the rule is in :mod:`mpidist.handles`).

Receives are often posted many messages ahead (PC-ASGD posts tau+1), and one wait can cover
several operations (``waitall``), so intervals overlap: every figure here is a measure of a UNION
of intervals (``|X|``: total length of the set of instants covered), never a sum of rows.
For one rank, over its span ``S = [min(0, first record), last record]``:

- ``blocked_s = |U B|`` (U over all the rank's rows): time the rank was blocked on communication;
- ``compute_s = |S| - blocked_s``: time it was not (computing, or doing anything else);
- ``in_flight_s = |U F|``: time at least one of its operations was in flight;
- ``overlap_pct = 100 * |U F \\ U B| / |U F|``: the share of that in-flight time during which the
  rank was not blocked, i.e. communication hidden behind compute (100 %: never waited; 0 %: it
  waited whenever something was in flight). Since each ``B`` lies inside its ``F``, this is
  ``100 * (in_flight_s - blocked_s) / in_flight_s``.

For one channel (or one group of rows) of a rank, ``in_flight_s = |U F_ch|``,
``blocked_s = |U B_ch|``, and ``overlap_pct = 100 * |U F_ch \\ U B| / |U F_ch|``: the channel's
in-flight time during which the rank was not blocked on anything (a channel's messages do not
count as hidden while the rank waits for another channel). Channels' blocked times can add up to
more than the rank's: one ``waitall`` over two channels blocks on both at once.

Traces older than format 3 do not record ``t_wait``: their blocked and compute times and overlap
are NaN, and the text says "blocked time not recorded (trace format < 3)".
"""
from __future__ import annotations

import numpy as np

from .formatting import _dec
from .loading import Run

NOT_RECORDED = "blocked time not recorded (trace format < 3)"

TIME_COLUMNS = ["rank", "channel", "messages", "span_s", "compute_s", "blocked_s", "blocked_pct",
                "in_flight_s", "overlap_pct"]


def intervals(rows: np.ndarray) -> tuple[tuple, tuple]:
    """((F starts, F ends), (B starts, B ends)) of comm rows: in flight and blocked (see the
    module's docstring); rows without a finite ``t_wait`` have no blocked interval."""
    t0 = rows["t_post"].astype(float)
    t1 = np.maximum(rows["t_done"].astype(float), t0)
    if "t_wait" in (rows.dtype.names or ()):
        tw = rows["t_wait"].astype(float)
        has = np.isfinite(tw)
        b0 = np.clip(tw[has], t0[has], t1[has])
        b1 = t1[has]
    else:
        b0 = b1 = np.zeros(0)
    return (t0, t1), (b0, b1)


def covered(a: tuple, b: tuple | None = None) -> float:
    """``|U A \\ U B|``: the length of the instants covered by an interval of ``a`` (starts,
    ends) and by none of ``b`` (default: no ``b``, so ``|U A|``). One sweep over the sorted
    interval ends (counts of open intervals of each set)."""
    a0, a1 = np.asarray(a[0], float), np.asarray(a[1], float)
    if b is None:
        b0 = b1 = np.zeros(0)
    else:
        b0, b1 = np.asarray(b[0], float), np.asarray(b[1], float)
    if not len(a0):
        return 0.0
    t = np.concatenate([a0, a1, b0, b1])
    da = np.concatenate([np.ones(len(a0)), -np.ones(len(a1)), np.zeros(len(b0) + len(b1))])
    db = np.concatenate([np.zeros(len(a0) + len(a1)), np.ones(len(b0)), -np.ones(len(b1))])
    order = np.argsort(t, kind="stable")
    t, ca, cb = t[order], np.cumsum(da[order]), np.cumsum(db[order])
    seg = np.diff(t)  # between consecutive ends: open counts after the left one
    return float(seg[(ca[:-1] > 0) & (cb[:-1] <= 0)].sum())


def rank_span(rt) -> tuple[float, float]:
    """(start, end) of one rank's record: from t = 0 (or an earlier row) to its last row or metric
    value."""
    lo, hi = 0.0, 0.0
    if len(rt.comm):
        lo = min(lo, float(rt.comm["t_post"].min()))
        hi = max(hi, float(rt.comm["t_done"].max()))
    if len(rt.metrics):
        lo = min(lo, float(rt.metrics["t"].min()))
        hi = max(hi, float(rt.metrics["t"].max()))
    return lo, hi


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else float("nan")


def rank_times(rt) -> dict:
    """The figures of one rank (a RankTrace): span_s, compute_s, blocked_s, blocked_pct,
    in_flight_s, overlap_pct (NaN where its trace does not record t_wait)."""
    lo, hi = rank_span(rt)
    f, b = intervals(rt.comm)
    fly = covered(f)
    out = {"rank": rt.rank, "channel": "all", "messages": int(len(rt.comm)), "span_s": hi - lo,
           "in_flight_s": fly}
    if getattr(rt, "records_wait", True):
        blocked = covered(b)
        out.update(compute_s=(hi - lo) - blocked, blocked_s=blocked,
                   blocked_pct=_pct(blocked, hi - lo), overlap_pct=_pct(covered(f, b), fly))
    else:
        out.update(compute_s=float("nan"), blocked_s=float("nan"), blocked_pct=float("nan"),
                   overlap_pct=float("nan"))
    return out


def group_times(rows: np.ndarray, rank_blocked: tuple, records_wait: bool = True) -> dict:
    """in_flight_s, blocked_s and overlap_pct of a group of one rank's rows (a channel, or a
    (op, peer, channel)), against ``rank_blocked``: the blocked intervals of ALL that rank's rows
    (see the module's docstring)."""
    f, b = intervals(rows)
    fly = covered(f)
    if not records_wait:
        return {"in_flight_s": fly, "blocked_s": float("nan"), "overlap_pct": float("nan")}
    return {"in_flight_s": fly, "blocked_s": covered(b),
            "overlap_pct": _pct(covered(f, rank_blocked), fly)}


def time_table(run: Run) -> list[dict]:
    """Per rank: one row per channel it used (messages, in_flight_s, blocked_s, blocked_pct of
    the rank's span, overlap_pct), then its row ``channel = "all"`` with span_s and compute_s
    (compute is a rank's, not a channel's). NaN times where t_wait is not recorded."""
    out = []
    for rt in sorted(run.ranks, key=lambda r: r.rank):
        whole = rank_times(rt)
        c = rt.comm
        _, rank_b = intervals(c)
        rec = getattr(rt, "records_wait", True)
        for ch in sorted({bytes(x) for x in np.unique(c["channel"])}) if len(c) else []:
            rows = c[c["channel"] == ch]
            g = group_times(rows, rank_b, rec)
            out.append({"rank": rt.rank, "channel": _dec(ch), "messages": int(len(rows)),
                        "span_s": float("nan"), "compute_s": float("nan"),
                        "blocked_s": g["blocked_s"],
                        "blocked_pct": _pct(g["blocked_s"], whole["span_s"]),
                        "in_flight_s": g["in_flight_s"], "overlap_pct": g["overlap_pct"]})
        out.append(whole)
    return out


def records_wait(run: Run) -> bool:
    """Whether every rank's trace records t_wait (trace format 3 and later)."""
    return all(getattr(r, "records_wait", True) for r in run.ranks)


def run_time_totals(run: Run) -> dict:
    """Over all ranks: rank-seconds of span, compute and blocked time, blocked_pct, and the
    overlap of all ranks' in-flight time (sum over ranks of ``|U F \\ U B|`` over the sum of
    ``|U F|``); NaN where t_wait is not recorded."""
    rows = [rank_times(r) for r in run.ranks]
    span = sum(r["span_s"] for r in rows)
    fly = sum(r["in_flight_s"] for r in rows)
    if not rows or not records_wait(run):
        nan = float("nan")
        return {"span_s": span, "compute_s": nan, "blocked_s": nan, "blocked_pct": nan,
                "in_flight_s": fly, "overlap_pct": nan}
    blocked = sum(r["blocked_s"] for r in rows)
    hidden = sum(r["in_flight_s"] * r["overlap_pct"] / 100 for r in rows if r["in_flight_s"] > 0)
    return {"span_s": span, "compute_s": span - blocked, "blocked_s": blocked,
            "blocked_pct": _pct(blocked, span), "in_flight_s": fly,
            "overlap_pct": _pct(hidden, fly)}
