#!/usr/bin/env python
"""Fuzz the trace reader and the trace tools with damaged files (truncated, bit-flipped, zeroed,
appended to): every case must end in a clean TraceError (the CLI: exit status 2 and one line naming
the file) or read back exactly what was written; never another exception, a crash or a hang.

    python tests/programs/fuzz_trace.py [--cases 300] [--seed 0] [--first 0] [--run DIR]
                                        [--legacy] [--timeout 20] [--plot-every 50]
    python tests/programs/fuzz_trace.py --bench-flush [--reps 40]

The original is a small valid run directory: three rank files written by TraceWriter in this
process (no MPI; one rank left "running" as a killed job leaves it, one with two metrics chunks),
or a copy of the run given with ``--run``. Case k damages ONE rank file of it, drawn with numpy's
generator seeded by (seed, k): ``--seed S --first K --cases 1`` replays case K alone. Damage:

  truncate  to 0 bytes, inside the superblock (< 48 bytes), inside the metadata before the first
            data chunk, anywhere, or one byte short
  flip      1..8 bit flips, anywhere, in the metadata (the bytes outside the data chunks) or in the
            written rows
  zero      1..4096 zeroed bytes (log-uniform), anywhere, in the metadata or in the rows
  append    1..65536 bytes of random garbage (log-uniform) appended

The damaged run is read with ``trace.read_run`` and compared with the original, then the tools run
in this process: ``tools/mpidist_trace.py summary``, ``summary --skip-bad``, ``export`` (the JSON
must load back), and ``plot`` and ``compare`` with the original (Agg backend) every
``--plot-every`` cases and on every case that read back different values. Outcomes:

  error      read_run raised TraceError naming the damaged file; summary/export exited 2 with one
             line ``mpidist_trace: error: ...`` naming it; summary --skip-bad exited 0 with a note
  same       read back equal to the original (the damage hit unused bytes); the tools exited 0
  different  read back with other values (silent corruption); the tools exited 0 or 2
  exception  any other exception, or a tool answer that breaks its contract        (bad)
  crash      the worker process died (segfault, abort, killed)                     (bad)
  hang       one case took longer than --timeout seconds                           (bad)

Cases run in a worker subprocess (one for all cases; a fresh one after a crash or a hang), so a
crash inside libhdf5 is caught and named by its seed and case (a hang also by the Python stack
it hung in). One line per bad or different case (``CASE ...``), one line of outcome counts per
damage and place (``KIND flip rows error=.. same=.. ...``), then the summary line

  FUZZ cases=N seed=S checksum=yes error=.. same=.. different=.. exception=.. crash=.. hang=..
       truncate=.. flip=.. zero=.. append=.. wall=..s

Exit status 1 when a case was bad (or different, with checksums on), else 0.

``--bench-flush``: the cost of the rows' checksums (HDF5's fletcher32 filter) on TraceWriter.flush:
median microseconds of a flush of 4096 and of 64 comm rows, with and without, into fresh files.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.util
import io
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from mpidist import trace  # noqa: E402

TOOL = os.path.join(REPO, "tools", "mpidist_trace.py")
KINDS = ("truncate", "flip", "zero", "append")
BAD = ("exception", "crash", "hang")
OUTCOMES = ("error", "same", "different") + BAD


# ------------------------------------------------------------------------------------ original

def make_run(run_dir: str, legacy: bool = False) -> None:
    """Three rank files as the runtime writes them: rank 0 and 1 closed ("ok"), rank 2 left
    "running" after its last flush (a killed job); rank 1 logs 1200 extra values (two metrics
    chunks). Rows are appended in several flushes (capacity 64), as in a real run. ``legacy``:
    as mpidist wrote them before the checksums (no fletcher32 on the rows, strings as h5py's
    variable-length str in the global heap)."""
    os.makedirs(run_dir, exist_ok=True)
    world = 3
    for r in range(world):
        t = [0.0]

        def clock():
            t[0] += 0.01
            return t[0]
        attrs = {"algorithm": "fuzz", "rank": r, "world_size": world, "local_rank": r,
                 "args": {"lr": 0.1, "steps": 40, "topology": "ring", "trace_dir": run_dir},
                 "versions": {"mpidist": "0.1.0", "h5py": "3"}, "cuda_aware": False,
                 "comm_path": "cpu", "device": "cpu", "start_time": time.time() - 5.0}
        w = trace.TraceWriter(trace.rank_path(run_dir, r), attrs, clock, capacity=64,
                              checksum=not legacy)
        right, left = (r + 1) % world, (r - 1) % world
        for s in range(40):
            t0 = 0.1 * s
            w.comm(s, b"send", right, 11, b"params", 65536, t0, t0 + 0.004 + 0.001 * r)
            w.comm(s, b"recv", left, 11, b"params", 65536, t0, t0 + 0.006)
            if s % 3 == 0:
                w.comm(s, b"send", left, 12, b"feedback", 16384, t0 + 0.01, t0 + 0.012)
                w.comm(s, b"recv", right, 12, b"feedback", 16384, t0 + 0.01, t0 + 0.013)
            w.comm(s, b"allreduce", -1, 0, b"grads", 1024, t0 + 0.05, t0 + 0.07)
            if s % 5 == 0:
                w.comm(s, b"bcast", 0, 0, b"swap", 4096, t0 + 0.08, t0 + 0.09)
            w.metric(s, "loss", 2.0 * np.exp(-s / 10) + 0.05 * r)
            w.metric(s, "accuracy", 0.1 + 0.02 * s)
            if r == 1:
                for k in range(30):
                    w.metric(s, "tau", float(k % 3))
        if r == 2:
            w.flush()  # killed after its last flush: status stays "running"
        else:
            w.close()
        if legacy:
            import h5py
            with h5py.File(trace.rank_path(run_dir, r), "a") as f:
                for k in list(f.attrs):
                    v = f.attrs[k]
                    if isinstance(v, bytes):
                        f.attrs[k] = v.decode()  # a str: variable length, in the global heap


def snapshot(run) -> dict:
    """What a read gave, comparable with ==: per file, the attributes (JSON) and the rows' bytes."""
    return {os.path.basename(r.path): (json.dumps(r.attrs, sort_keys=True, default=repr),
                                       r.comm.dtype.str, r.comm.tobytes(),
                                       r.metrics.dtype.str, r.metrics.tobytes())
            for r in run.ranks}


