"""D-PSGD with a user's own model, data and loss (``--model``/``--data``/``--loss`` as
MODULE:FUNCTION, tests/user_modules/blobs.py) and the Python API (:class:`mpidist.dpsgd.DPSGD`):
unit checks in this process (a world of one), then three launches: tests/user_modules/
dpsgd_user_checks.py under -n 4 (the command line on the blobs, the same run through the API, the
API checkpointed and resumed, a regression, the user's own optimizer wrapped, the bad inputs), the
example script under -n 4, and one bad input through ``python -m mpidist.dpsgd`` itself (-n 2)."""
from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mpidist import data, dpsgd, trace
from mpidist.comm import Communicator
from mpirun import check, run_mpi

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = os.path.join(HERE, "user_modules")
ENV = {"PYTHONPATH": os.pathsep.join([MODULES, os.environ.get("PYTHONPATH", "")])}
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


@pytest.fixture(autouse=True)
def _on_path(monkeypatch):
    monkeypatch.syspath_prepend(MODULES)
    data._USER_CACHE.clear()


# ===================================================================================== in-process

def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


def _batch(k):
    g = torch.Generator().manual_seed(k)
    return torch.randn(8, 3, generator=g), torch.randint(2, (8,), generator=g)


def test_flags_take_a_users_model_data_and_loss():
    a = dpsgd.build_parser().parse_args(["--model", "blobs:mlp", "--model-arg", "hidden=8",
                                         "--data", "blobs:regression", "--loss", "mse"])
    assert (a.model, a.model_arg, a.data, a.loss) == ("blobs:mlp", [("hidden", 8)],
                                                      "blobs:regression", "mse")
    assert dpsgd.build_parser().parse_args([]).loss == "cross_entropy"


def test_api_world_of_one_is_sgd_and_closure_returns_the_loss():
    """One worker: W = [1], so DPSGD(lr) is plain SGD, bit for bit; the closure form returns the
    closure's value; the wrapped optimizer tolerates zero_grad(set_to_none=True)."""
    model, ref = _net(), _net()
    opt = dpsgd.DPSGD(Communicator(), model, lr=0.1)
    assert opt.neighbours == [] and opt.mixing_rate == 0.0
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    wrapped = _net()
    inner = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    wopt = dpsgd.DPSGD(Communicator(), wrapped, optimizer=inner)
    for k in range(5):
        x, y = _batch(k)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        got = opt.step(closure)
        ref_opt.zero_grad()
        want = F.cross_entropy(ref(x), y)
        want.backward()
        ref_opt.step()
        assert torch.equal(got, want)
        inner.zero_grad(set_to_none=True)               # the user's habit: grads set to None
        F.cross_entropy(wrapped(x), y).backward()
        wopt.step()
        for a, b, c in zip(model.parameters(), ref.parameters(), wrapped.parameters()):
            assert torch.equal(a, b) and torch.equal(a, c), k
    assert opt.steps == wopt.steps == 5


