"""A user's own model, data and loss in D-PSGD, batched into one mpiexec launch (4 ranks, a ring):

    mpiexec -n 4 python tests/user_modules/dpsgd_user_checks.py --out DIR

1. the command line on the blobs (``dpsgd.main``, exactly as ``python -m mpidist.dpsgd`` runs it)
   into DIR/cli;
2. the same run through the Python API (tests/user_modules/dpsgd_script.py) into DIR/api;
3. the API run checkpointed half-way (DIR/part) and resumed to the end;
4. a regression through the command line (``--data blobs:regression --loss mse``) into DIR/reg;
5. the API wrapping the user's own torch optimizer (DIR/wrap): ``SGD(lr)`` against the plain
   ``DPSGD(lr)`` on the same batches, and ``SGD(lr, momentum)`` against a short blocking reference
   (every model gathered, W X_k by hand, then the momentum step by hand); rank 0 prints
   ``PASS <name>`` or ``FAIL <name>: <why>``;
6. bad input: each case through ``dpsgd.main``; rank 0 prints ``CASE <name> <exit codes, JSON>
   <run dir left 0|1> <rank 0's stderr lines, JSON> <the other ranks' stderr lines, JSON>``.

tests/test_dpsgd_user.py reads the printed lines, the traces and the saved models.
"""
import argparse
import contextlib
import io
import json
import os
import sys

import torch
import torch.nn.functional as F
from mpi4py import MPI

import blobs as mine
import dpsgd_script
import mpidist
from mpidist import dpsgd

STEPS, SEED, LR, BATCH, HIDDEN = 300, 0, 0.1, 16, 24
CLI = ["--model", "blobs:mlp", "--model-arg", f"hidden={HIDDEN}", "--data", "blobs:blobs",
       "--batch-size", str(BATCH), "--lr", str(LR), "--quiet"]
REGRESSION = ["--model", "blobs:mlp", "--data", "blobs:regression", "--loss", "mse",
              "--lr", "0.05", "--steps", str(STEPS), "--eval-every", "100", "--quiet"]
WRAP_STEPS = 12

BAD = {
    "model_no_module": ["--model", "nosuchmod:build", "--data", "blobs:blobs"],
    "model_no_function": ["--model", "blobs:nope", "--data", "blobs:blobs"],
    "model_not_module": ["--model", "blobs:not_a_module", "--data", "blobs:blobs"],
    "model_arg_refused": ["--model", "blobs:mlp", "--model-arg", "depth=2", "--data",
                          "blobs:blobs"],
    "model_does_not_fit": ["--model", "blobs:wrong_outputs", "--data", "blobs:regression",
                           "--loss", "mse"],
    "data_no_module": ["--model", "blobs:mlp", "--data", "nosuchmod:load"],
    "data_not_pair": ["--model", "blobs:mlp", "--data", "blobs:not_a_pair"],
    "data_smaller_than_world": ["--model", "blobs:mlp", "--data", "blobs:tiny"],
    "batch_larger_than_shard": ["--model", "blobs:mlp", "--data", "blobs:blobs",
                                "--batch-size", "151"],
    "regression_with_cross_entropy": ["--model", "blobs:mlp", "--data", "blobs:regression"],
    "loss_unknown": ["--model", "blobs:mlp", "--data", "blobs:blobs", "--loss", "hinge"],
    "loss_no_function": ["--model", "blobs:mlp", "--data", "blobs:blobs", "--loss", "blobs:nope"],
}


def bad_input(out: str, rank: int) -> None:
    for name, argv in BAD.items():
        tdir = os.path.join(out, "bad", name)
        err, code = io.StringIO(), None
        with contextlib.redirect_stderr(err):
            try:
                dpsgd.main(argv + ["--trace-dir", tdir, "--steps", "4", "--quiet"])
            except SystemExit as e:
                code = e.code
        MPI.COMM_WORLD.Barrier()  # rank 0 may still be removing the refused run's directory
        try:
            left = bool(os.listdir(tdir))
        except FileNotFoundError:
            left = False
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        got = MPI.COMM_WORLD.gather((code, left, lines), root=0)
        if rank == 0:
            codes = [g[0] for g in got]
            others = [ln for g in got[1:] for ln in g[2]]
            print(f"CASE {name} {json.dumps(codes)} {int(any(g[1] for g in got))} "
                  f"{json.dumps(lines)} {json.dumps(others)}", flush=True)


