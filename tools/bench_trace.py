#!/usr/bin/env python
"""What a crash-safe trace flush costs: median milliseconds per flush of mpidist's TraceWriter
(commit by rename of a shadow copy, mpidist.trace_commit) against the in-place append mpidist used
before (not crash-safe) and a full shadow copy + rename at every flush, for files that already
hold 0, 10^5 and 10^6 message rows (about 9 and 90 MB).

    python tools/bench_trace.py [--rows 2000] [--repeat 15] [--dir DIR]
    python tools/bench_trace.py --row-cost [--dir DIR]

DIR (default: a temporary directory) decides the file system measured; the page cache is warm
(no fsync), as for a job's flushes between two checkpoints.

``--row-cost``: what one trace row costs a rank instead (issue 15 allows 1.0 us per 1 KiB
message): microseconds per row of ``TraceWriter.comm_row`` (the handles' call) and of
``TraceWriter.comm`` (nine arguments), each with the writer's flushes to a real file included
(the rows' conversion to numpy happens there), best of 5 runs of 200,000 rows; and the cost a
traced 1 KiB message adds in mpidist.comm, isend + irecv + wait on MPI_COMM_SELF with a
TraceWriter against without one (two rows per message pair), best of 5 runs of 20,000 pairs.
Both count the process's CPU time (``time.process_time``), which other jobs sharing the machine
distort less than wall time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np

try:
    from mpidist import trace
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mpidist import trace


def rows(n: int, start: int = 0) -> np.ndarray:
    r = np.zeros(n, trace.COMM_DTYPE)
    i = np.arange(start, start + n)
    r["step"], r["op"], r["peer"], r["channel"], r["nbytes"] = i, b"send", 1, b"params", 8 * i
    r["t_post"], r["t_done"] = i / 1e3, i / 1e3 + 0.5
    return r


def _append(path: str, comm: np.ndarray, libver=None) -> None:
    with h5py.File(path, "a", libver=libver) as f:
        ds = f["comm"]
        n = ds.shape[0]
        ds.resize((n + len(comm),))
        ds[n:] = comm


def bench(d: str, prefill: int, n: int, repeat: int) -> dict:
    out = {}
    # mpidist's writer now
    path = os.path.join(d, "rank0.h5")
    w = trace.TraceWriter(path, {"rank": 0, "world_size": 1}, lambda: 0.0, capacity=1 << 16)
    for r in rows(prefill).tolist():
        w.comm(*r)
    w.flush()
    w.flush()  # (an empty flush writes nothing)
    copies0 = w._file.copies
    ts, i = [], prefill
    for _ in range(repeat):
        for r in rows(n, i).tolist():
            w.comm(*r)
        i += n
        t = time.perf_counter()
        w.flush()
        ts.append(time.perf_counter() - t)
    out["mpidist (shadow + rename)"] = (1e3 * float(np.median(ts)), w._file.copies - copies0)
    w.close()
    size = os.path.getsize(path)
    # the in-place append of before, and a full copy + rename, on a copy of the same file
    old = os.path.join(d, "old.h5")
    shutil.copyfile(path, old)
    ts = []
    for k in range(repeat):
        c = rows(n, i + k * n)
        t = time.perf_counter()
        _append(old, c)
        ts.append(time.perf_counter() - t)
    out["in place (before; not crash-safe)"] = (1e3 * float(np.median(ts)), 0)
    ts = []
    for k in range(repeat):
        c = rows(n, i + k * n)
        t = time.perf_counter()
        shutil.copyfile(old, old + ".tmp")
        _append(old + ".tmp", c, trace.LIBVER)
        os.replace(old + ".tmp", old)
        ts.append(time.perf_counter() - t)
    out["full copy + rename"] = (1e3 * float(np.median(ts)), repeat)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    return {"size": size, **out}


def row_cost(d: str, rows: int = 200_000, runs: int = 5) -> dict:
    """Microseconds per row: comm_row and comm, flushes included (best of ``runs``)."""
    row = (3, b"send", 1, 7, b"params", 1024, 0.5, 0.6, float("nan"))
    out = {}
    for name in ("comm_row", "comm"):
        best = float("inf")
        for k in range(runs):
            path = os.path.join(d, f"rowcost_{name}_{k}.h5")
            w = trace.TraceWriter(path, {"rank": 0, "world_size": 1}, time.perf_counter)
            t = time.process_time()
            if name == "comm_row":
                f = w.comm_row
                for _ in range(rows):
                    f(row)
            else:
                f = w.comm
                for _ in range(rows):
                    f(*row)
            w.close()
            best = min(best, (time.process_time() - t) / rows)
            os.remove(path)
        out[name] = 1e6 * best
    return out


def message_cost(d: str, pairs: int = 20_000, runs: int = 5) -> dict:
    """Microseconds per 1 KiB isend + irecv + wait pair on MPI_COMM_SELF, untraced and traced."""
    import torch
    from mpi4py import MPI

    from mpidist.comm import Communicator
    x, y = torch.zeros(256), torch.zeros(256)
    out = {}
    for traced in (False, True, False, True):  # alternated: drifts of the machine hit both
        best = float("inf")
        for k in range(runs):
            w = None
            if traced:
                w = trace.TraceWriter(os.path.join(d, f"msg_{k}.h5"), {"rank": 0,
                                                                       "world_size": 1},
                                      time.perf_counter)
            c = Communicator(MPI.COMM_SELF, w, clock=time.perf_counter, timeout=10)
            t = time.process_time()
            for _ in range(pairs):
                hr = c.irecv(y, 0, 1)
                c.isend(x, 0, 1).wait()
                hr.wait()
            if w is not None:
                w.close()
                os.remove(os.path.join(d, f"msg_{k}.h5"))
            best = min(best, (time.process_time() - t) / pairs)
        key = "traced" if traced else "untraced"
        out[key] = min(out.get(key, float("inf")), 1e6 * best)
    out["added_per_message"] = (out["traced"] - out["untraced"]) / 2
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="message rows per flush")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--dir")
    p.add_argument("--row-cost", action="store_true",
                   help="measure what one trace row costs instead (see the docstring)")
    a = p.parse_args(argv)
    d = tempfile.mkdtemp(prefix="bench_trace_", dir=a.dir)
    if a.row_cost:
        try:
            r = row_cost(d)
            print(f"one trace row, flushes included: comm_row {r['comm_row']:.3f} us, "
                  f"comm {r['comm']:.3f} us")
            m = message_cost(d)
            print(f"1 KiB isend+irecv+wait pair on MPI_COMM_SELF: {m['untraced']:.2f} us "
                  f"untraced, {m['traced']:.2f} us traced: tracing adds "
                  f"{m['added_per_message']:.3f} us per message (goal: <= 1.0)")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return 0
    try:
        print(f"flush of {a.rows} message rows, median of {a.repeat}, in {d}")
        print(f"{'rows in file':>12} {'file MB':>8}  {'scheme':<36} {'ms/flush':>9} {'copies':>6}")
        for prefill in (0, 100_000, 1_000_000):
            r = bench(d, prefill, a.rows, a.repeat)
            size = r.pop("size")
            for k, (ms, copies) in r.items():
                print(f"{prefill:>12} {size / 1e6:>8.1f}  {k:<36} {ms:>9.2f} {copies:>6}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
