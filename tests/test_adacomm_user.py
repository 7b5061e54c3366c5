"""AdaComm with a user's own model, data and loss (``--model``/``--data``/``--loss`` as
MODULE:FUNCTION, tests/user_modules/blobs.py) and the Python API (:class:`mpidist.adacomm.AdaComm`
around the user's torch optimizer): unit checks in this process (a world of one), then two
launches: tests/user_modules/adacomm_user_checks.py under -n 4 (the command line on the blobs, the
same run through the API, the API checkpointed and resumed, PASGD tau = 1 against synchronous SGD
and a single-process reference on the union of the workers' batches, the same through the command
line, a regression, the bad inputs) and the example script under -n 4; plus one bad input through
``python -m mpidist.adacomm`` itself, as one process (a world of one, no mpiexec)."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mpidist import adacomm, data, trace
from mpidist.adacomm import AdaComm
from mpidist.comm import Communicator
from mpidist.errors import UsageError
from mpirun import REPO, check, run_mpi

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = os.path.join(HERE, "user_modules")
ENV = {"PYTHONPATH": os.pathsep.join([MODULES, os.environ.get("PYTHONPATH", "")])}
N = 4                       # ranks of the launches (blobs:tiny's 3 samples cannot be split over 4)

STEPS, TAU, HIDDEN = 240, 4, 24       # as in tests/user_modules/adacomm_user_checks.py
PARAMS = 4 * HIDDEN + HIDDEN + HIDDEN * 3 + 3          # blobs:mlp, 4 features, 3 classes
# measured (4 workers, PASGD tau 4, momentum 0.9 + block momentum 0.3, batch 16, lr 0.1, 240
# steps, seed 0): test accuracy 0.9567 from the command line and the API alike (the resumed API
# run too); the blobs' classes overlap (noise 0.7 at distance 2.8), so about 0.96 is the ceiling
MIN_ACCURACY = 0.90
# measured: the regression (PASGD tau 4, lr 0.05, 240 steps, seed 0) ends at test MSE 0.0034;
# predicting the mean would give the targets' variance, about 14
MAX_MSE = 0.05
# measured: the example's averaged model 94.3 % on its test blobs (4 workers and 1 alike)
MIN_EXAMPLE = 85.0


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


def _train(opt, model, ks, set_to_none=False):
    for k in ks:
        x, y = _batch(k)
        if set_to_none:                                  # the user's habit: grads set to None
            opt.optimizer.zero_grad(set_to_none=True)
        else:
            opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss)


def _same(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_flags_take_a_users_model_data_and_loss():
    a = adacomm.make_parser().parse_args(["--model", "blobs:mlp", "--model-arg", "hidden=8",
                                          "--data", "blobs:regression", "--loss", "mse"])
    assert (a.model, a.model_arg, a.data, a.loss) == ("blobs:mlp", [("hidden", 8)],
                                                      "blobs:regression", "mse")
    assert adacomm.make_parser().parse_args([]).loss == "cross_entropy"


def test_api_world_of_one_is_the_wrapped_optimizer():
    """One worker: an averaging changes nothing, so AdaComm around torch.optim.SGD makes that
    optimizer's steps bit for bit: PASGD (no momentum: no restart to mimic) with the user's own
    optimizer, with AdaComm's own FlatSGD (lr=...), and sync with momentum; a gradient the user
    set to None is taken in."""
    ref, ref_m = _net(), _net()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=5e-4)
    sgd_m = torch.optim.SGD(ref_m.parameters(), lr=0.1, momentum=0.9)
    wrapped, own, sync = _net(), _net(), _net()
    a = AdaComm(Communicator(), wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1,
                                                         weight_decay=5e-4),
                method="pasgd", tau=3)
    b = AdaComm(Communicator(), own, None, "pasgd", 3, lr=0.1, weight_decay=5e-4)
    c = AdaComm(Communicator(), sync, torch.optim.SGD(sync.parameters(), lr=0.1, momentum=0.9),
                method="sync")
    for k in range(7):
        x, y = _batch(k)
        for model, opt in ((ref, sgd), (ref_m, sgd_m)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        _train(a, wrapped, [k], set_to_none=True)
        _train(b, own, [k])
        _train(c, sync, [k], set_to_none=True)
        assert _same(ref, wrapped) and _same(ref, own) and _same(ref_m, sync), k
    assert (a.averagings, b.averagings, c.averagings) == (2, 2, 7)
    assert a.finish() is not None and a.averagings == 3 and a.finish() is None
    assert c.finish() is None


def test_api_state_dict_round_trip():
    """AdaComm (the user's SGD with momentum, block momentum) saved after 5 steps and loaded into
    a wrapper around another model continues bit for bit; another method is refused."""
    def make(seed):
        m = _net(seed)
        return m, AdaComm(Communicator(), m, torch.optim.SGD(m.parameters(), lr=0.1,
                                                             momentum=0.9),
                          method="adacomm", tau=2, interval=1e9, global_momentum=0.3)
    model, opt = make(0)
    _train(opt, model, range(5))
    saved = copy.deepcopy(opt.state_dict())
    assert saved["steps"] == 5 and opt.averagings == 2
    _train(opt, model, range(5, 10))
    again, opt2 = make(1)                                # other weights: the state restores them
    opt2.load_state_dict(saved)
    _train(opt2, again, range(5, 10))
    assert _same(model, again) and opt2.steps == 10 and opt2.averagings == 5
    m = _net()
    other = AdaComm(Communicator(), m, torch.optim.SGD(m.parameters(), lr=0.1), method="pasgd")
    with pytest.raises(ValueError, match="ran method adacomm"):
        other.load_state_dict(saved)


def test_command_line_checkpoints_of_before_the_wrapper_still_load():
    """A checkpoint written by the command line before AdaComm wrapped it (``wrapper``, ``shard``,
    ``step``, ``start_step``, ``offset``) loads into today's Trainer."""
    from types import SimpleNamespace
    from mpidist.adacomm.worker import Trainer

    def make(seed):
        m = _net(seed)
        ada = AdaComm(Communicator(), m, None, "pasgd", 2, lr=0.1, momentum=0.9)
        ds = data.Dataset(*_batch(0), "toy", 2)
        shard = data.Shard(ds, 0, 1, 4, 0)
        return m, Trainer(SimpleNamespace(world_size=1), ada, shard, F.cross_entropy, 8, 4)
    model, tr = make(0)
    for _ in range(3):
        tr.one_step()
    new = copy.deepcopy(tr.state_dict())
    old = {"wrapper": new["adacomm"]["wrapper"], "shard": new["shard"], "step": 3,
           "start_step": 0, "offset": new["adacomm"]["offset"]}
    for saved in (new, old):
        again, tr2 = make(1)
        tr2.load_state_dict(copy.deepcopy(saved))
        assert _same(model, again) and tr2.step == 3 and tr2.shard.pos == tr.shard.pos


def test_api_learning_rate_follows_the_user_or_the_milestones():
    """The user's own scheduler changes the optimizer's lr: the schedule's eta_l follows it (Eq. 6
    reads it); with lr_milestones (epochs) and steps_per_epoch AdaComm decays it itself (PASGD: on
    time)."""
    m = _net()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1)
    opt = AdaComm(Communicator(), m, sgd, method="pasgd", tau=2)
    sched = torch.optim.lr_scheduler.StepLR(sgd, step_size=3, gamma=0.5)
    for k in range(7):
        _train(opt, m, [k])
        sched.step()
    assert opt.lr == sgd.param_groups[0]["lr"] == 0.025
    m = _net()
    opt = AdaComm(Communicator(), m, None, "pasgd", 2, lr=0.1, lr_milestones=[1, 2],
                  steps_per_epoch=3)
    lrs = []
    for k in range(7):
        _train(opt, m, [k])
        lrs.append(opt.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001])


