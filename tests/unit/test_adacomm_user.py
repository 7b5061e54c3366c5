"""AdaComm with a user's own model, data and loss (``--model``/``--data``/``--loss`` as
MODULE:FUNCTION, tests/programs/blobs.py) and the Python API (:class:`mpidist.adacomm.AdaComm`
around the user's torch optimizer): unit checks in this process (a world of one), then two
launches: tests/programs/adacomm_user_checks.py under -n 4 (the command line on the blobs, the
same run through the API, the API checkpointed and resumed, PASGD tau = 1 against synchronous SGD
and a single-process reference on the union of the workers' batches, the same through the command
line, a regression, the bad inputs) and the example script under -n 4; plus one bad input through
``python -m mpidist.adacomm`` itself, as one process (a world of one, no mpiexec).

This file holds the checks that need no multi-rank launch; tests/mpi/test_adacomm_user.py holds the launches."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mpidist import adacomm, data
from mpidist.adacomm import AdaComm
from mpidist.comm import Communicator
from mpidist.errors import UsageError
from mpirun import REPO, check




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


def test_bad_input_through_python_m(tmp_path):
    """The real entry point, as one process (a world of one): one line, exit 2, no run
    directory."""
    tdir = tmp_path / "bad"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
