"""An algorithm's entry point run inside this process, with a wrapper around the end of every
step (``mpidist.loop.Loop.end_step``): what tools/profile_step.py and tools/bench_trace_cost.py
--in-process measure from. Each MPI rank of the tool's launch calls :func:`run_algorithm`."""
from __future__ import annotations

import runpy
import sys


def run_algorithm(name: str, argv: list[str], wrap_end_step) -> int:
    """``python -m mpidist.<name> <argv>`` in this process, ``Loop.end_step`` replaced by
    ``wrap_end_step(original)``; returns the exit code."""
    from mpidist import loop as loop_mod
    loop_mod.Loop.end_step = wrap_end_step(loop_mod.Loop.end_step)
    sys.argv = [f"mpidist.{name}", *argv]
    try:
        runpy.run_module(f"mpidist.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code or 0
    return 0
