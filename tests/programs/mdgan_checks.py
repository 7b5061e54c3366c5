"""Multi-rank checks of mpidist.mdgan in ONE launch (tests/*/test_mdgan.py runs it):

    timeout 420 mpiexec -n 4 python tests/programs/mdgan_checks.py <scratch dir>
    timeout 240 mpiexec -n 1 python tests/programs/mdgan_checks.py <scratch dir> --standalone

Rank 0 prints one ``PASS <name> ...`` or ``FAIL <name> ...`` line per check:

- feedback_exact_mpi: one MD-GAN iteration through the real server/worker code and MPI (k = 2):
  the generator gradient the server assembled from the workers' F_n equals autograd on
  (1/N) sum_n B~(X_n^(g)) computed in one process with the workers' discriminators;
- an MD-GAN run (``mdgan.main``) with k = 2, swaps every 14 iterations and a crash every 15:
  its trace against Table III per iteration (server -> worker 2 b d values, worker -> server b d,
  each swap |theta|), every swap a derangement of the live workers (never via the server), the
  expected live workers at the end, the crash rows and the sample grid;
- an FL-GAN run: |theta| + |w| each way per worker and round;
- checkpoints: an MD-GAN run (k = 2, swaps, a crash, --checkpoint-every 4) stopped by a real
  SIGUSR1 on the crashed worker and resumed ends with bitwise the parameters of the uninterrupted
  run on every rank, its trace holding every iteration once; the same for FL-GAN (stopped at a
  round end); resuming with another -k, or past -I, is refused with one line;
- ``--standalone`` (one rank): a standalone run, and the same stop/resume check for it.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
import sys

import numpy as np
import torch

from mpidist import mdgan, runtime, trace
from mpidist.comm import FlatParams
from mpidist.models import count_parameters
from mpidist.models import gan as gan_models

import checks

OUT = sys.argv[1]
B, D_VALUES, N = 32, 16 * 16, 3
F32 = 4


def report(rank, name, ok, detail=""):
    if rank == 0:
        checks.line(ok, f"{name} {detail}")


def check_feedback_exact() -> None:
    argv = ["-I", "1", "-k", "2", "-b", "8", "--trace-dir", os.path.join(OUT, "fb"), "--quiet"]
    with runtime.start("mdgan", mdgan.build_parser(), argv, check=mdgan.check_world) as run:
        setup = mdgan.Setup(run)
        run.comm.step = 1
        if run.rank == 0:
            G, _ = setup.models()
            G0 = copy.deepcopy(G)  # w before the Adam step
            server = mdgan.MDGANServer(setup, run, G)
            server.iteration(1)
            got = server.fpG.grads.clone()
            init = []
            for n in range(1, setup.N + 1):  # every worker's initial theta_n
                buf = torch.empty_like(FlatParams(setup.models()[1]).params)
                run.comm.irecv(buf, n, 98, "check").wait()
                init.append(buf)
            same = all(torch.equal(init[0], x) for x in init[1:])
            report(0, "same_initial_discriminators", same, "Section IV-A: theta_n(0) alike")
            Ds = {}
            for n in range(1, setup.N + 1):  # the workers' D_n as they computed F_n
                D = setup.models()[1]
                run.comm.irecv(FlatParams(D).params, n, 99, "check").wait()
                Ds[n] = D
            server.finish()
            ref = mdgan.reference_generator_grad(G0, Ds, server.last_z, server.last_labels,
                                                 setup.k, setup.b)
            err = float((got - ref).abs().max())
            ok = (server.last_received == [1, 2, 3] and torch.allclose(got, ref, rtol=1e-5,
                                                                        atol=1e-7)
                  and float(ref.abs().sum()) > 0)
            report(0, "feedback_exact_mpi", ok, f"max |diff| {err:.2e} over {ref.numel()} "
                   f"values, |grad| {float(ref.abs().max()):.2e}")
        else:
            w = mdgan.MDGANWorker(setup, run)
            h = run.comm.isend(w.fpD.params, 0, 98, "check")  # snapshot of theta_n(0)
            w.iteration(1)
            h.wait()
            run.comm.isend(w.fpD.params, 0, 99, "check").wait()


def rows(r, channel, op):
    c = r.comm
    return c[(c["channel"] == channel.encode()) & (c["op"] == op.encode())]


def check_mdgan_run() -> None:
    d = os.path.join(OUT, "crash")
    I, every = 40, 15
    mdgan.main(["-I", str(I), "-k", "2", "-b", str(B), "--crash-every", str(every),
                "--score-every", "20", "--trace-dir", d, "--quiet"])
    from mpi4py import MPI  # only to know who reports; all messages went through mpidist.comm
    rank = MPI.COMM_WORLD.Get_rank()
    if rank != 0:
        return
    t = trace.read_run(d)
    status = [r.attrs.get("status") for r in t.ranks]
    last = int(t.ranks[0].metric("live_workers")[0].max())
    report(0, "mdgan_run_ok", status == ["ok"] * (N + 1) and last == I,
           f"status per rank {status}, server's last iteration {last} (I = {I})")
    theta = count_parameters(gan_models.build_pair("small", num_classes=10)[1])
    w = count_parameters(gan_models.build_pair("small", num_classes=10)[0])
    c3 = mdgan.table3_bytes("mdgan", N, B, D_VALUES, theta, w)
    sched = mdgan.crash_schedule(N, I, every, seed=0)
    srv = t.ranks[0]

    # server -> workers: 2 b d values to every worker live at the start of iteration i
    sent = rows(srv, "gen_batches", "send")
    bad = []
    for i in range(1, I + 1):
        live = mdgan.live_after(sched, N, i - 1)
        si = sent[sent["step"] == i]
        per = {n: int(si["nbytes"][si["peer"] == n].sum()) for n in set(si["peer"].tolist())}
        want = {n: c3["server_to_worker"] for n in live}
        if per != want or len(si) != 2 * len(live):
            bad.append((i, per, want))
    report(0, "table3_server_to_worker", not bad,
            f"{c3['server_to_worker']} B per live worker per iteration; mismatches {bad[:2]}")

    # workers -> server: b d values from every worker that did not stop in iteration i
    got = rows(srv, "feedback", "recv")
    bad = []
    for i in range(1, I + 1):
        live = mdgan.live_after(sched, N, i)
        gi = got[got["step"] == i]
        per = {int(p): int(n) for p, n in zip(gi["peer"], gi["nbytes"])}
        if per != {n: c3["worker_to_server"] for n in live}:
            bad.append((i, per))
    wsent = np.concatenate([rows(t.ranks[n], "feedback", "send") for n in range(1, N + 1)])
    ok = not bad and set(wsent["nbytes"].tolist()) == {c3["worker_to_server"]} and \
        set(wsent["peer"].tolist()) == {0}
    report(0, "table3_worker_to_server", ok,
            f"{c3['worker_to_server']} B per worker per iteration; mismatches {bad[:2]}")

    # swaps: a derangement of the live workers, |theta| each, worker to worker
    per_swap = mdgan.iterations_per_epoch(1438 // N, B)
    swap_steps = [i for i in range(1, I + 1) if i % per_swap == 0]
    ok_bytes, ok_perm, details = True, True, []
    for s in swap_steps:
        live = mdgan.live_after(sched, N, s)
        sends, recvs, n_rows = {}, {}, 0
        for n in range(1, N + 1):
            sr = rows(t.ranks[n], "swap", "send")
            rr = rows(t.ranks[n], "swap", "recv")
            for row in sr[sr["step"] == s]:
                sends[n] = int(row["peer"])
                ok_bytes &= int(row["nbytes"]) == c3["swap_per_worker"]
                n_rows += 1
            for row in rr[rr["step"] == s]:
                recvs[n] = int(row["peer"])
                ok_bytes &= int(row["nbytes"]) == c3["swap_per_worker"]
                n_rows += 1
        ok_bytes &= n_rows == 2 * len(live)  # one send and one receive per live worker
        perm_ok = (sorted(sends) == live and sorted(sends.values()) == live
                   and all(a != b for a, b in sends.items())
                   and recvs == {b: a for a, b in sends.items()}
                   and sends == mdgan.swap_permutation(live, 0, s // per_swap))
        ok_perm &= perm_ok
        details.append(f"it {s}: live {live} sends {sends}")
    ok_perm &= len(rows(srv, "swap", "send")) == 0 and len(rows(srv, "swap", "recv")) == 0
    # the swaps the trace holds (not the formula's): at iterations 14 and 28 (1438 // 3 samples
    # per worker, b = 32: 14 iterations per epoch), and nowhere else
    traced = sorted({int(s) for n in range(1, N + 1) for op in ("send", "recv")
                     for s in rows(t.ranks[n], "swap", op)["step"]})
    report(0, "table3_swap", ok_bytes and swap_steps == [14, 28] and traced == swap_steps,
           f"{c3['swap_per_worker']} B per worker per swap; swaps in the trace at {traced}, "
           f"expected {swap_steps}")
    report(0, "swap_permutation", ok_perm, "; ".join(details))

    # crashes: the schedule, the live workers at the end, who dropped when
    steps, _, live_vals = srv.metric("live_workers")
    cs, _, cv = srv.metric("crash")
    expect_live = N - len(sched)
    ok = (int(live_vals[-1]) == expect_live == 1 and int(steps[-1]) == I
          and [(int(a), int(b)) for a, b in zip(cs, cv)] == sched)
    report(0, "crash_live_workers", ok, f"live at the end {int(live_vals[-1])} (expected "
           f"{expect_live}), crashes {sched}")
    ok = True
    for it, n in sched:
        r = t.ranks[n]
        ls, _, _ = r.metric("loss_d")
        ok &= int(r.attrs.get("crashed_at", -1)) == it and int(ls.max()) == it - 1
        ok &= r.attrs.get("status") == "ok"
        algo = ~np.isin(r.comm["channel"], [b"control", b"barrier"])  # not the job's own rows
        ok &= len(r.comm[algo & (r.comm["step"] > it)]) == 0  # sends nothing more
    report(0, "crash_trace", ok, "crashed workers: attribute crashed_at, no rows after it")
    report(0, "samples_png", os.path.getsize(os.path.join(d, "samples.png")) > 1000)


def check_flgan_run() -> None:
    d = os.path.join(OUT, "flgan")
    mdgan.main(["--mode", "flgan", "-I", "30", "-b", str(B), "--score-every", "15",
                "--trace-dir", d, "--quiet"])
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() != 0:
        return
    t = trace.read_run(d)
    G, D = gan_models.build_pair("small", num_classes=10)
    c3 = mdgan.table3_bytes("flgan", N, B, D_VALUES, count_parameters(D), count_parameters(G))
    srv = t.ranks[0]
    ok, per_round = True, []
    rounds = sorted(set(rows(srv, "fl_params", "send")["step"].tolist()))
    for r in rounds:
        for op in ("send", "recv"):
            x = rows(srv, "fl_params", op)
            x = x[x["step"] == r]
            per = {n: int(x["nbytes"][x["peer"] == n].sum()) for n in range(1, N + 1)}
            ok &= per == {n: c3["server_to_worker"] for n in range(1, N + 1)}
            per_round.append(per[1])
    ok &= rounds == [14, 28, 30]  # a round's rows carry the iteration that ends it
    report(0, "flgan_table3", ok, f"{c3['server_to_worker']} B = (|theta| + |w|) x 4 each way "
           f"per worker and round; rounds {rounds}")


# ------------------------------------------------------------------ checkpoints and resume

ALGO_CHANNELS = [b"gen_batches", b"feedback", b"crash_notice", b"membership", b"swap",
                 b"fl_params"]


@contextlib.contextmanager
def signal_after(step: int, rank: int):
    """A real SIGUSR1 to rank ``rank`` (from itself) right after its ``run.step_done(step)``."""
    orig = runtime.Run.step_done

    def step_done(self, s):
        orig(self, s)
        if s == step and self.rank == rank:
            os.kill(os.getpid(), signal.SIGUSR1)
    runtime.Run.step_done = step_done
    try:
        yield
    finally:
        runtime.Run.step_done = orig


def _algo_rows(r):
    c = r.comm[np.isin(r.comm["channel"], ALGO_CHANNELS)]
    return sorted(zip(c["step"].tolist(), c["op"].tolist(), c["peer"].tolist(),
                      c["tag"].tolist(), c["channel"].tolist(), c["nbytes"].tolist()))


def compare_resumed(full_dir, resumed_dir, metrics_per_rank, every_once) -> tuple[bool, str]:
    """The resumed run against the uninterrupted one: the same params_sha256 on every rank, the
    same metric rows (steps and values, bit for bit), the same messages of the algorithm, and
    every step of ``every_once`` (rank 0's live_workers / loss) once."""
    full, res = trace.read_run(full_dir), trace.read_run(resumed_dir)
    bad = []
    for a, b in zip(full.ranks, res.ranks):
        if a.attrs.get("params_sha256") != b.attrs.get("params_sha256"):
            bad.append(f"rank {a.rank}: params sha256 {a.attrs.get('params_sha256', '')[:12]} vs "
                       f"{b.attrs.get('params_sha256', '')[:12]}")
        for name in metrics_per_rank(a.rank):
            sa, _, va = a.metric(name)
            sb, _, vb = b.metric(name)
            if not (np.array_equal(sa, sb) and np.array_equal(va, vb)):
                bad.append(f"rank {a.rank}: metric {name} differs ({len(sa)} vs {len(sb)} rows)")
        if _algo_rows(a) != _algo_rows(b):
            bad.append(f"rank {a.rank}: messages differ")
        if b.attrs.get("status") != "ok":
            bad.append(f"rank {a.rank}: status {b.attrs.get('status')}")
    name, steps = every_once
    got = res.ranks[0].metric(name)[0].tolist()
    if got != steps:
        bad.append(f"rank 0 {name} at steps {got}, expected {steps} once each")
    return not bad, "; ".join(bad[:6])


def check_resume_mdgan() -> None:
    """MD-GAN, N = 3, k = 2, b = 64 (a swap every 7 iterations), a crash at iteration 9,
    --checkpoint-every 4: a SIGUSR1 to the crashed worker after iteration 11 is agreed at the
    checkpoint of iteration 12, every rank saves and the job stops; resumed, it ends as the
    uninterrupted run. (The shared loop agrees right after step_done: a signal sent from
    step_done(10) would be agreed at the meeting point of iteration 10.)"""
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    I, every = 16, 9
    crashed = mdgan.crash_schedule(N, I, every, seed=0)[0][1]

    def argv(iterations=I, k=2):
        return ["-I", str(iterations), "-k", str(k), "-b", "64", "--crash-every", str(every),
                "--score-every", "8", "--checkpoint-every", "4", "--quiet"]
    common = argv()
    full, part = os.path.join(OUT, "ck_full"), os.path.join(OUT, "ck_part")
    mdgan.main(common + ["--trace-dir", full])
    with signal_after(11, crashed):
        mdgan.main(common + ["--trace-dir", part])
    if rank == 0:
        t = trace.read_run(part)
        status = {r.attrs.get("status") for r in t.ranks}
        ck = sorted(os.listdir(os.path.join(part, "checkpoints")))
        ok = (status == {"stopped by signal"} and ck == ["step-000000008", "step-000000012"]
              and t.ranks[0].metric("live_workers")[0].max() == 12)
        report(0, "mdgan_signal_stops_at_a_checkpoint", ok,
               f"SIGUSR1 on crashed worker {crashed} after it. 11: status {status}, "
               f"checkpoints {ck}")
    MPI.COMM_WORLD.Barrier()  # rank 0 has read the files before the resumed run reopens them
    mdgan.main(common + ["--trace-dir", part, "--resume", part])
    if rank == 0:
        ok, detail = compare_resumed(
            full, part, lambda r: (["live_workers", "score", "fid", "crash"] if r == 0
                                   else ["loss_d", "loss_g", "swap_to", "swap_from", "crash"]),
            ("live_workers", list(range(1, I + 1))))
        t = trace.read_run(part)
        ck = [list(r.metric("checkpoint")[0]) for r in t.ranks]
        ok &= all(c == [4, 8, 12, 16] for c in ck)
        swaps = sorted(set(np.concatenate([r.metric("swap_to")[0] for r in t.ranks[1:]])))
        ok &= swaps == [7, 14]
        report(0, "mdgan_resume_bitwise", ok,
               f"{detail}; checkpoints {[int(x) for x in ck[0]]}, swaps at "
               f"{[int(x) for x in swaps]}, params sha256 "
               f"{t.ranks[0].attrs.get('params_sha256', '')[:12]}")
    # another -k, or a checkpoint past -I: refused with one line, nothing started
    for key, other, want in (("k", argv(k=1), "-k 2 -> 1"), ("I", argv(iterations=8),
                                                               "past -I 8")):
        err, code = io.StringIO(), None
        with contextlib.redirect_stderr(err):
            try:
                mdgan.main(other + ["--trace-dir", os.path.join(OUT, f"refused_{key}"),
                                    "--resume", part])
            except SystemExit as e:
                code = e.code
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        ok = code == 2 and not os.path.exists(os.path.join(OUT, f"refused_{key}", "rank0.h5"))
        if rank == 0:
            ok &= len(lines) == 1 and want in lines[0]
        report(rank, f"mdgan_resume_refuses_other_{key}", ok, lines[0] if lines else f"exit {code}")


def check_resume_flgan() -> None:
    """FL-GAN, rounds ending at iterations 14, 28, 40, --checkpoint-every 10 (so at every round
    end): a SIGUSR1 to worker 2 after the first iteration of round 2 (iteration 15) is agreed at
    the end of round 2; resumed, the run ends as the uninterrupted one. (The shared loop agrees
    right after step_done: a signal sent from step_done(14) would be agreed at the end of round
    1.)"""
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    common = ["--mode", "flgan", "-I", "40", "-b", str(B), "--score-every", "14",
              "--checkpoint-every", "10", "--quiet"]
    full, part = os.path.join(OUT, "fl_full"), os.path.join(OUT, "fl_part")
    mdgan.main(common + ["--trace-dir", full])
    with signal_after(15, 2):
        mdgan.main(common + ["--trace-dir", part])
    stopped = None
    if rank == 0:
        t = trace.read_run(part)
        stopped = ({r.attrs.get("status") for r in t.ranks},
                   sorted(os.listdir(os.path.join(part, "checkpoints"))))
    MPI.COMM_WORLD.Barrier()  # rank 0 has read the files before the resumed run reopens them
    mdgan.main(common + ["--trace-dir", part, "--resume", part])
    if rank == 0:
        ok, detail = compare_resumed(
            full, part, lambda r: ["live_workers", "score", "fid"] if r == 0
            else ["loss_d", "loss_g"], ("live_workers", [14, 28, 40]))
        t = trace.read_run(part)
        ok &= all(list(r.metric("checkpoint")[0]) == [14, 28, 40] for r in t.ranks)
        ok &= stopped == ({"stopped by signal"}, ["step-000000014", "step-000000028"])
        report(0, "flgan_resume_bitwise", ok, f"{detail}; stopped run {stopped}")


def check_standalone() -> None:
    """One rank: a standalone run (printed for the pytest side), and its stop/resume."""
    common = ["--mode", "standalone", "-I", "20", "--score-every", "10", "--checkpoint-every",
              "5"]
    full, part = os.path.join(OUT, "sa"), os.path.join(OUT, "sa_part")
    mdgan.main(common + ["--trace-dir", full])
    with signal_after(7, 0):
        mdgan.main(common + ["--trace-dir", part, "--quiet"])
    t = trace.read_run(part)
    stopped = (t.ranks[0].attrs.get("status"), sorted(os.listdir(os.path.join(part,
                                                                               "checkpoints"))))
    mdgan.main(common + ["--trace-dir", part, "--resume", part, "--quiet"])
    ok, detail = compare_resumed(full, part, lambda r: ["loss_d", "loss_g", "score", "fid"],
                                 ("loss_d", list(range(1, 21))))
    ok &= stopped == ("stopped by signal", ["step-000000005", "step-000000010"])
    report(0, "standalone_resume_bitwise", ok, f"{detail}; stopped run {stopped}")


if __name__ == "__main__":
    if "--standalone" in sys.argv:
        check_standalone()
    else:
        check_feedback_exact()
        check_mdgan_run()
        check_flgan_run()
        check_resume_mdgan()
        check_resume_flgan()
    checks.finish()
