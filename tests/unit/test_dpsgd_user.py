"""D-PSGD with a user's own model, data and loss (``--model``/``--data``/``--loss`` as
MODULE:FUNCTION, tests/programs/blobs.py) and the Python API (:class:`mpidist.dpsgd.DPSGD`):
unit checks in this process (a world of one), then three launches: tests/programs/
dpsgd_user_checks.py under -n 4 (the command line on the blobs, the same run through the API, the
API checkpointed and resumed, a regression, the user's own optimizer wrapped, the bad inputs), the
example script under -n 4, and one bad input through ``python -m mpidist.dpsgd`` itself (-n 2).

This file holds the checks that need no multi-rank launch; tests/mpi/test_dpsgd_user.py holds the launches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mpidist import dpsgd
from mpidist.comm import Communicator




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
