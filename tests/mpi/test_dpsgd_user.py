"""The multi-rank launches of the D-PSGD user-model tests. tests/unit/test_dpsgd_user.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations
import json
import os
import re

import pytest
import torch

from mpidist import trace
from mpirun import PROGRAMS, check, run_mpi
from bad_cases import MODEL_DATA_LOSS_LINES, assert_refused

N = 4                       # ranks of the checks launch: a ring where every worker has 2 neighbours

# measured (4 workers, ring, blobs:mlp hidden=24, batch 16, lr 0.1, 300 iterations): 96.0-96.7 %
# for every worker and for x_bar at seeds 0, 1, 2 (hidden=32)
MIN_ACCURACY = 90.0
# measured: the regression (lr 0.05, 300 iterations, seeds 0/1) ends at test MSE 0.0039-0.0044
# (workers' mean), x_bar 0.0026-0.0039; the targets' variance is about 14 (predicting the mean)
MAX_MSE = 0.05
# measured: the example's averaged model 94.3 % on its test blobs (seed 0, 4 workers)
MIN_EXAMPLE = 85.0
PARAMS = 4 * 24 + 24 + 24 * 3 + 3          # blobs:mlp with hidden=24 on 4 features, 3 classes



# ===================================================================================== MPI

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """tests/programs/dpsgd_user_checks.py under mpiexec -n 4, once."""
    out = tmp_path_factory.mktemp("dpsgd_user")
    proc = run_mpi(N, [os.path.join(PROGRAMS, "dpsgd_user_checks.py"), "--out", str(out)],
                   timeout=900)
    return proc, str(out)


def _models(run_dir):
    return [torch.load(os.path.join(run_dir, "model", f"rank{r}.pt"), weights_only=True)
            for r in range(N)]


def _section(text: str, start: str, run_dir: str) -> str:
    """Rank 0's lines of one run: from ``start`` to its ``trace: <run_dir>`` line."""
    i = text.index(start)
    j = text.index(f"trace: {run_dir}", i)
    return text[text.rindex("D-PSGD: ", 0, i):j]


def test_cli_blobs_accuracy_names_and_models(launched):
    proc, out = launched
    text = check(proc)
    assert "user checks done" in text
    part = _section(text, "on blobs:blobs", os.path.join(out, "cli"))
    assert (f"blobs:mlp ({PARAMS} parameters) on blobs:blobs: 600 training samples of shape "
            f"(4,), split over {N} workers, batch 16, 300 iterations") in part, part
    m = re.search(rf"test accuracy of the {N} workers ([\d.]+) \+- [\d.]+ %.*averaged model "
                  r"x_bar ([\d.]+) %", part)
    assert m, part
    assert float(m.group(1)) >= MIN_ACCURACY and float(m.group(2)) >= MIN_ACCURACY, part
    run = trace.read_run(os.path.join(out, "cli"))
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        args = json.loads(r.attrs["args"]) if isinstance(r.attrs["args"], str) else r.attrs["args"]
        assert (args["model"], args["data"], args["loss"]) == ("blobs:mlp", "blobs:blobs",
                                                               "cross_entropy")
        assert [list(kv) for kv in args["model_arg"]] == [["hidden", 24]]
        assert r.attrs["task"].startswith(f"blobs:mlp ({PARAMS} parameters) on blobs:blobs")
        assert min(r.attrs["final_test_acc"]) >= MIN_ACCURACY
    models = _models(os.path.join(out, "cli"))
    assert all(sum(t.numel() for t in m.values()) == PARAMS for m in models)


def test_cli_equals_api_bitwise(launched):
    """The command line and the user's script on the API (same seed, batches, lr): the same final
    parameters on every rank, bit for bit (the same operations in the same order); the API's
    messages are in its trace (x_0 once, x_k to and from both ring neighbours every iteration)."""
    proc, out = launched
    check(proc)
    assert re.search(r"API rank 0 test accuracy [\d.]+ %, averaged model x_bar [\d.]+ %",
                     proc.stdout)
    cli, api = _models(os.path.join(out, "cli")), _models(os.path.join(out, "api"))
    for r in range(N):
        assert cli[r].keys() == api[r].keys()
        bad = [k for k in cli[r] if not torch.equal(cli[r][k], api[r][k])]
        assert not bad, f"rank {r}: {bad} differ"
    assert not all(torch.equal(cli[0][k], cli[1][k]) for k in cli[0])   # workers differ
    for r in trace.read_run(os.path.join(out, "api")).ranks:
        c = r.comm
        assert len(c[c["channel"] == b"init"]) == 1
        peers = sorted({(r.rank - 1) % N, (r.rank + 1) % N})
        for op in (b"send", b"recv"):
            rows = c[(c["channel"] == b"params") & (c["op"] == op)]
            assert set(rows["nbytes"]) == {4 * PARAMS}
            assert sorted(zip(rows["peer"], rows["step"])) == sorted(
                (p, t) for p in peers for t in range(300))