def test_api_refuses_misuse():
    m = _net()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1)
    for kw, words in ((dict(method="local"), "method must be one of sync, pasgd, adacomm"),
                      (dict(lr=0.1), "with your optimizer, set them in your optimizer"),
                      (dict(tau=0), "tau0 >= 1"),
                      (dict(gamma=1.0), "gamma in (0, 1)"),
                      (dict(lr_milestones=[3]), "give steps_per_epoch")):
        with pytest.raises(UsageError, match=re.escape(words)):
            AdaComm(Communicator(), m, sgd, **kw)
    with pytest.raises(UsageError, match="give optimizer"):
        AdaComm(Communicator(), m)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(UsageError, match="no trainable parameters"):
        AdaComm(Communicator(), frozen, None, lr=0.1)


# ===================================================================================== MPI

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """tests/user_modules/adacomm_user_checks.py under mpiexec -n 4, once."""
    out = tmp_path_factory.mktemp("adacomm_user")
    proc = run_mpi(N, [os.path.join(MODULES, "adacomm_user_checks.py"), "--out", str(out)],
                   timeout=1200, env=ENV)
    return proc, str(out)


def _models(run_dir):
    return [torch.load(os.path.join(run_dir, "model", f"rank{r}.pt"), weights_only=True)
            for r in range(N)]


