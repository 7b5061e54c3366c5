"""Exports of a run for other viewers: the Chrome trace-event / Perfetto JSON object of the
``export`` command (one process per rank, a track per peer and direction, flow arrows from sends
to their receives, counters of bytes in flight and of the metrics), and a checker of such an
object's structure."""
from __future__ import annotations

import json

import numpy as np

from .formatting import _dec
from .loading import Run
from .plots import _lanes
from .tables import metric_names


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
