"""tests/programs/checks.py: a check program's exit status tells the truth (1 exactly when it
printed a FAIL line), and tests/conftest.py's ``check_program`` holds a launch to it."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mpirun import PROGRAMS, check_program

PROGRAM = """
import sys
sys.path.insert(0, sys.argv[1])
import checks
for i, ok in enumerate(sys.argv[2:]):
    checks.report(f"check{i}", ok == "1", "it went wrong")
checks.finish()
"""


def _run(*oks: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, PROGRAMS, *oks], capture_output=True,
                          text=True, timeout=120)


def test_all_pass_exits_0():
    p = _run("1", "1")
    assert (p.returncode, p.stdout) == (0, "PASS check0\nPASS check1\n")
    assert check_program(p) == p.stdout


def test_one_fail_exits_1_and_every_check_still_runs():
    p = _run("1", "0", "1")
    assert p.returncode == 1
    assert p.stdout == "PASS check0\nFAIL check1: it went wrong\nPASS check2\n"
    check_program(p)


def test_check_program_refuses_a_status_that_does_not_match_the_lines():
    for code, out in ((0, "PASS a\nFAIL b: x\n"), (1, "PASS a\n"), (2, "")):
        p = subprocess.CompletedProcess([], code, out, "")
        with pytest.raises(AssertionError):
            check_program(p)
