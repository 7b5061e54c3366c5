"""Real runs' traces: every rank's file carries the run id rank 0 made at start (the same on every
rank, another for every run), the tools refuse a directory mixing two runs, and a reader holding
a rank's file open with HDF5's file lock for the whole run neither stops nor delays it.

Two short runs of the traced demo (tests/programs/trace_demo.py) in one mpiexec launch of 2 ranks
(tests/programs/tools_fixtures.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from mpirun import REPO, check, run_mpi

from mpidist.trace import read_rank, read_run

TOOL = os.path.join(REPO, "tools", "mpidist_trace.py")

HOLD = """
import os, sys, time
import h5py
path, done = sys.argv[1], sys.argv[2]
while not os.path.exists(path) and not os.path.exists(done):
    time.sleep(0.01)
f = h5py.File(path, "r")  # h5py's default: with HDF5's file lock, for the whole run
print("held", f["comm"].shape[0], flush=True)
while not os.path.exists(done):
    time.sleep(0.05)
print("end", f["comm"].shape[0], f.attrs["status"].decode(), flush=True)
"""


def tool(*argv):
    p = subprocess.run([sys.executable, TOOL, *map(str, argv)], capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_run_ids_mixed_runs_and_a_locking_reader(tmp_path):
    out = tmp_path / "runs"
    done = tmp_path / "done"
    reader = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "demo_fe1" / "rank1.h5"),
                               str(done)], stdout=subprocess.PIPE, text=True)
    try:
        proc = run_mpi(2, [os.path.join("tests", "programs", "tools_fixtures.py"), str(out),
                           "demo_fe1", "demo_fe3"], timeout=300)
    finally:
        done.touch()
        held = reader.communicate(timeout=60)[0].split("\n")
    check(proc)
    assert "FIXTURE demo_fe1 ok" in proc.stdout and "FIXTURE demo_fe3 ok" in proc.stdout
    # the reader held rank 1's file from its creation to the end of the job: it kept the file it
    # opened, unchanged (status "running"), while the run wrote every row around it
    first = held[0].split()
    assert first[0] == "held" and held[1] == f"end {first[1]} running", held
    runs = {name: read_run(str(out / name)) for name in ("demo_fe1", "demo_fe3")}
    for name, run in runs.items():
        assert [r.rank for r in run.ranks] == [0, 1]
        assert all(r.attrs["status"] == "ok" and len(r.comm) > 0 for r in run.ranks), name
        ids = {r.attrs["run_id"] for r in run.ranks}
        assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", next(iter(ids))), ids
        assert sorted(os.listdir(out / name)) == ["rank0.h5", "rank1.h5"]  # no shadow left
    assert runs["demo_fe1"].ranks[0].attrs["run_id"] != runs["demo_fe3"].ranks[0].attrs["run_id"]
    # rank 0 of one run and rank 1 of the other: refused, with or without --skip-bad
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(out / "demo_fe1" / "rank0.h5", mixed / "rank0.h5")
    shutil.copy(out / "demo_fe3" / "rank1.h5", mixed / "rank1.h5")
    for extra in ([], ["--skip-bad"]):
        code, stdout, err = tool("summary", mixed, *extra)
        assert code == 2 and stdout == "" and len(err.splitlines()) == 1, (code, stdout, err)
        assert "files of different runs" in err and "run_id" in err, err
    # each run on its own reads, as the summary shows
    code, stdout, err = tool("summary", out / "demo_fe1")
    assert code == 0, err
    assert read_rank(str(out / "demo_fe1" / "rank1.h5")).attrs["run_id"] in \
        {r.attrs["run_id"] for r in runs["demo_fe1"].ranks}
