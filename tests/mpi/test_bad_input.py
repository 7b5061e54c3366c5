"""Bad input (issue 8): every entry point refuses it with ONE clear line on rank 0, a non-zero exit
of every rank within seconds, and no file of a previous run overwritten or lost.

The cases of the four algorithms are a table in tests/programs/bad_input_driver.py, run in two
processes' worth of launches: the driver calls ``mpidist.<algo>.main(argv)`` in-process for every
case, once as a plain process (a world of 1) and once under ``mpiexec -n 2``, and prints one
PASS/FAIL line per case; each case is one test here. Three real launches check what the driver
cannot see from inside (the processes' exit status, that mpiexec returns, the wall time); the trace
tool's cases run in this process.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mpirun import REPO, check_program, run_mpi
from checks import snapshot as _snapshot


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DRIVER_PATH = os.path.join(REPO, "tests", "programs", "bad_input_driver.py")
driver = _load("bad_input_driver", DRIVER_PATH)   # the case table: plain data, no torch import
TOOL_PATH = os.path.join(REPO, "tools", "mpidist_trace.py")
ENV = {"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
REAL_LAUNCH_LIMIT = 120.0  # seconds for a refused mpiexec launch, start-up of every rank included:
                          # "within seconds, not minutes" with room for a busy machine



def _parse(stdout: str, world: int) -> dict:
    results = {}
    for line in stdout.splitlines():
        if line.startswith(("PASS ", "FAIL ")):
            _, name, js = line.split(" ", 2)
            results[name] = json.loads(js)
    expected = [c.name for c in driver.CASES if c.world == world]
    assert f"DONE {len(expected)}" in stdout, stdout[-3000:]
    assert sorted(results) == sorted(expected)
    return results


def _exit_matches(proc) -> None:
    """The driver exits 1 exactly when a case FAILed (the cases' own tests then say which), else
    0; anything else is a crash of the driver."""
    check_program(proc)


@pytest.fixture(scope="module")
def world1(tmp_path_factory):
    """Every world-1 case, in one plain process (an MPI singleton)."""
    base = tmp_path_factory.mktemp("bad1")
    proc = subprocess.run([sys.executable, DRIVER_PATH, str(base / "cases")], capture_output=True,
                          text=True, timeout=900, cwd=base, env={**os.environ, **ENV})
    _exit_matches(proc)
    assert not os.path.exists(base / "runs"), "a case wrote a default runs/ directory"
    return _parse(proc.stdout, 1)


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """Every world-2 case, in one ``mpiexec -n 2`` launch."""
    base = tmp_path_factory.mktemp("bad2")
    proc = run_mpi(2, [DRIVER_PATH, str(base / "cases")], timeout=900, env=ENV, cwd=str(base))
    _exit_matches(proc)
    assert not os.path.exists(base / "runs"), "a case wrote a default runs/ directory"
    return _parse(proc.stdout, 2)


def _params(world):
    out = []
    for c in driver.CASES:
        if c.world != world:
            continue
        out.append(pytest.param(c.name, id=c.name))
    return out


def _explain(r) -> str:
    return f"{r['name']}: {r['message']!r}\n" + "\n".join(r["why"])


@pytest.mark.parametrize("name", _params(1))
def test_entry_point_refuses_bad_input_world_1(world1, name):
    r = world1[name]
    assert r["ok"], _explain(r)


@pytest.mark.parametrize("name", _params(2))
def test_entry_point_refuses_bad_input_world_2(world2, name):
    r = world2[name]
    assert r["ok"], _explain(r)


def test_a_refused_start_leaves_no_new_trace_files(world1, world2):
    left = {n: r["left"] for n, r in {**world1, **world2}.items() if r["left"]}
    assert not left, left


# ---------------------------------------------------------------------------- real launches

def _one_line(proc, algo: str, *words: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mpidist.{algo}: error: ") and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert proc.stdout.strip() == "", proc.stdout
    return lines[0]


def test_world_that_does_not_fit_ends_every_rank(tmp_path):
    """pcasgd's clusters 3,5 do not fit 3 agents: the 3 processes exit 2 and mpiexec returns."""
    t = time.monotonic()
    proc = run_mpi(3, ["-m", "mpidist.pcasgd", "--clusters", "3,5", "--trace-dir",
                       str(tmp_path / "run")], 300, env=ENV)
    elapsed = time.monotonic() - t
    assert proc.returncode == 2, proc.stderr
    _one_line(proc, "pcasgd", "describes 8 agents but the job has 3 ranks", "--clusters")
    assert elapsed < REAL_LAUNCH_LIMIT, elapsed
    assert not os.path.exists(tmp_path / "run")  # refused before the run directory is made


def test_checkpoint_unreadable_on_rank_1_only_ends_every_rank(tmp_path):
    """Rank 0 reads its checkpoint file, rank 1 cannot: both exit 2, the files stay as they were."""
    driver.setup_case("ckpt:adacomm:2:corrupt1", str(tmp_path))
    before = _snapshot(tmp_path)
    t = time.monotonic()
    proc = run_mpi(2, ["-m", "mpidist.adacomm", "--resume", str(tmp_path / "old"), "--steps",
                       "2"], 300, env=ENV)
    elapsed = time.monotonic() - t
    assert proc.returncode == 2, proc.stderr
    _one_line(proc, "adacomm", "rank1.pt is unreadable or corrupt", "step-000000005")
    assert elapsed < REAL_LAUNCH_LIMIT, elapsed
    assert _snapshot(tmp_path) == before


def test_missing_dataset_found_after_the_start_ends_every_rank(tmp_path):
    """DADA's ranks load their domains after the start: a missing MNIST ends both with status 2."""
    t = time.monotonic()
    proc = run_mpi(2, ["-m", "mpidist.dada", "--task", "mnist-rot", "--data-root",
                       str(tmp_path / "none"), "--trace-dir", str(tmp_path / "run")], 300, env=ENV)
    elapsed = time.monotonic() - t
    assert proc.returncode == 2, proc.stderr
    _one_line(proc, "dada", "mnist: no usable files under --data-root", "--download")
    assert elapsed < REAL_LAUNCH_LIMIT, elapsed


# ---------------------------------------------------------------------------- the trace tool

tool = _load("mpidist_trace", TOOL_PATH)


def _write_trace(run_dir, world=2):
    """A small real trace (what the runtime writes), for the tool's output-path cases."""
    from mpidist.trace import TraceWriter
    os.makedirs(run_dir)
    for k in range(world):
        w = TraceWriter(os.path.join(run_dir, f"rank{k}.h5"),
                        {"algorithm": "demo", "rank": k, "world_size": world,
                         "args": {"steps": 3}}, lambda: 1.0)
        for s in range(3):
            w.comm(s, b"send", (k + 1) % world, 1, b"params", 400, 0.1 * s, 0.1 * s + 0.01)
            w.comm(s, b"recv", (k - 1) % world, 1, b"params", 400, 0.1 * s, 0.1 * s + 0.02)
            w.metric(s, "loss", 1.0 / (s + 1))
        w.close()


@pytest.fixture
def bad_inputs(tmp_path):
    """{kind: path} of what is not an mpidist trace, plus earlier outputs of the tool in old/."""
    foreign = tmp_path / "foreign" / "rank0.h5"
    foreign.parent.mkdir()
    with h5py.File(foreign, "w") as h:
        h.create_dataset("comm", data=np.arange(10))
    text = tmp_path / "text" / "rank0.h5"
    text.parent.mkdir()
    text.write_text("this is not HDF5\n" * 50)
    (tmp_path / "empty").mkdir()
    old = tmp_path / "old"
    (old / "figs").mkdir(parents=True)
    (old / "figs" / "timeline.png").write_bytes(b"\x89PNG earlier figure")
    (old / "cmp").mkdir()
    (old / "cmp" / "compare.csv").write_text("run,bytes\na,1\n")
    (old / "trace.json").write_text('{"traceEvents": []}')
    (old / "table.csv").write_text("rank,bytes\n0,1\n")
    return {"non-trace .h5": (foreign, "not an mpidist trace"),
            "text file named rank0.h5": (text.parent, "not a readable mpidist trace"),
            "empty directory": (tmp_path / "empty", "no rank<k>.h5 files"),
            "missing path": (tmp_path / "nowhere", "no such")}


def _cli(capsys, *argv):
    try:
        code = tool.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _tool_line(code, out, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("mpidist_trace") and ": error: " in lines[0], err
    assert "Traceback" not in err and out == "", (out, err)
    for w in words:
        assert w in lines[0], lines[0]


TOOL_COMMANDS = {
    "summary": lambda p, old: ["summary", p, "--csv", old / "table.csv"],
    "plot": lambda p, old: ["plot", p, "-o", old / "figs"],
    "compare": lambda p, old: ["compare", p, "-o", old / "cmp"],
    "export": lambda p, old: ["export", p, "-o", old / "trace.json"],
}
TOOL_INPUTS = ["non-trace .h5", "text file named rank0.h5", "empty directory", "missing path"]


@pytest.mark.parametrize("kind", TOOL_INPUTS)
@pytest.mark.parametrize("command", sorted(TOOL_COMMANDS))
def test_tool_refuses_what_is_not_a_trace(capsys, tmp_path, bad_inputs, command, kind):
    path, words = bad_inputs[kind]
    before = _snapshot(tmp_path)
    _tool_line(*_cli(capsys, *TOOL_COMMANDS[command](path, tmp_path / "old")), words)
    assert _snapshot(tmp_path) == before  # the earlier outputs are not overwritten


@pytest.mark.parametrize("argv, words", [
    (["bogus", "x"], "invalid choice: 'bogus'"),
    ([], "required: COMMAND"),
    (["summary"], "required: run"),
    (["summary", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["plot", "x", "--window", "1"], "expected 2 arguments"),
    (["plot", "{run}", "--window", "5", "1"], "T0 must be less than T1"),
    (["plot", "{run}", "-o", "{file}/figs"], "cannot write"),
    (["export", "{run}", "-o", "{file}/trace.json"], "cannot write"),
    (["compare", "{run}", "-o", "{file}/cmp"], "cannot write"),
    (["summary", "{run}", "--csv", "{file}/t.csv"], "cannot write"),
], ids=["unknown-command", "no-command", "no-run", "unknown-flag", "window-one-value",
        "window-reversed", "plot-out-under-file", "export-out-under-file",
        "compare-out-under-file", "csv-under-file"])
def test_tool_usage_and_output_errors_are_one_line(capsys, tmp_path, argv, words):
    _write_trace(str(tmp_path / "run"))
    (tmp_path / "file").write_text("a regular file\n")
    before = _snapshot(tmp_path)
    argv = [a.format(run=tmp_path / "run", file=tmp_path / "file") for a in argv]
    _tool_line(*_cli(capsys, *argv), words)
    assert _snapshot(tmp_path) == before


def test_tool_exit_status_of_the_real_command(tmp_path):
    (tmp_path / "rank0.h5").write_text("not HDF5\n")
    proc = subprocess.run([sys.executable, TOOL_PATH, "summary", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable mpidist trace" in lines[0], proc.stderr
