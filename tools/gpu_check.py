"""Verify every CUDA path of mpidist on a machine with one or more GPUs: one command, one table.

    python tools/gpu_check.py                     # about 5 minutes on a 16-core node with a GPU

It launches ``mpiexec`` itself (the one next to this Python, else the one on PATH; ``--mpiexec``
to choose) and checks, printing one row per check (PASS, FAIL, SKIP with the reason, or INFO):

- ``detect`` (2 ranks): the CUDA devices, the MPI library, its own answer to
  ``MPIX_Query_cuda_support()``, :func:`mpidist.comm.cuda_aware_mpi` and so the path mpidist
  takes for device tensors: ``cuda-aware`` (device buffers to MPI after a stream sync) or
  ``staged`` (through pinned host memory).
- ``comm`` (2 ranks): point to point (``isend`` with and without snapshot, persistent requests,
  ``ibcast``) and ``iallreduce`` (sum, max, min, avg) of device tensors (int64, int32, uint8,
  float32, float64; 1 to about a million elements; 0 elements on a row of its own) against the
  same values on the CPU: the bytes received must equal those sent; a reduction must be bitwise
  equal both to the same ``iallreduce`` on CPU tensors and to the sum taken in a fixed order on
  the CPU (two ranks: the order cannot differ). Through the staged path, forced with
  ``MPIDIST_CUDA_AWARE=0``, and through the CUDA-aware path when the MPI library is CUDA-aware
  (else SKIP, saying so).
- ``race`` (2 ranks): a send from a tensor a kernel is still writing (a sleep kernel, then a fill,
  queued on the current stream, the send posted at once; mpi4py#164 is the failure the stream sync
  in ``mpidist.comm`` avoids), and an allreduce of one, on each path; beside it a control that does
  the same without the sync, which should see stale bytes (if it does not, the race check proved
  nothing on this machine, and the row says so).
- ``placement`` (2 and 4 ranks on however many GPUs): each rank's node-local index, the device
  ``choose_device`` gives it (``cuda:<local rank mod GPUs>``) and the current CUDA device; then a
  ring exchange and an allreduce on those devices, checked in closed form.
- ``algorithms``: each algorithm's default (default ranks and variant) for a few steps with
  ``--device cuda`` and the same steps with ``--device cpu``; the trace bytes and message counts
  per channel and operation must be equal (the ``control`` channel carries pickled settings,
  which name the device, so it is shown but not compared); the CUDA run's trace must say
  ``device cuda:*`` and the detected ``comm_path``.
- ``bandwidth`` (2 ranks): ping-pong of device buffers through each path, 1 KiB to 64 MiB
  (``--sizes``), beside CPU buffers (GB/s, one way; median over repetitions). Figures, not checks.

Exit status 0 when nothing failed, 1 when a check failed, 2 for bad arguments. On a machine where
torch sees no CUDA device it prints one line saying so and exits 0, checking nothing.
``--rehearse-on-cpu`` runs the same launches with CPU tensors where CUDA ones would be, to test
this script itself on a machine without a GPU (it says nothing about CUDA; the race part is
skipped). Traces of the algorithm runs stay under ``--out`` (default: a new temporary directory,
printed).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

PARTS = ("detect", "comm", "race", "placement", "algorithms", "bandwidth")
ALGORITHMS = ("pcasgd", "adacomm", "dada", "mdgan", "dpsgd")
# A few steps of each algorithm's default run; the flags keep the bytes a function of the steps
# alone (AdaComm: no time budget, and an interval T0 longer than the run, so tau stays tau0).
FEW_STEPS = {
    "pcasgd": ["--steps", "8"],
    "adacomm": ["--steps", "16", "--time-budget", "0", "--interval", "3600"],
    "dada": ["--steps", "4", "--pretrain-steps", "4", "--eval-every", "2"],
    "mdgan": ["-I", "4"],
    "dpsgd": ["--steps", "8"],
}
NOT_COMPARED = ("control",)  # pickled settings and names: their size depends on "--device cuda"
DEFAULT_SIZES = "1K-64M"


# --------------------------------------------------------------------------- arguments (no CUDA)

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"gpu_check: error: {message}\n")
        sys.exit(2)


def parse_size(text: str) -> int:
    """``1K``, ``64M``, ``4096``, ``1KiB`` -> bytes."""
    m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1K, 64M, 4096)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def size_range(text: str) -> list[int]:
    """``MIN-MAX`` -> the powers of two from MIN to MAX (MIN rounded up to one)."""
    lo, _, hi = text.partition("-")
    lo, hi = parse_size(lo), parse_size(hi or lo)
    if lo < 1 or hi < lo or hi > 1 << 30:
        raise argparse.ArgumentTypeError(f"{text}: want MIN-MAX with 1 B <= MIN <= MAX <= 1G")
    n = 1 << (lo - 1).bit_length()
    out = []
    while n <= hi:
        out.append(n)
        n <<= 1
    if not out:
        raise argparse.ArgumentTypeError(f"{text}: no power of two between MIN and MAX")
    return out


def _choices(known: tuple, what: str):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in names if s not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)} "
                                             f"(known: {', '.join(known)})")
        return names
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=_choices(PARTS, "part"), default=list(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (default all)")
    p.add_argument("--algorithms", type=_choices(ALGORITHMS, "algorithm"),
                   default=list(ALGORITHMS), help="which algorithms the algorithms part runs")
    p.add_argument("--sizes", type=size_range, default=size_range(DEFAULT_SIZES),
                   metavar="MIN-MAX",
                   help=f"bandwidth sizes, powers of two (default {DEFAULT_SIZES})")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="deadline of each mpiexec launch in seconds (default 300)")
    p.add_argument("--mpiexec", default=None, metavar="CMD",
                   help="launcher command, e.g. 'mpiexec --oversubscribe' (default: the mpiexec "
                        "next to this Python, else on PATH)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the algorithm runs' traces go (default: a new temporary directory)")
    p.add_argument("--serial", action="store_true",
                   help="run an algorithm's CPU and CUDA runs one after the other (default: "
                        "side by side)")
    p.add_argument("--rehearse-on-cpu", action="store_true",
                   help="test this script without a GPU: CPU tensors where CUDA ones would be "
                        "(checks nothing about CUDA)")
    p.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.timeout > 0:
        p.error(f"--timeout {args.timeout}: must be > 0")
    if args.worker and not args.result:
        p.error("--worker needs --result")
    return args


# --------------------------------------------------------------------------- pure helpers

def no_gpu_line(torch_version: str, cuda_built: str | None) -> str:
    """The one line printed where torch sees no CUDA device."""
    built = f"built for CUDA {cuda_built}" if cuda_built else "built without CUDA"
    return (f"gpu_check: no CUDA device visible (torch {torch_version}, {built}: "
            "torch.cuda.is_available() is False); nothing was checked")


def row(part, check, path, ranks, status, detail="") -> dict:
    """One result row."""
    assert status in ("PASS", "FAIL", "SKIP", "INFO"), status
    return {"part": part, "check": check, "path": path, "ranks": ranks, "status": status,
            "detail": detail}


def channel_bytes(comm_rows) -> dict:
    """{(channel, op): [messages, bytes]} over all rows of a run's ``/comm`` (every rank)."""
    out: dict = {}
    for r in comm_rows:
        ch, op = r["channel"], r["op"]
        ch = ch.decode() if isinstance(ch, bytes) else str(ch)
        op = op.decode() if isinstance(op, bytes) else str(op)
        acc = out.setdefault((ch, op), [0, 0])
        acc[0] += 1
        acc[1] += int(r["nbytes"])
    return out


