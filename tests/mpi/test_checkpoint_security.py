"""A checkpoint from elsewhere must not run code; checkpoint files are verified before use
(issue 20), against every algorithm's real entry point on 2 ranks.

Two launches: tests/programs/checkpoint_security.py runs every case of every algorithm in one
``mpiexec -n 2`` (a planted rank file refused by the checksum, by the weights-only loader and as
an old-style checkpoint; a flipped byte refused by the checksum; the planted old-style checkpoint
loaded with --trust-checkpoint, whose planted code then runs, resuming the same run as the safe
checkpoint does), one test per case here. One real launch of the issue's own example (AdaComm,
planted rank0.pt) checks what the in-process driver cannot see: the processes' exit status.
"""
from __future__ import annotations

import json
import os

import pytest

from mpirun import REPO, check_program, run_mpi
from checks import snapshot as _snapshot

PROGRAM = os.path.join(REPO, "tests", "programs", "checkpoint_security.py")
ALGOS = ("pcasgd", "adacomm", "dada", "mdgan", "dpsgd")
CASES = ("resumed", "planted", "planted-rehashed", "planted-old-style", "flipped-byte",
         "trusted-old-style")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt-security")
    proc = run_mpi(2, [PROGRAM, str(base / "cases")], timeout=900)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith(("PASS ", "FAIL ")):
            _, name, js = line.split(" ", 2)
            results[name] = json.loads(js)
    assert f"DONE {len(ALGOS) * len(CASES)}" in proc.stdout, (proc.stdout[-3000:],
                                                              proc.stderr[-3000:])
    check_program(proc)  # exit 1 exactly when a case FAILed
    return base / "cases", results


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES)
def test_case(driver, algo, case):
    _, results = driver
    res = results[f"{algo}:{case}"]
    assert res["ok"], "\n".join(res["why"])


def test_a_planted_checkpoint_ends_every_process_with_status_2(driver):
    """The issue's example as a real job: ``mpiexec -n 2 python -m mpidist.adacomm ... --resume``
    of the checkpoint whose rank0.pt got an entry that runs ``touch MARKER`` (the driver's
    planted case, left as it was): exit status 2, one line on stderr, no output, the marker not
    created, the run directory unchanged."""
    base, _ = driver
    d = base / "adacomm" / "planted"
    run_dir, marker = d / "run", d / "MARKER"
    step = sorted((run_dir / "checkpoints").iterdir())[0]
    before = _snapshot(run_dir)
    proc = run_mpi(2, ["-m", "mpidist.adacomm", "--time-budget", "0", "--method", "pasgd",
                       "--tau", "1", "--steps", "6", "--checkpoint-every", "2", "--quiet",
                       "--resume", str(step)], timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [f"mpidist.adacomm: error: --resume {step}: rank0.pt: checksum mismatch: the "
                     f"checkpoint was altered or torn"], proc.stderr
    assert not proc.stdout.strip()
    assert not marker.exists()
    assert _snapshot(run_dir) == before
