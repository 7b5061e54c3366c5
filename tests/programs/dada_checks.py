"""Multi-rank checks of mpidist.dada, batched into one mpiexec launch (2 or 3 ranks).

    timeout 300 mpiexec -n 2 python tests/programs/dada_checks.py --out /tmp/dada-checks

Runs several short DADA configurations through mpidist.runtime (real traced MPI exchanges), each
into its own run directory under --out, and prints one line per check on rank 0:
``PASS <name>`` or ``FAIL <name>: <detail>`` (tests/*/test_dada.py parses them). A failing check does
not stop the others. Per-step comparisons across ranks use hashes gathered outside the trace.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import traceback

import numpy as np
import torch

from mpidist import dada, runtime, trace
from mpidist.comm import Communicator

import checks

B = 16  # batch size of every run here (the forbidden message sizes follow from it)

# The sizes every run here must move, from the networks' layers (ADDA, Tzeng et al.: LeNet's
# E = conv5x5(20)-conv5x5(50)-FC(500), C = FC(10), D = FC(500)-FC(500)-FC(1)) on the default task's
# 16x16 one-channel digits (the first convolution padded by 2: 50 x 2 x 2 = 200 flat features),
# float32: counted here, not read from the run.
FEAT, HID, CLASSES = 500, 500, 10
D_PARAMS = (FEAT * HID + HID) + (HID * HID + HID) + (HID + 1)             # 501,501
E_PARAMS = (1 * 20 * 25 + 20) + (20 * 50 * 25 + 50) + (200 * FEAT + FEAT)  # 126,070
C_PARAMS = FEAT * CLASSES + CLASSES                                        # 5,010
D_BYTES = 4 * D_PARAMS
INIT_BYTES = 4 * (E_PARAMS + C_PARAMS + D_PARAMS)
SMALL = ["--quiet", "--batch-size", str(B), "--pretrain-steps", "20", "--eval-every", "1000"]


def digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class Recorder:
    """A per-step hook: the hash of D's weights (and MA's D_sync) on every rank, gathered."""

    def __init__(self, comm):
        self.comm, self.d, self.sync = comm, [], []
        self.last_d = self.last_e = None

    def __call__(self, n, ctx):
        # the test's own gathering goes around the traced layer (comm.mpi): it is not DADA's traffic
        self.d.append(self.comm.mpi.allgather(digest(ctx.fp.params)))
        if ctx.rule.d_sync is not None:
            self.sync.append(self.comm.mpi.allgather(digest(ctx.rule.d_sync)))
        self.last_d = ctx.fp.params.clone()
        fpE = getattr(ctx.node, "fpE", None)
        self.last_e = fpE.params.clone() if fpE is not None else None


class Checks:
    def __init__(self, out):
        self.out, self.rank, self.failed = out, None, 0
        self.runs = {}
        self.world = Communicator()

    def report(self, name, ok, detail=""):
        if self.world.rank == 0:
            checks.report(name, ok, detail)
        self.failed += not ok

    def guard(self, name, fn):
        """Run one check's evaluation; an exception is a FAIL with its message (rank-local
        exceptions are gathered so that every rank agrees)."""
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001
            ok, detail = False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        oks = self.world.allgather_object((ok, detail))
        bad = [d for o, d in oks if not o]
        self.report(name, not bad, " | ".join(bad)[:3000])

    def run(self, key, argv, hook=True, tdir=None, signal_at=None):
        """One DADA run into <out>/<key> (or ``tdir``); returns (result, recorder).
        ``signal_at=(step, rank)``: that rank gets a stop signal (as from SIGUSR1) at that step."""
        rec = None
        tdir = tdir or os.path.join(self.out, key)
        with runtime.start("dada", dada.make_parser(), argv + ["--trace-dir", tdir],
                           check=dada.check, may_change=dada.RESUME_MAY_CHANGE) as run:
            rec = Recorder(run.comm) if hook else None

            def on_step(n, ctx):
                if rec is not None:
                    rec(n, ctx)
                if signal_at is not None and (n, run.rank) == signal_at:
                    run.stop_signal = 10
            res = dada.adapt_distributed(run, on_step=on_step)
        res["trace_dir"] = tdir
        self.runs[key] = (argv, res, rec)
        return res, rec


def all_same(hashes) -> bool:
    return len(set(hashes)) == 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true",
                    help="GA p = 2, sync (against centralized ADDA), Naive and the trace "
                         "checks only")
    a = ap.parse_args()
    full = not a.quick
    C = Checks(a.out)
    n = C.world.size
    k = n - 1
    rot = ["--rotation"] + [str(60 * (i + 1)) for i in range(k)]
    steps = 8

    # ---- GA, p = 2: D identical on every rank after every step
    ga2, rec = C.run("ga2", SMALL + rot + ["--strategy", "ga", "--sync-period", "2",
                                           "--steps", str(steps)])
    C.guard("ga_identical_every_step", lambda: (
        all(all_same(h) for h in rec.d) and len(rec.d) == steps,
        f"steps where D differs: {[i + 1 for i, h in enumerate(rec.d) if not all_same(h)]}"))
    C.guard("ga_d_changes_only_at_syncs", lambda: (
        all((rec.d[i][0] != rec.d[i - 1][0]) == ((i + 1) % 2 == 0) for i in range(1, steps)),
        "D changed on a local step or stayed on a sync-up step"))

    # ---- sync vs GA p = 1: the same bits
    sync, rs = C.run("sync", SMALL + rot + ["--strategy", "sync", "--steps", "6"])
    if full:
        ga1, r1 = C.run("ga1", SMALL + rot + ["--strategy", "ga", "--sync-period", "1",
                                              "--steps", "6"])
        C.guard("ga_p1_equals_sync", lambda: (rs.d == r1.d and all(all_same(h) for h in rs.d),
                                               "GA with p = 1 and sync differ"))
        C.guard("ga_p1_same_adapted_accuracy", lambda: (
            sync["after"] == ga1["after"] or C.world.rank == 0,
            f"{sync['after']} vs {ga1['after']}"))

    # ---- sync vs the centralized ADDA reference (one process, one D)
    def centralized_matches():
        argv = SMALL + rot + ["--steps", "6", "--centralized"]
        args = dada.make_parser().parse_args(argv)
        ref = dada.adapt_centralized(args, torch.device("cpu"))
        return _compare_with_reference(C, ref, sync, rs)
    C.guard("sync_equals_centralized_adda", centralized_matches)

    # ---- Naive: different between syncs, equal right after a sync
    nv, rn = C.run("naive3", SMALL + rot + ["--strategy", "naive", "--sync-period", "3",
                                            "--steps", "7"])
    C.guard("naive_equal_after_sync_different_between", lambda: (
        all(all_same(rn.d[i]) == ((i + 1) % 3 == 0) for i in range(7)),
        f"equal at steps {[i + 1 for i in range(7) if all_same(rn.d[i])]}, expected 3, 6"))

    if full:
        # ---- MA: D_sync identical everywhere; D equal at syncs, pulled but different between
        ma, rm = C.run("ma3", SMALL + rot + ["--strategy", "ma", "--sync-period", "3",
                                             "--steps", "7"])
        C.guard("ma_dsync_identical_and_updated_at_syncs", lambda: (
            all(all_same(h) for h in rm.sync)
            and [rm.sync[i][0] != rm.sync[i - 1][0] for i in range(1, 7)]
            == [(i + 1) % 3 == 0 for i in range(1, 7)],
            "D_sync differs across ranks or changes off the sync-up steps"))
        C.guard("ma_equal_after_sync_different_between", lambda: (
            all(all_same(rm.d[i]) == ((i + 1) % 3 == 0) for i in range(7)),
            f"equal at steps {[i + 1 for i in range(7) if all_same(rm.d[i])]}"))

        # ---- D-PSGD: weights averaged every step, local gradient after: never equal
        dp, rd = C.run("dpsgd", SMALL + rot + ["--strategy", "dpsgd", "--steps", "4"])
        C.guard("dpsgd_differs_every_step", lambda: (not any(all_same(h) for h in rd.d),
                                                      "D equal across ranks after a D-PSGD step"))

        # ---- GA p = 4 for the cost curve
        ga4, _ = C.run("ga4", SMALL + rot + ["--strategy", "ga", "--sync-period", "4",
                                             "--steps", str(steps)], hook=False)

    if full:
        # ---- checkpoint after step 6 and resume: the same bits as the uninterrupted run
        base = SMALL + rot + ["--strategy", "ma", "--sync-period", "4"]
        _, r_full = C.run("ckpt_full", base + ["--steps", "10"])
        C.run("ckpt_part", base + ["--steps", "6", "--checkpoint-every", "3"])
        part_dir = C.runs["ckpt_part"][1]["trace_dir"]
        res_r, r_res = C.run("ckpt_resumed", base + ["--steps", "10", "--resume", part_dir],
                             tdir=part_dir)
        C.guard("resume_continues_bitwise", lambda: (
            torch.equal(r_full.last_d, r_res.last_d)
            and (r_full.last_e is None or torch.equal(r_full.last_e, r_res.last_e))
            and r_full.d[6:] == r_res.d and res_r["steps_run"] == 4,
            f"resumed run differs from the uninterrupted one (ran {res_r['steps_run']} steps)"))
        C.guard("resume_continues_the_trace", lambda: _resumed_trace(part_dir, 10))
        del C.runs["ckpt_part"]  # its trace now holds the resumed part too (checked just above)

        # ---- a stop signal on one rank: agreed at the next agreement step, saved, stopped
        res_s, _ = C.run("stop", SMALL + rot + ["--strategy", "sync", "--steps", "30"],
                         hook=False, signal_at=(3, n - 1))
        C.guard("stop_signal_checkpoints_and_stops", lambda: (
            res_s["stopped"] and res_s["steps_run"] == dada.STOP_AGREEMENT_SYNCS
            and os.path.exists(os.path.join(res_s["trace_dir"], "checkpoints",
                                            f"step-{dada.STOP_AGREEMENT_SYNCS:09d}",
                                            "MANIFEST.json")),
            f"stopped {res_s['stopped']} after {res_s['steps_run']} steps"))
        del C.runs["stop"]  # stopped early: no report row, not one of the runs checked below

    # ---- the traces
    C.world.barrier()
    C.guard("trace_bytes_per_sync_equal_d_size", lambda: _bytes_per_sync(C))
    if full:
        C.guard("trace_cost_falls_as_1_over_p", lambda: _cost_curve(C, steps))
    C.guard("trace_nothing_but_d_after_initial_transfer", lambda: _only_d(C))
    C.guard("trace_initial_transfer_once", lambda: _init_once(C))
    C.guard("every_target_reports", lambda: (
        C.world.rank != 0 or ([t[1] for t in ga2["targets"]] == [60.0 * (i + 1) for i in range(k)]
                              and all(0 <= t[2] <= 1 and 0 <= t[3] <= 1 for t in ga2["targets"])),
        f"targets reported {ga2.get('targets')}"))

    # ---- usage errors: every rank exits 2
    usage = (("usage_missing_data_root", ["--task", "mnist-usps"]),
             ("usage_centralized_needs_one_rank", ["--centralized"]),
             ("usage_sync_with_period", ["--strategy", "sync", "--sync-period", "3"]))
    for name, argv in usage if full else ():
        code = None
        try:
            dada.main(argv + ["--trace-dir", os.path.join(a.out, name)])
        except SystemExit as e:
            code = e.code
        C.guard(name, lambda code=code: (code == 2, f"exit code {code}"))

    # ---- the entry point itself, as `mpirun -n 2 python -m mpidist.dada` runs it (its summary
    # and trace are checked by tests/*/test_dada.py)
    if full:
        dada.main(["--steps", "40", "--pretrain-steps", "50", "--eval-every", "20",
                   "--trace-dir", os.path.join(a.out, "cli")])

    if C.world.rank == 0:
        print(f"checks done: {C.failed} failed", flush=True)


def _compare_with_reference(C, ref, res, rec):
    """The sync run's final D (every rank) and E_t (each target) against the one-process ADDA
    reference with the same seed, data and batches (equal up to float summation order)."""
    d_local, e_local = rec.last_d, rec.last_e
    err_d = float((d_local - ref["disc"]).abs().max())
    ok = torch.allclose(d_local, ref["disc"], rtol=1e-4, atol=1e-5)
    detail = f"rank {C.world.rank}: max |D - D_ref| = {err_d:.3g}"
    if C.world.rank > 0:
        e_ref = ref["extractors"][C.world.rank - 1]
        err_e = float((e_local - e_ref).abs().max())
        ok = ok and torch.allclose(e_local, e_ref, rtol=1e-4, atol=1e-5)
        detail += f", max |E_t - E_t,ref| = {err_e:.3g}"
        ok = ok and abs(res["after"] - ref["targets"][C.world.rank - 1][3]) <= 1.5 / 359
    return ok, detail


def _rows(tdir):
    return trace.read_run(tdir)


def _bytes_per_sync(C):
    problems = []
    for key, (argv, res, _) in C.runs.items():
        run = _rows(res["trace_dir"])
        dbytes = D_BYTES
        if res["disc_bytes"] != D_BYTES:
            problems.append(f"{key}: the run reports D of {res['disc_bytes']} bytes, its layers "
                            f"hold {D_BYTES}")
        for r in run.ranks:
            rows = r.comm[np.char.startswith(r.comm["channel"], b"disc_")]
            # one allreduce of D's size per sync-up step, nothing point to point
            if set(rows["op"]) - {b"allreduce"}:
                problems.append(f"{key} rank {r.rank}: ops {set(rows['op'])} on disc_*")
            sel = rows[rows["op"] == b"allreduce"]
            if len(sel) != res["syncs"]:
                problems.append(f"{key} rank {r.rank}: {len(sel)} allreduce rows, expected "
                                f"{res['syncs']}")
            if not (sel["nbytes"] == dbytes).all():
                problems.append(f"{key} rank {r.rank}: sizes {set(sel['nbytes'])} != D's {dbytes}")
            strategy = res["strategy"]
            steps = sorted(int(s) for s in sel["step"])
            n_steps = int(argv[argv.index("--steps") + 1])
            want = [m for m in range(1, n_steps + 1) if strategy.is_sync_step(m)]
            if steps != want:
                problems.append(f"{key} rank {r.rank}: at steps {steps}, expected {want}")
            if res["bytes_sent"] != dbytes * res["syncs"]:
                problems.append(f"{key} rank {r.rank}: reports {res['bytes_sent']} bytes, "
                                f"{res['syncs']} x D = {dbytes * res['syncs']}")
    return not problems, "; ".join(problems[:8])


def _resumed_trace(tdir, steps):
    """One trace for both parts: d_loss for steps 1..steps once each on every rank, the initial
    transfer once, and the D exchanges of every sync-up step."""
    run = _rows(tdir)
    problems = []
    for r in run.ranks:
        s, _, _ = r.metric("d_loss")
        if sorted(s.tolist()) != list(range(1, steps + 1)):
            problems.append(f"rank {r.rank}: d_loss at steps {sorted(s.tolist())}")
        init = np.isin(r.comm["channel"], [c.encode() for c in dada.INIT_CHANNELS])
        if init.sum() != 3:
            problems.append(f"rank {r.rank}: {init.sum()} init rows")
        sends = r.comm[(r.comm["op"] == b"allreduce") & (r.comm["channel"] == b"disc_params")]
        if sorted(sends["step"].tolist()) != [4, 8]:
            problems.append(f"rank {r.rank}: D exchanged at steps {sorted(sends['step'].tolist())}")
    return not problems, "; ".join(problems)


def _cost_curve(C, steps):
    tot = {}
    for key, p in (("ga1", 1), ("ga2", 2), ("ga4", 4)):
        argv, res, _ = C.runs[key]
        run = _rows(res["trace_dir"])
        sent = sum(int(r.comm["nbytes"][(r.comm["op"] == b"allreduce")
                                        & np.char.startswith(r.comm["channel"], b"disc_")].sum())
                   for r in run.ranks)
        n_steps = int(argv[argv.index("--steps") + 1])
        tot[p] = sent / n_steps  # bytes per step, all ranks
        # every rank hands D to one allreduce at each of the floor(steps / p) sync-ups
        expect = (n_steps // p) * D_BYTES * len(run.ranks) / n_steps
        if abs(tot[p] - expect) > 1e-9:
            return False, f"p={p}: {tot[p]} bytes per step, closed form {expect}"
    ok = abs(tot[1] / tot[2] - 2) < 1e-9 and abs(tot[1] / tot[4] - 4) < 1e-9
    return ok, f"bytes per step by p: {tot}"


def _only_d(C):
    """After the initial transfer: only D-sized messages on disc_* (and the 24-byte report at the
    end); no message has the size of a batch of images, features, logits or labels."""
    problems = []
    for key, (argv, res, _) in C.runs.items():
        run = _rows(res["trace_dir"])
        dbytes = D_BYTES
        forbidden = {B * 1 * 16 * 16 * 4, B * 500 * 4, B * 4, B * 8, B * 1 * 16 * 16 * 1}
        for r in run.ranks:
            rows = r.comm
            init = np.isin(rows["channel"], [c.encode() for c in dada.INIT_CHANNELS])
            t_init = rows["t_done"][init].max()
            after = rows[rows["t_post"] >= t_init]
            for row in after:
                ch, nb = row["channel"].decode(), int(row["nbytes"])
                if nb in forbidden:
                    problems.append(f"{key} rank {r.rank}: {ch} carries {nb} bytes (a batch)")
                if ch.startswith("disc_"):
                    if nb != dbytes:
                        problems.append(f"{key} rank {r.rank}: {ch} of {nb} bytes")
                elif ch == "report":
                    if nb != 24:
                        problems.append(f"{key} rank {r.rank}: report of {nb} bytes")
                elif ch == "control":  # the stop-signal agreement; a resume's agreement
                    if nb != 8 and row["op"] != b"allgather":
                        problems.append(f"{key} rank {r.rank}: control of {nb} bytes")
                elif ch != "barrier":
                    problems.append(f"{key} rank {r.rank}: unexpected channel {ch} ({nb} bytes)")
    return not problems, "; ".join(problems[:8])


def _init_once(C):
    problems = []
    for key, (argv, res, _) in C.runs.items():
        run = _rows(res["trace_dir"])
        for r in run.ranks:
            rows = r.comm
            init = rows[np.isin(rows["channel"], [c.encode() for c in dada.INIT_CHANNELS])]
            if sorted(c.decode() for c in init["channel"]) != sorted(dada.INIT_CHANNELS):
                problems.append(f"{key} rank {r.rank}: init rows {init['channel']}")
            if (init["step"] != 0).any() or (init["op"] != b"bcast").any():
                problems.append(f"{key} rank {r.rank}: init not a step-0 broadcast")
            disc = rows[np.char.startswith(rows["channel"], b"disc_")]
            if len(disc) and disc["t_post"].min() < init["t_done"].max():
                problems.append(f"{key} rank {r.rank}: D exchanged before the initial transfer")
            if int(init["nbytes"].sum()) != INIT_BYTES or res["init_bytes"] != INIT_BYTES:
                problems.append(f"{key} rank {r.rank}: init bytes {init['nbytes'].sum()} in the "
                                f"trace, {res['init_bytes']} reported, E + C + D hold "
                                f"{INIT_BYTES}")
    return not problems, "; ".join(problems[:8])


if __name__ == "__main__":
    main()
    checks.finish()
