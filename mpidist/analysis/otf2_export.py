"""A run as an OTF2 archive (the ``export --format otf2`` command), and the archive read back.

OTF2, the Open Trace Format 2 of the Score-P project, is what Vampir, Scalasca (and its Cube
reports) and pipit read. Written with the ``otf2`` Python package from PyPI (``pip install
otf2``, or the set-up's ``otf2`` extra); imported only here, so the rest of mpidist.analysis works
without it.

What the archive holds, one OTF2 location (an MPI process) per rank, on one communicator
``MPI_COMM_WORLD`` of ``world_size`` ranks, timestamps in nanoseconds since the run's t = 0:

- every point-to-point row as Score-P records a nonblocking operation: at posting, a zero-length
  ``MPI_Isend`` region holding an ``MpiIsend`` event (receiver, tag, bytes, request id) or an
  ``MPI_Irecv`` region holding an ``MpiIrecvRequest``; at completion, an ``MPI_Wait`` region
  holding ``MpiIsendComplete`` or ``MpiIrecv`` (sender, tag, bytes);
- every collective row (allreduce, bcast, barrier, allgather) as ``NonBlockingCollectiveRequest``
  at posting and ``NonBlockingCollectiveComplete`` (operation, root, bytes sent and received) at
  completion, in ``MPI_I<op>`` and ``MPI_Wait`` regions;
- every metric as an OTF2 metric (one metric class of one double per name) with a ``Metric``
  event at the time it was logged;
- the mpidist channel and step of each message event as OTF2 attributes ``mpidist_channel`` and
  ``mpidist_step``; one ``mpidist <algorithm>`` region spans each rank's trace, so that time
  outside the MPI regions shows as the program's own (compute).

Each ``MPI_Wait`` region spans ``t_wait .. t_done`` (:func:`wait_start`: the row's ``t_wait``,
when the rank began to wait, trace format 3), which is what Vampir and Scalasca call time in
MPI; it has zero length for an operation the rank never blocked on, and for every row of a trace
older than format 3 (no ``t_wait`` recorded).
"""
from __future__ import annotations

import os

import numpy as np

from ..trace import TraceError
from .formatting import _dec
from .loading import Run
from .tables import metric_names

RESOLUTION = 10 ** 9  # OTF2 timer ticks per second: nanoseconds

# mpidist op -> the otf2.CollectiveOp name (looked up at export time)
COLLECTIVES = {"allreduce": "ALLREDUCE", "bcast": "BCAST", "barrier": "BARRIER",
               "allgather": "ALLGATHER", "reduce": "REDUCE", "gather": "GATHER",
               "scatter": "SCATTER", "alltoall": "ALLTOALL"}


def _otf2():
    try:
        import otf2
    except ImportError:
        raise TraceError("export --format otf2 needs the 'otf2' package: pip install otf2 "
                         "(or pip install -e .[otf2])") from None
    return otf2


def _otf2_errors(otf2) -> tuple:
    errors = [otf2.error.Error]
    try:
        from _otf2.ErrorCodes import Error  # the C layer's error type (not a subclass)
        errors.append(Error)
    except ImportError:
        pass
    return tuple(errors)


def wait_start(rows: np.ndarray) -> np.ndarray:
    """When the rank began to wait for each row's operation: the ``t_wait`` field where rows have
    one and it is finite (clamped to ``t_post .. t_done``), else ``t_done`` (no waiting known)."""
    done = np.maximum(rows["t_done"], rows["t_post"])
    if "t_wait" not in (rows.dtype.names or ()):
        return done
    tw = rows["t_wait"]
    return np.where(np.isfinite(tw), np.clip(tw, rows["t_post"], done), done)


def export_otf2(run: Run, out_dir: str) -> dict:
    """Write ``run`` as an OTF2 archive in ``out_dir`` (created; it must not exist or be empty):
    ``out_dir/traces.otf2`` plus its definition and event files. Returns counts of what was
    written (events, p2p messages, collectives, metric values, and the anchor file's path)."""
    otf2 = _otf2()
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise TraceError(f"-o {out_dir}: exists and is not an empty directory (an OTF2 archive "
                         "is a directory of files); choose another")
    os.makedirs(out_dir, exist_ok=True)  # an unwritable place fails here, as an OSError
    try:
        return _write(otf2, run, out_dir)
    except _otf2_errors(otf2) as e:  # the C library's error (it also printed its own lines)
        raise TraceError(f"-o {out_dir}: the OTF2 library could not write the archive ({e})") \
            from None


