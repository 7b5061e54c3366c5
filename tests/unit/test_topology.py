"""mpidist.topology: graphs, reliable clusters, mixing matrices W and W~ (pure, no MPI)."""
from __future__ import annotations

import numpy as np
import pytest

from mpidist import topology
from mpidist.errors import UsageError
from mpidist.topology import TopologyError


def _doubly_stochastic_symmetric(w):
    assert np.allclose(w, w.T, atol=1e-15)
    assert np.allclose(w.sum(0), 1, atol=1e-14) and np.allclose(w.sum(1), 1, atol=1e-14)
    assert (w >= 0).all()


@pytest.mark.parametrize("n,sizes", [(8, (3, 5)), (5, (3, 2)), (20, (6, 6, 6, 2))])
@pytest.mark.parametrize("mixing", topology.MIXINGS)
def test_paper_networks(n, sizes, mixing):
    t = topology.build(n, None, "full", 20, mixing)   # default clusters = the paper's
    assert t.clusters == sizes
    assert t.cluster.tolist() == sum(([c] * s for c, s in enumerate(sizes)), [])
    for w in (t.W, t.W_tilde):
        _doubly_stochastic_symmetric(w)
    assert topology.mixing_problems(t.W, t.adj) == []
    same = t.cluster[:, None] == t.cluster[None, :]
    assert topology.mixing_problems(t.W_tilde, t.adj & same) == []
    # sparsity: W~ is zero exactly between clusters, W is dense (fully connected graph)
    assert (t.W_tilde[~same] == 0).all() and (t.W_tilde[same] > 0).all()
    assert (t.W > 0).all()
    ev, evt = np.linalg.eigvalsh(t.W), np.linalg.eigvalsh(t.W_tilde)
    assert np.isclose(ev.max(), 1) and np.sum(np.isclose(ev, 1)) == 1      # connected (2b)
    assert np.sum(np.isclose(evt, 1)) == len(sizes)                        # one per cluster
    if mixing == "lazy":
        assert ev.min() > 0 and evt.min() > 0                              # I >= W > 0 (2c)
    for i in range(n):
        nb = t.neighbours(i)
        assert nb == [j for j in range(n) if j != i]
        assert sorted(t.reliable_neighbours(i) + t.unreliable_neighbours(i)) == nb
        assert all(t.cluster[j] == t.cluster[i] for j in t.reliable_neighbours(i))
        assert all(t.cluster[k] != t.cluster[i] for k in t.unreliable_neighbours(i))


def test_closed_forms_full_graph():
    """Metropolis on the complete graph is plain averaging; on each cluster too."""
    t = topology.build(8, (3, 5), "full", 20, "metropolis")
    assert np.allclose(t.W, np.full((8, 8), 1 / 8))
    wt = np.zeros((8, 8))
    wt[:3, :3], wt[3:, 3:] = 1 / 3, 1 / 5
    assert np.allclose(t.W_tilde, wt)
    lazy = topology.build(8, (3, 5), "full", 20, "lazy")
    assert np.allclose(lazy.W, 0.5 * (np.eye(8) + 1 / 8))
    assert np.allclose(lazy.W_tilde, 0.5 * (np.eye(8) + wt))


@pytest.mark.parametrize("n", [2, 5, 8, 16])
def test_exponential(n):
    """i ~ i +- 2^k (mod n) for 2^k < n, by hand: connected, symmetric, degree O(log n)."""
    t = topology.build(n, (n,), "exponential", 0, "metropolis")
    for i in range(n):
        hops = {(i + s * (1 << k)) % n for k in range(n.bit_length()) if (1 << k) < n
                for s in (1, -1)} - {i}
        assert t.neighbours(i) == sorted(hops)
    assert topology.mixing_problems(t.W, t.adj) == []
    if n == 8:  # 0 ~ 1, 2, 4, 6, 7: degree 5 everywhere, so w = 1/6 on edges and the diagonal
        assert np.allclose(t.W[0], [1 / 6, 1 / 6, 1 / 6, 0, 1 / 6, 0, 1 / 6, 1 / 6])
    ev = np.sort(np.linalg.eigvalsh(t.W))
    assert ev[-2] < 1 - 1e-9  # connected: the eigenvalue 1 is simple


