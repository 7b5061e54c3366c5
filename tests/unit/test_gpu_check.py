"""tools/gpu_check.py, the parts that need no GPU: its arguments (bad ones refused in one line,
exit 2), the comparison of trace bytes per channel between two runs, the tables it prints, and
the one line (exit 0, nothing claimed) on a machine where torch sees no CUDA device."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from mpidist.trace import COMM_DTYPE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tools", "gpu_check.py")

_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)


# ------------------------------------------------------------------ arguments

def test_defaults_cover_every_part_and_1k_to_64m():
    a = gc.parse_args([])
    assert a.parts == ["detect", "comm", "race", "placement", "algorithms", "bandwidth"]
    assert a.algorithms == ["pcasgd", "adacomm", "dada", "mdgan", "dpsgd"]
    assert a.sizes == [1 << k for k in range(10, 27)]  # 1 KiB .. 64 MiB, 17 sizes
    assert a.timeout == 300.0 and not a.rehearse_on_cpu and a.worker is None


def test_every_algorithm_of_the_registry_has_its_few_steps():
    from mpidist.algorithms import ALGORITHMS
    assert set(gc.ALGORITHMS) == set(ALGORITHMS) == set(gc.FEW_STEPS)


def test_subsets_and_sizes():
    a = gc.parse_args(["--parts", "comm,bandwidth", "--algorithms", "dada", "--sizes", "3K-20K",
                       "--timeout", "42"])
    assert a.parts == ["comm", "bandwidth"] and a.algorithms == ["dada"]
    assert a.sizes == [4096, 8192, 16384] and a.timeout == 42.0
    assert gc.size_range("1K") == [1024]
    assert [gc.parse_size(s) for s in ("4096", "1KiB", "2k", "64M", "1G")] == \
        [4096, 1024, 2048, 64 << 20, 1 << 30]


@pytest.mark.parametrize("argv, words", [
    (["--parts", "comm,gpu"], "unknown part gpu"),
    (["--algorithms", "sgd"], "unknown algorithm sgd"),
    (["--sizes", "64M-1K"], "MIN <= MAX"),
    (["--sizes", "lots"], "not a size"),
    (["--sizes", "5K-7K"], "no power of two"),
    (["--timeout", "0"], "--timeout 0.0: must be > 0"),
    (["--worker", "comm"], "--worker needs --result"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_one_line_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu_check: error: ") and words in err, err


# ------------------------------------------------------------------ trace bytes per channel

def _rows(*rows):
    a = np.zeros(len(rows), COMM_DTYPE)
    for i, (op, channel, nbytes) in enumerate(rows):
        a[i]["op"], a[i]["channel"], a[i]["nbytes"] = op, channel, nbytes
    return a


def test_channel_bytes_sums_messages_and_bytes_per_channel_and_op():
    comm = _rows(("send", b"params", 400), ("send", b"params", 400), ("recv", b"params", 400),
                 ("allreduce", b"grads", 1000), ("allreduce", b"grads", 1000),
                 ("allreduce", b"grads", 1000), ("bcast", b"control", 17))
    assert gc.channel_bytes(comm) == {("params", "send"): [2, 800], ("params", "recv"): [1, 400],
                                      ("grads", "allreduce"): [3, 3000],
                                      ("control", "bcast"): [1, 17]}
    assert gc.channel_bytes(_rows()) == {}


def test_compare_channels_same_different_missing_and_not_compared():
    a = {("params", "send"): [2, 800], ("grads", "allreduce"): [3, 3000],
         ("control", "bcast"): [1, 17], ("only_a", "send"): [1, 8]}
    b = {("params", "send"): [2, 800], ("grads", "allreduce"): [3, 3004],
         ("control", "bcast"): [1, 18], ("only_b", "recv"): [2, 16]}
    out = gc.compare_channels(a, b)
    assert out == [("control", "bcast", 1, 17, 1, 18, "not compared"),
                   ("grads", "allreduce", 3, 3000, 3, 3004, "DIFFERENT"),
                   ("only_a", "send", 1, 8, 0, 0, "DIFFERENT"),
                   ("only_b", "recv", 0, 0, 2, 16, "DIFFERENT"),
                   ("params", "send", 2, 800, 2, 800, "same")]
    # the same bytes in another number of messages is a difference too
    assert gc.compare_channels({("x", "send"): [2, 8]}, {("x", "send"): [1, 8]})[0][-1] == \
        "DIFFERENT"
    # control is compared when asked
    assert gc.compare_channels(a, b, skip=())[0][-1] == "DIFFERENT"


# ------------------------------------------------------------------ tables, status, refusal

def test_format_table_pads_columns_and_right_aligns_numbers():
    t = gc.format_table(["name", "n", "note"], [["a", "5", "short"], ["bbbb", "123", "x y z"]])
    assert t.splitlines() == ["name  n    note",
                              "----  ---  ----",
                              "a       5  short",
                              "bbbb  123  x y z"]
    with pytest.raises(ValueError):
        gc.format_table(["a", "b"], [["1"]])


def test_results_and_bandwidth_tables_and_exit_status():
    rows = [gc.row("comm", "ibcast", "staged", 2, "PASS", "20 cases"),
            gc.row("comm", "ibcast", "cuda-aware", 2, "SKIP", "MPI library not CUDA-aware")]
    text = gc.results_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["part", "check", "path", "ranks", "status", "detail"]
    assert lines[2].split() == ["comm", "ibcast", "staged", "2", "PASS", "20", "cases"]
    assert lines[3].endswith("SKIP    MPI library not CUDA-aware")
    assert gc.exit_status(rows) == 0
    assert gc.exit_status(rows + [gc.row("race", "x", "staged", 2, "FAIL", "stale")]) == 1
    with pytest.raises(AssertionError):
        gc.row("comm", "x", "-", 2, "OK")
    bw = gc.bandwidth_table([{"size": 1024, "cpu": (2.0, 0.512), "staged": (10.0, 0.1024),
                              "cuda-aware": None},
                             {"size": 64 << 20, "cpu": (20000.0, 3.355), "staged": None,
                              "cuda-aware": None}], ["cpu", "staged", "cuda-aware"])
    lines = bw.splitlines()
    assert lines[0].split() == ["size", "cpu", "GB/s", "staged", "GB/s", "cuda-aware", "GB/s",
                                "cpu", "us", "staged", "us", "cuda-aware", "us"]
    assert lines[2].split() == ["1", "KiB", "0.51", "0.10", "-", "2.0", "10.0", "-"]
    assert lines[3].split() == ["64", "MiB", "3.35", "-", "-", "20000.0", "-", "-"]
    assert [gc.human(n) for n in (1000, 1024, 3 << 20, 1 << 30)] == \
        ["1000 B", "1 KiB", "3 MiB", "1 GiB"]


def test_no_gpu_line():
    assert gc.no_gpu_line("2.14.1+cpu", None) == (
        "gpu_check: no CUDA device visible (torch 2.14.1+cpu, built without CUDA: "
        "torch.cuda.is_available() is False); nothing was checked")
    assert "built for CUDA 13.0" in gc.no_gpu_line("2.14.1+cu130", "13.0")


def test_the_script_without_a_gpu_says_so_in_one_line_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this is the machine without one even on a GPU node
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    import torch
    assert p.stdout == gc.no_gpu_line(torch.__version__, torch.version.cuda) + "\n"
    assert "PASS" not in p.stdout + p.stderr and "FAIL" not in p.stdout + p.stderr
    assert not (tmp_path / "out").exists()  # nothing launched, nothing written
    # bad arguments are refused before that, in one line, exit 2
    p = subprocess.run([sys.executable, SCRIPT, "--parts", "nope"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