def _write(otf2, run: Run, out_dir: str) -> dict:
    c = run.comm
    world = max(run.world_size, max((r.rank for r in run.ranks), default=0) + 1)
    times = [0.0]
    if len(c):
        times += [float(c["t_post"].min()), float(c["t_done"].min())]
    if len(run.metrics):
        times.append(float(run.metrics["t"].min()))
    t0 = min(times)  # rows before the run's t = 0 (set-up) shift the origin: ticks are unsigned

    def tick(t):
        return int(round((float(t) - t0) * RESOLUTION))

    counts = {"events": 0, "p2p": 0, "collectives": 0, "metric_values": 0}
    with otf2.writer.open(out_dir, timer_resolution=RESOLUTION) as trace:
        d = trace.definitions
        root = d.system_tree_node("machine")
        hosts = {}
        locs = {}
        for rk in range(world):
            rt = next((r for r in run.ranks if r.rank == rk), None)
            host = str(rt.attrs.get("hostname", "?")) if rt else "?"
            if host not in hosts:
                hosts[host] = d.system_tree_node(host, parent=root)
            grp = d.location_group(f"MPI Rank {rk}", system_tree_parent=hosts[host])
            locs[rk] = d.location(f"Master thread {rk}", group=grp)
        # rank k of an MPI communicator is location k of the paradigm's COMM_LOCATIONS group,
        # which the COMM_GROUP of ranks refers to (otf2 looks it up in the registry)
        d.group("MPI_COMM_WORLD locations", group_type=otf2.GroupType.COMM_LOCATIONS,
                paradigm=otf2.Paradigm.MPI, members=[locs[k] for k in range(world)])
        comm_grp = d.group("MPI_COMM_WORLD group", group_type=otf2.GroupType.COMM_GROUP,
                           paradigm=otf2.Paradigm.MPI, members=list(range(world)))
        world_comm = d.comm("MPI_COMM_WORLD", group=comm_grp)
        a_channel = d.attribute("mpidist_channel", "the mpidist channel of the message",
                                otf2.Type.STRING)
        a_step = d.attribute("mpidist_step", "the mpidist step of the message", otf2.Type.INT64)

        regions = {}

        def region(name, role, paradigm):
            if name not in regions:
                regions[name] = d.region(name, region_role=role, paradigm=paradigm)
            return regions[name]

        mpi = otf2.Paradigm.MPI
        r_main = region(f"mpidist {run.algorithm}", otf2.RegionRole.FUNCTION, otf2.Paradigm.USER)
        r_wait = region("MPI_Wait", otf2.RegionRole.POINT2POINT, mpi)
        metric_cls = {}
        for name in metric_names(run):
            member = d.metric_member(name, name, otf2.MetricType.OTHER,
                                     otf2.MetricMode.ABSOLUTE_POINT, otf2.Type.DOUBLE,
                                     otf2.Base.DECIMAL, 0, "")
            metric_cls[name] = d.metric_class([member], otf2.MetricOccurrence.ASYNCHRONOUS,
                                              otf2.RecorderKind.ABSTRACT)

        for rt in run.ranks:
            rk = rt.rank
            ev = []  # (tick, order, seq, [events]); order: 0 begin, 1 posts, 2 completions
            rows = rt.comm
            waits = wait_start(rows) if len(rows) else np.zeros(0)
            for i, row in enumerate(rows):
                op, ch, step = _dec(row["op"]), _dec(row["channel"]), int(row["step"])
                attrs = {a_channel: ch, a_step: step}
                tp, td, tw = tick(row["t_post"]), tick(max(row["t_done"], row["t_post"])), \
                    tick(waits[i])
                n, peer, tag = int(row["nbytes"]), int(row["peer"]), int(row["tag"]) & 0xFFFFFFFF
                if op in ("send", "recv"):
                    if not 0 <= peer < world:
                        continue  # not a rank of this world (cannot be written as a peer)
                    if op == "send":
                        r_post = region("MPI_Isend", otf2.RegionRole.POINT2POINT, mpi)
                        post = otf2.events.MpiIsend(tp, peer, world_comm, tag, n, i, attrs)
                        done = otf2.events.MpiIsendComplete(td, i, attrs)
                    else:
                        r_post = region("MPI_Irecv", otf2.RegionRole.POINT2POINT, mpi)
                        post = otf2.events.MpiIrecvRequest(tp, i, attrs)
                        done = otf2.events.MpiIrecv(td, peer, world_comm, tag, n, i, attrs)
                    counts["p2p"] += 1
                elif op in COLLECTIVES:
                    r_post = region("MPI_I" + op, otf2.RegionRole.COLL_ALL2ALL, mpi)
                    cop = getattr(otf2.CollectiveOp, COLLECTIVES[op])
                    if op == "bcast":  # peer: the root, or -1 on the root itself
                        root_rank = rk if peer < 0 else peer
                        sent, recvd = (n, 0) if peer < 0 else (0, n)
                    else:
                        root_rank = 0xFFFFFFFF  # OTF2_UNDEFINED_UINT32: no root
                        sent, recvd = n, n
                    post = otf2.events.NonBlockingCollectiveRequest(tp, i, attrs)
                    done = otf2.events.NonBlockingCollectiveComplete(
                        td, cop, world_comm, root_rank, sent, recvd, i, attrs)
                    counts["collectives"] += 1
                else:
                    continue  # an op this exporter does not know is not guessed at
                ev.append((tp, 1, i, [otf2.events.Enter(tp, r_post), post,
                                      otf2.events.Leave(tp, r_post)]))
                ev.append((td, 2, i, (tw, done)))  # the wait region: made when written
            for k, m in enumerate(rt.metrics):
                name = _dec(m["name"])
                if name in metric_cls:
                    t = tick(m["t"])
                    ev.append((t, 1, len(rows) + k,
                               [otf2.events.Metric(t, metric_cls[name], float(m["value"]))]))
                    counts["metric_values"] += 1
            if not ev:
                continue
            ev.sort(key=lambda e: (e[0], e[1], e[2]))
            ew = trace.event_writer_from_location(locs[rk])
            now = ev[0][0]
            ew(otf2.events.Enter(now, r_main))
            written = 1
            for t, kind, _, group in ev:
                if kind == 2:  # MPI_Wait from t_wait (not before anything already written) to done
                    tw, done = group
                    group = [otf2.events.Enter(max(tw, now), r_wait), done,
                             otf2.events.Leave(t, r_wait)]
                for e in group:
                    ew(e)
                now = t
                written += len(group)
            ew(otf2.events.Leave(now, r_main))
            counts["events"] += written + 1
    counts["anchor"] = os.path.join(out_dir, "traces.otf2")
    return counts


