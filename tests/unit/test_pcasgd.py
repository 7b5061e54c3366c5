"""mpidist.pcasgd: Algorithm 1, Eq. 2 and Eq. 12 of "Asynchronous Training Schemes in Distributed
Learning with Time Delay" (PC-ASGD).

Pure tests drive mpidist.pcasgd.Agent (the real mailboxes, stamps and update rule) for all agents in
one process through an in-process transport and compare with a blocking reference
(tests/programs/pcasgd_reference.py) and closed forms. Multi-rank tests (6 launches, 2 of them with 8 ranks):
the same comparison over real MPI (tests/programs/pcasgd_checks.py), the CLI's default network with tau = 20
and its trace, the errors/--show-topology paths on 2 ranks, and checkpoint/resume on 4 ranks.

This file holds the checks that need no multi-rank launch; tests/mpi/test_pcasgd.py holds the launches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcasgd_reference import (Quadratic, dsgd_closed_form, reference,  # noqa: E402
                              run_agents)

from mpidist import pcasgd, topology
from mpidist.errors import UsageError  # noqa: E402
from mpidist.pcasgd import (ParamHistory, compensated_gradient, criterion,  # noqa: E402
                            descent_cosine, get_variant)

# ------------------------------------------------------------------------------ pure rules


def test_eq12_descent_reading():
    g = torch.tensor([1.0, 0.0])
    along = torch.tensor([-1.0, 0.0])          # straight down the gradient: cos 1
    skew = torch.tensor([-1.0, 1.0])           # 45 degrees off: cos 1/sqrt(2)
    assert descent_cosine(along, g) == pytest.approx(1.0)
    assert descent_cosine(skew, g) == pytest.approx(1 / math.sqrt(2))
    assert descent_cosine(-along, g) == pytest.approx(-1.0)
    assert descent_cosine(torch.zeros(2), g) == 0.0 and descent_cosine(along, torch.zeros(2)) == 0
    # the predicting step is chosen when ITS update descends more (or as much: ties)
    assert criterion(descent_cosine(along, g), descent_cosine(skew, g)) == 1.0
    assert criterion(descent_cosine(skew, g), descent_cosine(along, g)) == 0.0
    assert criterion(0.5, 0.5) == 1.0
    # the inequality as printed (cosines with +g) picks the other one
    assert criterion(descent_cosine(along, g), descent_cosine(skew, g), "printed") == 0.0
    assert criterion(descent_cosine(skew, g), descent_cosine(along, g), "printed") == 1.0


def test_eq2_by_hand_and_by_history():
    """tau = 2: g^dc = (g + lam g g (x_{t-2} - x_{t-2})) + (g + lam g g (x_{t-1} - x_{t-2}))."""
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x0 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    x1 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    lam = 0.3
    hand = 2 * g + lam * g * g * (x1 - x0)
    assert torch.allclose(compensated_gradient(g, [x0, x1], lam), hand)
    # the implementation's form: tau g + lam g g D, D = sum_r x_{t-tau+r} - tau x_{t-tau}
    rng = np.random.default_rng(0)
    for tau in (1, 3, 7):
        h = ParamHistory(tau, 4, torch.float64, "cpu")
        xs = [torch.tensor(rng.normal(size=4)) for _ in range(tau + 5)]
        for t, x in enumerate(xs):
            if t >= tau:   # at step t the ring holds x_{t-tau} .. x_{t-1}
                assert torch.equal(h.oldest(), xs[t - tau])
                d = h.displacement(torch.empty(4, dtype=torch.float64))
                gk = torch.tensor(rng.normal(size=4))
                lit = compensated_gradient(gk, xs[t - tau:t], lam)
                assert torch.allclose(tau * gk + lam * gk * gk * d, lit, atol=1e-12)
            h.push(x)
    with pytest.raises(RuntimeError, match="Eq. 2 needs tau"):
        ParamHistory(3, 2, torch.float64, "cpu").displacement(torch.empty(2, dtype=torch.float64))


def test_variants_and_errors():
    assert get_variant("pc").theta is None and get_variant("p").theta == 1.0
    assert get_variant("c").theta == 0.0 and not get_variant("dasgd").compensate
    assert get_variant("pc", 0.25).theta == 0.25
    assert not get_variant("c").uses_unreliable and get_variant("dasgd").uses_unreliable
    with pytest.raises(UsageError, match="known: pc, p, c, dasgd"):
        get_variant("xyz")
    with pytest.raises(UsageError, match="--theta fixes theta"):
        get_variant("p", 0.5)
    with pytest.raises(UsageError, match="only for --variant pc"):
        get_variant("c", None, "printed")


# ------------------------------------------------------------------------------ the agent vs references

CASES = [(g, tau, mix, name, th) for g, tau, mix in [("full", 1, "lazy"), ("full", 3, "metropolis"),
                                                      ("ring", 2, "lazy"), ("full", 20, "lazy")]
         for name, th in [("pc", None), ("p", None), ("c", None), ("dasgd", None), ("pc", 0.4)]]


@pytest.mark.parametrize("graph,tau,mixing,name,theta", CASES)
def test_agent_matches_blocking_reference(graph, tau, mixing, name, theta):
    """The real Agent (mailboxes, stamps, ring of own iterates, update rule) against the blocking
    reference with Eq. 2 as the paper's literal sum, step by step, every agent."""
    topo = topology.build(8, (3, 5), graph, tau, mixing)
    q = Quadratic(8, 5, seed=tau)
    v = get_variant(name, theta)
    steps = tau + 12
    X, th, infos, net, recs = run_agents(topo, v, 0.5, 0.05, q, steps)
    Xr, thr = reference(topo, v.theta, v.compensate, 0.5, 0.05, q, steps)
    assert np.abs(X - Xr).max() < 1e-12
    assert np.array_equal(th, thr)
    # staleness actually used, read from the stamps inside the messages
    for i in range(8):
        st_r = {v_ for t, n, v_ in recs[i] if n == "staleness_reliable"}
        st_u = [(t, v_) for t, n, v_ in recs[i] if n == "staleness_unreliable"]
        assert st_r == {1}
        if v.uses_unreliable and topo.unreliable_neighbours(i):
            assert st_u == [(t, tau) for t in range(tau, steps)]
        else:
            assert st_u == []