def _section(text: str, start: str, run_dir: str) -> str:
    """Rank 0's lines of one command-line run: from its first line (``adacomm: method ...``) to
    its ``trace: <run_dir>`` line; ``start`` must be in it."""
    j = text.index(f"trace: {run_dir}")
    part = text[text.rindex("adacomm: method", 0, j):j]
    assert start in part, part
    return part


def _args(r) -> dict:
    a = r.attrs["args"]
    return json.loads(a) if isinstance(a, str) else a


def test_cli_blobs_accuracy_names_and_models(launched):
    proc, out = launched
    text = check(proc)
    assert "user checks done" in text
    part = _section(text, "on blobs:blobs", os.path.join(out, "cli"))
    assert (f"adacomm: method pasgd, {N} workers, blobs:mlp ({PARAMS} parameters) on "
            f"blobs:blobs: 600 training samples of shape (4,) (300 test), loss cross_entropy"
            in part), part
    m = re.search(r"test accuracy ([\d.]+) \(test loss", part)
    assert m and float(m.group(1)) >= MIN_ACCURACY, part
    assert f"{STEPS} steps per worker" in part and f"{STEPS // TAU} model averagings" in part
    run = trace.read_run(os.path.join(out, "cli"))
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        args = _args(r)
        assert (args["model"], args["data"], args["loss"]) == ("blobs:mlp", "blobs:blobs",
                                                               "cross_entropy")
        assert [list(kv) for kv in args["model_arg"]] == [["hidden", HIDDEN]]
        assert r.attrs["task"].startswith(f"blobs:mlp ({PARAMS} parameters) on blobs:blobs")
        assert r.metric("test_acc")[2][-1] >= MIN_ACCURACY
    models = _models(os.path.join(out, "cli"))
    assert all(sum(t.numel() for t in m.values()) == PARAMS for m in models)
    # every worker ends with the averaged model
    assert all(torch.equal(models[0][k], m[k]) for m in models for k in m)


