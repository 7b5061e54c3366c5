"""Per-step load imbalance: how much longer the slowest rank's step took than the mean rank's.

A trace has no row at step boundaries, so a rank's step ``s`` is taken to end at the last thing
the rank recorded for that step: the latest metric time or operation posting time among its rows
of step ``s`` (``t_post``, not ``t_done``: a message posted at step s can complete many steps
later). A rank's step time is the time from its previous recorded step's end to this one's, so a
stretch of steps in which a rank recorded nothing (AdaComm's local steps between two averagings)
counts as one step: the time of the whole stretch. For each step that every rank recorded and
that every rank had recorded a step before, ``imbalance = max over ranks / mean over ranks`` of
the step times (1 = perfectly balanced; 2 ranks can reach at most 2)."""
from __future__ import annotations

import numpy as np

from .loading import Run


def step_ends(run: Run) -> dict:
    """{rank: (steps, end times)}: each rank's recorded steps in order and when each ended."""
    out = {}
    for r in run.ranks:
        parts_s, parts_t = [], []
        if len(r.comm):
            parts_s.append(r.comm["step"]), parts_t.append(r.comm["t_post"])
        if len(r.metrics):
            parts_s.append(r.metrics["step"]), parts_t.append(r.metrics["t"])
        if not parts_s:
            out[r.rank] = (np.zeros(0, np.int64), np.zeros(0))
            continue
        s, t = np.concatenate(parts_s), np.concatenate(parts_t)
        steps, inv = np.unique(s, return_inverse=True)
        end = np.full(len(steps), -np.inf)
        np.maximum.at(end, inv.reshape(-1), t)
        out[r.rank] = (steps, end)
    return out


def step_times(run: Run) -> tuple[np.ndarray, np.ndarray, list]:
    """(steps, times[rank_index, step_index], ranks): each rank's step time at the steps every rank
    recorded (and had recorded a step before); NaN nowhere."""
    ends = step_ends(run)
    ranks = sorted(ends)
    common = None
    per = {}
    for rk in ranks:
        s, e = ends[rk]
        d = dict(zip(s[1:].tolist(), (e[1:] - e[:-1]).tolist()))
        per[rk] = d
        common = set(d) if common is None else common & set(d)
    steps = np.array(sorted(common or []), np.int64)
    times = np.array([[per[rk][int(x)] for x in steps] for rk in ranks]).reshape(len(ranks),
                                                                                len(steps))
    return steps, times, ranks


def load_imbalance(run: Run) -> dict:
    """Per step ``imbalance = max_r / mean_r`` of the step times, and the run's summary: ``mean``
    (of the per-step values), ``max`` (and ``max_step``), ``time_weighted`` (sum of the slowest
    ranks' step times over the sum of the mean step times: the fraction of wall clock the slowest
    rank sets), the slowest rank most often (``slowest_rank``) and the number of steps used."""
    steps, times, ranks = step_times(run)
    out = {"steps": steps, "imbalance": np.zeros(0), "n_steps": int(len(steps)),
           "mean": float("nan"), "max": float("nan"), "max_step": None,
           "time_weighted": float("nan"), "slowest_rank": None, "ranks": ranks}
    if not len(steps) or len(ranks) < 1:
        return out
    mx, mean = times.max(axis=0), times.mean(axis=0)
    ok = mean > 0
    imb = np.where(ok, mx / np.where(ok, mean, 1.0), np.nan)
    out["imbalance"] = imb
    if np.isfinite(imb).any():
        i = int(np.nanargmax(imb))
        out.update(mean=float(np.nanmean(imb)), max=float(imb[i]), max_step=int(steps[i]))
    if mean.sum() > 0:
        out["time_weighted"] = float(mx.sum() / mean.sum())
    slow = np.bincount(times.argmax(axis=0), minlength=len(ranks))
    out["slowest_rank"] = int(ranks[int(slow.argmax())])
    return out
