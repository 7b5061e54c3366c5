"""Graphs of agents, reliable clusters and mixing matrices (pure functions, no MPI).

Only this module knows graphs (DESIGN.md): an algorithm asks it *whom* an agent talks to and *with
what weight*, and moves the bytes itself through :mod:`mpidist.comm`.

PC-ASGD ("Asynchronous Training Schemes in Distributed Learning with Time Delay", Sec. 2 and 5.2)
runs N agents on an undirected connected graph whose agents are partitioned into *reliable
clusters*: a neighbour in the agent's own cluster is a reliable neighbour
(Def. 1, its state is one step old), a neighbour in another cluster is an unreliable neighbour
(Def. 2, its state is ``tau`` steps old). Two mixing matrices act on that graph (Algorithm 1):

- ``W`` over all neighbours (the predicting step, line 6),
- ``W~`` (``W_tilde``) over reliable neighbours only (the clipping step, line 7): the weights of the
  edges between clusters are moved onto the diagonal.

Both are symmetric and doubly stochastic (Assumption 2a). They are Metropolis-Hastings weights
``w_ij = 1 / (1 + max(d_i, d_j))`` on the graph (for ``W~``: on the graph of reliable edges), which
are symmetric, doubly stochastic and have a positive diagonal. ``mixing="lazy"`` (the default) uses
``(I + MH) / 2``, whose eigenvalues lie in (0, 1], so that ``I >= W > 0`` holds too
(Assumption 2c); ``mixing="metropolis"`` uses MH itself (for the fully connected graph of N agents
that is plain averaging, ``11^T / N``, eigenvalues 1 and 0). ``W~`` of a graph with several
clusters has one unit eigenvalue per cluster: the clipping step alone never mixes clusters (the
paper's C-ASGD), so Assumption 2b holds for ``W`` but not for ``W~`` unless there is one cluster.

The paper's networks (Sec. 5.2), all fully connected: *distributed network 1*, 8 agents in reliable
clusters of 3 and 5; *network 2*, 5 agents (3, 2); *network 3*, 20 agents (6, 6, 6, 2). Clusters
are runs of consecutive ranks: sizes (3, 5) put ranks 0-2 in cluster 0 and ranks 3-7 in cluster 1.

With ``tau = 0`` there is no delay, so every neighbour is reliable (``W~ = W``) whatever the
clusters are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError

GRAPHS = ("full", "ring", "exponential")
MIXINGS = ("lazy", "metropolis")

#: The paper's networks (Sec. 5.2) by number of agents: (name, reliable cluster sizes).
PAPER_NETWORKS = {
    8: ("distributed network 1", (3, 5)),
    5: ("distributed network 2", (3, 2)),
    20: ("distributed network 3", (6, 6, 6, 2)),
}


class TopologyError(UsageError):
    """A graph or cluster layout that cannot be built as asked (every rank detects it alike)."""


# ----------------------------------------------------------------------------------- clusters

def parse_clusters(text: str) -> tuple[int, ...]:
    """``"3,5"`` -> ``(3, 5)``; every size a positive integer, else TopologyError."""
    parts = [s.strip() for s in str(text).split(",")]
    try:
        sizes = tuple(int(s) for s in parts)
    except ValueError:
        raise TopologyError(f"--clusters {text}: expected comma-separated cluster sizes such as "
                            "3,5") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise TopologyError(f"--clusters {text}: every cluster size must be a positive integer")
    return sizes


def default_clusters(n: int) -> tuple[int, ...]:
    """The reliable clusters when none are given: the paper's network for 5, 8 and 20 agents
    (Sec. 5.2), two halves of consecutive ranks for any other ``n >= 2`` (:func:`default_note`
    says so); TopologyError for one agent (no neighbour, no cluster to be late)."""
    if n in PAPER_NETWORKS:
        return PAPER_NETWORKS[n][1]
    if n < 2:
        raise TopologyError(f"no default reliable clusters for {n} agent(s) (the paper's networks "
                            f"have 5, 8 and 20 agents); give --clusters {n} to run one agent "
                            f"alone")
    return _split_two(n)


def default_note(n: int) -> str | None:
    """The line to print when :func:`default_clusters` chose clusters the paper does not have
    (None for the paper's networks)."""
    if n in PAPER_NETWORKS or n < 2:
        return None
    return (f"clusters {','.join(map(str, default_clusters(n)))} (no network of the paper for "
            f"{n} agents; --clusters to choose)")


def _split_two(n: int) -> tuple[int, ...]:
    return (n,) if n < 2 else (n // 2, n - n // 2)


def check_clusters(sizes, n: int) -> None:
    """TopologyError unless the cluster sizes sum to the number of agents ``n``."""
    if sum(sizes) != n:
        raise TopologyError(
            f"--clusters {','.join(map(str, sizes))} describes {sum(sizes)} agents but the job "
            f"has {n} ranks; the world size must equal the sum of the cluster sizes (run "
            f"mpirun -n {sum(sizes)}, or give sizes that sum to {n}, e.g. --clusters "
            f"{','.join(map(str, _split_two(n)))})")


def cluster_of(sizes) -> np.ndarray:
    """Cluster index of every agent: clusters are runs of consecutive ranks."""
    return np.repeat(np.arange(len(sizes)), sizes)


# ----------------------------------------------------------------------------------- graphs

def adjacency(graph: str, n: int) -> np.ndarray:
    """Boolean N x N adjacency (symmetric, no self-loops) of ``graph``: "full", "ring" (i ~ i +- 1)
    or "exponential" (i ~ i +- 2^k mod N for 2^k < N: the undirected exponential graph of
    decentralized SGD, degree O(log N))."""
    if graph not in GRAPHS:
        raise TopologyError(f"unknown graph '{graph}' (known: {', '.join(GRAPHS)})")
    if n < 1:
        raise TopologyError(f"a graph needs at least one agent, got {n}")
    a = np.zeros((n, n), dtype=bool)
    i = np.arange(n)
    if graph == "full":
        a[:] = True
    for hop in ([1] if graph == "ring" else
                [1 << k for k in range(max(1, n - 1).bit_length())] if graph == "exponential"
                else []):
        a[i, (i + hop) % n] = True
        a[(i + hop) % n, i] = True
    np.fill_diagonal(a, False)
    return a


def metropolis(adj: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings weights of an undirected graph: ``w_ij = 1/(1 + max(d_i, d_j))`` on
    edges, ``w_ii = 1 - sum_j w_ij``. Symmetric, doubly stochastic, ``w_ii >= 1/(1 + d_i) > 0``."""
    adj = np.asarray(adj, dtype=bool)
    deg = adj.sum(1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(1))
    return w


def mixing_matrix(adj: np.ndarray, mixing: str = "lazy") -> np.ndarray:
    """The mixing matrix of Assumption 2 on the graph ``adj``: Metropolis-Hastings weights, or
    ``(I + MH) / 2`` for ``mixing="lazy"`` (eigenvalues in (0, 1])."""
    if mixing not in MIXINGS:
        raise TopologyError(f"unknown mixing '{mixing}' (known: {', '.join(MIXINGS)})")
    w = metropolis(adj)
    if mixing == "lazy":
        w = 0.5 * (np.eye(len(w)) + w)
    return w


def mixing_problems(w: np.ndarray, adj: np.ndarray, tol: float = 1e-12) -> list[str]:
    """What of Assumption 2a and the graph's sparsity ``w`` violates (empty list: nothing):
    symmetric, non-negative, rows and columns summing to 1, zero exactly off the edges."""
    out = []
    n = len(w)
    if not np.allclose(w, w.T, atol=tol):
        out.append("not symmetric")
    if (w < -tol).any():
        out.append("negative entries")
    if not np.allclose(w.sum(1), 1.0, atol=tol):
        out.append("rows do not sum to 1")
    if not np.allclose(w.sum(0), 1.0, atol=tol):
        out.append("columns do not sum to 1")
    off = ~np.eye(n, dtype=bool)
    if (np.abs(w[off & ~adj]) > tol).any():
        out.append("weight on a pair that is not an edge")
    if (w[off & adj] <= tol).any():
        out.append("an edge without weight")
    return out


# ----------------------------------------------------------------------------------- topology

@dataclass(frozen=True)
class Topology:
    """Agents, their graph, reliable clusters and both mixing matrices of Algorithm 1.

    ``adj``: the graph (bool N x N); ``reliable``: the edges within a cluster (all edges when
    ``tau == 0``); ``W`` and ``W_tilde``: the mixing matrices of lines 6 and 7.
    """
    n: int
    graph: str
    clusters: tuple
    tau: int
    mixing: str
    cluster: np.ndarray
    adj: np.ndarray
    reliable: np.ndarray
    W: np.ndarray
    W_tilde: np.ndarray

    def neighbours(self, i: int) -> list[int]:
        """Nb(i) without i itself, in rank order."""
        return [int(j) for j in np.flatnonzero(self.adj[i])]

    def reliable_neighbours(self, i: int) -> list[int]:
        """R without i: neighbours whose state of the previous step is available (Def. 1)."""
        return [int(j) for j in np.flatnonzero(self.adj[i] & self.reliable[i])]

    def unreliable_neighbours(self, i: int) -> list[int]:
        """R^c: neighbours whose state is ``tau`` steps old (Def. 2)."""
        return [int(j) for j in np.flatnonzero(self.adj[i] & ~self.reliable[i])]

    @property
    def name(self) -> str:
        net = PAPER_NETWORKS.get(self.n)
        paper = (f" = the paper's {net[0]}" if net and self.graph == "full"
                 and tuple(self.clusters) == net[1] else "")
        return (f"{self.n} agents, {self.graph} graph, reliable clusters "
                f"{','.join(map(str, self.clusters))}{paper}, tau {self.tau}, {self.mixing} "
                f"Metropolis weights")

    def describe(self) -> str:
        """A text rendering of the clusters, neighbour lists, W and W~ (for --show-topology)."""
        lines = [self.name]
        for c in range(len(self.clusters)):
            lines.append(f"  cluster {c}: agents {', '.join(map(str, np.flatnonzero(self.cluster == c)))}")
        for i in range(self.n):
            lines.append(f"  agent {i}: reliable {self.reliable_neighbours(i)}, unreliable "
                         f"{self.unreliable_neighbours(i)}")
        for label, m in (("W (all neighbours, predicting step)", self.W),
                         ("W~ (reliable neighbours only, clipping step)", self.W_tilde)):
            ev = np.sort(np.linalg.eigvalsh(m))[::-1]
            lines.append(f"{label}; eigenvalues {ev.max():.4f} .. {ev.min():.4f}, "
                         f"second largest {ev[1] if len(ev) > 1 else float('nan'):.4f}:")
            lines += ["  " + " ".join(f"{v:6.4f}" for v in row) for row in m]
        return "\n".join(lines)


def build(n: int, clusters=None, graph: str = "full", tau: int = 0,
          mixing: str = "lazy") -> Topology:
    """The topology of ``n`` agents: ``clusters`` (sizes, or None for the paper's default of
    :func:`default_clusters`) on ``graph``, delay ``tau`` on the edges between clusters."""
    sizes = default_clusters(n) if clusters is None else tuple(int(s) for s in clusters)
    if any(s <= 0 for s in sizes):
        raise TopologyError(f"cluster sizes must be positive, got {sizes}")
    check_clusters(sizes, n)
    if tau < 0:
        raise TopologyError(f"the delay tau must be >= 0, got {tau}")
    adj = adjacency(graph, n)
    cl = cluster_of(sizes)
    same = cl[:, None] == cl[None, :]
    reliable = np.ones((n, n), dtype=bool) if tau == 0 else same
    W = mixing_matrix(adj, mixing)
    W_tilde = mixing_matrix(adj & reliable, mixing)
    return Topology(n, graph, sizes, int(tau), mixing, cl, adj, reliable, W, W_tilde)
