"""Bad-input cases run inside one multi-rank launch, and their parsing by the test that launched it.

The check program calls :func:`run_case` once per case on every rank: the case runs with stderr
captured, then rank 0 prints one line
``CASE <name> <exit codes, JSON> <run dir left 0|1> <rank 0's stderr lines, JSON> <the other
ranks' stderr lines, JSON>``. The test reads them back with :func:`assert_refused`: every rank
exits 2, nothing is left in the run directory, rank 0 printed exactly one line naming the mistake,
the other ranks printed nothing. A case that breaks one of these rules (all but the message's
words, which only the test knows) also prints ``FAIL case:<name>: <why>`` through
tests/programs/checks.py, so that the program exits 1 (its main returns ``checks.status()``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import checks

# A user's --model/--data/--loss gone wrong, for the algorithms that train one model
# (tests/programs/blobs.py holds the user's functions); the lines every algorithm prints alike.
# The two cases whose line names the algorithm's own unit (ranks, workers) are in each test.
MODEL_DATA_LOSS = {
    "model_no_module": ["--model", "nosuchmod:build", "--data", "blobs:blobs"],
    "model_no_function": ["--model", "blobs:nope", "--data", "blobs:blobs"],
    "model_not_module": ["--model", "blobs:not_a_module", "--data", "blobs:blobs"],
    "model_arg_refused": ["--model", "blobs:mlp", "--model-arg", "depth=2", "--data",
                          "blobs:blobs"],
    "model_does_not_fit": ["--model", "blobs:wrong_outputs", "--data", "blobs:regression",
                           "--loss", "mse"],
    "data_no_module": ["--model", "blobs:mlp", "--data", "nosuchmod:load"],
    "data_no_function": ["--model", "blobs:mlp", "--data", "blobs:nope"],
    "data_not_pair": ["--model", "blobs:mlp", "--data", "blobs:not_a_pair"],
    "data_smaller_than_world": ["--model", "blobs:mlp", "--data", "blobs:tiny"],
    "batch_larger_than_shard": ["--model", "blobs:mlp", "--data", "blobs:blobs",
                                "--batch-size", "151"],
    "regression_with_cross_entropy": ["--model", "blobs:mlp", "--data", "blobs:regression"],
    "loss_unknown": ["--model", "blobs:mlp", "--data", "blobs:blobs", "--loss", "hinge"],
    "loss_no_function": ["--model", "blobs:mlp", "--data", "blobs:blobs", "--loss", "blobs:nope"],
}
MODEL_DATA_LOSS_LINES = {
    "model_no_module": "--model nosuchmod:build: cannot import module 'nosuchmod'",
    "model_no_function": "--model blobs:nope: module 'blobs' has no function 'nope'",
    "model_not_module": "--model blobs:not_a_module: returned str, expected a torch.nn.Module",
    "model_arg_refused": "--model blobs:mlp --model-arg depth=2: cannot build it (mlp() got an "
                         "unexpected keyword argument 'depth')",
    "model_does_not_fit": "--model blobs:wrong_outputs does not fit the data under --loss mse: "
                          "inputs (2, 4), output (2, 7), labels (2,)",
    "data_no_module": "--data nosuchmod:load: cannot import module 'nosuchmod'",
    "data_no_function": "--data blobs:nope: module 'blobs' has no function 'nope'",
    "data_not_pair": "--data blobs:not_a_pair: returned int, expected (train, test)",
    "regression_with_cross_entropy": "--data blobs:regression has float (regression) labels: "
                                     "use --loss mse",
    "loss_unknown": "--loss hinge: expected cross_entropy, mse or MODULE:FUNCTION",
    "loss_no_function": "--loss blobs:nope: module 'blobs' has no function 'nope'",
}


def run_case(name: str, tdir: str, call) -> None:
    """Run ``call(tdir)`` on every rank of MPI.COMM_WORLD; rank 0 prints the case's CASE line."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    err, code = io.StringIO(), None
    with contextlib.redirect_stderr(err):
        try:
            call(tdir)
        except SystemExit as e:
            code = e.code
    world.Barrier()   # rank 0 removes the refused run's directory: look after it did
    left = os.path.isdir(tdir) and bool(os.listdir(tdir))
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    got = world.gather((code, left, lines), root=0)
    if world.Get_rank() == 0:
        codes = [g[0] for g in got]
        others = [ln for g in got[1:] for ln in g[2]]
        left = any(g[1] for g in got)
        print(f"CASE {name} {json.dumps(codes)} {int(left)} "
              f"{json.dumps(lines)} {json.dumps(others)}", flush=True)
        why = [w for w, bad in (
            (f"exit codes {codes}, expected 2 on every rank", codes != [2] * len(got)),
            ("the run directory was left behind", left),
            (f"rank 0 printed {lines}, expected one 'error:' line",
             len(lines) != 1 or ": error: " not in lines[0]),
            (f"another rank printed {others}", bool(others))) if bad]
        if why:
            checks.report(f"case:{name}", False, "; ".join(why))


def parse_cases(stdout: str) -> dict:
    """name -> (exit codes, run dir left, rank 0's lines, the other ranks' lines)."""
    cases = {}
    dec = json.JSONDecoder()
    for line in stdout.splitlines():
        if line.startswith("CASE "):
            name, rest = line[5:].split(" ", 1)
            codes, i = dec.raw_decode(rest)
            left, rest = rest[i:].strip().split(" ", 1)
            lines, i = dec.raw_decode(rest)
            others, _ = dec.raw_decode(rest[i:].strip())
            cases[name] = (codes, int(left), lines, others)
    return cases


def assert_refused(stdout: str, messages: dict, prog: str, world: int) -> None:
    """Every case of ``messages`` (name -> a part of the expected line) was refused as it must be."""
    cases = parse_cases(stdout)
    assert set(cases) == set(messages), sorted(set(cases) ^ set(messages))
    for name, want in messages.items():
        codes, left, lines, others = cases[name]
        assert codes == [2] * world, (name, codes)
        assert not left, f"{name}: the run directory was left behind"
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), (name, lines)
        assert want in lines[0], (name, lines[0])
        assert not others, f"{name}: another rank wrote {others}"


def report(run, name: str, ok: bool, why: str = "") -> None:
    """Print ``PASS name`` on rank 0 if the check passed on every rank, else ``FAIL name: why``."""
    whys = run.comm.allgather_object("" if ok else why)
    if run.rank == 0:
        bad = [w for w in whys if w]
        checks.report(name, not bad, bad[0] if bad else "")
