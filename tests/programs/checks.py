"""The PASS/FAIL lines of the check programs, and their exit status.

Every check program in tests/programs prints its results through :func:`line` (or :func:`report`)
and ends with :func:`finish`: a process that printed a FAIL line exits 1, so a check program run by
hand (``mpiexec -n 4 python tests/programs/mdgan_checks.py /tmp/x; echo $?``) tells the truth
without anyone reading its output, and mpiexec passes the status on. The tests parse the lines and
require the status that goes with them (``check_program`` in tests/conftest.py).

A check that runs on every rank is printed once (by rank 0, after the ranks agreed on it); the FAIL
is counted where it is printed.
"""
from __future__ import annotations

import hashlib
import os
import sys

_counts = {"PASS": 0, "FAIL": 0}


def line(ok: bool, rest: str, out=None) -> bool:
    """Print ``PASS <rest>`` or ``FAIL <rest>`` (flushed) on ``out`` (default sys.stdout) and count
    it; returns ``ok``."""
    status = "PASS" if ok else "FAIL"
    _counts[status] += 1
    out = sys.stdout if out is None else out
    out.write(f"{status} {rest}\n")
    out.flush()
    return ok


def report(name: str, ok: bool, why: str = "", out=None) -> bool:
    """``PASS <name>`` or ``FAIL <name>: <why>``, through :func:`line`."""
    return line(ok, name if ok or not why else f"{name}: {why}", out)


def failed() -> int:
    """FAIL lines printed by this process so far."""
    return _counts["FAIL"]


def status() -> int:
    """The exit status this process owes: 1 if it printed a FAIL line, else 0."""
    return 1 if _counts["FAIL"] else 0


def finish() -> None:
    """End the program with :func:`status` (sys.exit)."""
    sys.exit(status())


def snapshot(d) -> dict:
    """{path relative to d: sha256} of every file under ``d``: what "nothing already written
    changed" is checked against."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out