def test_cli_equals_api_bitwise(launched):
    """The command line (AdaComm's own FlatSGD) and the user's script (torch.optim.SGD wrapped in
    AdaComm), same seed, batches and settings: the same final parameters on every rank, bit for
    bit (the same operations in the same order); the API's messages are in its trace (x_1 once,
    one allreduce of parameters + 4 control slots every tau steps)."""
    proc, out = launched
    check(proc)
    m = re.search(r"API test accuracy ([\d.]+) % after (\d+) averagings", proc.stdout)
    assert m and float(m.group(1)) >= 100 * MIN_ACCURACY and int(m.group(2)) == STEPS // TAU
    cli, api = _models(os.path.join(out, "cli")), _models(os.path.join(out, "api"))
    for r in range(N):
        assert cli[r].keys() == api[r].keys()
        bad = [k for k in cli[r] if not torch.equal(cli[r][k], api[r][k])]
        assert not bad, f"rank {r}: {bad} differ"
    for r in trace.read_run(os.path.join(out, "api")).ranks:
        c = r.comm
        assert len(c[c["channel"] == b"init"]) == 1
        rows = c[c["channel"] == b"params"]
        assert set(rows["op"]) == {b"allreduce"} and set(rows["nbytes"]) == {4 * (PARAMS + 4)}
        assert list(rows["step"]) == list(range(TAU - 1, STEPS, TAU))
        assert list(r.metric("train_loss")[0]) == list(range(TAU - 1, STEPS, TAU))


def test_api_checkpoint_resume_bitwise(launched):
    proc, out = launched
    check(proc)
    full, resumed = _models(os.path.join(out, "api")), _models(os.path.join(out, "part"))
    for r in range(N):
        assert all(torch.equal(full[r][k], resumed[r][k]) for k in full[r]), r
    assert os.listdir(os.path.join(out, "part", "checkpoints")) == [
        f"step-{STEPS // 2 - 1:09d}"]
    loss = trace.read_run(os.path.join(out, "part")).ranks[0].metric("train_loss")
    assert list(loss[0]) == list(range(TAU - 1, STEPS, TAU))  # the trace continues


def test_pasgd_tau1_equals_sync(launched):
    """PASGD with tau = 1 equals synchronous SGD on the blobs MLP, through the API: every step,
    both against a single-process reference (torch.optim.SGD on the union of the 4 workers'
    batches). Plain SGD with weight decay to 1e-6 (measured 2.1e-7; not bitwise: averaging the
    stepped models and stepping with the averaged gradient round differently); with momentum 0.9
    (local momentum restarted at every averaging + block momentum 0.9 against sync's momentum
    0.9) to 1e-5 (measured 2.6e-6: block momentum divides the model change by eta and multiplies
    it back). Through the command line, plain SGD with weight decay: the saved models of
    ``--method pasgd --tau 1`` and ``--method sync`` agree to 1e-6."""
    proc, out = launched
    check(proc)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert lines == ["PASS pasgd_tau1_equals_sync_plain",
                     "PASS pasgd_tau1_equals_sync_momentum"], proc.stdout
    a, b = _models(os.path.join(out, "cli-tau1")), _models(os.path.join(out, "cli-sync"))
    worst = max(float((a[r][k] - b[r][k]).abs().max()) for r in range(N) for k in a[r])
    assert worst <= 1e-6, worst
    for name in ("cli-tau1", "cli-sync"):
        rt = trace.read_run(os.path.join(out, name)).ranks[0]
        chan = b"params" if name == "cli-tau1" else b"grads"
        assert len(rt.comm[rt.comm["channel"] == chan]) == 30


def test_regression_mse_no_accuracy(launched):
    """--data blobs:regression --loss mse: the test MSE falls well below the targets' variance,
    and no accuracy is reported anywhere (output, metrics)."""
    proc, out = launched
    text = check(proc)
    part = _section(text, "on blobs:regression", os.path.join(out, "reg"))
    assert "blobs:mlp (193 parameters) on blobs:regression: 512 training samples" in part, part
    assert "loss mse" in part
    m = re.search(r"test loss ([\d.e+-]+) \(mse\)", part)
    assert m and float(m.group(1)) < MAX_MSE, part
    assert "accura" not in part.lower(), part
    run = trace.read_run(os.path.join(out, "reg"))
    for r in run.ranks:
        assert r.attrs["status"] == "ok" and _args(r)["loss"] == "mse"
        assert len(r.metric("test_acc")[0]) == 0
        s, _, v = r.metric("test_loss")
        assert list(s) == [79, 159, 239, 240] and v[-1] < MAX_MSE and v[-1] < v[0]
    assert len(_models(os.path.join(out, "reg"))) == N


