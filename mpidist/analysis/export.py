"""Exports of a run for other viewers: the Chrome trace-event / Perfetto JSON object of the
``export`` command (one process per rank, a track per peer and direction, a slice per span the rank
was blocked on an operation, flow arrows from each send's posting to its receive's completion,
counters of bytes in flight and of the metrics), kept small by a window of steps (``steps``,
``max_events``), and a checker of such an object's structure. The OTF2 export is
:mod:`.otf2_export`."""
from __future__ import annotations

import json

import numpy as np

from .blocking import records_wait
from .formatting import _dec
from .loading import Run
from .otf2_export import wait_start
from .plots import _lanes
from .tables import metric_names


DEFAULT_MAX_EVENTS = 40_000  # about 5-7 MB of JSON: a minute of PC-ASGD is ~10x that


def _us(t: float) -> float:
    return round(float(t) * 1e6, 3)


def match_messages(c: np.ndarray) -> list[tuple[int, int]]:
    """(send row, receive row) index pairs of the run's comm rows ``c`` (with the ``rank`` field):
    the k-th send of (sender, receiver, tag, channel) in order of posting is matched with the k-th
    receive of the same key (MPI's non-overtaking rule). Rows without a partner (a killed run)
    are left out."""
    if not len(c):
        return []
    def groups(ix, src_field, dst_field):
        g = {}
        for i in ix[np.argsort(c["t_post"][ix], kind="stable")]:
            key = (int(c[src_field][i]), int(c[dst_field][i]), int(c["tag"][i]),
                   bytes(c["channel"][i]))
            g.setdefault(key, []).append(int(i))
        return g
    gs = groups(np.nonzero(c["op"] == b"send")[0], "rank", "peer")
    gr = groups(np.nonzero(c["op"] == b"recv")[0], "peer", "rank")
    return [(a, b) for key, si in gs.items() for a, b in zip(si, gr.get(key, []))]


def _events_per_step(run: Run, pairs) -> tuple[np.ndarray, int]:
    """(events each step adds to the export, the first step): a slice and two counter points per
    row (and a posting slice per send, where blocked spans are drawn), two flow events per matched
    message, one counter point per metric value."""
    c, m = run.comm, run.metrics
    steps = [c["step"]] if len(c) else []
    steps += [m["step"]] if len(m) else []
    if not steps:
        return np.zeros(0, int), 0
    allsteps = np.concatenate(steps)
    s0 = int(allsteps.min())
    n = np.zeros(int(allsteps.max()) - s0 + 1, int)
    if len(c):
        np.add.at(n, c["step"] - s0, 3)
        if records_wait(run):
            np.add.at(n, c["step"][c["op"] == b"send"] - s0, 1)
        if pairs:
            np.add.at(n, c["step"][np.array([a for a, _ in pairs])] - s0, 2)
    if len(m):
        np.add.at(n, m["step"] - s0, 1)
    return n, s0


def choose_steps(run: Run, steps: tuple | None = None, max_events: int = DEFAULT_MAX_EVENTS,
                 pairs=None) -> tuple[int, int]:
    """The steps (first, last, inclusive) an export holds: ``steps`` (default: all), narrowed, when
    its events would exceed ``max_events`` (0: no limit), to the widest window around the middle
    of that range that stays within it (at least one step)."""
    pairs = match_messages(run.comm) if pairs is None else pairs
    per, s0 = _events_per_step(run, pairs)
    if not len(per):
        return (0, -1) if steps is None else steps
    lo, hi = (s0, s0 + len(per) - 1) if steps is None else steps
    lo, hi = max(lo, s0), min(hi, s0 + len(per) - 1)
    if lo > hi or not max_events or per[lo - s0:hi - s0 + 1].sum() <= max_events:
        return (lo, hi) if lo <= hi else (steps or (lo, hi))
    a = b = (lo + hi) // 2
    total = per[a - s0]
    while True:  # grow one step at a time, right then left, while it fits
        grew = False
        for side in (1, 0):
            if side and b < hi and total + per[b + 1 - s0] <= max_events:
                b += 1
                total += per[b - s0]
                grew = True
            elif not side and a > lo and total + per[a - 1 - s0] <= max_events:
                a -= 1
                total += per[a - s0]
                grew = True
        if not grew:
            return a, b


