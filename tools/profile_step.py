"""Step overhead: the fraction of a training step spent outside the forward pass, the backward pass,
the algorithm's update and blocked communication, for each algorithm's default run (2 ranks).

    python tools/profile_step.py                    # every algorithm, 2 ranks, 300 steps each
    python tools/profile_step.py dpsgd pcasgd --steps 600
    python tools/profile_step.py dada --detail      # also the heaviest overhead lines

Not an MPI program itself: for each algorithm it launches ``mpiexec -n 2 python
tools/profile_step.py --worker <algorithm> ...``; each rank runs ``python -m mpidist.<algorithm>
--steps T`` (its default run, cut to T steps, ``--eval-every`` past the end; PC-ASGD with one
cluster of 2) in-process under a **sampling profiler**: a timer signal (``SIGALRM`` every
``--interval`` seconds, default 0.5 ms) whose handler reads the main thread's Python stack and
charges the wall time since the previous sample to it. Python runs the handler in the main thread
at its next bytecode check, so the time of a long C call (a torch kernel, an MPI call) goes to the
line that made it or, when that check comes only in the caller, to the line after it; no sampling
thread competes with the ranks for the 2 cores or the GIL; the handler's own time is left out of
every total. (An estimate, not a trace: ~0.5 ms resolution, and the split between neighbouring
lines uncertain, so fractions below 1 % move by a few tenths between runs.)

The window is the steps themselves: from the end of the first step to the start of the last
step's ``mpidist.loop.Loop.end_step`` (the steps between with their own ``end_step``: progress,
the trace's step, the ranks' meetings), so start-up, the first step and the end are left out.
Each sample is classified by its innermost frame that falls in one of these, in this order:

| class | frames |
|---|---|
| wait (blocked communication) | ``mpidist/handles.py`` ``wait``, ``waitall``, ``_poll``; MD-GAN's server polling for the first feedback (``mdgan/exchange.py`` ``collect``) |
| mpi (communication) | a line of the comm files below that calls the MPI library without waiting (``Isend``, ``Irecv``, ``Test``, ``Start``, ``Iallreduce``, ...): the library copying a message or making progress |
| comm path (overhead) | the rest of ``mpidist/comm.py``, ``handles.py``, ``persistent.py``, ``buffers.py``, ``link.py``, ``trace*.py``: mpidist's own Python per message |
| backward | ``torch/autograd/``, ``torch/_tensor.py`` (``backward``) |
| forward | ``torch/nn/`` (modules and ``functional``: the model and its loss) |
| update | ``torch/optim/``, the algorithm's ``rules.py`` and ``optimizer.py`` (the paper's update rule), ``buffers.py`` ``zero_grad`` (the flat gradient's zeroing, torch.optim's ``zero_grad``) |
| data (overhead) | ``mpidist/data.py``: drawing the step's batch (indexing the data set in memory) |
| other (overhead) | anything else: the algorithm's driver, metrics, progress, ``.item()`` |

Overhead = comm path + data + other, as a fraction of the window; the goal of issue 15 is <= 5 %.
The column ``+mpi`` adds the time in MPI calls that do not wait, for a reader who counts the
library's own work as overhead too. Both are printed per rank and algorithm. On a machine busy
with other work the figures move: the waits grow (a peer descheduled) and the fractions of the
rest shrink with them; say so beside any figure.
"""
from __future__ import annotations

import argparse
import json
import linecache
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL = 0.05
CLASSES = ("forward", "backward", "update", "wait", "mpi", "comm path", "data", "other")
OVERHEAD = ("comm path", "data", "other")   # mpidist's own Python, the batch, the driver
COMM_FILES = ("comm.py", "handles.py", "persistent.py", "buffers.py", "link.py", "trace.py",
              "trace_writer.py", "trace_commit.py", "trace_format.py")
WAITS = ("wait", "waitall", "_poll")
# calls into the MPI library from mpidist's comm files: a sample taken at such a line is time the
# library spent (copying a message into shared memory, progress in a Test), not mpidist's Python
MPI_CALLS = (".Isend(", ".Irecv(", ".Test(", ".Start(", ".Startall(", ".Iallreduce(", ".Ibcast(",
             ".Ibarrier(", ".Iallgather(", ".Iallgatherv(", ".Cancel(", ".Wait(")
