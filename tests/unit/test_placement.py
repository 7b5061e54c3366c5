"""mpidist.placement: torch's threads per rank (a world of one here; the node's ranks share CPUs)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from mpidist import placement
from mpirun import REPO


def test_threads_are_the_ranks_share_of_its_cpus(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert placement.set_threads() == (cpus, None)     # one rank on this node: all of them
        assert torch.get_num_threads() == cpus
        monkeypatch.setenv("OMP_NUM_THREADS", "1")          # the user's setting wins
        assert placement.set_threads() == (1, None) and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 3))
        n, warn = placement.set_threads()
        assert n == cpus + 3 and torch.get_num_threads() == cpus + 3
        assert warn == (f"OMP_NUM_THREADS={cpus + 3} with 1 ranks on {cpus} CPUs oversubscribes "
                        f"this node ({cpus + 3} threads); {cpus} per rank would not")
    finally:
        torch.set_num_threads(before)


def test_one_worker_says_it_is_plain_sgd(tmp_path):
    """AdaComm and D-PSGD run on one rank and say what that is; the trace records the threads."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for algo, steps in (("dpsgd", ["--steps", "2"]), ("adacomm", ["--steps", "2", "--time-budget",
                                                                  "0"])):
        p = subprocess.run([sys.executable, "-m", f"mpidist.{algo}", *steps, "--trace-dir",
                            str(tmp_path / algo)], capture_output=True, text=True, timeout=300,
                           cwd=REPO, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "note: one worker, so " in p.stdout and "this run is plain" in p.stdout, p.stdout
        from mpidist.trace import read_run
        assert read_run(str(tmp_path / algo)).ranks[0].attrs["threads"] == 1
