"""tools/mpidist_trace.py refuses what would harm a trace or mislead, each with one line and exit
status 2: an output onto a trace file, a directory mixing two runs, two files of one rank, and
paths that are not regular files (a FIFO named rank0.h5 would block the reader forever)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mpidist.trace import TraceWriter, read_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "mpidist_trace.py")


def tool(*argv):
    """The tool in a subprocess (a FIFO must not hang the test: the timeout fails it instead)."""
    p = subprocess.run([sys.executable, TOOL, *map(str, argv)], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def one_line(code, out, err, words):
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpidist_trace: error: ") and words in lines[0], err
    return lines[0]


def make_run(run_dir, world=2, run_id="a" * 32, algorithm="demo", ranks=None):
    os.makedirs(run_dir, exist_ok=True)
    for r in (range(world) if ranks is None else ranks):
        attrs = {"algorithm": algorithm, "rank": r, "world_size": world}
        if run_id is not None:
            attrs["run_id"] = run_id
        w = TraceWriter(os.path.join(run_dir, f"rank{r}.h5"), attrs, lambda: 1.0)
        w.comm(0, b"send", (r + 1) % world, 3, b"params", 1000 * (r + 1), 0.25, 0.5)
        w.metric(0, "loss", 1.0 + r)
        w.close()
    return str(run_dir)


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_outputs_onto_a_trace_are_refused(run, tmp_path):
    trace = os.path.join(run, "rank1.h5")
    before = open(trace, "rb").read()
    one_line(*tool("summary", run, "--csv", trace), "refusing to write an output named like a trace")
    one_line(*tool("export", run, "-o", trace), "refusing to write an output named like a trace")
    copy = tmp_path / "trace.csv"  # an HDF5 file under another name
    copy.write_bytes(before)
    one_line(*tool("summary", run, "--csv", copy), "refusing to overwrite an HDF5 file")
    one_line(*tool("export", run, "-o", copy), "refusing to overwrite an HDF5 file")
    one_line(*tool("plot", run, "-o", trace), "is not a directory")
    one_line(*tool("compare", run, "-o", trace), "is not a directory")
    assert open(trace, "rb").read() == before and copy.read_bytes() == before
    assert len(read_run(run).ranks) == 2
    code, out, err = tool("summary", run, "--csv", tmp_path / "table.csv")  # an ordinary output
    assert code == 0 and "params" in (tmp_path / "table.csv").read_text(), err


def test_a_directory_mixing_two_runs_is_refused(tmp_path):
    a = make_run(tmp_path / "a", run_id="a" * 32)
    mixed = make_run(tmp_path / "mixed", run_id="b" * 32, ranks=[1])
    os.replace(os.path.join(a, "rank0.h5"), os.path.join(mixed, "rank0.h5"))
    for extra in ([], ["--skip-bad"]):
        line = one_line(*tool("summary", mixed, *extra), "files of different runs")
        assert "run_id " + "a" * 32 in line and "run_id " + "b" * 32 in line, line
    # files written before run ids (format_version 1): told apart by algorithm and world size
    old = make_run(tmp_path / "old", run_id=None, algorithm="adacomm", world=8, ranks=[0])
    make_run(old, run_id=None, algorithm="pcasgd", world=8, ranks=[4])
    one_line(*tool("summary", old), "files of different runs")
    ok = make_run(tmp_path / "ok", run_id=None, algorithm="pcasgd", world=8, ranks=[4, 5])
    assert tool("summary", ok)[0] == 0


def test_two_files_of_one_rank_are_refused(run):
    with open(os.path.join(run, "rank1.h5"), "rb") as f:
        data = f.read()
    with open(os.path.join(run, "rank01.h5"), "wb") as f:  # a copy under another name
        f.write(data)
    line = one_line(*tool("summary", run), "two files claim rank 1")
    assert "rank1.h5" in line and "rank01.h5" in line, line
    one_line(*tool("summary", run, "--skip-bad"), "two files claim rank 1")


def test_paths_that_are_not_regular_files_are_refused_at_once(run, tmp_path):
    os.remove(os.path.join(run, "rank1.h5"))
    os.mkfifo(os.path.join(run, "rank1.h5"))  # reading it would wait for a writer forever
    one_line(*tool("summary", run), "rank1.h5: not a regular file")
    one_line(*tool("summary", os.path.join(run, "rank1.h5")), "not a regular file")
    code, out, err = tool("summary", run, "--skip-bad")  # left out, and said so
    assert code == 0 and "rank1.h5: not a regular file" in out + err, (out, err)
    os.remove(os.path.join(run, "rank1.h5"))
    os.mkdir(os.path.join(run, "rank1.h5"))
    one_line(*tool("summary", run), "rank1.h5: not a regular file")
    one_line(*tool("summary", "/dev/null"), "not a regular file or directory")