# polling loops of the algorithms that wait for the first of several messages
POLLS = {("mdgan/exchange.py", "collect")}


def classify_frame(filename: str, func: str, line: str = ""):
    """The class of one frame (``None``: look further out); ``line``: its source line."""
    f = filename.replace(os.sep, "/")
    if "/mpidist/" in f:
        base = f.rsplit("/", 1)[-1]
        if base == "handles.py" and func in WAITS:
            return "wait"
        if any(f.endswith("/mpidist/" + path) and func == fn for path, fn in POLLS):
            return "wait"
        if base == "data.py":
            return "data"
        if base in ("rules.py", "optimizer.py") or (base, func) == ("buffers.py", "zero_grad"):
            return "update"
        if base in COMM_FILES and "/mpidist/analysis/" not in f:
            return "mpi" if any(c in line for c in MPI_CALLS) else "comm path"
        return None
    if "/torch/autograd/" in f or (f.endswith("/torch/_tensor.py") and func == "backward"):
        return "backward"
    if "/torch/nn/" in f:
        return "forward"
    if "/torch/optim/" in f:
        return "update"
    return None


def classify_stack(frames) -> str:
    """``frames``: (filename, function[, source line]) from the innermost outwards; the first
    class found."""
    for frame in frames:
        c = classify_frame(*frame)
        if c is not None:
            return c
    return "other"


def overhead(totals: dict) -> float:
    """The overhead fraction of class totals (seconds by class)."""
    whole = sum(totals.values())
    return sum(totals.get(c, 0.0) for c in OVERHEAD) / whole if whole else float("nan")


# ------------------------------------------------------------------ one rank (the worker)

class Sampler:
    """Wall time charged to the main thread's classified stack, inside the window, by a timer
    signal (``SIGALRM`` every ``interval`` seconds, ``setitimer``): Python runs the handler in the
    main thread at its next bytecode check, so a long C call is charged to the line that made it
    or to the line after it (see the module's docstring), and no sampling thread competes for the
    2 cores or the GIL. The handler's own time is left out of every total."""

    def __init__(self, interval: float):
        self.interval = interval
        self.totals = Counter()
        self.lines = Counter()      # (class, file:line function) of the innermost frame, overhead
        self.active = False
        self.steps = 0
        self.busy = False
        self.last = time.perf_counter()

    def _sample(self, signum, frame):
        if self.busy:  # a signal during the handler itself: its time is left out anyway
            return
        self.busy = True
        now = time.perf_counter()
        dt = now - self.last
        if self.active and frame is not None:
            frames, f = [], frame
            while f is not None:
                frames.append((f.f_code.co_filename, f.f_code.co_name, f.f_lineno))
                f = f.f_back
            c = classify_stack((a, b, linecache.getline(a, n or 0) if a.endswith(COMM_FILES)
                                else "") for a, b, n in frames)
            self.totals[c] += dt
            if c in OVERHEAD:
                a, b, n = frames[0]
                self.lines[f"{c:>9}  {os.path.relpath(a, ROOT)}:{n} {b}"] += dt
        self.last = time.perf_counter()
        self.busy = False

    def start(self):
        signal.signal(signal.SIGALRM, self._sample)
        signal.setitimer(signal.ITIMER_REAL, self.interval, self.interval)

    def stop(self):
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.active = False


def worker(a, rest):
    from mpi4py import MPI

    from inprocess import run_algorithm
    sampler = Sampler(a.interval)

    def wrap(original):
        def end_step(self, step, *args, **kw):
            # the window: from the end of the first step's end_step to the start of the last
            # one's (the steps between with their own end_step: progress, trace flush, meetings)
            last = self.is_last(step)
            if last:
                sampler.active = False
            out = original(self, step, *args, **kw)
            sampler.steps += 1
            sampler.active = not (out or last)
            return out
        return end_step
    sampler.start()
    code = run_algorithm(a.worker, rest, wrap)
    sampler.stop()
    rank = MPI.COMM_WORLD.Get_rank()
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "totals": dict(sampler.totals), "steps": sampler.steps,
                   "lines": sampler.lines.most_common(12), "exit": code}, fh)
    sys.exit(code)


