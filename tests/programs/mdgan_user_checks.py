"""A user's own networks and data in MD-GAN, batched into one mpiexec launch (4 ranks: the server
and N = 3 workers):

    mpiexec -n 4 python tests/programs/mdgan_user_checks.py --out DIR

1. the command line on the blobs (``mdgan.main``, exactly as ``python -m mpidist.mdgan`` runs it)
   with the tiny MLPs of mdgan_blobs.py into DIR/cli;
2. the same run through the Python API (tests/programs/mdgan_script.py) into DIR/api;
3. the API run checkpointed half-way (DIR/part) and resumed to the end;
4. FL-GAN with the user's networks (DIR/flgan) and a plain GAN on float targets, which has no
   scores (DIR/plain);
5. the API's own checks: a D with the wrong output is one line (rank 0 prints ``PASS <name>`` or
   ``FAIL <name>: <why>``);
6. bad input: each case through ``mdgan.main``; rank 0 prints ``CASE <name> <exit codes, JSON>
   <run dir left 0|1> <rank 0's stderr lines, JSON> <the other ranks' stderr lines, JSON>``.

tests/*/test_mdgan_user.py reads the printed lines, the traces and the saved networks.
"""
import argparse
import contextlib
import io
import os

from mpi4py import MPI

import mdgan_script
from mpidist import mdgan
import checks
from bad_cases import run_case

STEPS, SEED, BATCH, LATENT = 300, 0, 32, 8
NETS = ["--generator", "mdgan_blobs:generator", "--discriminator", "mdgan_blobs:discriminator"]
CLI = NETS + ["--data", "blobs:blobs", "--latent-size", str(LATENT), "-b", str(BATCH),
              "--eval-every", "50", "--quiet"]
OK_DATA = ["--data", "blobs:blobs"]

BAD = {
    "generator_no_module": ["--generator", "nosuchmod:gen", "--discriminator",
                            "mdgan_blobs:discriminator"] + OK_DATA,
    "generator_no_function": ["--generator", "mdgan_blobs:nope", "--discriminator",
                              "mdgan_blobs:discriminator"] + OK_DATA,
    "generator_not_module": ["--generator", "mdgan_blobs:not_a_module", "--discriminator",
                             "mdgan_blobs:discriminator"] + OK_DATA,
    "generator_builder_refuses": ["--generator", "blobs:mlp", "--discriminator",
                                  "mdgan_blobs:discriminator"] + OK_DATA,
    "generator_wrong_samples": ["--generator", "mdgan_blobs:wrong_samples", "--discriminator",
                                "mdgan_blobs:discriminator"] + OK_DATA,
    "discriminator_wrong_outputs": ["--generator", "mdgan_blobs:generator", "--discriminator",
                                    "mdgan_blobs:no_class_column"] + OK_DATA,
    "model_is_a_spec": ["--model", "blobs:mlp"] + OK_DATA,
    "data_no_module": NETS + ["--data", "nosuchmod:load"],
    "data_not_pair": NETS + ["--data", "blobs:not_a_pair"],
    "data_smaller_than_world": NETS + ["--data", "mdgan_blobs:two"],
    "batch_larger_than_shard": NETS + OK_DATA + ["-b", "201"],
    "float_labels_under_acgan": NETS + ["--data", "blobs:regression"],
}


def bad_input(out: str, rank: int) -> None:
    for name, argv in BAD.items():
        run_case(name, os.path.join(out, "bad", name), lambda d: mdgan.main(argv + ["--trace-dir", d, "-I", "4", "--quiet"]))


def api_refuses_a_wrong_discriminator(out: str, rank: int) -> None:
    """MDGAN(...) with a D whose output misses the class columns: one line, exit 2 everywhere."""
    import blobs
    import mdgan_blobs
    import mpidist
    err, code = io.StringIO(), None
    with contextlib.redirect_stderr(err):
        try:
            with mpidist.init("mdgan", trace_dir=os.path.join(out, "api_bad"), quiet=True) as run:
                G = mdgan_blobs.generator(LATENT, (4,), 3)
                D = mdgan_blobs.no_class_column((4,), 3)
                mdgan.MDGAN(run, G, D, blobs.blobs(None)[0], latent_size=LATENT)
        except SystemExit as e:
            code = e.code
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    got = MPI.COMM_WORLD.gather((code, lines), root=0)
    if rank == 0:
        want = ("mpidist.mdgan: error: discriminator: D(x) on samples of shape (2, 4) returned "
                "(2, 1), expected (2, 4)")
        ok = [g[0] for g in got] == [2] * len(got) and len(lines) == 1 and \
            lines[0].startswith(want) and not any(g[1] for g in got[1:])
        checks.report("api_refuses_wrong_discriminator", ok, str(got))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rank = MPI.COMM_WORLD.Get_rank()
    # 1. the command line
    mdgan.main(CLI + ["-I", str(STEPS), "--seed", str(SEED),
                      "--trace-dir", os.path.join(a.out, "cli")])
    # 2. the Python API, the same run
    mdgan_script.main(os.path.join(a.out, "api"), STEPS, seed=SEED, batch=BATCH, latent=LATENT)
    # 3. checkpoint half-way (a run of STEPS/2 iterations saving at its end), then resume
    part = os.path.join(a.out, "part")
    mdgan_script.main(part, STEPS // 2, seed=SEED, batch=BATCH, latent=LATENT,
                      checkpoint_every=STEPS // 2)
    mdgan_script.main(part, STEPS, seed=SEED, batch=BATCH, latent=LATENT, resume=part)
    # 4. FL-GAN on the user's networks; a plain GAN on float targets (no scores)
    mdgan.main(CLI + ["--mode", "flgan", "-I", "24", "--trace-dir", os.path.join(a.out, "flgan")])
    mdgan.main(NETS + ["--data", "blobs:regression", "--gan", "plain", "--latent-size", "4",
                       "-I", "20", "--quiet", "--trace-dir", os.path.join(a.out, "plain")])
    # 5. the API refuses a D that does not fit
    api_refuses_a_wrong_discriminator(a.out, rank)
    # 6. bad input through the command line
    bad_input(a.out, rank)
    if rank == 0:
        print("user checks done", flush=True)
    return checks.status()  # 1 if any check printed FAIL


if __name__ == "__main__":
    raise SystemExit(main())
