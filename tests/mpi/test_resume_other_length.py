"""A resume with another number of steps, for every algorithm (issue 16, item 1): it continues
correctly, or it is refused with one line before anything of the earlier run is touched.

Each case: a first run with checkpoints, then ``--resume`` with a longer and with a shorter run.
A resume that is refused exits 2 with one line and leaves every file of the first run
byte-identical (sha256 of every file); one that is accepted exits 0 with every trace ``ok`` and
trains up to its new end (a shorter run that ends before the newest checkpoint has nothing left
to do). PC-ASGD with delay 15 shows a refusal (its newest checkpoint, after
step 19 of a 30-step plan, lacks the delayed messages that a longer plan needs) and a resume from
an earlier state is not tried: the line says how.
"""
from __future__ import annotations

import os
import shutil

import pytest

from mpidist.trace import read_run
from mpirun import run_mpi
from checks import snapshot as _snapshot

# algorithm -> (ranks, flags of both runs, steps flag, first run's steps, longer, shorter)
CASES = {
    "pcasgd": (4, ["--clusters", "2,2", "--delay", "15", "--checkpoint-every", "10"], "--steps",
               30, 60, 25),
    "adacomm": (2, ["--time-budget", "0", "--tau0", "2", "--checkpoint-every", "8"], "--steps",
                32, 64, 24),
    "dada": (2, ["--pretrain-steps", "10", "--checkpoint-every", "10"], "--steps", 30, 60, 25),
    "mdgan": (3, ["--checkpoint-every", "10"], "-I", 30, 60, 25),
    "dpsgd": (2, ["--checkpoint-every", "10"], "--steps", 30, 60, 25),
}


def _lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("MPICH:")]


@pytest.mark.parametrize("algo", sorted(CASES))
def test_resume_with_another_length_continues_or_is_refused_untouched(tmp_path, algo):
    n, flags, steps_flag, first, longer, shorter = CASES[algo]
    base = tmp_path / "run"
    proc = run_mpi(n, ["-m", f"mpidist.{algo}", *flags, steps_flag, str(first), "--trace-dir",
                       str(base), "--quiet"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(base / "checkpoints")
    outcomes = {}
    for label, steps in (("longer", longer), ("shorter", shorter)):
        d = tmp_path / label
        shutil.copytree(base, d, symlinks=True)
        before = _snapshot(d)
        proc = run_mpi(n, ["-m", f"mpidist.{algo}", *flags, steps_flag, str(steps), "--resume",
                           str(d), "--quiet"], timeout=300)
        if proc.returncode == 2:
            lines = _lines(proc.stderr)
            assert len(lines) == 1 and lines[0].startswith(f"mpidist.{algo}: error: "), lines
            assert _snapshot(d) == before, f"{label}: a refused resume changed the first run"
            outcomes[label] = "refused"
            continue
        assert proc.returncode == 0, (label, proc.stderr[-3000:])
        run = read_run(str(d))
        assert [r.attrs["status"] for r in run.ranks] == ["ok"] * n, label
        last = max(int(r.metrics["step"].max()) for r in run.ranks)
        # trained to its new end (steps counted from 0 or 1); a shorter run whose end lies before
        # the checkpoint has nothing left to do: the rows of the first run stay as they were
        assert min(steps, first) - 2 <= last <= max(steps, first), (label, last)
        outcomes[label] = "continued"
    if algo == "pcasgd":   # the checkpoint after step 19 of 30 lacks what delay 15 needs later
        assert outcomes["longer"] == "refused", outcomes
    else:
        assert outcomes["longer"] == "continued", outcomes