BAD_MESSAGES = {
    "model_no_module": "--model nosuchmod:build: cannot import module 'nosuchmod'",
    "model_no_function": "--model blobs:nope: module 'blobs' has no function 'nope'",
    "model_not_module": "--model blobs:not_a_module: returned str, expected a torch.nn.Module",
    "model_arg_refused": "--model blobs:mlp --model-arg depth=2: cannot build it",
    "model_does_not_fit": "--model blobs:wrong_outputs does not fit the data under --loss mse: "
                          "inputs (2, 4), output (2, 7), labels (2,)",
    "data_no_module": "--data nosuchmod:load: cannot import module 'nosuchmod'",
    "data_no_function": "--data blobs:nope: module 'blobs' has no function 'nope'",
    "data_not_pair": "--data blobs:not_a_pair: returned int, expected (train, test)",
    "data_smaller_than_world": f"3 samples cannot be split over {N} ranks",
    "batch_larger_than_shard": f"batch size 151 exceeds this rank's shard of 150 samples "
                               f"(blobs:blobs, {N} ranks)",
    "regression_with_cross_entropy": "--data blobs:regression has float (regression) labels: "
                                     "use --loss mse",
    "loss_unknown": "--loss hinge: expected cross_entropy, mse or MODULE:FUNCTION",
    "loss_no_function": "--loss blobs:nope: module 'blobs' has no function 'nope'",
    "api_unknown_method": "AdaComm: method must be one of sync, pasgd, adacomm, got 'local'",
    "api_lr_and_optimizer": "AdaComm: lr, momentum and weight_decay set AdaComm's own SGD",
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
        assert len(lines) == 1 and lines[0].startswith("mpidist.adacomm: error: "), (name, lines)
        assert want in lines[0], (name, lines[0])
        assert not others, f"{name}: another rank wrote {others}"


def test_example_script(tmp_path):
    proc = run_mpi(N, ["-m", "mpidist.adacomm.example"], timeout=600, cwd=str(tmp_path))
    out = check(proc)
    m = re.search(rf"AdaComm on {N} workers: tau [\d >-]+, (\d+) averagings; test accuracy of "
                  r"the averaged model ([\d.]+) %", out)
    assert m, out
    assert float(m.group(2)) >= MIN_EXAMPLE, out
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1
    run_dir = tmp_path / "runs" / runs[0]
    run = trace.read_run(str(run_dir))
    for r in run.ranks:
        assert r.attrs["status"] == "ok"
        c = r.comm
        assert len(c[c["channel"] == b"init"]) == 1
        assert len(c[c["channel"] == b"params"]) == int(m.group(1))
        assert len(r.metric("train_loss")[0]) == int(m.group(1))
    assert sorted(os.listdir(run_dir / "model")) == [f"rank{k}.pt" for k in range(N)]


def test_bad_input_through_python_m(tmp_path):
    """The real entry point, as one process (a world of one): one line, exit 2, no run
    directory."""
    tdir = tmp_path / "bad"
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mpidist.adacomm", "--model",
                           "blobs:wrong_outputs", "--data", "blobs:regression", "--loss", "mse",
                           "--trace-dir", str(tdir)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    check(proc, 2)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "mpidist.adacomm: error: --model blobs:wrong_outputs does not fit the data under --loss "
        "mse: inputs (2, 4), output (2, 7), labels (2,)"), lines
    assert not tdir.exists() or not os.listdir(tdir)
    assert "adacomm: method" not in proc.stdout
