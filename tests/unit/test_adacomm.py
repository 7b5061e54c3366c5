"""Tests of mpidist.adacomm (AdaComm, Wang & Joshi): the pure schedule (Eq. 6, its refinement, the
averaging predicate, the learning-rate rule) without MPI, then three mpiexec launches: the
multi-rank checks (tests/programs/adacomm_checks.py), the command line as a user runs it, and a usage
error.

This file holds the checks that need no multi-rank launch; tests/mpi/test_adacomm.py holds the launches."""
from __future__ import annotations

import math
import pytest

from mpidist import adacomm as A

# ----------------------------------------------------------------------------- Eq. (6) + refinement

# (F_l, F_0, eta_l, eta_0, tau_0, tau_prev, eta_prev, gamma, slack) -> tau_l, why
TAU_CASES = [
    ((0.5, 2.0, 0.1, 0.1, 16, 16, 0.1, 0.5, 0), 8, "Eq. 6: sqrt(1/4) * 16"),
    ((1.0, 2.0, 0.1, 0.1, 16, 16, 0.1, 0.5, 0), 12, "Eq. 6 rounds up: ceil(11.31)"),
    ((0.5625, 1.0, 0.1, 0.1, 8, 8, 0.1, 0.5, 0), 6, "an exact integer is not rounded up"),
    ((1.9, 2.0, 0.1, 0.1, 16, 8, 0.1, 0.5, 0), 4, "plateau: Eq. 6 gives 16 >= 8, halve"),
    ((0.25, 1.0, 0.1, 0.1, 16, 8, 0.1, 0.5, 0), 4, "Eq. 6 equal to tau_prev is not strictly less"),
    ((1.0, 1.0, 0.1, 0.1, 8, 5, 0.1, 0.5, 0), 3, "halving an odd tau rounds up: ceil(2.5)"),
    ((1.0, 1.0, 0.1, 0.1, 8, 3, 0.1, 0.5, 0), 2, "3 -> 2"),
    ((1.0, 1.0, 0.1, 0.1, 8, 2, 0.1, 0.5, 0), 1, "2 -> 1"),
    ((1.0, 1.0, 0.1, 0.1, 8, 1, 0.1, 0.5, 0), 1, "tau = 1 stays 1"),
    ((1.0, 1.0, 0.1, 0.1, 16, 16, 0.1, 0.25, 0), 4, "gamma = 1/4"),
    ((1.0, 1.0, 0.1, 0.1, 8, 5, 0.1, 0.9, 0), 4, "gamma near 1 still decays strictly"),
    ((0.19, 1.0, 0.1, 0.1, 16, 8, 0.1, 0.5, 0), 7, "Eq. 6 gives 7 < 8: taken"),
    ((0.19, 1.0, 0.1, 0.1, 16, 8, 0.1, 0.5, 1), 4, "slack s = 1: 7 + 1 >= 8, halve"),
    ((0.1, 2.0, 0.01, 0.1, 16, 1, 0.1, 0.5, 0), 12,
     "after a learning-rate decay: no halving, eta_0/eta_l = 10 makes tau grow again"),
    ((0.1, 2.0, 0.01, 0.1, 16, 12, 0.01, 0.5, 0), 6, "next interval at the same lr: halve"),
    ((3.0, 2.0, 0.1, 0.1, 4, 4, 0.1, 0.5, 0), 2, "loss went up: Eq. 6 gives 5 >= 4, halve"),
    ((1e-6, 2.0, 0.1, 0.1, 16, 16, 0.1, 0.5, 0), 1, "tiny loss: at least 1"),
]


@pytest.mark.parametrize("args,want,why", TAU_CASES, ids=[c[2] for c in TAU_CASES])
def test_next_tau_table(args, want, why):
    assert A.next_tau(*args) == want, why


def test_basic_tau_is_eq6():
    for F_l, F_0, eta_l, eta_0, tau0 in [(0.3, 2.3, 0.05, 0.2, 20), (1.0, 1.0, 0.2, 0.2, 7),
                                         (2.0, 1.0, 0.1, 0.1, 3)]:
        want = math.ceil(math.sqrt(eta_0 / eta_l * F_l / F_0) * tau0 - 1e-12)
        assert A.basic_tau(F_l, F_0, eta_l, eta_0, tau0) == max(1, want)
    with pytest.raises(ValueError):
        A.basic_tau(1.0, 0.0, 0.1, 0.1, 4)
    with pytest.raises(ValueError):
        A.next_tau(1.0, 1.0, 0.1, 0.1, 4, 4, 0.1, gamma=1.0)


def test_tau_decays_to_one_on_a_plateau():
    """A loss that stops falling: Eq. 6 first, then the refinement halves tau down to 1."""
    F0, tau0, taus, tau = 2.0, 32, [], 32
    for F in (1.0, 0.5, 0.45, 0.45, 0.45, 0.45, 0.45, 0.45):
        tau = A.next_tau(F, F0, 0.1, 0.1, tau0, tau, 0.1)
        taus.append(tau)
    assert taus == [23, 16, 8, 4, 2, 1, 1, 1]


# ----------------------------------------------------------------------------- the schedule

def test_predicate_every_tau_steps():
    s = A.CommSchedule("pasgd", 3, 10.0, 0.1)
    fired = []
    for k in range(1, 10):
        s.local_step()
        if s.should_average():
            fired.append(k)
            s.averaged(k, 1.0, 0.0, 1.0)
    assert fired == [3, 6, 9]
    sync = A.CommSchedule("sync", 8, 10.0, 0.1)
    assert sync.tau == 1