def chrome_trace(run: Run, steps: tuple | None = None,
                 max_events: int = DEFAULT_MAX_EVENTS) -> dict:
    """The run as a Chrome trace-event / Perfetto JSON object.

    - one process per rank (``pid`` = rank, named "rank k (host)");
    - one thread (track) per peer and direction ("send to 3", "recv from 1") and per collective
      op ("allreduce"), split into numbered lanes where slices overlap, so that complete events
      ("X", ``name`` = channel) on one track never overlap. A row's slice spans the time the rank
      was BLOCKED on it, ``t_wait .. t_done`` (``cat`` = op), zero-length at ``t_done`` if it
      never blocked: receives posted many messages ahead do not fill the tracks (their posting
      time is in ``args.t_post``). Each send also has a zero-length slice at its posting (``cat``
      "post"), where its flow starts. Traces older than format 3 (no ``t_wait``): slices span
      posting to completion, as before (``otherData.slices`` says which);
    - flow events ("s" -> "f", ``bp`` "e") from each send, at its posting, to the completion of
      its receive, paired by (sender, receiver, tag, channel) in order of posting (MPI's
      non-overtaking rule); never backwards in time (a pair whose receive completed before the
      send was posted, possible only where the ranks' clocks disagree by more than their
      alignment found (:mod:`mpidist.clock`), gets no arrow and is counted in
      ``otherData.flows_backwards``); unmatched rows (a killed run) get no flow;
    - counters ("C") per rank: bytes in flight (send/recv/collective) and each metric's value.

    Only the rows and metric values of ``steps`` (first, last; default all) are exported, and of
    those at most about ``max_events`` events (0: no limit): a window of whole steps around the
    middle (:func:`choose_steps`; ``otherData.steps`` says which). Times are microseconds since
    the run's t = 0.
    """
    call = run.comm
    pairs = match_messages(call)
    lo, hi = choose_steps(run, steps, max_events, pairs)
    narrowed = (lo, hi) != choose_steps(run, steps, 0, pairs)  # by max_events
    keep = (call["step"] >= lo) & (call["step"] <= hi) if len(call) else np.zeros(0, bool)
    new_index = np.full(len(call), -1)
    new_index[keep] = np.arange(int(keep.sum()))
    c = call[keep]
    blocked_mode = records_wait(run)
    ev: list[dict] = []
    host = {r.rank: r.attrs.get("hostname", "?") for r in run.ranks}
    for rk in sorted(host):
        ev.append({"ph": "M", "name": "process_name", "pid": rk, "tid": 0, "ts": 0,
                   "args": {"name": f"rank {rk} ({host[rk]})"}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": rk, "tid": 0, "ts": 0,
                   "args": {"sort_index": rk}})
    slice_of = np.zeros(len(c), dtype=[("tid", "<i8"), ("t0", "<f8"), ("t1", "<f8")])
    for rk in sorted(host):
        idx = np.nonzero(c["rank"] == rk)[0] if len(c) else np.zeros(0, int)
        if not len(idx):
            continue
        rows = c[idx]
        ops = np.array([_dec(o) for o in rows["op"]])
        t_done = np.maximum(rows["t_done"], rows["t_post"])
        start = wait_start(rows) if blocked_mode else rows["t_post"]
        posts = (ops == "send") if blocked_mode else np.zeros(len(rows), bool)
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
            pm = m[posts[m]]  # sends' posting slices share the track's lanes
            lane, nl = _lanes(np.concatenate([start[m], rows["t_post"][pm]]),
                              np.concatenate([t_done[m], rows["t_post"][pm]]), cap=1 << 30)
            for k in range(nl):
                ev.append({"ph": "M", "name": "thread_name", "pid": rk, "tid": tid + k, "ts": 0,
                           "args": {"name": name if k == 0 else f"{name} #{k + 1}"}})
                ev.append({"ph": "M", "name": "thread_sort_index", "pid": rk, "tid": tid + k,
                           "ts": 0, "args": {"sort_index": tid + k}})
            lane = [int(x) for x in lane]
            for j, i in enumerate(m):
                row = rows[i]
                t0, t1 = _us(start[i]), _us(t_done[i])
                args = {"step": int(row["step"]), "bytes": int(row["nbytes"]),
                        "peer": int(row["peer"]), "tag": int(row["tag"])}
                if blocked_mode:
                    args["t_post"] = _us(row["t_post"])
                ev.append({"ph": "X", "name": _dec(row["channel"]), "cat": ops[i],
                           "ts": t0, "dur": round(t1 - t0, 3), "pid": rk, "tid": tid + lane[j],
                           "args": args})
                slice_of[idx[i]] = (tid + lane[j], t0, round(t0 + round(t1 - t0, 3), 3))
            for j, i in enumerate(pm):
                row = rows[i]
                tp = _us(row["t_post"])
                ev.append({"ph": "X", "name": _dec(row["channel"]), "cat": "post", "ts": tp,
                           "dur": 0.0, "pid": rk, "tid": tid + lane[len(m) + j],
                           "args": {"step": int(row["step"]), "bytes": int(row["nbytes"]),
                                    "peer": int(row["peer"]), "tag": int(row["tag"])}})
                slice_of[idx[i]] = (tid + lane[len(m) + j], tp, tp)  # where its flow starts
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
            for si, ti, vi in zip(s, t, v):
                if lo <= si <= hi and np.isfinite(vi):
                    ev.append({"ph": "C", "name": name, "pid": r.rank, "tid": 0, "ts": _us(ti),
                               "args": {name: float(vi)}})
    # flows: from the send's posting to its receive's completion (the receive slice's end, one
    # nanosecond inside it so that the arrow binds to that slice), never backwards
    n_flows = backwards = 0
    for a_all, b_all in pairs:
        a, b = new_index[a_all], new_index[b_all]
        if a < 0 or b < 0:
            continue  # an end outside the exported steps
        ts_s = float(slice_of["t0"][a])
        r0, r1 = float(slice_of["t0"][b]), float(slice_of["t1"][b])
        ts_f = round(r1 - 0.001, 3) if r1 - r0 >= 0.002 else r1
        if ts_f < ts_s:
            backwards += 1
            continue
        n_flows += 1
        ch = _dec(c["channel"][a])
        ev.append({"ph": "s", "id": n_flows, "name": ch, "cat": "message", "ts": ts_s,
                   "pid": int(c["rank"][a]), "tid": int(slice_of["tid"][a])})
        ev.append({"ph": "f", "bp": "e", "id": n_flows, "name": ch, "cat": "message",
                   "ts": ts_f, "pid": int(c["rank"][b]), "tid": int(slice_of["tid"][b])})
    first = int(min([int(call["step"].min())] if len(call) else [0]))
    last = max(run.steps - 1, int(call["step"].max()) if len(call) else -1)
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "otherData": {"mpidist_run": run.path, "algorithm": run.algorithm,
                          "world_size": run.world_size, "status": run.status,
                          "flows": n_flows, "flows_backwards": backwards,
                          "slices": "blocked (t_wait..t_done)" if blocked_mode
                          else "in flight (t_post..t_done; trace format < 3)",
                          "steps": [int(lo), int(hi)], "run_steps": [first, last],
                          "max_events": int(max_events), "narrowed": narrowed,
                          "args": json.dumps(run.args, default=str)}}


def check_chrome_trace(obj: dict) -> list[str]:
    """Problems with a trace-event JSON object (empty list: none): every event has ph, ts, pid and
    tid; "X" durations are >= 0; X slices on one track never partly overlap; each flow id has one
    "s" and one "f", each inside a slice of its track, and the "f" not before the "s"."""
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
        if d["f"][0]["ts"] < d["s"][0]["ts"]:
            problems.append(f"flow {fid}: points backwards in time ({d['s'][0]['ts']} -> "
                            f"{d['f'][0]['ts']})")
        for e in (d["s"][0], d["f"][0]):
            sl = slices.get((e["pid"], e["tid"]), [])
            if not any(a <= e["ts"] <= b for a, b in sl):
                problems.append(f"flow {fid}: '{e['ph']}' at {e['ts']} is in no slice of "
                                f"pid {e['pid']} tid {e['tid']}")
    return problems