def test_momentum_and_printed_criterion_match_reference():
    topo = topology.build(8, (3, 5), "full", 3, "lazy")
    q = Quadratic(8, 4, seed=9)
    v = get_variant("pc")
    X, _, _, _, _ = run_agents(topo, v, 0.5, 0.05, q, 15, momentum=0.7)
    Xr, _ = reference(topo, None, True, 0.5, 0.05, q, 15, momentum=0.7)
    assert np.abs(X - Xr).max() < 1e-12
    vp = get_variant("pc", None, "printed")
    X, th, _, _, _ = run_agents(topo, vp, 0.5, 0.05, q, 15)
    Xr, thr = reference(topo, None, True, 0.5, 0.05, q, 15, criterion="printed")
    assert np.abs(X - Xr).max() < 1e-12 and np.array_equal(th, thr)


@pytest.mark.parametrize("name", ["pc", "p", "c", "dasgd"])
@pytest.mark.parametrize("graph", ["full", "ring"])
def test_tau0_is_decentralized_sgd_closed_form(name, graph):
    """tau = 0: every neighbour reliable, W~ = W: all variants are x_{t+1} = W x_t - eta g."""
    topo = topology.build(8, (3, 5), graph, 0, "lazy")
    q = Quadratic(8, 6, seed=2, same_curvature=True)
    X, _, _, _, _ = run_agents(topo, get_variant(name), 0.5, 0.1, q, 30)
    closed = dsgd_closed_form(topo.W, q, 0.1, 30)
    assert np.abs(X[-1] - closed).max() < 1e-12
    Xr, _ = reference(topo, get_variant(name).theta, True, 0.5, 0.1, q, 30)
    assert np.abs(Xr[-1] - closed).max() < 1e-12


def test_theta_one_is_p_theta_zero_is_c_step_by_step():
    topo = topology.build(8, (3, 5), "full", 4, "lazy")
    q = Quadratic(8, 5, seed=4)
    p1, _, _, _, _ = run_agents(topo, get_variant("pc", 1.0), 0.5, 0.05, q, 20)
    p, _, _, _, _ = run_agents(topo, get_variant("p"), 0.5, 0.05, q, 20)
    c0, _, _, _, _ = run_agents(topo, get_variant("pc", 0.0), 0.5, 0.05, q, 20)
    c, _, _, _, _ = run_agents(topo, get_variant("c"), 0.5, 0.05, q, 20)
    assert np.array_equal(p1, p) and np.array_equal(c0, c)
    assert np.abs(p - c).max() > 1e-3           # and the two variants do differ


def test_message_plan():
    """Who sends what: x to every neighbour, g only to unreliable ones (not for D-ASGD), nothing to
    unreliable ones for C-ASGD, nothing that would be consumed after the last step."""
    topo = topology.build(8, (3, 5), "full", 3, "lazy")
    q = Quadratic(8, 3)
    T = 10
    for name, grads, unrel in (("pc", True, True), ("dasgd", False, True), ("c", False, False)):
        *_, net, _ = run_agents(topo, get_variant(name), 0.5, 0.05, q, T)
        sends = [e for e in net.log if e[0] == "send"]
        recvs = [e for e in net.log if e[0] == "recv"]
        assert len(sends) == len(recvs)
        for i in range(8):
            rel, unr = topo.reliable_neighbours(i), topo.unreliable_neighbours(i)
            mine = [e for e in sends if e[1] == i]
            to_rel = sorted((e[2], e[5]) for e in mine if e[2] in rel)
            assert to_rel == sorted((j, s) for j in rel for s in range(-1, T - 1))
            to_unrel = [e for e in mine if e[2] in unr]
            p_ = sorted((e[2], e[5]) for e in to_unrel if e[4] == "params")
            g_ = sorted((e[2], e[5]) for e in to_unrel if e[4] == "grads")
            want = sorted((k, s) for k in unr for s in range(0, T - 3)) if unrel else []
            assert p_ == want
            assert g_ == (want if grads else [])