def regions(path: str) -> dict:
    """Byte ranges of one rank file: ``rows`` (the written rows of each data chunk), ``chunks``
    (whole data chunks) and ``meta`` (every byte outside the data chunks: superblock, object
    headers, attributes, chunk indexes, free space)."""
    import h5py
    size = os.path.getsize(path)
    rows, chunks = [], []
    with h5py.File(path, "r", locking=False) as f:
        for name in ("comm", "metrics"):
            ds = f[name]
            per = ds.chunks[0]
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                used = min(per, ds.shape[0] - info.chunk_offset[0]) * ds.dtype.itemsize
                chunks.append((info.byte_offset, info.byte_offset + info.size))
                rows.append((info.byte_offset, info.byte_offset + used))
    meta, pos = [], 0
    for a, b in sorted(chunks):
        if a > pos:
            meta.append((pos, a))
        pos = max(pos, b)
    if pos < size:
        meta.append((pos, size))
    return {"rows": rows, "chunks": chunks, "meta": meta, "size": size,
            "first_chunk": min(a for a, _ in chunks)}


def _pick(rng, ranges) -> int:
    """A byte offset drawn uniformly from a list of [a, b) ranges."""
    lens = np.array([b - a for a, b in ranges], float)
    i = rng.choice(len(ranges), p=lens / lens.sum())
    return int(rng.integers(ranges[i][0], ranges[i][1]))


