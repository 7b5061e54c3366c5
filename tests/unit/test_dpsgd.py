"""mpidist.dpsgd: D-PSGD (Lian et al. 2017, Algorithm 1), x_i <- sum_j W_ij x_j - eta g_i(x_i).

Pure tests (no MPI): the update rule against W X - eta G in closed form and by hand, the mixing
rate against the eigenvalues, the consensus distance under pure mixing, the flags. Multi-rank tests
(4 launches): the real exchange against the closed form on ring, full and exponential graphs at 6
ranks and the contraction by rho (tests/programs/dpsgd_checks.py), the default entry point with no flags on
8 ranks and its trace, and checkpoint/resume bitwise equal to an uninterrupted run on 4 ranks.

This file holds the checks that need no multi-rank launch; tests/mpi/test_dpsgd.py holds the launches."""
from __future__ import annotations


import numpy as np
import pytest
import torch


from mpidist import algorithms, topology
from mpidist.dpsgd import (build_parser, check as check_world, consensus_distance,  # noqa: E402
                           mix_into, mix_step, mixing_rate, slowest_mode)
from mpidist.errors import UsageError  # noqa: E402

GRAPHS = [(g, n, m) for g in topology.GRAPHS for n in (2, 5, 8) for m in topology.MIXINGS]

# ------------------------------------------------------------------------------ pure rules


def test_one_step_by_hand_two_workers():
    """2 workers, Metropolis on the full graph: W = [[1/2, 1/2], [1/2, 1/2]]; f_i = 0.5 (x - c_i)^2
    with c = (1, 3), x_0 = (0, 2), eta = 0.5:
    x_1 = (1 - 0.5 (0 - 1), 1 - 0.5 (2 - 3)) = (1.5, 1.5)."""
    W = topology.build(2, (2,), "full", 0, "metropolis").W
    assert np.array_equal(W, np.full((2, 2), 0.5))
    X, c = np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]])
    assert np.array_equal(mix_step(X, W, X - c, 0.5), [[1.5], [1.5]])
    x0, x1 = torch.tensor([0.0]), torch.tensor([2.0])
    assert torch.equal(mix_into(x0.clone(), 0.5, [(0.5, x1)], x0 - 1.0, 0.5), torch.tensor([1.5]))


@pytest.mark.parametrize("graph,n,mixing", GRAPHS)
def test_rules_one_step_is_w_x_minus_eta_g(graph, n, mixing):
    """On f_i(x) = 0.5 ||x - c_i||^2 every worker's in-place update (its row of W, its neighbours
    in rank order) equals row i of W X - eta G, G = X - C."""
    topo = topology.build(n, (n,), graph, 0, mixing)
    rng = np.random.default_rng(n)
    X, C = rng.normal(size=(n, 7)), rng.normal(size=(n, 7))
    eta = 0.3
    closed = topo.W @ X - eta * (X - C)
    assert np.array_equal(mix_step(X, topo.W, X - C, eta), closed)
    Xt = [torch.tensor(x) for x in X]
    for i in range(n):
        nb = [(topo.W[i, j], Xt[j]) for j in topo.neighbours(i)]
        out = mix_into(Xt[i].clone(), topo.W[i, i], nb, Xt[i] - torch.tensor(C[i]), eta)
        assert np.abs(out.numpy() - closed[i]).max() < 1e-14, (graph, n, mixing, i)
    # the average follows plain SGD on the averaged gradient (1^T W = 1^T)
    assert np.allclose(closed.mean(0), X.mean(0) - eta * (X - C).mean(0), atol=1e-14)


@pytest.mark.parametrize("graph,n,mixing", GRAPHS)
def test_mixing_rate_and_contraction(graph, n, mixing):
    """rho = second largest |eigenvalue| of W, < 1 (connected). With eta = 0 the consensus
    distance ||X - 1 x_bar|| shrinks by at most rho per step, exactly by rho from the slowest
    mode."""
    W = topology.build(n, (n,), graph, 0, mixing).W
    ev = np.sort(np.abs(np.linalg.eigvalsh(W)))
    rho = mixing_rate(W)
    assert rho == pytest.approx(ev[-2]) and rho < 1
    if graph == "ring" and mixing == "metropolis" and n >= 3:   # circulant: 1/3 + 2/3 cos(2 pi k/n)
        lam = [1 / 3 + 2 / 3 * np.cos(2 * np.pi * k / n) for k in range(1, n)]
        assert rho == pytest.approx(max(abs(v) for v in lam), abs=1e-12)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    zero = np.zeros_like(X)
    for _ in range(5):
        Y = mix_step(X, W, zero, 0.0)
        before, after = (np.linalg.norm(consensus_distance(Z)) for Z in (X, Y))
        assert after <= rho * before + 1e-12
        X = Y
    if rho > 1e-6:
        v = slowest_mode(W)
        assert abs(v.sum()) < 1e-12 and np.isclose(np.linalg.norm(v), 1)
        X = np.outer(v, [1.0, -2.0, 0.5]) + 5.0
        for _ in range(5):
            Y = mix_step(X, W, np.zeros_like(X), 0.0)
            r = np.linalg.norm(consensus_distance(Y)) / np.linalg.norm(consensus_distance(X))
            assert r == pytest.approx(rho, rel=1e-9)
            X = Y


def test_consensus_distance():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]])        # mean (2, 1)
    assert np.allclose(consensus_distance(X), [np.sqrt(5), 1.0, np.sqrt(8)])
    assert np.array_equal(consensus_distance(np.ones((3, 2))), np.zeros(3))


# -------------------------------------------------------------------------- flags, registry, job


def test_flags_help_and_registry(capsys):
    p = build_parser()
    a = p.parse_args([])
    assert (a.graph, a.mixing, a.steps, a.model, a.data) == ("ring", "metropolis", None, "cnn",
                                                             "digits")
    a = p.parse_args(["-I", "7", "--score-every", "3", "--lr-decay-epochs", "2,1",
                      "--graph", "exponential"])
    assert (a.steps, a.eval_every, a.lr_milestones, a.graph) == (7, 3, [1.0, 2.0], "exponential")
    with pytest.raises(UsageError):
        p.parse_args(["--graph", "star"])
    assert check_world(p.parse_args(["--steps", "3", "--epochs", "1"]), 4) == \
        "give --steps or --epochs, not both"
    assert check_world(p.parse_args([]), 1) is None
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = capsys.readouterr().out
    head = text.split("options:")[0].split("\n\n", 1)[1]     # the description before the flags
    assert len(head.strip().splitlines()) <= 7, head
    assert algorithms.get("dpsgd").paper in head and "mpidist/dpsgd/README.md" in head
    a = algorithms.get("dpsgd")
    assert (a.title, a.ranks, a.module) == ("D-PSGD", 8, "mpidist.dpsgd")
    assert a.command() == "mpirun -n 8 python -m mpidist.dpsgd"
