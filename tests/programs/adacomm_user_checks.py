"""A user's own model, data and loss in AdaComm, batched into one mpiexec launch (4 ranks):

    mpiexec -n 4 python tests/programs/adacomm_user_checks.py --out DIR

1. the command line on the blobs (``adacomm.main``, exactly as ``python -m mpidist.adacomm`` runs
   it; PASGD tau 4 with the default momenta, a fixed number of steps) into DIR/cli;
2. the same run through the Python API (tests/programs/adacomm_script.py: the user's
   ``torch.optim.SGD`` wrapped in ``AdaComm``) into DIR/api;
3. the API run checkpointed half-way (DIR/part) and resumed to the end;
4. PASGD with tau = 1 equals synchronous SGD on the blobs MLP, through the API (DIR/tau1): every
   step, PASGD tau 1 and ``method="sync"`` against a single-process reference, plain SGD on the
   union of all workers' batches (gathered), with weight decay, to 1e-6; then with momentum (local
   momentum 0.9 restarted at every averaging + block momentum 0.9 against sync/reference momentum
   0.9), to 1e-5, and with the default momentum restart (local momentum 0.9 running on at tau = 1,
   no block momentum), to 1e-5; rank 0 prints ``PASS <name>`` or ``FAIL <name>: <why>`` and the
   largest differences;
5. the same through the command line, plain SGD with weight decay: ``--method pasgd --tau 1`` and
   ``--method sync`` (DIR/cli-tau1, DIR/cli-sync; the test compares their saved models);
6. a regression through the command line (``--data blobs:regression --loss mse``) into DIR/reg;
7. bad input: each case through ``adacomm.main`` (and two through the API); rank 0 prints
   ``CASE <name> <exit codes, JSON> <run dir left 0|1> <rank 0's stderr lines, JSON> <the other
   ranks' stderr lines, JSON>``.

tests/*/test_adacomm_user.py reads the printed lines, the traces and the saved models.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from mpi4py import MPI

import adacomm_script
import blobs as mine
import mpidist
from mpidist import adacomm
from mpidist.adacomm import AdaComm
import checks
from bad_cases import MODEL_DATA_LOSS, report, run_case

STEPS, SEED, LR, BATCH, HIDDEN, TAU = 240, 0, 0.1, 16, 24, 4
CLI = ["--model", "blobs:mlp", "--model-arg", f"hidden={HIDDEN}", "--data", "blobs:blobs",
       "--batch-size", str(BATCH), "--lr", str(LR), "--time-budget", "0", "--quiet"]
REGRESSION = ["--model", "blobs:mlp", "--data", "blobs:regression", "--loss", "mse",
              "--lr", "0.05", "--method", "pasgd", "--tau", "4", "--steps", str(STEPS),
              "--time-budget", "0", "--eval-every", "80", "--quiet"]
TAU1_STEPS, WD = 30, 5e-4

BAD = MODEL_DATA_LOSS


def _api_bad(kind):
    """A user's script that misuses the API inside ``with mpidist.init(...)``."""
    def script(tdir):
        with mpidist.init("adacomm", trace_dir=tdir, quiet=True) as run:
            model = mine.mlp((4,), 3)
            if kind == "method":
                AdaComm(run, model, torch.optim.SGD(model.parameters(), lr=0.1), method="local")
            else:
                AdaComm(run, model, torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)
    return script


API_BAD = {"api_unknown_method": _api_bad("method"), "api_lr_and_optimizer": _api_bad("lr")}


def bad_input(out: str, rank: int) -> None:
    for name, argv in BAD.items():
        run_case(name, os.path.join(out, "bad", name),
                 lambda d: adacomm.main(argv + ["--trace-dir", d, "--steps", "4",
                                                "--time-budget", "0", "--quiet"]))
    for name, script in API_BAD.items():
        run_case(name, os.path.join(out, "bad", name), script)


