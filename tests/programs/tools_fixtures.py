"""Real traces for the trace tools' tests, made in ONE mpiexec launch (torch is imported once per rank):

    timeout 600 mpiexec -n 4 python tests/programs/tools_fixtures.py OUT_DIR [name ...]

runs, one after the other on the same 4 ranks, each into OUT_DIR/<name>:

- ``demo_fe1``, ``demo_fe3``: tests/programs/trace_demo.py (ring "params", "feedback" every 1 or 3 steps,
  allreduce "grads", bcast "swap", with an emulated link) whose message counts are known in closed
  form;
- ``pcasgd``, ``adacomm``, ``dada``, ``mdgan``, ``dpsgd``: each algorithm of the registry with
  tiny settings;
- ``killed`` (last): the demo with its last rank SIGKILLing itself at step 6, which ends the whole
  job: the files of a killed run.

Every finished run prints ``FIXTURE <name> ok``; the names given on the command line select runs.
"""
from __future__ import annotations

import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEMO_STEPS = 12
RUNS = {
    "demo_fe1": ("trace_demo", ["--steps", str(DEMO_STEPS), "--feedback-every", "1",
                                "--link-latency", "0.001", "--link-bandwidth", "5e7"]),
    "demo_fe3": ("trace_demo", ["--steps", str(DEMO_STEPS), "--feedback-every", "3",
                                "--link-latency", "0.001", "--link-bandwidth", "5e7"]),
    "pcasgd": ("mpidist.pcasgd", ["--steps", "8", "--clusters", "2,2"]),
    "adacomm": ("mpidist.adacomm", ["--steps", "12", "--time-budget", "0", "--tau", "4",
                                    "--tau0", "4"]),
    "dada": ("mpidist.dada", ["--steps", "4", "--pretrain-steps", "4", "--eval-every", "2",
                              "--sync-period", "2"]),
    "mdgan": ("mpidist.mdgan", ["-I", "4"]),
    "dpsgd": ("mpidist.dpsgd", ["--steps", "8"]),
    "killed": ("trace_demo", ["--steps", "400", "--die-at", "6", "--flush-seconds", "0.05"]),
}


def main() -> None:
    out = sys.argv[1]
    names = sys.argv[2:] or list(RUNS)
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    for name in names:
        module, args = RUNS[name]
        mod = importlib.import_module(module)
        mod.main(args + ["--trace-dir", os.path.join(out, name), "--quiet"])
        MPI.COMM_WORLD.Barrier()
        if rank == 0:
            print(f"FIXTURE {name} ok", flush=True)


if __name__ == "__main__":
    main()