def test_api_state_dict_round_trip_and_mismatch():
    model = _net()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = dpsgd.DPSGD(Communicator(), model, optimizer=inner)
    for k in range(3):
        x, y = _batch(k)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    saved = copy.deepcopy({"model": model.state_dict(), "dpsgd": opt.state_dict()})
    assert saved["dpsgd"]["steps"] == 3 and saved["dpsgd"]["optimizer"]["state"]

    def go(m, o, ks):
        for k in ks:
            x, y = _batch(k)
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    go(model, opt, range(3, 6))
    again = _net(1)                                     # other weights: the state restores them
    opt2 = dpsgd.DPSGD(Communicator(), again,
                       optimizer=torch.optim.SGD(again.parameters(), lr=0.1, momentum=0.9))
    again.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["dpsgd"])
    go(again, opt2, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert opt2.steps == 6
    with pytest.raises(ValueError, match="ring graph with metropolis weights on 1"):
        dpsgd.DPSGD(Communicator(), _net(), optimizer=torch.optim.SGD(_net().parameters(), 0.1),
                    graph="full").load_state_dict(saved["dpsgd"])
    with pytest.raises(ValueError, match="wrapped an optimizer, this one does not"):
        dpsgd.DPSGD(Communicator(), _net(), lr=0.1).load_state_dict(saved["dpsgd"])


def test_api_refuses_misuse():
    with pytest.raises(ValueError, match="give lr .* or optimizer"):
        dpsgd.DPSGD(Communicator(), _net())
    m = _net()
    with pytest.raises(ValueError, match="one of the two"):
        dpsgd.DPSGD(Communicator(), m, lr=0.1, optimizer=torch.optim.SGD(m.parameters(), 0.1))
    opt = dpsgd.DPSGD(Communicator(), _net(), lr=0.1)
    opt.begin()
    with pytest.raises(RuntimeError, match="in flight"):
        opt.state_dict()
    x, y = _batch(0)
    F.cross_entropy(opt.model(x), y).backward()
    opt.step()                                          # the begun exchange completes here
    assert opt.state_dict()["steps"] == 1


def test_averaged_restores_the_own_model():
    opt = dpsgd.DPSGD(Communicator(), _net(), lr=0.1)
    own = opt.params.clone()
    with opt.averaged(torch.zeros_like(own)) as model:
        assert all(float(p.detach().abs().max()) == 0 for p in model.parameters())
    assert torch.equal(opt.params, own)


# ===================================================================================== MPI

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """tests/user_modules/dpsgd_user_checks.py under mpiexec -n 4, once."""
    out = tmp_path_factory.mktemp("dpsgd_user")
    proc = run_mpi(N, [os.path.join(MODULES, "dpsgd_user_checks.py"), "--out", str(out)],
                   timeout=900, env=ENV)
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
    "model_no_module": "--model nosuchmod:build: cannot import module 'nosuchmod'",
    "model_no_function": "--model blobs:nope: module 'blobs' has no function 'nope'",
    "model_not_module": "--model blobs:not_a_module: returned str, expected a torch.nn.Module",
    "model_arg_refused": "--model blobs:mlp --model-arg depth=2: cannot build it (mlp() got an "
                         "unexpected keyword "
                         "argument 'depth')",
    "model_does_not_fit": "--model blobs:wrong_outputs does not fit the data under --loss mse: "
                          "inputs (2, 4), output (2, 7), labels (2,)",
    "data_no_module": "--data nosuchmod:load: cannot import module 'nosuchmod'",
    "data_not_pair": "--data blobs:not_a_pair: returned int, expected (train, test)",
    "data_smaller_than_world": f"--data blobs:tiny: 3 training samples cannot be split over {N} "
                               "workers",
    "batch_larger_than_shard": f"--batch-size 151 exceeds the smallest worker's shard of 150 "
                               f"samples (blobs:blobs, {N} workers)",
    "regression_with_cross_entropy": "--data blobs:regression has float (regression) labels: "
                                     "use --loss mse",
    "loss_unknown": "--loss hinge: expected cross_entropy, mse or MODULE:FUNCTION",
    "loss_no_function": "--loss blobs:nope: module 'blobs' has no function 'nope'",
}


def test_bad_input_one_line_exit_2_nothing_written(launched):
    proc, _ = launched
    check(proc)
    cases = {}
    dec = json.JSONDecoder()
    for line in proc.stdout.splitlines():
        if line.startswith("CASE "):
            name, rest = line[5:].split(" ", 1)
            codes, i = dec.raw_decode(rest)
            left, rest = rest[i:].strip().split(" ", 1)
            lines, i = dec.raw_decode(rest)
            others, _ = dec.raw_decode(rest[i:].strip())
            cases[name] = (codes, int(left), lines, others)
    assert set(cases) == set(BAD_MESSAGES)
    for name, want in BAD_MESSAGES.items():
        codes, left, lines, others = cases[name]
        assert codes == [2] * N, (name, codes)
        assert not left, f"{name}: the run directory was left behind"
        assert len(lines) == 1 and lines[0].startswith("mpidist.dpsgd: error: "), (name, lines)
        assert want in lines[0], (name, lines[0])
        assert not others, f"{name}: another rank wrote {others}"


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
                   timeout=180, env=ENV)
    check(proc, 2)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "mpidist.dpsgd: error: --model blobs:wrong_outputs does not fit the data under --loss "
        "mse: inputs (2, 4), output (2, 7), labels (2,)"), lines
    assert not tdir.exists() or not os.listdir(tdir)
    assert "D-PSGD" not in proc.stdout