def damage(data: bytes, reg: dict, kind: str, rng) -> tuple[bytes, str]:
    """The damaged bytes and a short description."""
    size = len(data)
    if kind == "truncate":
        where = ("empty", "superblock", "meta", "anywhere", "short1")[int(rng.integers(5))]
        n = {"empty": 0, "superblock": int(rng.integers(1, 48)),
             "meta": int(rng.integers(48, reg["first_chunk"])),
             "anywhere": int(rng.integers(1, size)), "short1": size - 1}[where]
        return data[:n], f"truncate {where} to {n} of {size} bytes"
    if kind == "append":
        n = int(np.exp(rng.uniform(0, np.log(65536))))
        return data + rng.integers(0, 256, n, dtype=np.uint8).tobytes(), f"append {n} bytes"
    where = ("anywhere", "meta", "rows")[int(rng.integers(3))]
    ranges = {"anywhere": [(0, size)], "meta": reg["meta"], "rows": reg["rows"]}[where]
    buf = bytearray(data)
    if kind == "flip":
        flips = []
        for _ in range(int(rng.integers(1, 9))):
            pos, bit = _pick(rng, ranges), int(rng.integers(8))
            buf[pos] ^= 1 << bit
            flips.append(f"{pos}:{bit}")
        return bytes(buf), f"flip {where} {' '.join(flips)}"
    n = int(np.exp(rng.uniform(0, np.log(4096))))
    pos = _pick(rng, ranges)
    buf[pos:pos + n] = bytes(len(buf[pos:pos + n]))
    return bytes(buf), f"zero {where} {n} bytes at {pos}"


# ------------------------------------------------------------------------------------ one case

def _load_tool():
    spec = importlib.util.spec_from_file_location("mpidist_trace_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cli(tool, *argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tool.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


class Broken(Exception):
    """A tool's answer that breaks its contract."""


def _expect_error(name: str, res: tuple, argv) -> None:
    code, out, err = res
    lines = err.strip().splitlines()
    if code != 2 or len(lines) != 1 or not lines[0].startswith("mpidist_trace: error: ") \
            or name not in lines[0]:
        raise Broken(f"{' '.join(map(str, argv))}: exit {code}, stderr {err.strip()[:300]!r} "
                     f"(want exit 2, one line 'mpidist_trace: error: ...' naming {name})")


def run_case(case: int, a, tool, original: dict, reg: dict, work: str) -> dict:
    rng = np.random.default_rng([a.seed, case])
    files = sorted(reg)
    name = files[int(rng.integers(len(files)))]
    kind = KINDS[case % len(KINDS)]
    src = os.path.join(a.run, name)
    with open(src, "rb") as f:
        data = f.read()
    bad, what = damage(data, reg[name], kind, rng)
    print("START " + json.dumps({"case": case, "file": name, "kind": kind, "damage": what}),
          flush=True)  # what the driver reports if this case crashes or hangs
    d = os.path.join(work, f"case{case}")
    os.makedirs(d)
    for f in files:
        if f != name:
            os.link(os.path.join(a.run, f), os.path.join(d, f))
    with open(os.path.join(d, name), "wb") as f:
        f.write(bad)
    res = {"case": case, "file": name, "kind": kind, "damage": what}
    try:
        try:
            got = trace.read_run(d)
        except trace.TraceError as e:
            if name not in str(e):
                raise Broken(f"TraceError does not name {name}: {e}") from None
            res["outcome"], res["detail"] = "error", str(e)
        else:
            snap = snapshot(got)
            if snap == original:
                res["outcome"] = "same"
            else:
                parts = [f"{k}:{['attrs', 'comm', 'metrics'][i]}" for k in snap
                         for i, j in enumerate((0, 2, 4)) if snap[k][j] != original[k][j]]
                res["outcome"], res["detail"] = "different", " ".join(parts)
        ok = res["outcome"] != "error"
        plot = res["outcome"] == "different" or (a.plot_every and case % a.plot_every == 0)
        commands = [["summary", d], ["export", d, "-o", os.path.join(work, "e.json")]]
        if plot:
            commands += [["plot", d, "-o", os.path.join(work, "figures")],
                         ["compare", a.run, d, "-o", os.path.join(work, "compare")]]
        for argv in commands:
            r = _cli(tool, *argv)
            if ok and r[0] == 0:
                if argv[0] == "export":
                    with open(os.path.join(work, "e.json")) as f:
                        json.load(f)
            elif ok and res["outcome"] == "different" and r[0] == 2:
                res["detail"] += f"; {argv[0]}: {r[2].strip()}"
            elif ok:
                raise Broken(f"{argv[0]}: exit {r[0]} on a run that reads: {r[2].strip()[:300]}")
            else:
                _expect_error(name, r, argv)
        if not ok:
            code, out, err = _cli(tool, "summary", d, "--skip-bad")
            if code != 0 or "skipped:" not in out:
                raise Broken(f"summary --skip-bad: exit {code}: {err.strip()[:300]}")
    except Exception as e:  # anything but TraceError: the reader/tools must have converted it
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{os.path.relpath(fr.filename, REPO)}:{fr.lineno}" for fr in reversed(tb)
                      if fr.filename.startswith(REPO)), "?")
        res["outcome"] = "exception"
        first = str(e).splitlines()[0][:300] if str(e) else ""
        res["detail"] = f"{type(e).__name__} at {where}: {first}"
    shutil.rmtree(d, ignore_errors=True)
    return res