def test_ring():
    t = topology.build(8, (3, 5), "ring", 20, "metropolis")
    for i in range(8):
        assert t.neighbours(i) == sorted({(i - 1) % 8, (i + 1) % 8})
    # degree 2 everywhere: w = 1/3 on edges and the diagonal
    expect = np.eye(8) / 3
    for i in range(8):
        expect[i, (i + 1) % 8] = expect[(i + 1) % 8, i] = 1 / 3
    assert np.allclose(t.W, expect)
    # unreliable edges: 2-3 and 7-0 (cluster boundaries of 0-2 | 3-7)
    assert t.unreliable_neighbours(2) == [3] and t.unreliable_neighbours(0) == [7]
    assert t.unreliable_neighbours(1) == [] and t.unreliable_neighbours(5) == []
    assert t.W_tilde[2, 3] == 0 and t.W_tilde[0, 7] == 0
    same = t.cluster[:, None] == t.cluster[None, :]
    assert topology.mixing_problems(t.W_tilde, t.adj & same) == []
    # reliable graph: paths 0-1-2 and 3-4-5-6-7; MH: w_01 = 1/(1+max(1,2)) = 1/3
    assert np.isclose(t.W_tilde[0, 1], 1 / 3) and np.isclose(t.W_tilde[0, 0], 2 / 3)
    assert np.isclose(t.W_tilde[3, 4], 1 / 3) and np.isclose(t.W_tilde[5, 4], 1 / 3)
    two = topology.build(2, (1, 1), "ring", 3)
    assert two.neighbours(0) == [1] and two.unreliable_neighbours(0) == [1]
    one = topology.build(1, (1,), "ring", 3)
    assert one.neighbours(0) == [] and np.allclose(one.W, 1)


def test_tau_zero_makes_every_neighbour_reliable():
    t = topology.build(8, (3, 5), "full", 0)
    assert np.array_equal(t.W, t.W_tilde)
    assert all(t.unreliable_neighbours(i) == [] for i in range(8))


def test_bad_clusters_are_clear_errors():
    with pytest.raises(TopologyError, match=r"--clusters 3,5 describes 8 agents but the job has 4"):
        topology.build(4, (3, 5))
    assert issubclass(TopologyError, UsageError)      # the runtime's one-line exit 2
    for bad in ("3,x", "0,3", "", "-1,9"):
        with pytest.raises(TopologyError, match="--clusters"):
            topology.parse_clusters(bad)
    assert topology.parse_clusters(" 6,6, 6,2") == (6, 6, 6, 2)
    with pytest.raises(TopologyError, match="no default reliable clusters for 1 agent"):
        topology.build(1)
    with pytest.raises(TopologyError, match="unknown graph"):
        topology.build(8, None, "torus")
    with pytest.raises(TopologyError, match="unknown mixing"):
        topology.build(8, None, "full", 1, "uniform")


def test_mixing_problems_detects_violations():
    adj = topology.adjacency("ring", 5)
    w = topology.mixing_matrix(adj)
    assert topology.mixing_problems(w, adj) == []
    bad = w.copy()
    bad[0, 1] += 0.1
    assert "not symmetric" in topology.mixing_problems(bad, adj)
    bad = w.copy()
    bad[0, 2] = bad[2, 0] = 0.05       # weight on a non-edge
    assert "weight on a pair that is not an edge" in topology.mixing_problems(bad, adj)
    assert "rows do not sum to 1" in topology.mixing_problems(w * 0.9, adj)


def test_describe_lists_clusters_and_matrices():
    text = topology.build(8, None, "full", 20).describe()
    assert "the paper's distributed network 1" in text
    assert "cluster 0: agents 0, 1, 2" in text and "cluster 1: agents 3, 4, 5, 6, 7" in text
    assert "agent 0: reliable [1, 2], unreliable [3, 4, 5, 6, 7]" in text
    assert "W~ (reliable neighbours only" in text
    assert text.count("0.5625") >= 8        # lazy W: diagonal 1/2 + 1/16


def test_default_clusters_paper_networks_else_two_halves():
    """The paper's networks for 5, 8, 20 agents (no note); two halves for any other n >= 2, with
    the one line rank 0 prints; one agent has no default."""
    assert topology.default_clusters(5) == (3, 2) and topology.default_clusters(8) == (3, 5)
    assert topology.default_clusters(20) == (6, 6, 6, 2)
    assert [topology.default_note(n) for n in (5, 8, 20)] == [None] * 3
    for n, want in ((2, (1, 1)), (3, (1, 2)), (4, (2, 2)), (7, (3, 4)), (16, (8, 8))):
        assert topology.default_clusters(n) == want
        assert topology.build(n, None, "full", 20).clusters == want
    assert topology.default_note(4) == \
        "clusters 2,2 (no network of the paper for 4 agents; --clusters to choose)"
    with pytest.raises(TopologyError, match="--clusters 1"):
        topology.default_clusters(1)
    assert topology.default_note(1) is None