def test_intervals_follow_the_agreed_time():
    s = A.CommSchedule("adacomm", 16, 10.0, 0.1)
    assert s.averaged(16, 2.0, 3.0, F0=2.0) is None   # F(x_0) taken once, from the first call
    assert s.F0 == 2.0
    assert s.averaged(32, 1.0, 9.99) is None
    row = s.averaged(48, 0.5, 10.2)                     # interval 1 begins: Eq. 6
    assert (row.index, row.step, row.tau, row.F) == (1, 48, 8, 0.5) and s.tau == 8
    assert s.averaged(56, 0.4, 19.0) is None
    row = s.averaged(64, 0.45, 35.0)                    # intervals 2 and 3 passed: one decision
    assert row.index == 3 and s.tau == 4                # Eq. 6 gives 8 >= 8: halve
    assert [h.tau for h in s.history] == [16, 8, 4]
    assert s.averaged(68, 0.45, 35.5) is None


def test_fixed_period_methods_keep_tau():
    for method, tau in (("pasgd", 4), ("sync", 1)):
        s = A.CommSchedule(method, 4, 1.0, 0.1)
        s.averaged(1, 2.0, 0.1, 2.0)
        for t in range(1, 6):
            s.averaged(t, 0.1, t + 0.5)
        assert {h.tau for h in s.history} == {tau}, method
        assert len(s.history) == 6


def test_lr_decay_waits_for_tau_one():
    """AdaComm: "first decay tau to 1, then decay the learning rate"; PASGD decays on time."""
    s = A.CommSchedule("adacomm", 4, 1.0, 0.2, milestones=[5, 8], lr_factor=0.1)
    assert s.lr_for(4.9) == 0.2
    assert s.lr_for(5.0) == 0.2                # due, but tau = 4
    s.averaged(1, 1.0, 0.5, 1.0)
    s.averaged(2, 1.0, 1.5)                    # plateau: 4 -> 2
    s.averaged(3, 1.0, 2.5)                    # 2 -> 1
    assert s.tau == 1
    assert s.lr_for(5.5) == pytest.approx(0.02)
    row = s.averaged(4, 0.25, 3.5)             # the lr changed: Eq. 6, sqrt(10 * 0.25) * 4 -> 7
    assert row.tau == 7 and row.lr == pytest.approx(0.02)
    assert s.lr_for(9.0) == pytest.approx(0.02)  # second milestone due, tau = 7 > 1: wait
    p = A.CommSchedule("pasgd", 4, 1.0, 0.2, milestones=[5, 8])
    assert p.lr_for(5.0) == pytest.approx(0.02) and p.lr_for(8.0) == pytest.approx(0.002)
    q = A.CommSchedule("adacomm", 4, 1.0, 0.2, milestones=[5], defer_lr_decay=False)
    assert q.lr_for(5.0) == pytest.approx(0.02)


def test_schedule_state_round_trip():
    """A resumed schedule takes the same decisions as the one that was saved."""
    a = A.CommSchedule("adacomm", 16, 1.0, 0.1, milestones=[3])
    a.averaged(1, 2.0, 0.5, 2.0)
    a.averaged(2, 0.5, 1.5)
    b = A.CommSchedule("adacomm", 4, 1.0, 0.1, milestones=[3])  # tau0 comes from the state
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        s.averaged(3, 0.45, 2.5)
        s.local_step()
    assert repr(vars(a)) == repr(vars(b)) and a.tau == 4 and len(a.history) == 3


def test_lr_decays_due():
    due = [A.lr_decays_due(e, [80, 120]) for e in (0, 79.9, 80, 119, 120, 500)]
    assert due == [0, 0, 1, 1, 2, 2]


# ----------------------------------------------------------------------------- local optimizer

def test_flat_sgd_matches_torch_sgd_bit_for_bit():
    """FlatSGD (one op on the flat buffer) makes torch.optim.SGD's steps, with weight decay and
    momentum, and a restart equals a fresh torch optimizer."""
    import torch
    from mpidist import models
    torch.manual_seed(0)
    a = models.build("cnn", (1, 16, 16), 10)
    b = models.build("cnn", (1, 16, 16), 10)
    b.load_state_dict(a.state_dict())
    sa = A.FlatState(a)
    fa = A.FlatSGD(sa, 0.05, momentum=0.9, weight_decay=5e-4)
    x, y = torch.rand(8, 1, 16, 16), torch.arange(8)

    def fresh():
        return torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    tb = fresh()
    for k in range(6):
        if k == 3:
            fa.restart()
            tb = fresh()
        sa.zero_grad()
        torch.nn.functional.cross_entropy(a(x), y).backward()
        fa.step()
        tb.zero_grad()
        torch.nn.functional.cross_entropy(b(x), y).backward()
        tb.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb), k


# ----------------------------------------------------------------------------- command line

def test_paper_preset_and_overrides():
    p = A.make_parser()
    argv = ["--paper", "cifar10-resnet50", "--interval", "30"]
    p.set_defaults(**A._presets(argv))
    a = p.parse_args(argv)
    assert (a.data, a.model, a.lr, a.batch_size, a.weight_decay) == ("cifar10", "resnet50", 0.4,
                                                                       128, 5e-4)
    assert a.interval == 30 and a.lr_milestones == [80, 120, 160, 200]
    assert (a.momentum, a.global_momentum) == (0.9, 0.3)
    p = A.make_parser()
    p.set_defaults(**A._presets(["--paper=cifar100-vgg16"]))
    a = p.parse_args(["--paper=cifar100-vgg16"])
    assert (a.data, a.model, a.lr) == ("cifar100", "vgg16", 0.2)
    assert A.check(a, 4) is None
    a = A.make_parser().parse_args(["--time-budget", "0"])
    assert "stopping rule" in A.check(a, 4)
