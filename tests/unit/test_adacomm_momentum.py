"""When AdaComm's local momentum restarts (``--momentum-restart``; Section 5 of "Adaptive
Communication Strategies to Achieve the Best Error-Runtime Trade-off in Local-Update SGD",
J. Wang, G. Joshi: "we restart momentum SGD on local models after each averaging step").

The rule (:func:`mpidist.adacomm.momentum_restart_due`) as a table, then the optimizer in a world of
one process on a loss with a constant gradient g, where every recipe has a closed form: heavy-ball
momentum mu from a fresh buffer moves the model by ``eta g (1 - mu^k) / (1 - mu)`` at its k-th
step, so n steps without a restart move it by ``eta g S(n)``, ``S(n) = sum_{k=1..n} (1-mu^k)/(1-mu)``.
No multi-rank launch here (the multi-rank equalities are in tests/programs/adacomm_*checks.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mpidist import adacomm as A
from mpidist.comm import Communicator

ETA, MU, G = 0.1, 0.9, 1.0


def S(n: int, mu: float = MU) -> float:
    """Displacement (in units of eta g) of n heavy-ball steps from a fresh buffer."""
    return sum((1 - mu ** k) / (1 - mu) for k in range(1, n + 1))


# ----------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("mode,tau_ended,tau_next,want", [
    ("always", 1, 1, True), ("always", 4, 2, True),
    ("never", 4, 2, False), ("never", 1, 1, False),
    ("while-tau-above-1", 4, 2, True),     # a multi-step period ended and another begins
    ("while-tau-above-1", 2, 1, True),     # the last multi-step period: sync starts fresh
    ("while-tau-above-1", 1, 3, True),     # tau grew again (after an lr decay): restart
    ("while-tau-above-1", 1, 1, False),    # between one-step periods: synchronous momentum SGD
])
def test_restart_rule_table(mode, tau_ended, tau_next, want):
    assert A.momentum_restart_due(mode, tau_ended, tau_next) is want


def test_restart_rule_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="while-tau-above-1"):
        A.momentum_restart_due("sometimes", 2, 1)
    assert A.MOMENTUM_RESTARTS[0] == "while-tau-above-1"     # the default comes first


# ----------------------------------------------------------------------------- the optimizer

class Linear(nn.Module):
    """loss = g * x (float64): the gradient is g wherever x is."""

    def __init__(self):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(1, dtype=torch.float64))


def make(method, tau, restart, beta=0.0, interval=1e9, clock=lambda: 0.0, mu=MU, wd=0.0):
    model = Linear()
    state = A.FlatState(model)
    comm = Communicator()
    sched = A.CommSchedule(method, tau, interval, ETA)
    ex = A.GradientAverager(comm, state) if method == "sync" else A.ModelAverager(comm, state, beta)
    opt = A.PeriodicAveragingSGD(A.FlatSGD(state, ETA, mu, wd), state, ex, sched, clock, 4,
                                 restart_momentum=restart)
    return state, opt


def run(state, opt, steps, grad=lambda x: G, on_step=None):
    """``steps`` local steps; the loss handed to the schedule is always 1 (so F = F_0)."""
    xs = []
    for k in range(1, steps + 1):
        if on_step:
            on_step(k)
        state.zero_grad()
        state.grads.fill_(grad(state.params))
        opt.step(torch.tensor(1.0, dtype=torch.float64), k)
        xs.append(float(state.params[0]))
    return xs


@pytest.mark.parametrize("restart,moved", [
    ("always", lambda n: n),                # restarted every step: plain SGD, eta g per step
    ("while-tau-above-1", S),               # never restarted at tau = 1: momentum SGD
    ("never", S),
])
def test_pasgd_tau1_closed_form(restart, moved):
    state, opt = make("pasgd", 1, restart)
    xs = run(state, opt, 12)
    for n, x in enumerate(xs, 1):
        assert x == pytest.approx(-ETA * G * moved(n), rel=1e-12, abs=1e-15), (restart, n)


@pytest.mark.parametrize("restart,moved", [
    ("always", lambda j: j * (2 + MU)),            # each period: eta g (1 + (1 + mu))
    ("while-tau-above-1", lambda j: j * (2 + MU)),  # tau = 2 > 1: restarted as the paper says
    ("never", lambda j: S(2 * j)),
])
def test_pasgd_tau2_closed_form(restart, moved):
    state, opt = make("pasgd", 2, restart)
    xs = run(state, opt, 10)
    for j in range(1, 6):
        assert xs[2 * j - 1] == pytest.approx(-ETA * G * moved(j), rel=1e-12), (restart, j)


@pytest.mark.parametrize("restart,moved", [
    ("always", lambda n: 2 * (2 + MU) + (n - 4)),
    ("while-tau-above-1", lambda n: 2 * (2 + MU) + S(n - 4)),   # fresh at the switch, then kept
    ("never", S),
])
def test_adacomm_switch_to_tau1(restart, moved):
    """AdaComm from tau_0 = 2 with T0 = 1 s: the agreed time reaches 1 s at step 4 (the second
    averaging) with F = F_0, so the refinement halves tau to 1 there; steps 5.. average every step.
    ``always`` restarts at every one of them; ``while-tau-above-1`` restarts at step 4 (the end of a
    two-step period) and never again; ``never`` never."""
    now = [0.0]
    state, opt = make("adacomm", 2, restart, interval=1.0, clock=lambda: now[0])
    xs = run(state, opt, 12, on_step=lambda k: now.__setitem__(0, 1.0 if k >= 4 else 0.0))
    assert [r.tau for r in opt.schedule.history] == [2, 1]
    assert opt.exchange.count == 2 + 8
    for n in range(4, 13):
        assert xs[n - 1] == pytest.approx(-ETA * G * moved(n), rel=1e-12), (restart, n)


def test_block_momentum_at_tau1():
    """PASGD tau = 1 with block momentum beta (Eqs. 7-8: u_j = beta u_{j-1} + G_j, x -= eta u_j) on
    the constant gradient: ``always`` leaves only the block momentum (G_j = g, so x moves by
    eta g S(n; beta)); ``while-tau-above-1`` nests it around the local momentum
    (G_j = g (1 - mu^j)/(1 - mu), u_j = sum_i beta^(j-i) G_i)."""
    beta = 0.3
    state, opt = make("pasgd", 1, "always", beta=beta)
    xs = run(state, opt, 8)
    for n, x in enumerate(xs, 1):
        assert x == pytest.approx(-ETA * G * S(n, beta), rel=1e-12)
    state, opt = make("pasgd", 1, "while-tau-above-1", beta=beta)
    xs = run(state, opt, 8)
    Gs = [(1 - MU ** j) / (1 - MU) for j in range(1, 9)]
    us = [sum(beta ** (j - i) * Gs[i] for i in range(j + 1)) for j in range(8)]
    for n, x in enumerate(xs, 1):
        assert x == pytest.approx(-ETA * G * sum(us[:n]), rel=1e-12)


def test_pasgd_tau1_is_sync_bit_for_bit_with_momentum():
    """One worker, momentum 0.9 and weight decay on a quadratic: PASGD tau = 1 with the default
    restart makes exactly sync SGD's steps (bit for bit); the literal ``always`` does not."""
    def quad(x):
        return 3.0 * x - 0.5

    runs = {}
    for name, method, restart in (("sync", "sync", "never"),
                                  ("pasgd", "pasgd", "while-tau-above-1"),
                                  ("literal", "pasgd", "always")):
        state, opt = make(method, 1, restart, wd=5e-4)
        state.params.fill_(1.0)
        runs[name] = run(state, opt, 20, grad=lambda x: float(quad(x[0])))
    assert runs["pasgd"] == runs["sync"]
    assert runs["literal"] != runs["sync"]