# ------------------------------------------------------------------ the launcher

def mpiexec() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return exe if os.path.exists(exe) else (shutil.which("mpiexec") or "mpiexec")


def default_args(name: str, steps: int, trace_dir: str) -> list[str]:
    out = ["--steps", str(steps), "--trace-dir", trace_dir, "--quiet",
           "--eval-every", str(10 * steps + 1000)]
    if name == "pcasgd":
        out += ["--clusters", "2"]
    if name == "dada":
        out += ["--pretrain-steps", "20"]
    return out


def profile(name: str, steps: int, interval: float, timeout: float, where: str) -> list[dict]:
    out = os.path.join(where, name)
    os.makedirs(out)
    cmd = [mpiexec(), "-n", "2", sys.executable, os.path.abspath(__file__), "--worker", name,
           "--out", out, "--interval", str(interval), "--",
           *default_args(name, steps, os.path.join(out, "run"))]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"profile_step: {name} ran past {timeout:.0f} s") from None
    if p.returncode:
        raise SystemExit(f"profile_step: {' '.join(cmd)} failed (exit {p.returncode}):\n"
                         f"{(p.stderr or p.stdout)[-2000:]}")
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]


def main(argv=None):
    from mpidist.algorithms import ALGORITHMS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("algorithms", nargs="*", help=f"default: all ({', '.join(ALGORITHMS)})")
    ap.add_argument("--steps", type=int, default=300, help="steps per run (default 300)")
    ap.add_argument("--interval", type=float, default=0.0005,
                    help="sampling interval, seconds (default 0.0005)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    ap.add_argument("--detail", action="store_true",
                    help="also the heaviest lines of the overhead per rank")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args(argv)
    if a.worker:
        return worker(a, a.algorithms + rest)  # (everything after "--" lands in algorithms)
    names = a.algorithms or list(ALGORITHMS)
    unknown = [x for x in names if x not in ALGORITHMS]
    if unknown:
        ap.error(f"unknown algorithm(s) {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})")
    if a.steps < 3:
        ap.error("--steps must be >= 3")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"profile_step: 2 ranks, {a.steps} steps, sampling every {a.interval * 1e3:g} ms; "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at start", flush=True)
    where = tempfile.mkdtemp(prefix="mpidist-profile-")
    results = []
    try:
        for name in names:
            results.append((name, profile(name, a.steps, a.interval, a.timeout, where)))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"\n{'algorithm':>10} {'rank':>4} {'ms/step':>8} " + " ".join(f"{c:>9}" for c in CLASSES)
          + f" {'overhead':>9} {'goal <= 5%':>10} {'+mpi':>6}")
    for name, ranks in results:
        for r in ranks:
            t = r["totals"]
            whole = sum(t.values())
            timed = max(r["steps"] - 1, 1)
            ov = overhead(t)
            print(f"{name:>10} {r['rank']:>4} {whole / timed * 1e3:8.2f} "
                  + " ".join(f"{100 * t.get(c, 0.0) / whole:8.1f}%" if whole else f"{'-':>9}"
                             for c in CLASSES)
                  + f" {100 * ov:8.1f}% {'HOLDS' if ov <= GOAL else 'FAILS':>10}"
                  f" {100 * (ov + t.get('mpi', 0.0) / whole):5.1f}%")
            if a.detail:
                for line, sec in r["lines"]:
                    print(f"{'':>16}{100 * sec / whole:5.1f}%  {line}")
    print("(fractions of the steps' wall time, the sampler's own time left out; overhead = comm "
          "path + data + other; +mpi: with the time in MPI calls that do not wait (posting, Test) "
          "counted as overhead too; ms/step: the window over its steps)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} at the end" + (
        " (other work on the machine: the waits include time the peer was descheduled)"
        if load > 2.5 else ""))


if __name__ == "__main__":
    main()