def read_otf2(anchor: str) -> dict:
    """Read an OTF2 archive back with ``otf2.reader``: per-pair bytes sent (``send[src, dst]``,
    from MpiIsend/MpiSend) and received (``recv[src, dst]``, from MpiIrecv/MpiRecv), collective
    bytes sent per rank (``collective``; ``collective_rows``: the larger of sent and received per
    operation, which is the trace row's ``nbytes``), message counts, metric values per name, and the number
    of events. Ranks are the locations' indices on the communicator of each event."""
    otf2 = _otf2()
    with otf2.reader.open(anchor) as tr:
        locs = list(tr.definitions.locations)
        n = len(locs)
        send, recv = np.zeros((n, n)), np.zeros((n, n))
        coll, coll_rows = np.zeros(n), np.zeros(n)
        counts = {"events": 0, "sends": 0, "recvs": 0, "collectives": 0}
        metrics: dict = {}
        last = {}
        for loc, e in tr.events:
            counts["events"] += 1
            prev = last.get(loc)
            if prev is not None and e.time < prev:
                raise TraceError(f"{anchor}: events of {loc.name} out of time order")
            last[loc] = e.time
            if isinstance(e, (otf2.events.MpiIsend, otf2.events.MpiSend)):
                me = e.communicator.rank(loc)
                send[me, e.receiver] += e.msg_length
                counts["sends"] += 1
            elif isinstance(e, (otf2.events.MpiIrecv, otf2.events.MpiRecv)):
                me = e.communicator.rank(loc)
                recv[e.sender, me] += e.msg_length
                counts["recvs"] += 1
            elif isinstance(e, (otf2.events.NonBlockingCollectiveComplete,
                                otf2.events.MpiCollectiveEnd)):
                me = e.communicator.rank(loc)
                coll[me] += e.size_sent
                coll_rows[me] += max(e.size_sent, e.size_received)
                counts["collectives"] += 1
            elif isinstance(e, otf2.events.Metric):
                metrics.setdefault(e.metric.member.name, []).append(e.value)
    return {"send": send, "recv": recv, "collective": coll, "collective_rows": coll_rows,
            "metrics": metrics, **counts}
