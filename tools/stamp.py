"""The line every result file written by tools/ starts with: which commit made it, and how.

    Made by `python tools/experiment_pcasgd.py --seeds 0,1` at commit 1a2b3c4 (2026-12-07 02:40 UTC).

A working tree with uncommitted changes says so (``+ uncommitted changes``): such a result cannot be
reproduced from the commit alone.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    """The checkout's short commit id, ``+ uncommitted changes`` when mpidist/ or tools/ differ
    from it, or ``unknown`` outside a git checkout."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = git("status", "--porcelain", "--", "mpidist", "tools").stdout.strip()
        return head.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def line(argv: list[str] | None = None) -> str:
    """``Made by `<command>` at commit <id> (<UTC time>).`` for the running script."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), REPO)
    cmd = " ".join(["python", shlex.quote(script), *map(shlex.quote, argv[1:])])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"Made by `{cmd}` at commit {commit()} ({when})."