def worker(a) -> None:
    """Run cases first..last-1, printing START k before and DONE {json} after each."""
    # a damaged size field must not take the machine's memory: fail with MemoryError instead
    lim = a.memory_gb << 30
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    faulthandler.enable()  # a crash prints the Python stack to stderr (the driver reports it)
    import matplotlib
    matplotlib.use("Agg")
    tool = _load_tool()
    original = snapshot(trace.read_run(a.run))
    reg = {f: regions(os.path.join(a.run, f)) for f in sorted(os.listdir(a.run))
           if f.startswith("rank") and f.endswith(".h5")}
    work = tempfile.mkdtemp(prefix="work_", dir=a.work)  # the driver removes a.work
    try:
        for case in range(a.first, a.first + a.cases):
            # a hang: the stack where it hangs goes to stderr just before the driver kills us
            faulthandler.dump_traceback_later(max(a.timeout - 2, 0.5 * a.timeout))
            res = run_case(case, a, tool, original, reg, work)
            faulthandler.cancel_dump_traceback_later()
            print("DONE " + json.dumps(res), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------ driver

def drive(a, run_dir: str) -> list[dict]:
    """Run every case in worker subprocesses; a case whose worker dies is a crash, one that takes
    longer than --timeout is a hang (its worker is killed); the next worker starts after it."""
    results = []
    nxt, end = a.first, a.first + a.cases
    while nxt < end:
        errf = tempfile.TemporaryFile()
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--run", run_dir,
               "--seed", str(a.seed), "--first", str(nxt), "--cases", str(end - nxt),
               "--plot-every", str(a.plot_every), "--memory-gb", str(a.memory_gb),
               "--timeout", str(a.timeout), "--work", os.path.dirname(run_dir)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, bufsize=0)
        buf, current = b"", None
        deadline = time.monotonic() + a.timeout + 60  # start-up: imports
        while True:
            left = deadline - time.monotonic()
            ready = select.select([p.stdout], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:  # a hang
                p.kill()
                p.wait()
                if current is None:  # no case started: the worker's start-up hangs
                    sys.exit(f"fuzz worker did not start in {a.timeout + 60:g} s")
                errf.seek(0)
                stack = [ln.strip() for ln in errf.read().decode(errors="replace").splitlines()
                         if ln.strip().startswith("File ")][:4]
                results.append(dict(current, outcome="hang",
                                    detail=f"no answer in {a.timeout:g} s; stack: "
                                           + " | ".join(stack)))
                nxt = current["case"] + 1
                break
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:  # the worker ended
                rc = p.wait()
                if current is not None:
                    errf.seek(0)
                    tail = [ln.strip() for ln in errf.read().decode(errors="replace")
                            .strip().splitlines()][-6:]
                    results.append(dict(current, outcome="crash",
                                        detail=f"worker exit status {rc}: {' | '.join(tail)}"))
                    nxt = current["case"] + 1
                elif rc != 0:  # died before its first case: nothing will work
                    errf.seek(0)
                    sys.exit(f"fuzz worker failed to start (exit {rc}):\n"
                             f"{errf.read().decode(errors='replace')}")
                else:
                    nxt = end
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.decode()
                if line.startswith("START "):
                    current = json.loads(line[6:])
                    deadline = time.monotonic() + a.timeout
                elif line.startswith("DONE "):
                    results.append(json.loads(line[5:]))
                    nxt, current = results[-1]["case"] + 1, None
                    deadline = time.monotonic() + a.timeout
        errf.close()
    return results


def bench_flush(reps: int) -> None:
    """Median microseconds of TraceWriter.flush of n comm rows, with and without checksums."""
    tmp = tempfile.mkdtemp(prefix="bench_flush_")
    try:
        for n in (4096, 64):
            med = {}
            for checksum in (False, True, False, True):  # twice each, interleaved: 2nd counts
                path = os.path.join(tmp, f"rank{n}_{int(checksum)}.h5")
                if os.path.exists(path):
                    os.remove(path)
                w = trace.TraceWriter(path, {"rank": 0}, lambda: 0.0, capacity=1 << 14,
                                      checksum=checksum)
                ts = []
                for i in range(reps):
                    for j in range(n):
                        w.comm(i, b"send", 1, 11, b"params", 65536, 0.001 * j, 0.001 * j + 1e-4)
                    t = time.perf_counter()
                    w.flush()
                    ts.append(time.perf_counter() - t)
                w.close()
                med[checksum] = 1e6 * float(np.median(ts))
            print(f"BENCH flush of {n} comm rows: {med[False]:.0f} us without checksums, "
                  f"{med[True]:.0f} us with fletcher32 (+{med[True] - med[False]:.0f} us; "
                  f"median of {reps})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first", type=int, default=0, help="first case number (replay: --cases 1)")
    p.add_argument("--run", help="fuzz a copy of this run directory instead of a fresh one")
    p.add_argument("--legacy", action="store_true",
                   help="write the fresh original as mpidist did before the checksums (no "
                        "fletcher32 on the rows, variable-length string attributes)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take")
    p.add_argument("--plot-every", type=int, default=50, help="also plot every N-th case (0: "
                                                              "only silently corrupted ones)")
    p.add_argument("--memory-gb", type=int, default=4, help="address-space limit of a worker")
    p.add_argument("--show", type=int, default=20, help="print at most N case lines per outcome")
    p.add_argument("--bench-flush", action="store_true")
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.bench_flush:
        bench_flush(a.reps)
        return 0
    if a.worker:
        worker(a)
        return 0
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="fuzz_trace_run_")
    try:
        run_dir = os.path.join(tmp, "run")
        if a.run:
            shutil.copytree(a.run, run_dir)
        else:
            make_run(run_dir, legacy=a.legacy)
        checksum = all(_has_checksums(os.path.join(run_dir, f)) for f in os.listdir(run_dir)
                       if f.startswith("rank") and f.endswith(".h5"))
        results = drive(a, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    count = {o: 0 for o in OUTCOMES}
    kinds = {k: 0 for k in KINDS}
    shown = {o: 0 for o in OUTCOMES}
    per_where: dict = {}  # (kind, where) -> {outcome: n}
    for r in sorted(results, key=lambda r: r["case"]):
        count[r["outcome"]] += 1
        kinds[KINDS[r["case"] % len(KINDS)]] += 1
        words = r["damage"].split()  # "flip rows 123:4 ...", "append 77 bytes"
        where = (words[0], "garbage" if words[0] == "append" else words[1])
        d = per_where.setdefault(where, {o: 0 for o in OUTCOMES})
        d[r["outcome"]] += 1
        if r["outcome"] in BAD + ("different",) and shown[r["outcome"]] < a.show:
            shown[r["outcome"]] += 1
            print(f"CASE seed={a.seed} case={r['case']} outcome={r['outcome']} "
                  f"file={r.get('file', '?')} damage=[{r.get('damage', '?')}] "
                  f"{r.get('detail', '')}")
    for (kind, where), d in sorted(per_where.items()):
        print(f"KIND {kind} {where} " + " ".join(f"{o}={d[o]}" for o in OUTCOMES))
    print(f"FUZZ cases={len(results)} seed={a.seed} checksum={'yes' if checksum else 'no'} "
          + " ".join(f"{o}={count[o]}" for o in OUTCOMES) + " "
          + " ".join(f"{k}={kinds[k]}" for k in KINDS) + f" wall={time.monotonic() - t0:.1f}s",
          flush=True)
    bad = sum(count[o] for o in BAD) + (count["different"] if checksum else 0)
    return 1 if bad else 0


def _has_checksums(path: str) -> bool:
    """Whether every byte of the file's content is under a checksum: fletcher32 on both datasets
    and no variable-length string attribute (their bytes sit in the unchecked global heap)."""
    import h5py
    with h5py.File(path, "r", locking=False) as f:
        info = [h5py.check_string_dtype(f.attrs.get_id(k).dtype) for k in f.attrs]
        vlen = [i for i in info if i is not None and i.length is None]
        return all(f[n].fletcher32 for n in ("comm", "metrics")) and not vlen


if __name__ == "__main__":
    sys.exit(main())