def test_presets_and_schedule():
    p = pcasgd.build_parser()
    argv = pcasgd._with_preset(p, ["--preset", "cifar100-densenet", "--lr", "0.05"])
    a = p.parse_args(argv)
    assert (a.data, a.model, a.batch_size, a.epochs, a.momentum) == ("cifar100", "densenet", 64,
                                                                     300, 0.9)
    assert a.lr == 0.05 and a.lr_milestones == [150.0, 225.0] and a.augment
    a = p.parse_args(["--lr", "0.1"])
    a.lr_milestones, a.lr_decay = [2.0, 3.0], 0.1
    assert [pcasgd.lr_at(t, a, 10) for t in (0, 19, 20, 29, 30, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_augment_crop_flip():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    y = pcasgd.augment_crop_flip(x, pad=0)      # no padding: each image is x or its mirror
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    z = pcasgd.augment_crop_flip(x, pad=2)
    assert z.shape == x.shape and not torch.equal(z, x)


def test_checkpoint_state_resumes_exactly():
    """Agent.state_dict after step c, then fresh agents on a fresh transport resumed from it,
    continue exactly as the uninterrupted run (messages in flight, Eq. 2's history, momentum)."""
    from pcasgd_reference import LocalComm, LocalNet

    from mpidist.pcasgd import Agent
    topo = topology.build(8, (3, 5), "full", 4, "lazy")
    q = Quadratic(8, 5, seed=11)
    T = 20
    for name, c in (("pc", 2), ("pc", 9), ("p", 6), ("dasgd", 12), ("c", 5)):
        v = get_variant(name)
        straight, _, _, _, _ = run_agents(topo, v, 0.5, 0.05, q, T, momentum=0.3)

        def make(net, resume=None):
            return [Agent(LocalComm(net, i), topo, i, v, 0.5, T, 5, torch.float64, "cpu", 0.3,
                          resume=None if resume is None else (c, resume[i])) for i in range(8)]

        def steps(agents, xs, ts):
            for t in ts:
                gs = [torch.tensor(q.grad(i, xs[i].numpy()), dtype=torch.float64) for i in range(8)]
                for i, ag in enumerate(agents):
                    ag.step(t, xs[i], gs[i], 0.05)

        agents = make(LocalNet())
        xs = [torch.tensor(q.x0) for _ in range(8)]
        for ag, x in zip(agents, xs):
            ag.start(x)
        steps(agents, xs, range(c + 1))
        states = [ag.state_dict(c) for ag in agents]
        xs = [x.clone() for x in xs]
        agents = make(LocalNet(), states)           # a new job: nothing of the old transport
        for ag, x in zip(agents, xs):
            ag.start(x)                             # sends nothing when resuming
        steps(agents, xs, range(c + 1, T))
        for ag in agents:
            ag.finish()
        assert np.abs(np.stack([x.numpy() for x in xs]) - straight[-1]).max() == 0, (name, c)


def test_mailbox_and_outbox_carry_the_stamp_and_refuse_a_wrong_one():
    """A message goes out of the Outbox with its step stamp in the extra element; the Mailbox
    gives the message part (a view of its buffer) and refuses a stamp that is not the one due."""
    from mpi4py import MPI

    from mpidist.comm import Communicator
    from mpidist.pcasgd.exchange import Mailbox, Outbox
    comm = Communicator(MPI.COMM_SELF, timeout=5)
    box = Mailbox(comm, 0, [("params", 301)], 4, torch.float32, "cpu", 1, -1, 5)
    out = Outbox(comm, 4, torch.float32, "cpu")
    out.send(torch.arange(4.0), -1, [0], 301, "params")
    (x,), s = box.take(0)
    assert s == -1 and torch.equal(x, torch.arange(4.0))
    assert x.data_ptr() == box.bufs[(-1) % 2][0].data_ptr()  # no copy
    box.release(0)
    out.send(torch.full((4,), 2.0), 7, [0], 301, "params")  # stamped 7 where 0 is due
    with pytest.raises(RuntimeError, match=r"carries stamps \[7.0\], expected 0"):
        box.take(1)
    box.withdraw()
    out.drain()
    assert len(out.free) == 1 and not out.busy  # one buffer, reused once its send completed