def test_api_and_flag():
    """The wrapper's default is the defensible recipe, a bad value is refused in one line; the
    command line's ``--momentum-restart`` has the three choices and the same default."""
    from mpidist.errors import UsageError
    m = Linear()
    ada = A.AdaComm(Communicator(), m, None, "pasgd", 2, lr=ETA, momentum=MU)
    assert ada.opt.restart_momentum == "while-tau-above-1"
    sync = A.AdaComm(Communicator(), Linear(), None, "sync", lr=ETA, momentum=MU)
    assert sync.opt.restart_momentum == "never"
    with pytest.raises(UsageError, match="momentum_restart must be one of"):
        A.AdaComm(Communicator(), Linear(), None, "pasgd", 2, lr=ETA, momentum_restart="maybe")
    p = A.make_parser()
    assert p.parse_args([]).momentum_restart == "while-tau-above-1"
    assert p.parse_args(["--momentum-restart", "always"]).momentum_restart == "always"
    with pytest.raises(UsageError, match="invalid choice: 'sometimes'"):
        p.parse_args(["--momentum-restart", "sometimes"])
    state = A.FlatState(Linear())
    with pytest.raises(ValueError, match="restart_momentum"):
        A.PeriodicAveragingSGD(A.FlatSGD(state, ETA, MU), state,
                               A.ModelAverager(Communicator(), state), A.CommSchedule("pasgd", 2,
                                                                                      1e9, ETA),
                               lambda: 0.0, restart_momentum="sometimes")
    assert A.PeriodicAveragingSGD(A.FlatSGD(state, ETA, MU), state,
                                  A.ModelAverager(Communicator(), state),
                                  A.CommSchedule("pasgd", 2, 1e9, ETA), lambda: 0.0,
                                  restart_momentum=True).restart_momentum == "always"
