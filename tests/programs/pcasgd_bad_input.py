"""Bad user input to ``python -m mpidist.pcasgd``, every case in one launch (tests/
test_pcasgd_user.py)::

    mpiexec -n 2 python tests/programs/pcasgd_bad_input.py BASE_DIR

Every rank calls ``mpidist.pcasgd.main(argv)`` in-process for each case of CASES (the runtime's
MPI_Abort replaced by an exception, so that an unexpected failure is reported, not fatal) and rank
0 prints one line per case: ``CASE <name> <json>`` with the exit status of every rank, what rank 0
printed on stderr and stdout, the other ranks' stderr, and whether the case's run directory exists
(a refused run writes nothing); then ``DONE <count>``.
"""
import json
import os
import sys

from mpi4py import MPI

import mpidist.pcasgd as pcasgd

import in_process

ALARM = 120   # a case still running after this long accepted what it should refuse

USER = ["--model", "blobs:mlp", "--data", "blobs:blobs"]
#: name -> (flags after the base, words rank 0's one line must hold)
CASES = {
    "model-not-importable": (["--model", "nosuchmod:build", "--data", "blobs:blobs"],
                             "--model nosuchmod:build: cannot import module 'nosuchmod'"),
    "data-not-importable": (["--model", "blobs:mlp", "--data", "nosuchmod:load"],
                            "--data nosuchmod:load: cannot import module 'nosuchmod'"),
    "model-no-function": (["--model", "blobs:nope", "--data", "blobs:blobs"],
                          "--model blobs:nope: module 'blobs' has no function 'nope'"),
    "data-no-function": (["--model", "blobs:mlp", "--data", "blobs:nope"],
                         "--data blobs:nope: module 'blobs' has no function 'nope'"),
    "loss-no-function": (USER + ["--loss", "blobs:nope"],
                         "--loss blobs:nope: module 'blobs' has no function 'nope'"),
    "loss-unknown": (USER + ["--loss", "hinge"], "--loss hinge: expected cross_entropy, mse"),
    "model-wrong-type": (["--model", "blobs:not_a_module", "--data", "blobs:blobs"],
                         "returned str, expected a torch.nn.Module"),
    "data-wrong-type": (["--model", "blobs:mlp", "--data", "blobs:not_a_pair"],
                        "--data blobs:not_a_pair: returned int, expected (train, test)"),
    "model-arg-refused": (USER + ["--model-arg", "depth=2"],
                          "--model blobs:mlp --model-arg depth=2: cannot build it (mlp() got "
                          "an unexpected "
                          "keyword argument 'depth')"),
    "output-does-not-fit": (["--model", "blobs:wrong_outputs", "--data", "blobs:regression",
                             "--loss", "mse"],
                            "--model blobs:wrong_outputs does not fit the data under --loss mse"),
    "float-labels-cross-entropy": (["--model", "blobs:mlp", "--data", "blobs:regression"],
                                   "has float (regression) labels: use --loss mse"),
    "fewer-samples-than-shards": (["--model", "blobs:mlp", "--data", "pcasgd_mine:one"],
                                  "1 samples cannot be split over"),
    "batch-exceeds-shard": (["--model", "blobs:mlp", "--data", "blobs:tiny"],
                            "batch size 16 exceeds this rank's shard of"),
    "augment-vectors": (USER + ["--augment"], "--augment crops and flips images"),
}


def main(base: str) -> None:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    in_process.catch_aborts("pcasgd_bad_input")
    for name, (flags, _) in CASES.items():
        d = os.path.join(base, name)
        argv = ["--clusters", ",".join(["1"] * world), "--steps", "3", "--quiet",
                "--trace-dir", d] + flags
        code, out, err, crash = in_process.call_main(pcasgd, argv, ALARM)
        comm.Barrier()
        got = comm.gather({"code": code if not crash else crash, "stderr": err, "stdout": out})
        if rank == 0:
            print("CASE", name, json.dumps({
                "codes": [g["code"] for g in got], "stderr": got[0]["stderr"],
                "stdout": got[0]["stdout"], "others": [g["stderr"] for g in got[1:]],
                "written": os.path.exists(d)}), flush=True)
    if rank == 0:
        print("DONE", len(CASES), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
