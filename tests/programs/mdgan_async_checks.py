"""Multi-rank checks of MD-GAN's asynchronous server (``--mode mdgan-async``) in ONE launch
(tests/mpi/test_mdgan_async.py runs it):

    timeout 600 mpiexec -n 4 python tests/programs/mdgan_async_checks.py <scratch dir>

Server + N = 3 workers on the embedded digits (N E m / b = 3 x 14 = 42 updates between
meetings). Rank 0 prints one ``PASS``/``FAIL`` line per check (tests/programs/checks.py) and a
``CASE`` line per refused input (tests/programs/bad_cases.py):

1. a run of I = 84 updates with worker 2 slowed (``--slow-worker 2:0.25``) and
   ``--checkpoint-every 42``:
   - async_run_ok: every rank's trace closed "ok", the server's ``generator_updates`` = I;
   - async_feedback_applied_once: the server's feedback receives = its updates = I; the pairs
     (worker, step of the F_n) of its updates (``feedback_from``, step u - ``staleness``) equal,
     as multisets, those of its feedback receive rows and those of the workers' feedback send
     rows; each worker's ``iterations`` attribute = its feedback sends;
   - async_messages_matched: every send has its receive (per sender, receiver, tag, channel) and
     the other way round: nothing left in flight;
   - async_lr_staleness: every update's ``lr_scale`` = 1 / max(1, staleness), staleness >= 0;
   - async_slow_worker: each fast worker answered more tickets than the slow one (counts from
     the trace);
   - async_swap_at_meeting: the swaps happened at update 42 only, a derangement of the workers;
   - async_blocked_intervals: the server's blocked intervals [t_wait, t_done] of its feedback
     receives never overlap (one wait-any at a time, given to the operation that ended it);
2. async_resume: the checkpoint of update 42 resumed with -I 126: 126 updates, every update
   step 1..126 once in the server's trace;
3. async_crash: I = 60, ``--crash-every 25``: the workers of the crash schedule stop (notice
   rows, ``crashed_at`` >= its iteration, no feedback after it), the server's ``crash`` rows name
   them in order, 1 worker live at the end, still 60 updates each from one F_n;
4. bad combinations (exit 2 on every rank, one line, nothing written).
"""
from __future__ import annotations

import collections
import os
import sys

import numpy as np

from mpidist import mdgan, trace
from mpidist.mdgan.rules import crash_schedule

import checks
from bad_cases import run_case

OUT = sys.argv[1]
N = 3
PERIOD = 42


def report(rank, name, ok, detail=""):
    if rank == 0:
        checks.line(ok, f"{name} {detail}")


def rows(r, op, channel):
    c = r.comm
    return c[(c["op"] == op.encode()) & (c["channel"] == channel.encode())]


def applied_once(t, I):
    """(ok, detail): every F_n the server received was applied exactly once (see the docstring)."""
    srv = t.ranks[0]
    rec = rows(srv, "recv", "feedback")
    steps, _, who = srv.metric("feedback_from")
    _, _, tau = srv.metric("staleness")
    from_updates = collections.Counter(zip(who.astype(int).tolist(),
                                           (steps - tau.astype(int)).tolist()))
    from_recv = collections.Counter(zip(rec["peer"].tolist(), rec["step"].tolist()))
    from_workers = collections.Counter()
    iters_ok = True
    for r in t.ranks[1:]:
        s = rows(r, "send", "feedback")
        from_workers.update((r.rank, int(x)) for x in s["step"])
        iters_ok &= int(r.attrs.get("iterations", -1)) == len(s)
    ok = (len(rec) == len(steps) == int(srv.attrs.get("generator_updates", -1)) == I
          and list(steps) == list(range(1, I + 1))
          and from_updates == from_recv == from_workers and iters_ok)
    return ok, (f"receives {len(rec)}, updates {len(steps)}, generator_updates "
                f"{srv.attrs.get('generator_updates')}, I {I}, multisets equal "
                f"{from_updates == from_recv}/{from_recv == from_workers}, iterations {iters_ok}")


def matched(t):
    c = t.comm
    count = collections.Counter()
    for x in c[(c["op"] == b"send") | (c["op"] == b"recv")]:
        src, dst = (int(x["rank"]), int(x["peer"])) if x["op"] == b"send" else \
            (int(x["peer"]), int(x["rank"]))
        count[(src, dst, int(x["tag"]), bytes(x["channel"]))] += 1 if x["op"] == b"send" else -1
    bad = {k: v for k, v in count.items() if v}
    return not bad, f"unmatched (src, dst, tag, channel): sends - receives {bad}"


