"""A user's own model, data and loss in D-PSGD, batched into one mpiexec launch (4 ranks, a ring):

    mpiexec -n 4 python tests/programs/dpsgd_user_checks.py --out DIR

1. the command line on the blobs (``dpsgd.main``, exactly as ``python -m mpidist.dpsgd`` runs it)
   into DIR/cli;
2. the same run through the Python API (tests/programs/dpsgd_script.py) into DIR/api;
3. the API run checkpointed half-way (DIR/part) and resumed to the end;
4. a regression through the command line (``--data blobs:regression --loss mse``) into DIR/reg;
5. the API wrapping the user's own torch optimizer (DIR/wrap): ``SGD(lr)`` against the plain
   ``DPSGD(lr)`` on the same batches, and ``SGD(lr, momentum)`` against a short blocking reference
   (every model gathered, W X_k by hand, then the momentum step by hand); rank 0 prints
   ``PASS <name>`` or ``FAIL <name>: <why>``;
6. bad input: each case through ``dpsgd.main``; rank 0 prints ``CASE <name> <exit codes, JSON>
   <run dir left 0|1> <rank 0's stderr lines, JSON> <the other ranks' stderr lines, JSON>``.

tests/*/test_dpsgd_user.py reads the printed lines, the traces and the saved models.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from mpi4py import MPI

import blobs as mine
import dpsgd_script
import mpidist
from mpidist import dpsgd
import checks
from bad_cases import MODEL_DATA_LOSS, report, run_case

STEPS, SEED, LR, BATCH, HIDDEN = 300, 0, 0.1, 16, 24
CLI = ["--model", "blobs:mlp", "--model-arg", f"hidden={HIDDEN}", "--data", "blobs:blobs",
       "--batch-size", str(BATCH), "--lr", str(LR), "--quiet"]
REGRESSION = ["--model", "blobs:mlp", "--data", "blobs:regression", "--loss", "mse",
              "--lr", "0.05", "--steps", str(STEPS), "--eval-every", "100", "--quiet"]
WRAP_STEPS = 12

BAD = MODEL_DATA_LOSS


def bad_input(out: str, rank: int) -> None:
    for name, argv in BAD.items():
        run_case(name, os.path.join(out, "bad", name), lambda d: dpsgd.main(argv + ["--trace-dir", d, "--steps", "4", "--quiet"]))


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
    return checks.status()  # 1 if any check printed FAIL


if __name__ == "__main__":
    sys.exit(main())
