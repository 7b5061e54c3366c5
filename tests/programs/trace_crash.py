"""Kill trace writers at random points of their flushes and check what they leave.

    python tests/programs/trace_crash.py [--cases 300] [--seed 0] [--h5dump] [--inplace]

Each case forks a writer (a TraceWriter, as a rank uses it) that appends blocks of rows and
flushes back to back, telling the parent through a pipe when a flush starts ('S') and when it
returned ('E'), and kills it with SIGKILL after a random delay (uniform over a few flushes, so
that most kills land inside a flush: in the HDF5 writes, the copy or the renames). The parent then
opens the rank file with h5py (HDF5's default file locking), with mpidist's reader and, with
``--h5dump``, with the ``h5dump`` of the system's HDF5, and compares its rows with the closed
form of what the writer wrote (row i: step i, nbytes 8 i, t_post i / 1000): a readable file
holds exactly the rows of every flush that returned (or one more flush: a kill after the commit
but before the 'E' was written) and no others.

Prints ``CRASH cases=N mid_flush=.. readable_h5py=.. readable_mpidist=.. h5dump_ok=.. rows_lost=..
wrong_rows=..`` and exits 1 if any file was unreadable, lost a row or held a wrong one.

``--inplace``: the same kills on the writer mpidist had before (the file opened for appending
in place, ``libver="latest"``), for comparison (expected to fail).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from mpidist import trace  # noqa: E402

BLOCK = 400       # comm rows per flush
METRICS = 40      # metric rows per flush


def expected_comm(n: int, dtype=trace.COMM_DTYPE) -> np.ndarray:
    """The rows written, in the row type of the file (t_wait, where it has one, NaN)."""
    rows = np.zeros(n, dtype)
    if "t_wait" in dtype.names:
        rows["t_wait"] = np.nan
    i = np.arange(n)
    rows["step"], rows["op"], rows["peer"], rows["tag"] = i, b"send", 1, 7
    rows["channel"], rows["nbytes"], rows["t_post"], rows["t_done"] = b"params", 8 * i, i / 1000, \
        i / 1000 + 0.5
    return rows


def _writer(path: str, fd: int, inplace: bool) -> None:
    """The child: append blocks and flush until killed (or 20 s)."""
    def say(b: bytes) -> None:
        os.write(fd, b)
    if inplace:
        _inplace_writer(path, say)
        return
    w = trace.TraceWriter(path, {"algorithm": "crash", "rank": 0, "world_size": 1,
                                 "run_id": "crash"}, clock=lambda: 1.0, capacity=1 << 14)
    say(b"R")
    i, t_end = 0, time.monotonic() + 20
    while time.monotonic() < t_end:
        for _ in range(BLOCK):
            w.comm(i, b"send", 1, 7, b"params", 8 * i, i / 1000, i / 1000 + 0.5)
            i += 1
        for k in range(METRICS):
            w.metric(i, "loss", float(k))
        say(b"S")
        w.flush()
        say(b"E")


def _inplace_writer(path: str, say) -> None:
    """mpidist's writer before: created with libver="latest", each flush opens the file for
    appending, extends the datasets and closes it."""
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["format"] = np.array(b"mpidist-trace", dtype=h5py.string_dtype("utf-8", 13))
        f.attrs["format_version"] = 1
        f.attrs["rank"] = 0
        f.create_dataset("comm", shape=(0,), maxshape=(None,), dtype=trace.COMM_DTYPE_V2,
                         chunks=(4096,), fletcher32=True)
        f.create_dataset("metrics", shape=(0,), maxshape=(None,), dtype=trace.METRIC_DTYPE,
                         chunks=(1024,), fletcher32=True)
    say(b"R")
    n, t_end = 0, time.monotonic() + 20
    while time.monotonic() < t_end:
        rows = expected_comm(n + BLOCK, trace.COMM_DTYPE_V2)[n:]
        m = np.zeros(METRICS, trace.METRIC_DTYPE)
        say(b"S")
        with h5py.File(path, "a") as f:
            for name, r in (("comm", rows), ("metrics", m)):
                ds = f[name]
                k = ds.shape[0]
                ds.resize((k + len(r),))
                ds[k:] = r
        say(b"E")
        n += BLOCK


def one_case(path: str, delay: float, inplace: bool, h5dump: str | None) -> dict:
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        os.close(r)
        code = 0
        try:
            _writer(path, wfd, inplace)
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    os.close(wfd)
    first = os.read(r, 1)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    got = first
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        got += b
    os.close(r)
    done = got.count(b"E")
    out = {"mid_flush": got.endswith(b"S"), "done": done, "h5py": False, "mpidist": False,
           "h5dump": None, "lost": 0, "wrong": False, "extra": 0}
    try:
        with h5py.File(path, "r") as f:  # as a user would: h5py's defaults, file lock included
            comm = f["comm"][()]
            f["metrics"][()]
        out["h5py"] = True
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
        comm = None
    try:
        t = trace.read_rank(path)
        out["mpidist"] = True
        if comm is None:
            comm = t.comm
    except trace.TraceError as e:
        out.setdefault("error", str(e))
    if h5dump:
        p = subprocess.run([h5dump, "-H", path], capture_output=True, text=True, timeout=60)
        out["h5dump"] = p.returncode == 0 and "ERROR" not in p.stdout + p.stderr
    if comm is not None:
        want = done * BLOCK
        n = len(comm)
        out["lost"] = max(0, want - n)
        out["extra"] = max(0, n - want)
        out["wrong"] = (n not in (want, want + BLOCK)
                        or comm.tobytes() != expected_comm(n, comm.dtype).tobytes())
    else:
        out["lost"] = done * BLOCK
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=0.06,
                   help="kills at a delay uniform in [0, this] s after the file exists")
    p.add_argument("--h5dump", action="store_true", help="also open each file with h5dump")
    p.add_argument("--inplace", action="store_true", help="the old in-place writer, to compare")
    p.add_argument("--dir", help="where the cases are written (default: a temporary directory)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    h5dump = shutil.which("h5dump") if a.h5dump else None
    if a.h5dump and not h5dump:
        print("no h5dump on this machine: --h5dump ignored", file=sys.stderr)
    rng = np.random.default_rng(a.seed)
    base = a.dir or tempfile.mkdtemp(prefix="trace_crash_")
    t0 = time.monotonic()
    res = []
    try:
        for c in range(a.cases):
            d = os.path.join(base, f"case{c}")
            os.makedirs(d)
            out = one_case(os.path.join(d, "rank0.h5"), float(rng.uniform(0, a.max_delay)),
                           a.inplace, h5dump)
            res.append(out)
            bad = (not out["h5py"] or not out["mpidist"] or out["lost"] or out["wrong"]
                   or out["h5dump"] is False)
            if a.verbose or bad:
                print(f"case {c}: {out}", flush=True)
            shutil.rmtree(d)
    finally:
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)
    n = len(res)
    count = {
        "mid_flush": sum(o["mid_flush"] for o in res),
        "readable_h5py": sum(o["h5py"] for o in res),
        "readable_mpidist": sum(o["mpidist"] for o in res),
        "h5dump_ok": sum(o["h5dump"] is True for o in res) if h5dump else "n/a",
        "rows_lost": sum(o["lost"] for o in res),
        "cases_losing_rows": sum(o["lost"] > 0 for o in res),
        "wrong_rows": sum(o["wrong"] for o in res),
        "flushes_done": sum(o["done"] for o in res),
    }
    print(f"CRASH writer={'inplace' if a.inplace else 'mpidist'} cases={n} "
          + " ".join(f"{k}={v}" for k, v in count.items())
          + f" wall={time.monotonic() - t0:.1f}s", flush=True)
    ok = (count["readable_h5py"] == n and count["readable_mpidist"] == n
          and count["rows_lost"] == 0 and count["wrong_rows"] == 0
          and (not h5dump or count["h5dump_ok"] == n))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