def report(run, name: str, ok: bool, why: str = "") -> None:
    """A check passes only if it passed on every rank."""
    whys = run.comm.allgather_object("" if ok else why)
    if run.rank == 0:
        bad = [w for w in whys if w]
        print(f"PASS {name}" if not bad else f"FAIL {name}: {bad[0]}", flush=True)


def wrapped_optimizer(out: str) -> None:
    """The user's torch optimizer inside DPSGD, with the real exchange on the ring."""
    with mpidist.init("dpsgd", trace_dir=out, seed=SEED, quiet=True) as run:
        (x, y), _ = (dpsgd_script.tensors(d) for d in mine.blobs(None))

        def fresh():                                 # the same initial model on every call
            with torch.random.fork_rng():
                torch.manual_seed(7)
                return mine.mlp((4,), 3, hidden=HIDDEN)
        plain, wrapped, heavy = fresh(), fresh(), fresh()
        a = dpsgd.DPSGD(run, plain, lr=LR)
        b = dpsgd.DPSGD(run, wrapped, optimizer=torch.optim.SGD(wrapped.parameters(), lr=LR))
        sgd_m = torch.optim.SGD(heavy.parameters(), lr=LR, momentum=0.9)
        c = dpsgd.DPSGD(run, heavy, optimizer=sgd_m)
        W = torch.tensor(c.topology.W)
        g = torch.Generator().manual_seed(100 + run.rank)
        worst_plain, worst_ref, buf = 0.0, 0.0, None
        for t in range(WRAP_STEPS):
            idx = torch.randint(len(x), (BATCH,), generator=g)
            for opt, model in ((a, plain), (b, wrapped)):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            worst_plain = max(worst_plain, float((a.params - b.params).abs().max()))
            # momentum, with the user's own habit zero_grad(set_to_none=True)
            sgd_m.zero_grad(set_to_none=True)
            F.cross_entropy(heavy(x[idx]), y[idx]).backward()
            x_k = c.params.clone()
            grad = torch.cat([p.grad.reshape(-1) for p in heavy.parameters()])
            X = torch.stack(run.comm.allgather_object(x_k))   # the reference: blocking, by hand
            buf = grad.clone() if buf is None else 0.9 * buf + grad
            expect = (W[run.rank].to(X.dtype) @ X) - LR * buf
            c.step()
            worst_ref = max(worst_ref, float((c.params - expect).abs().max()))
            run.step_done(t)
        report(run, "wrap_sgd_equals_plain_dpsgd", worst_plain == 0.0,
               f"rank {run.rank}: max |difference| {worst_plain:.3g}")
        report(run, "wrap_sgd_momentum_equals_reference", worst_ref <= 1e-6,
               f"rank {run.rank}: max |difference| {worst_ref:.3g}")
        if run.rank == 0:
            print(f"wrap: max |plain - SGD-wrapped| {worst_plain:.3g}, max |momentum - reference| "
                  f"{worst_ref:.3g}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rank = MPI.COMM_WORLD.Get_rank()
    # 1. the command line
    dpsgd.main(CLI + ["--steps", str(STEPS), "--seed", str(SEED),
                      "--trace-dir", os.path.join(a.out, "cli")])
    # 2. the Python API, the same run
    dpsgd_script.main(os.path.join(a.out, "api"), STEPS, seed=SEED, batch=BATCH, lr=LR,
                      hidden=HIDDEN)
    # 3. checkpoint half-way (a run of STEPS/2 iterations saving at its end), then resume
    part = os.path.join(a.out, "part")
    dpsgd_script.main(part, STEPS // 2, seed=SEED, batch=BATCH, lr=LR, hidden=HIDDEN,
                      checkpoint_every=STEPS // 2)
    dpsgd_script.main(part, STEPS, seed=SEED, batch=BATCH, lr=LR, hidden=HIDDEN, resume=part)
    # 4. a regression
    dpsgd.main(REGRESSION + ["--seed", str(SEED), "--trace-dir", os.path.join(a.out, "reg")])
    # 5. the user's optimizer wrapped
    wrapped_optimizer(os.path.join(a.out, "wrap"))
    # 6. bad input
    bad_input(a.out, rank)
    if rank == 0:
        print("user checks done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
