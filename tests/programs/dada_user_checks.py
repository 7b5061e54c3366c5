"""A user's own domains and networks in DADA, batched into one mpiexec launch (2 ranks):

    mpiexec -n 2 python tests/programs/dada_user_checks.py --out DIR

1. the command line on dada_blobs (``dada.main``, exactly as ``python -m mpidist.dada`` runs it)
   into DIR/cli;
2. the same run through the Python API (tests/programs/dada_script.py) into DIR/api;
3. the API run checkpointed half-way (DIR/part) and resumed to the end;
4. bad input: each case through ``dada.main``; rank 0 prints ``CASE <name> <exit code> <dir
   left> <the lines written to stderr, JSON>``.

tests/*/test_dada_user.py reads the printed lines and the saved models.
"""
import argparse
import os
import sys

from mpi4py import MPI

import dada_script
from mpidist import dada
import checks
from bad_cases import run_case

STEPS, SEED = 300, 3
CLI = ["--source-data", "dada_blobs:source", "--target-data", "dada_blobs:target",
       "--extractor", "dada_blobs:extractor", "--classifier", "dada_blobs:classifier",
       "--discriminator", "dada_blobs:discriminator", "--batch-size", "32",
       "--pretrain-steps", "200", "--lr-disc", "1e-3", "--lr-target", "1e-3",
       "--eval-every", "100", "--quiet"]
USER = CLI[:10]  # the five MODULE:FUNCTION flags

BAD = {
    "no_module": ["--source-data", "nosuchmod:f", "--target-data", "dada_blobs:target",
                  "--extractor", "dada_blobs:extractor"],
    "no_function": USER[:4] + ["--extractor", "dada_blobs:nope"],
    "extractor_not_module": USER[:4] + ["--extractor", "dada_blobs:not_a_module"],
    "data_not_pair": ["--source-data", "dada_blobs:not_a_pair", "--target-data",
                      "dada_blobs:target", "--extractor", "dada_blobs:extractor"],
    "features_not_flat": USER[:4] + ["--extractor", "dada_blobs:image_features"],
    "classifier_wrong_classes": USER[:6] + ["--classifier", "dada_blobs:wrong_classes"],
    "discriminator_two_logits": USER[:6] + ["--discriminator", "dada_blobs:two_logits"],
    "builtin_extractor_on_vectors": USER[:4],
    "source_too_small": ["--source-data", "blobs:tiny", "--target-data", "dada_blobs:target",
                         "--extractor", "dada_blobs:extractor"],
    "domains_differ_in_shape": ["--source-data", "dada_blobs:source", "--target-data",
                                "dada_blobs:two_features", "--extractor", "dada_blobs:extractor"],
    "target_without_source": ["--target-data", "dada_blobs:target"],
    "not_a_spec": ["--source-data", "blobs", "--target-data", "dada_blobs:target"],
    "data_flag": ["--data", "blobs:blobs"],
}


def bad_input(out: str, rank: int) -> None:
    for name, argv in BAD.items():
        run_case(name, os.path.join(out, "bad", name), lambda d: dada.main(argv + ["--trace-dir", d, "--steps", "4", "--batch-size", "32"]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rank = MPI.COMM_WORLD.Get_rank()
    # 1. the command line
    dada.main(CLI + ["--steps", str(STEPS), "--seed", str(SEED),
                     "--trace-dir", os.path.join(a.out, "cli")])
    # 2. the Python API, the same run
    dada_script.main(os.path.join(a.out, "api"), STEPS, seed=SEED)
    # 3. checkpoint half-way (a run of STEPS/2 steps saving at its end), then resume to STEPS
    part = os.path.join(a.out, "part")
    dada_script.main(part, STEPS // 2, seed=SEED, checkpoint_every=STEPS // 2)
    dada_script.main(part, STEPS, seed=SEED, resume=part)
    # 4. bad input
    bad_input(a.out, rank)
    if rank == 0:
        print("user checks done", flush=True)
    return checks.status()  # 1 if any check printed FAIL


if __name__ == "__main__":
    sys.exit(main())