def slow_run(rank):
    d = os.path.join(OUT, "slow")
    I = 2 * PERIOD
    mdgan.main(["--mode", "mdgan-async", "-I", str(I), "--slow-worker", "2:0.25",
                "--checkpoint-every", str(PERIOD), "--trace-dir", d, "--quiet"])
    if rank != 0:
        return
    t = trace.read_run(d)
    status = [r.attrs.get("status") for r in t.ranks]
    report(0, "async_run_ok", status == ["ok"] * (N + 1)
           and int(t.ranks[0].attrs.get("generator_updates", -1)) == I,
           f"status {status}, updates {t.ranks[0].attrs.get('generator_updates')}")
    report(0, "async_feedback_applied_once", *applied_once(t, I))
    report(0, "async_messages_matched", *matched(t))
    _, _, tau = t.ranks[0].metric("staleness")
    _, _, scale = t.ranks[0].metric("lr_scale")
    report(0, "async_lr_staleness", len(tau) == I and bool(np.all(tau >= 0))
           and np.allclose(scale, 1.0 / np.maximum(1, tau), rtol=0, atol=1e-12),
           f"staleness {collections.Counter(tau.astype(int).tolist())}")
    iters = {r.rank: int(r.attrs.get("iterations", -1)) for r in t.ranks[1:]}
    report(0, "async_slow_worker", iters[1] > iters[2] and iters[3] > iters[2],
           f"tickets answered per worker {iters} (worker 2 sleeps 0.25 s per iteration)")
    perm, steps_ok = {}, True
    for r in t.ranks[1:]:
        s, _, to = r.metric("swap_to")
        steps_ok &= list(s) == [PERIOD]
        if len(to):
            perm[r.rank] = int(to[0])
    report(0, "async_swap_at_meeting", steps_ok and sorted(perm) == [1, 2, 3]
           and sorted(perm.values()) == [1, 2, 3] and all(k != v for k, v in perm.items()),
           f"swaps {perm} at step {PERIOD}")
    rec = rows(t.ranks[0], "recv", "feedback")
    rec = rec[np.isfinite(rec["t_wait"])]
    order = np.argsort(rec["t_wait"])
    a, b = rec["t_wait"][order], rec["t_done"][order]
    report(0, "async_blocked_intervals", len(rec) > 0 and bool(np.all(a[1:] >= b[:-1])),
           f"{len(rec)} blocked feedback waits on the server")


def resume_run(rank):
    d = os.path.join(OUT, "slow")
    I = 3 * PERIOD
    mdgan.main(["--mode", "mdgan-async", "-I", str(I), "--slow-worker", "2:0.25",
                "--checkpoint-every", str(PERIOD), "--resume", d, "--quiet"])
    if rank != 0:
        return
    t = trace.read_run(d)
    steps, _, _ = t.ranks[0].metric("feedback_from")
    report(0, "async_resume", list(steps) == list(range(1, I + 1))
           and int(t.ranks[0].attrs.get("generator_updates", -1)) == I,
           f"update steps {steps.min() if len(steps) else None}..{steps.max() if len(steps) else None}"
           f" ({len(steps)} rows), generator_updates {t.ranks[0].attrs.get('generator_updates')}")


def crash_run(rank):
    d = os.path.join(OUT, "crash")
    I, T = 60, 25
    mdgan.main(["--mode", "mdgan-async", "-I", str(I), "--crash-every", str(T),
                "--trace-dir", d, "--quiet"])
    if rank != 0:
        return
    t = trace.read_run(d)
    sched = crash_schedule(N, I, T, 0)
    srv = t.ranks[0]
    cs, _, cw = srv.metric("crash")
    ok = [int(w) for w in cw] == [w for _, w in sched] and all(
        s >= it - 1 for s, (it, _) in zip(cs, sched))
    for it, w in sched:
        r = t.ranks[w]
        at = int(r.attrs.get("crashed_at", -1))
        fb = rows(r, "send", "feedback")["step"]
        ok &= at >= it and (len(fb) == 0 or int(fb.max()) < at)
        ok &= len(rows(r, "send", "crash_notice")) == 1
    _, _, live = srv.metric("live_workers")
    ok1, why = applied_once(t, I)
    ok2, why2 = matched(t)
    report(0, "async_crash", ok and ok1 and ok2 and int(live[-1]) == N - len(sched)
           and [r.attrs.get("status") for r in t.ranks] == ["ok"] * (N + 1),
           f"schedule {sched}, server's crash rows {list(zip(cs.tolist(), cw.tolist()))}, "
           f"crashed_at {[t.ranks[w].attrs.get('crashed_at') for _, w in sched]}, live at the "
           f"end {live[-1] if len(live) else None}; {why}; {why2}")


BAD = {
    "async_slow_worker_not_a_worker": ["--mode", "mdgan-async", "--slow-worker", "4:1"],
    "slow_worker_under_flgan": ["--mode", "flgan", "--slow-worker", "1:1"],
    "slow_worker_malformed": ["--mode", "mdgan-async", "--slow-worker", "1"],
    "async_lr_without_async": ["--async-lr", "workers"],
    "async_k_above_n": ["--mode", "mdgan-async", "-k", "4"],
}


def main():
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    slow_run(rank)
    resume_run(rank)
    crash_run(rank)
    for name, argv in BAD.items():
        run_case(name, os.path.join(OUT, "bad", name),
                 lambda d: mdgan.main(argv + ["--trace-dir", d, "-I", "4", "--quiet"]))
    checks.finish()


if __name__ == "__main__":
    main()