def test_api_checkpoint_resume_bitwise(launched):
    proc, out = launched
    check(proc)
    full, resumed = _models(os.path.join(out, "api")), _models(os.path.join(out, "part"))
    for r in range(N):
        assert all(torch.equal(full[r][k], resumed[r][k]) for k in full[r]), r
    assert os.listdir(os.path.join(out, "part", "checkpoints")) == ["step-000000149"]
    loss = trace.read_run(os.path.join(out, "part")).ranks[0].metric("loss")
    assert list(loss[0]) == list(range(300))             # the trace continues across the resume


def test_regression_mse_no_accuracy(launched):
    """--data blobs:regression --loss mse: the test MSE falls well below the targets' variance,
    and no accuracy is reported anywhere (output, metrics, attributes)."""
    proc, out = launched
    text = check(proc)
    part = _section(text, "on blobs:regression", os.path.join(out, "reg"))
    assert "blobs:mlp (193 parameters) on blobs:regression: 512 training samples" in part
    m = re.search(rf"test loss \(mse\) of the {N} workers ([\d.e+-]+) \+- .*averaged model x_bar "
                  r"([\d.e+-]+)", part)
    assert m, part
    mse, mse_bar = float(m.group(1)), float(m.group(2))
    assert mse < MAX_MSE and mse_bar < MAX_MSE, part
    assert "accura" not in part.lower() and "%" not in part, part
    run = trace.read_run(os.path.join(out, "reg"))
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        assert "final_test_acc" not in r.attrs and "mean_model_test_acc" not in r.attrs
        assert len(r.attrs["final_test_loss"]) == N and max(r.attrs["final_test_loss"]) < MAX_MSE
        assert len(r.metric("test_acc")[0]) == 0
        s, _, v = r.metric("test_loss")
        assert list(s) == [99, 199, 299] and v[-1] < MAX_MSE and v[-1] < v[0]
    assert run.ranks[0].attrs["mean_model_test_loss"] < MAX_MSE
    assert len(_models(os.path.join(out, "reg"))) == N


def test_wrapped_user_optimizer(launched):
    """SGD(lr) inside DPSGD equals the plain DPSGD(lr) bit for bit; SGD with momentum inside
    DPSGD equals a blocking reference (gathered models, W X_k, momentum by hand) to 1e-6."""
    proc, _ = launched
    check(proc)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert lines == ["PASS wrap_sgd_equals_plain_dpsgd",
                     "PASS wrap_sgd_momentum_equals_reference"], proc.stdout


BAD_MESSAGES = {
    **MODEL_DATA_LOSS_LINES,
    "data_smaller_than_world": f"--data blobs:tiny: 3 training samples cannot be split over {N} "
                               "workers",
    "batch_larger_than_shard": f"--batch-size 151 exceeds the smallest worker's shard of 150 "
                               f"samples (blobs:blobs, {N} workers)",
}


def test_bad_input_one_line_exit_2_nothing_written(launched):
    proc, _ = launched
    check(proc)
    assert_refused(proc.stdout, BAD_MESSAGES, "mpidist.dpsgd", N)


def test_example_script(tmp_path):
    proc = run_mpi(N, ["-m", "mpidist.dpsgd.example"], timeout=300, cwd=str(tmp_path))
    out = check(proc)
    m = re.search(rf"D-PSGD on {N} workers: test accuracy of the averaged model ([\d.]+) %", out)
    assert m, out
    assert float(m.group(1)) >= MIN_EXAMPLE, out
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1
    run_dir = tmp_path / "runs" / runs[0]
    run = trace.read_run(str(run_dir))
    for r in run.ranks:
        chans = set(r.comm["channel"])
        assert {b"init", b"params", b"eval"} <= chans, chans
        assert len(r.metric("loss")[0]) == 300
    assert sorted(os.listdir(run_dir / "model")) == [f"rank{k}.pt" for k in range(N)]


def test_bad_input_through_python_m(tmp_path):
    """The real entry point: one line on rank 0, exit 2, no run directory."""
    tdir = tmp_path / "bad"
    proc = run_mpi(2, ["-m", "mpidist.dpsgd", "--model", "blobs:wrong_outputs", "--data",
                       "blobs:regression", "--loss", "mse", "--trace-dir", str(tdir)],
                   timeout=180)
    check(proc, 2)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "mpidist.dpsgd: error: --model blobs:wrong_outputs does not fit the data under --loss "
        "mse: inputs (2, 4), output (2, 7), labels (2,)"), lines
    assert not tdir.exists() or not os.listdir(tdir)
    assert "D-PSGD" not in proc.stdout