def tau1_equals_sync(out: str) -> None:
    """PASGD tau = 1 == synchronous SGD == one process's SGD on the union of the batches."""
    with mpidist.init("adacomm", trace_dir=out, seed=SEED, quiet=True) as run:
        (x, y), _ = (adacomm_script.tensors(d) for d in mine.blobs(None))

        def fresh():                                  # the same initial model on every call
            with torch.random.fork_rng():
                torch.manual_seed(7)
                return mine.mlp((4,), 3, hidden=HIDDEN)

        # tolerance: plain SGD 1e-6; with momentum 1e-5, since block momentum recovers the
        # period's step from the model change divided by eta (x 10 here) and multiplies it back.
        # momentum: the literal recipe (local momentum restarted at every averaging) with block
        # momentum 0.9 in its place; momentum_kept: the default recipe (at tau = 1 the local
        # momentum runs on across averagings), no block momentum
        for name, mu, beta, restart, tol in (
                ("pasgd_tau1_equals_sync_plain", 0.0, 0.0, "while-tau-above-1", 1e-6),
                ("pasgd_tau1_equals_sync_momentum", 0.9, 0.9, "always", 1e-5),
                ("pasgd_tau1_equals_sync_momentum_kept", 0.9, 0.0, "while-tau-above-1", 1e-5)):
            a, b, ref = fresh(), fresh(), fresh()
            pasgd = AdaComm(run, a, torch.optim.SGD(a.parameters(), lr=LR, momentum=mu,
                                                    weight_decay=WD),
                            method="pasgd", tau=1, global_momentum=beta,
                            momentum_restart=restart)
            sync = AdaComm(run, b, torch.optim.SGD(b.parameters(), lr=LR, momentum=mu,
                                                   weight_decay=WD), method="sync")
            ref_opt = torch.optim.SGD(ref.parameters(), lr=LR, momentum=mu, weight_decay=WD)
            g = torch.Generator().manual_seed(100 + run.rank)   # every worker its own batches
            worst = {"pasgd": 0.0, "sync": 0.0, "pasgd-sync": 0.0}
            for t in range(TAU1_STEPS):
                idx = torch.randint(len(x), (BATCH,), generator=g)
                for opt, model in ((pasgd, a), (sync, b)):
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    loss.backward()
                    assert opt.step(loss) is not None          # an averaging at every step
                # the reference: one process, SGD on the union of the workers' batches
                union = torch.cat(run.comm.allgather_object(idx))
                ref_opt.zero_grad()
                F.cross_entropy(ref(x[union]), y[union]).backward()
                ref_opt.step()
                r = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
                worst["pasgd"] = max(worst["pasgd"], float((pasgd.params - r).abs().max()))
                worst["sync"] = max(worst["sync"], float((sync.params - r).abs().max()))
                worst["pasgd-sync"] = max(worst["pasgd-sync"],
                                          float((pasgd.params - sync.params).abs().max()))
                run.step_done(t)
            same = all(torch.equal(p, q) for p, q in
                       zip(run.comm.allgather_object(pasgd.params.clone()),
                           [pasgd.params] * run.world_size))
            ok = max(worst.values()) <= tol and same
            report(run, name, ok, f"rank {run.rank}: max |difference| {worst}, workers "
                                  f"identical {same}")
            if run.rank == 0:
                print(f"{name}: max |PASGD tau=1 - reference| {worst['pasgd']:.3g}, max |sync - "
                      f"reference| {worst['sync']:.3g}, max |PASGD tau=1 - sync| "
                      f"{worst['pasgd-sync']:.3g} over {TAU1_STEPS} steps", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rank = MPI.COMM_WORLD.Get_rank()
    torch.set_num_threads(1)
    # 1. the command line
    common = ["--method", "pasgd", "--tau", str(TAU), "--seed", str(SEED)]
    adacomm.main(CLI + common + ["--steps", str(STEPS), "--trace-dir", os.path.join(a.out, "cli")])
    # 2. the Python API, the same run
    adacomm_script.main(os.path.join(a.out, "api"), STEPS, seed=SEED, batch=BATCH, lr=LR,
                        hidden=HIDDEN, tau=TAU)
    # 3. checkpoint half-way (a run of STEPS/2 steps saving at its end), then resume
    part = os.path.join(a.out, "part")
    adacomm_script.main(part, STEPS // 2, seed=SEED, batch=BATCH, lr=LR, hidden=HIDDEN, tau=TAU,
                        checkpoint_every=STEPS // 2)
    adacomm_script.main(part, STEPS, seed=SEED, batch=BATCH, lr=LR, hidden=HIDDEN, tau=TAU,
                        resume=part)
    # 4. PASGD tau = 1 == sync SGD == the reference, through the API
    tau1_equals_sync(os.path.join(a.out, "tau1"))
    # 5. the same through the command line
    plain = ["--momentum", "0", "--global-momentum", "0"]     # plain SGD, weight decay 5e-4
    for name, method in (("cli-tau1", ["--method", "pasgd", "--tau", "1"]),
                         ("cli-sync", ["--method", "sync"])):
        adacomm.main(CLI + method + plain + ["--steps", str(TAU1_STEPS), "--seed", str(SEED),
                                     "--trace-dir", os.path.join(a.out, name)])
    # 6. a regression
    adacomm.main(REGRESSION + ["--seed", str(SEED), "--trace-dir", os.path.join(a.out, "reg")])
    # 7. bad input
    bad_input(a.out, rank)
    if rank == 0:
        print("user checks done", flush=True)
    return checks.status()  # 1 if any check printed FAIL


if __name__ == "__main__":
    sys.exit(main())