def compare_channels(a: dict, b: dict, skip=NOT_COMPARED) -> list[tuple]:
    """Rows (channel, op, messages a, bytes a, messages b, bytes b, status) for the union of two
    :func:`channel_bytes` results, sorted; status ``same``, ``DIFFERENT`` or, for channels in
    ``skip``, ``not compared``. A key missing on one side counts as 0 messages, 0 bytes."""
    out = []
    for key in sorted(set(a) | set(b)):
        ma, ba = a.get(key, (0, 0))
        mb, bb = b.get(key, (0, 0))
        if key[0] in skip:
            status = "not compared"
        else:
            status = "same" if (ma, ba) == (mb, bb) else "DIFFERENT"
        out.append((key[0], key[1], ma, ba, mb, bb, status))
    return out


def format_table(headers, rows) -> str:
    """A plain text table: columns padded to their widest cell, numbers right-aligned; text in the
    last column is left unpadded (free text: it may be long)."""
    rows = [[str(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    widths = [len(h) for h in headers]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row {r} has {len(r)} cells, headers {len(headers)}")
        for i, c in enumerate(r):
            if i < len(r) - 1 or _is_number(c):
                widths[i] = max(widths[i], len(c))

    def line(cells, numeric):
        parts = []
        for i, c in enumerate(cells):
            if numeric and _is_number(c):
                parts.append(c.rjust(widths[i]))
            elif i == len(cells) - 1:
                parts.append(c)
            else:
                parts.append(c.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [line(headers, False), "  ".join("-" * w for w in widths)]
    out += [line(r, True) for r in rows]
    return "\n".join(out)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def results_table(rows: list[dict]) -> str:
    return format_table(["part", "check", "path", "ranks", "status", "detail"],
                        [[r["part"], r["check"], r["path"], r["ranks"], r["status"], r["detail"]]
                         for r in rows])


def bandwidth_table(points: list[dict], ways: list[str]) -> str:
    """points: {"size": bytes, "<way>": (one-way us, GB/s) or None}."""
    headers = ["size"] + [f"{w} GB/s" for w in ways] + [f"{w} us" for w in ways]
    rows = []
    for p in points:
        cells = [human(p["size"])]
        for k in (1, 0):
            for w in ways:
                v = p.get(w)
                cells.append("-" if v is None else (f"{v[k]:.2f}" if k else f"{v[k]:.1f}"))
        rows.append(cells)
    return format_table(headers, rows)


def exit_status(rows: list[dict]) -> int:
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


# --------------------------------------------------------------------------- the driver

def find_mpiexec(spec: str | None) -> list[str]:
    if spec:
        return shlex.split(spec)
    mine = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(mine):
        return [mine]
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        raise SystemExit("gpu_check: error: no mpiexec next to this Python or on PATH "
                         "(give --mpiexec)")
    return [exe]


def _env() -> dict:
    e = dict(os.environ)
    e.pop("MPIDIST_CUDA_AWARE", None)  # the parts set it themselves where they force a path
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONUNBUFFERED"] = "1"
    e["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, e.get("PYTHONPATH")) if p)
    return e


def _launch(cmd: list[str], env: dict, log: str) -> subprocess.Popen:
    f = open(log, "w")
    try:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
    finally:
        f.close()


def _finish(proc: subprocess.Popen, deadline: float) -> int | None:
    """The exit status, or None after killing the launch's process group at the deadline."""
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()
        return None


def _tail(log: str, n: int = 3) -> str:
    try:
        with open(log, errors="replace") as f:
            lines = [s.strip() for s in f.read().splitlines() if s.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


def run_worker(part: str, n: int, args, launcher, work: str, extra=()) -> dict:
    """Launch this script as ``--worker part`` on n ranks; its JSON result, or one FAIL row."""
    tag = f"{part}-{n}"
    result, log = os.path.join(work, f"{tag}.json"), os.path.join(work, f"{tag}.log")
    cmd = launcher + ["-n", str(n), sys.executable, os.path.abspath(__file__), "--worker", part,
                      "--result", result, "--sizes", f"{args.sizes[0]}-{args.sizes[-1]}"]
    cmd += ["--rehearse-on-cpu"] if args.rehearse_on_cpu else []
    cmd += list(extra)
    code = _finish(_launch(cmd, _env(), log), time.monotonic() + args.timeout)
    if code is None:
        why = f"did not finish in {args.timeout:g} s (killed); log {log}: {_tail(log)}"
    elif code != 0 or not os.path.exists(result):
        why = f"mpiexec exit {code}; log {log}: {_tail(log)}"
    else:
        with open(result) as f:
            return json.load(f)
    return {"rows": [row(part, "launch", "-", n, "FAIL", why)]}


def run_algorithms(args, launcher, out: str, detected_path: str | None) -> list[dict]:
    """Each algorithm's few steps on cuda and on cpu; rows comparing their trace bytes."""
    from mpidist import algorithms
    from mpidist.trace import TraceError, read_run
    rows, tables = [], []
    gpu = "cpu" if args.rehearse_on_cpu else "cuda"
    for name in args.algorithms:
        n = algorithms.get(name).ranks
        launches, codes = {}, {}
        for dev in ("cpu", "cuda"):
            run_dir = os.path.join(out, f"{name}-{dev}")
            cmd = launcher + ["-n", str(n), sys.executable, "-m", f"mpidist.{name}",
                              *FEW_STEPS[name], "--device", gpu if dev == "cuda" else "cpu",
                              "--seed", "1", "--trace-dir", run_dir, "--quiet"]
            launches[dev] = (_launch(cmd, _env(), run_dir + ".log"), run_dir,
                             time.monotonic() + args.timeout)
            if args.serial:
                codes[dev] = _finish(launches[dev][0], launches[dev][2])
        runs, failed = {}, False
        for dev, (proc, run_dir, deadline) in launches.items():
            code = codes[dev] if dev in codes else _finish(proc, deadline)
            log = run_dir + ".log"
            if code != 0:
                why = "did not finish in time (killed)" if code is None else f"exit {code}"
                rows.append(row("algorithms", f"{name} --device {dev}", "-", n, "FAIL",
                                f"{why}; log {log}: {_tail(log)}"))
                failed = True
                continue
            try:
                runs[dev] = read_run(run_dir)
            except TraceError as e:
                rows.append(row("algorithms", f"{name} --device {dev}", "-", n, "FAIL",
                                f"trace unreadable: {e}"))
                failed = True
        if failed:
            continue
        cuda_attrs = runs["cuda"].ranks[0].attrs
        path = str(cuda_attrs.get("comm_path"))
        devices = sorted({str(r.attrs.get("device")) for r in runs["cuda"].ranks})
        status = [str(r.attrs.get("status")) for d in runs for r in runs[d].ranks]
        problems = []
        if any(s != "ok" for s in status):
            problems.append(f"rank status {sorted(set(status))}")
        if not args.rehearse_on_cpu:
            if not all(d.startswith("cuda") for d in devices):
                problems.append(f"devices {devices}")
            if detected_path and path != detected_path:
                problems.append(f"comm_path {path}, detected {detected_path}")
        cmp_rows = compare_channels(channel_bytes(runs["cpu"].comm),
                                    channel_bytes(runs["cuda"].comm))
        diff = [r for r in cmp_rows if r[-1] == "DIFFERENT"]
        if diff:
            problems.append("bytes differ on " + ", ".join(f"{r[0]}/{r[1]}" for r in diff))
        compared = [r for r in cmp_rows if r[-1] == "same"]
        detail = (f"{len(compared)} channel/op pairs equal, {sum(r[3] for r in compared)} bytes; "
                  f"cuda run: comm_path {path}, device {','.join(devices)}")
        rows.append(row("algorithms", f"{name} (few steps) cpu vs {gpu}", path, n,
                        "FAIL" if problems else "PASS",
                        "; ".join(problems) if problems else detail))
        tables.append((name, cmp_rows))
    return rows, tables


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    import torch
    if not args.rehearse_on_cpu and not torch.cuda.is_available():
        print(no_gpu_line(torch.__version__, torch.version.cuda))
        return 0
    launcher = find_mpiexec(args.mpiexec)
    out = args.out or tempfile.mkdtemp(prefix="gpu_check-")
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, "parts")
    os.makedirs(work, exist_ok=True)
    if args.rehearse_on_cpu:
        print("gpu_check: REHEARSAL ON CPU: CPU tensors where CUDA ones would be; this tests the "
              "script and says nothing about CUDA")
    rows: list[dict] = []
    if "MPIDIST_CUDA_AWARE" in os.environ:
        rows.append(row("detect", "MPIDIST_CUDA_AWARE in your environment", "-", "-", "INFO",
                        f"={os.environ['MPIDIST_CUDA_AWARE']}: removed for every launch (the "
                        "parts force the staged path themselves)"))
    t0 = time.monotonic()
    detected = None
    if "detect" in args.parts or {"comm", "race", "bandwidth", "algorithms"} & set(args.parts):
        res = run_worker("detect", 2, args, launcher, work)
        rows += res["rows"] if "detect" in args.parts or any(
            r["status"] == "FAIL" for r in res["rows"]) else []
        detected = res.get("path")
    for part, ranks in (("comm", (2,)), ("race", (2,)), ("placement", (2, 4))):
        if part in args.parts:
            for n in ranks:
                rows += run_worker(part, n, args, launcher, work)["rows"]
    tables = []
    if "algorithms" in args.parts:
        alg_rows, tables = run_algorithms(args, launcher, out, detected)
        rows += alg_rows
    bw = None
    if "bandwidth" in args.parts:
        bw = run_worker("bandwidth", 2, args, launcher, work)
        rows += bw["rows"]
    print(results_table(rows))
    for name, cmp_rows in tables:
        print(f"\n{name}: trace messages and bytes per channel, all ranks (cpu vs "
              f"{'cpu' if args.rehearse_on_cpu else 'cuda'})")
        print(format_table(["channel", "op", "cpu msgs", "cpu bytes", "cuda msgs", "cuda bytes",
                            "status"], cmp_rows))
    if bw and bw.get("points"):
        print("\nbandwidth, 2 ranks, one way (median of ping-pongs):")
        print(bandwidth_table(bw["points"], bw["ways"]))
    failed = sum(r["status"] == "FAIL" for r in rows)
    print(f"\ngpu_check: {len(rows)} rows, {failed} failed, {time.monotonic() - t0:.0f} s; "
          f"logs and traces under {out}")
    return exit_status(rows)


# --------------------------------------------------------------------------- the workers (MPI)

def worker_main(args) -> int:
    """Run one part on this rank; rank 0 writes the JSON result."""
    import torch
    from mpi4py import MPI

    from mpidist.placement import choose_device, local_rank
    local, nlocal = local_rank()
    device = choose_device("cpu" if args.rehearse_on_cpu else "cuda", local)
    w = _Worker(args, device, local, nlocal, torch, MPI)
    result = getattr(w, args.worker)()
    if MPI.COMM_WORLD.Get_rank() == 0:
        tmp = args.result + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, args.result)
    return 0


def _mpix_query(MPI) -> int | None:
    """The MPI library's own MPIX_Query_cuda_support(), or None where it has no such function."""
    import ctypes
    for lib in (None, "libmpi.so.12", "libmpi.so.40", "libmpi.so"):
        try:
            q = getattr(ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL), "MPIX_Query_cuda_support")
        except (OSError, AttributeError):
            continue
        q.restype = ctypes.c_int
        return int(q())
    return None


class _Worker:
    """The parts that run under mpiexec. Every rank runs the same cases in the same order; each
    message has its own tag, so a case that fails on one rank cannot be matched by a later one."""

    DTYPES = ("int64", "int32", "uint8", "float32", "float64")
    COUNTS = (1, 1023, 50_000, (1 << 20) + 3)  # elements; 0 has its own row (empty)

    def __init__(self, args, device, local, nlocal, torch, MPI):
        self.args, self.device, self.local, self.nlocal = args, device, local, nlocal
        self.torch, self.MPI = torch, MPI
        self.rank, self.size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
        self.tag = 100
        from mpidist.comm import Communicator
        self.base = Communicator(timeout=60.0)  # gathers results; host buffers only

    # ---------------------------------------------------------------- helpers
    def comm_for(self, path: str, mpi_comm=None):
        """A Communicator taking ``path`` through mpidist's own choice: MPIDIST_CUDA_AWARE=0
        forces staging; without it, cuda_aware_mpi() asks the library."""
        from mpidist.comm import Communicator
        if path == "staged":
            os.environ["MPIDIST_CUDA_AWARE"] = "0"
        else:
            os.environ.pop("MPIDIST_CUDA_AWARE", None)
        try:
            return Communicator(mpi_comm, timeout=60.0)
        finally:
            os.environ.pop("MPIDIST_CUDA_AWARE", None)

    def paths(self) -> list[tuple[str, object, str]]:
        """[(path, communicator or None, reason to skip)] for device tensors."""
        if self.args.rehearse_on_cpu:
            return [("cpu (rehearsal)", self.comm_for("cpu"), "")]
        out = [("staged", self.comm_for("staged"), "")]
        aware = self.comm_for("cuda-aware")
        out.append(("cuda-aware", aware if aware.cuda_aware else None,
                    "" if aware.cuda_aware else "MPI library not CUDA-aware (cuda_aware_mpi() "
                    "is False): the staged path is what runs here"))
        return out

    def next_tag(self) -> int:
        self.tag += 1
        return self.tag

    def make(self, who: int, case: int, dtype: str, n: int):
        """Rank ``who``'s values for ``case`` on the CPU, the same on every rank."""
        torch = self.torch
        g = torch.Generator().manual_seed(1_000_003 * case + who)
        dt = getattr(torch, dtype)
        if dtype.startswith("float"):
            return torch.randn(n, generator=g, dtype=dt) * 10.0 ** (who - 1)
        lo, hi = (0, 256) if dtype == "uint8" else (-10**6, 10**6)
        return torch.randint(lo, hi, (n,), generator=g, dtype=dt)

    def bitwise_equal(self, a, b) -> bool:
        u8 = self.torch.uint8
        return a.dtype == b.dtype and a.shape == b.shape and bool(
            (a.contiguous().view(-1).view(u8) == b.contiguous().view(-1).view(u8)).all())

    def diff_text(self, got, want) -> str:
        bad = (got.view(-1).view(self.torch.uint8) != want.view(-1).view(self.torch.uint8))
        k = int(bad.view(got.numel(), -1).any(1).sum()) if got.numel() else 0
        first = int(bad.view(got.numel(), -1).any(1).nonzero()[0]) if k else -1
        return (f"{k} of {got.numel()} elements differ (first at {first}: got "
                f"{got.view(-1)[first].item()}, want {want.view(-1)[first].item()})")

    def gather_rows(self, mine: list[dict]) -> list[dict]:
        """Rank 0's rows for each check, merged: FAIL if any rank failed, details of failures."""
        every = self.base.allgather_object(mine)
        merged, order = {}, []
        for rank, rows in enumerate(every):
            for r in rows:
                key = (r["part"], r["check"], r["path"])
                if key not in merged:
                    merged[key] = dict(r, ranks=self.size, fails=[])
                    order.append(key)
                if r["status"] == "FAIL":
                    merged[key]["status"] = "FAIL"
                    merged[key]["fails"].append(f"rank {rank}: {r['detail']}")
        out = []
        for key in order:
            r = merged.pop(key)
            fails = r.pop("fails")
            if fails:
                r["detail"] = "; ".join(fails)[:600]
            out.append(r)
        return out

    def cases(self):
        for dtype in self.DTYPES:
            for n in self.COUNTS:
                yield dtype, n

    # ---------------------------------------------------------------- detect
    def detect(self) -> dict:
        from mpidist.comm import cuda_aware_mpi
        from mpidist.placement import versions
        torch = self.torch
        cuda = torch.cuda.is_available()
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if cuda else []
        aware = cuda_aware_mpi() if not self.args.rehearse_on_cpu else False
        mine = {"aware": aware, "mpix": _mpix_query(self.MPI), "names": names}
        every = self.base.allgather_object(mine)
        v = versions()
        path = "cpu (rehearsal)" if self.args.rehearse_on_cpu else (
            "cuda-aware" if aware else "staged")
        same = all(e["aware"] == aware for e in every)
        rows = [
            row("detect", "CUDA devices", "-", self.size, "INFO",
                f"{len(names)}: {', '.join(names) or 'none'}; torch {v['torch']} "
                f"(CUDA {torch.version.cuda})"),
            row("detect", "MPI library", "-", self.size, "INFO",
                f"{v['mpi']}; mpi4py {v['mpi4py']}"),
            row("detect", "MPIX_Query_cuda_support()", "-", self.size, "INFO",
                "no such function in the loaded MPI library" if mine["mpix"] is None
                else str(mine["mpix"])),
            row("detect", "cuda_aware_mpi() on every rank", path, self.size,
                "PASS" if same else "FAIL",
                f"{aware}: device tensors go " + ("to MPI directly after a stream sync" if aware
                                                  else "through pinned host memory")
                if same else f"ranks disagree: {[e['aware'] for e in every]}"),
        ]
        return {"rows": rows, "path": None if self.args.rehearse_on_cpu else path,
                "aware": aware}

    # ---------------------------------------------------------------- comm
    def comm(self) -> dict:
        torch, dev = self.torch, self.device
        peer = 1 - self.rank
        mine = []
        for path, c, why in self.paths():
            if c is None:
                for check in ("isend/irecv, snapshot", "isend/irecv, no snapshot",
                              "send_init/recv_init", "ibcast", "iallreduce"):
                    mine.append(row("comm", check, path, self.size, "SKIP", why))
                continue
            staged = dev.type == "cuda" and c._staged(torch.empty(1, device=dev))
            if dev.type == "cuda" and staged != (path == "staged"):
                mine.append(row("comm", "path taken", path, self.size, "FAIL",
                                f"Communicator stages device tensors: {staged}"))
            for mode in ("snapshot", "no snapshot", "persistent"):
                fails, ncase = [], 0
                for case, (dtype, n) in enumerate(self.cases()):
                    ncase += 1
                    tag = self.next_tag()
                    want = self.make(peer, case, dtype, n)
                    send = self.make(self.rank, case, dtype, n).to(dev)
                    out = torch.full((n,), 7, dtype=getattr(torch, dtype), device=dev)
                    try:
                        if mode == "persistent":
                            pr, ps = c.recv_init(out, peer, tag), c.send_init(send, peer, tag)
                            hs = [pr.start(), ps.start()]
                        else:
                            hs = [c.irecv(out, peer, tag),
                                  c.isend(send, peer, tag, snapshot=mode == "snapshot")]
                        for h in hs:
                            h.wait()
                        if mode == "persistent":
                            pr.free()
                            ps.free()
                        got = out.cpu()
                        if not self.bitwise_equal(got, want):
                            fails.append(f"{dtype} x{n}: {self.diff_text(got, want)}")
                    except Exception as e:  # noqa: BLE001 - report, go on with the next case
                        fails.append(f"{dtype} x{n}: {type(e).__name__}: {e}")
                mine.append(row("comm", f"isend/irecv, {mode}" if mode != "persistent"
                                else "send_init/recv_init", path, self.size,
                                "FAIL" if fails else "PASS",
                                "; ".join(fails[:3]) if fails else
                                f"{ncase} cases ({', '.join(self.DTYPES)}; {self.COUNTS[0]} to "
                                f"{self.COUNTS[-1]} elements) bitwise equal to the CPU values"))
            fails, ncase = [], 0
            for case, (dtype, n) in enumerate(self.cases()):
                ncase += 1
                t = (self.make(0, case, dtype, n) if self.rank == 0 else
                     torch.full((n,), 7, dtype=getattr(torch, dtype))).to(dev)
                try:
                    c.ibcast(t, 0).wait()
                    got = t.cpu()
                    if not self.bitwise_equal(got, self.make(0, case, dtype, n)):
                        want = self.make(0, case, dtype, n)
                        fails.append(f"{dtype} x{n}: {self.diff_text(got, want)}")
                except Exception as e:  # noqa: BLE001
                    fails.append(f"{dtype} x{n}: {type(e).__name__}: {e}")
            mine.append(row("comm", "ibcast", path, self.size, "FAIL" if fails else "PASS",
                            "; ".join(fails[:3]) if fails else f"{ncase} cases bitwise equal"))
            mine.append(self.allreduce_row(c, path))
        for path, c, why in self.paths():  # last: a failure here cannot disturb the cases above
            mine.append(self.empty_row(path, c, why))
        return {"rows": self.gather_rows(mine)}

    def empty_row(self, path: str, c, why: str) -> dict:
        """Tensors of 0 elements through each operation; each collective on its own duplicate of
        the world communicator, so that one rank failing to post it cannot pair with another."""
        torch, dev = self.torch, self.device
        check = "empty tensors (0 elements)"
        if c is None:
            return row("comm", check, path, self.size, "SKIP", why)
        peer = 1 - self.rank
        fails = []

        def op_send():
            tag = self.next_tag()
            out = torch.empty(0, device=dev)
            for h in (c.irecv(out, peer, tag), c.isend(torch.empty(0, device=dev), peer, tag)):
                h.wait()

        def op_bcast(cc):
            cc.ibcast(torch.empty(0, device=dev), 0).wait()

        def op_allreduce(cc):
            cc.iallreduce(torch.empty(0, device=dev)).wait()

        for name, fn in (("isend/irecv", op_send), ("ibcast", op_bcast),
                         ("iallreduce", op_allreduce)):
            try:
                if name == "isend/irecv":
                    fn()
                else:
                    dup = self.MPI.COMM_WORLD.Dup()
                    fn(self.comm_for("staged" if path == "staged" else "detected", dup))
            except Exception as e:  # noqa: BLE001 - report, go on
                fails.append(f"{name}: {type(e).__name__}: {e}")
        return row("comm", check, path, self.size, "FAIL" if fails else "PASS",
                   "; ".join(fails) if fails else "isend/irecv, ibcast, iallreduce of 0 elements")

    def allreduce_row(self, c, path: str) -> dict:
        torch, dev = self.torch, self.device
        fails, ncase = [], 0
        for op in ("sum", "max", "min", "avg"):
            for case, (dtype, n) in enumerate(self.cases()):
                if op == "avg" and not dtype.startswith("float"):
                    continue  # avg divides in place: floats only
                ncase += 1
                what = f"{op} {dtype} x{n}"
                try:
                    t = self.make(self.rank, case, dtype, n).to(dev)
                    c.iallreduce(t, op).wait()
                    got = t.cpu()
                    host = self.make(self.rank, case, dtype, n)
                    c.iallreduce(host, op).wait()
                    ref = self.make(0, case, dtype, n)
                    for k in range(1, self.size):  # a fixed order: ((x0 + x1) + x2) ...
                        x = self.make(k, case, dtype, n)
                        ref = {"sum": torch.add, "avg": torch.add, "max": torch.maximum,
                               "min": torch.minimum}[op](ref, x)
                    if op == "avg":
                        ref = ref / self.size
                    if not self.bitwise_equal(got, host):
                        fails.append(f"{what} vs CPU iallreduce: {self.diff_text(got, host)}")
                    elif not self.bitwise_equal(got, ref):
                        if self.size == 2 or not dtype.startswith("float"):
                            fails.append(f"{what} vs fixed order: {self.diff_text(got, ref)}")
                except Exception as e:  # noqa: BLE001
                    fails.append(f"{what}: {type(e).__name__}: {e}")
        return row("comm", "iallreduce", path, self.size, "FAIL" if fails else "PASS",
                   "; ".join(fails[:3]) if fails else
                   f"{ncase} cases (sum, max, min; avg on floats) bitwise equal to the CPU's "
                   "iallreduce and to a fixed-order sum")

    # ---------------------------------------------------------------- race
    def race(self) -> dict:
        torch, dev = self.torch, self.device
        if dev.type != "cuda":
            return {"rows": [row("race", "send while a kernel writes", "-", self.size, "SKIP",
                                 "needs a CUDA kernel on a stream (rehearsal on CPU)")]}
        n = 16 << 20  # 64 MiB of float32: the fill alone takes a while
        cycles = 400_000_000  # torch.cuda._sleep: about 0.2 s at a 2 GHz SM clock
        mine = []

        def busy_then_fill(t, value):
            torch.cuda._sleep(cycles)  # a kernel on the current stream, then the fill
            t.fill_(value)

        for path, c, why in self.paths():
            if c is None:
                mine.append(row("race", "send while a kernel writes", path, self.size, "SKIP", why))
                continue
            fails = []
            for snapshot in (False, True):
                tag = self.next_tag()
                value = 3.0 + snapshot
                if self.rank == 0:
                    t = torch.zeros(n, device=dev)
                    torch.cuda.synchronize()
                    busy_then_fill(t, value)
                    c.isend(t, 1, tag, snapshot=snapshot).wait()
                else:
                    out = torch.full((n,), -1.0, device=dev)
                    c.irecv(out, 0, tag).wait()
                    bad = int((out != value).sum())
                    if bad:
                        fails.append(f"snapshot={snapshot}: {bad} of {n} elements stale")
            # allreduce of a tensor a kernel is still writing
            t = torch.zeros(n, device=dev)
            torch.cuda.synchronize()
            busy_then_fill(t, float(self.rank + 1))
            c.iallreduce(t, "sum").wait()
            want = self.size * (self.size + 1) / 2
            bad = int((t != want).sum())
            if bad:
                fails.append(f"iallreduce: {bad} of {n} elements not {want}")
            control = self.race_control(path, n, busy_then_fill)
            mine.append(row("race", "send/allreduce while a kernel writes", path, self.size,
                            "FAIL" if fails else "PASS",
                            "; ".join(fails) if fails else
                            f"64 MiB isend (snapshot and not) and iallreduce posted while a kernel "
                            f"wrote the tensor: every element final; control {control}"))
        return {"rows": self.gather_rows(mine)}

    def race_control(self, path: str, n: int, busy_then_fill) -> str:
        """The same send without a stream sync (raw mpi4py): whether stale bytes arrive."""
        torch, dev, MPI = self.torch, self.device, self.MPI
        world = MPI.COMM_WORLD
        tag = self.next_tag()
        value = 9.0
        stale = 0
        if self.rank == 0:
            t = torch.zeros(n, device=dev)
            torch.cuda.synchronize()
            busy_then_fill(t, value)
            if path == "staged":
                host = torch.full((n,), -1.0, pin_memory=True)
                host.copy_(t, non_blocking=True)  # no sync before MPI reads it
                world.Send(MPI.buffer.fromaddress(host.data_ptr(), host.nbytes), 1, tag)
            else:
                world.Send(t, 1, tag)
            torch.cuda.synchronize()
        else:
            out = torch.full((n,), -1.0)
            world.Recv(MPI.buffer.fromaddress(out.data_ptr(), out.nbytes), 0, tag)
            stale = int((out != value).sum())
        stale = self.base.allgather_object(stale)[1]
        return (f"(no sync): {stale} of {n} elements stale, so this check can see the race"
                if stale else "(no sync) saw no stale bytes either: the race was not provoked "
                "here, so this PASS proves less")

    # ---------------------------------------------------------------- placement
    def placement(self) -> dict:
        torch, dev = self.torch, self.device
        from mpidist.comm import Communicator
        ngpu = torch.cuda.device_count() if dev.type == "cuda" else 0
        cur = torch.cuda.current_device() if dev.type == "cuda" else -1
        mine = {"rank": self.rank, "local": self.local, "nlocal": self.nlocal, "device": str(dev),
                "current": cur, "ngpu": ngpu}
        every = self.base.allgather_object(mine)
        problems = []
        for e in every:
            if dev.type == "cuda":
                want = e["local"] % e["ngpu"]
                if e["device"] != f"cuda:{want}" or e["current"] != want:
                    problems.append(f"rank {e['rank']} (local {e['local']}) on {e['device']}, "
                                    f"current {e['current']}, want cuda:{want}")
            if e["nlocal"] != self.size:
                problems.append(f"rank {e['rank']}: {e['nlocal']} node-local ranks, "
                                f"want {self.size}")
        c = Communicator(timeout=60.0)
        n = 1 << 18
        nxt, prv = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        out = torch.zeros(n, dtype=torch.int64, device=dev)
        src = torch.arange(n, dtype=torch.int64, device=dev) + self.rank * n
        tag = self.next_tag()
        for h in (c.irecv(out, prv, tag), c.isend(src, nxt, tag)):
            h.wait()
        want = torch.arange(n, dtype=torch.int64) + prv * n
        if not torch.equal(out.cpu(), want):
            problems.append(f"rank {self.rank}: ring message from {prv} wrong")
        t = torch.full((n,), self.rank + 1, dtype=torch.int64, device=dev)
        c.iallreduce(t).wait()
        if not bool((t.cpu() == self.size * (self.size + 1) // 2).all()):
            problems.append(f"rank {self.rank}: allreduce != {self.size * (self.size + 1) // 2}")
        problems = sum(self.base.allgather_object(problems), [])
        devices = ", ".join(f"{e['rank']}->{e['device']}" for e in every)
        path = "cpu" if dev.type == "cpu" else ("cuda-aware" if c.cuda_aware else "staged")
        return {"rows": [row("placement", f"device per local rank, {self.size} ranks, "
                                          f"{ngpu} GPU(s)", path, self.size,
                             "FAIL" if problems else "PASS",
                             "; ".join(problems)[:600] if problems else
                             f"{devices}; ring exchange and allreduce on them exact")]}

    # ---------------------------------------------------------------- bandwidth
    def bandwidth(self) -> dict:
        torch, dev = self.torch, self.device
        from mpidist.comm import Communicator, aligned_empty
        ways = [("cpu", Communicator(timeout=120.0), torch.device("cpu"))]
        skipped = []
        if dev.type == "cuda":
            for path, c, why in self.paths():
                if c is None:
                    skipped.append(row("bandwidth", "device buffers", path, self.size, "SKIP", why))
                else:
                    ways.append((path, c, dev))
        peer = 1 - self.rank
        points = []
        for size in self.args.sizes:
            reps = max(5, min(200, (256 << 20) // size))
            p = {"size": size}
            for name, c, d in ways:
                buf = aligned_empty(size, torch.uint8, d).fill_(1)
                times = []
                for i in range(reps + 2):
                    tag = self.next_tag() if i == 0 else self.tag
                    t0 = time.perf_counter()
                    if self.rank == 0:
                        c.isend(buf, peer, tag, snapshot=False).wait()
                        c.irecv(buf, peer, tag).wait()
                    else:
                        c.irecv(buf, peer, tag).wait()
                        c.isend(buf, peer, tag, snapshot=False).wait()
                    if i >= 2:
                        times.append(time.perf_counter() - t0)
                times.sort()
                one_way = times[len(times) // 2] / 2
                p[name] = (one_way * 1e6, size / one_way / 1e9)
            points.append(p)
        return {"rows": skipped, "points": points, "ways": [w[0] for w in ways]}


if __name__ == "__main__":
    sys.exit(main())
