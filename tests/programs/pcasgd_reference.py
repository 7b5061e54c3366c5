"""A short blocking reference of PC-ASGD (Algorithm 1, Eq. 2, Eq. 12) for the tests, a quadratic
objective to drive it with, and an in-process stand-in for the communicator.

- :func:`reference` simulates all N agents in one process, step by step, with explicit histories:
  at step t agent i reads x_t^j of its reliable neighbours and x_{t-tau}^k, g_k(x_{t-tau}^k) of its
  unreliable ones straight from the stored trajectories, and Eq. 2 as the paper's literal sum over r.
  It shares no code with mpidist.pcasgd except the topology (the matrices are tested on their own).
- :class:`Quadratic`: f_i(x) = 1/2 sum a_i (x - c_i)^2, gradient a_i (x - c_i), exact.
- :func:`dsgd_closed_form`: with one curvature a for all agents, plain decentralized gradient
  descent x_{t+1} = W x_t - eta a (x_t - c) has the closed form X_t = M^t (X_0 - X*) + X*,
  M = W - eta a I, X* = eta a ((1 + eta a) I - W)^{-1} C.
- :class:`LocalNet` / :class:`LocalComm`: isend/irecv between agents of one process with MPI's
  matching rules (FIFO per source, destination and tag), so that mpidist.pcasgd.Agent (mailboxes,
  stamps, outboxes) runs unchanged in lockstep without MPI.
"""
from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import torch


class Quadratic:
    """N local objectives f_i(x) = 1/2 sum_d a_i[d] (x[d] - c_i[d])^2 in R^dim (float64)."""

    def __init__(self, n: int, dim: int, seed: int = 0, same_curvature: bool = False):
        rng = np.random.default_rng(seed)
        self.a = (np.full((n, dim), 1.5) if same_curvature else rng.uniform(0.5, 2.0, (n, dim)))
        self.c = rng.normal(0.0, 1.0, (n, dim))
        self.x0 = rng.normal(0.0, 1.0, dim)

    def grad(self, i: int, x: np.ndarray) -> np.ndarray:
        return self.a[i] * (x - self.c[i])


def dsgd_closed_form(W: np.ndarray, q: Quadratic, lr: float, steps: int) -> np.ndarray:
    """X_T of x_{t+1} = W x_t - lr a (x_t - c_i) from X_0 = x0 on every agent (same curvature a)."""
    a = float(q.a[0, 0])
    assert np.all(q.a == a), "the closed form needs one curvature"
    n = len(W)
    M = W - lr * a * np.eye(n)
    X_star = np.linalg.solve((1 + lr * a) * np.eye(n) - W, lr * a * q.c)
    X0 = np.tile(q.x0, (n, 1))
    return np.linalg.matrix_power(M, steps) @ (X0 - X_star) + X_star


def _cos_descent(delta, g):
    nd, ng = np.linalg.norm(delta), np.linalg.norm(g)
    return 0.0 if nd == 0 or ng == 0 else float(-(delta @ g) / (nd * ng))


def reference(topo, theta, compensate: bool, lam: float, lr: float, q: Quadratic, steps: int,
              momentum: float = 0.0, criterion: str = "descent"):
    """All agents' trajectories of Algorithm 1, blocking, from x0 on every agent.

    ``theta``: a number in [0, 1], or None for Eq. 12's criterion (``criterion`` "descent": the
    step whose update has the larger cosine with -g; "printed": with +g). Returns
    (X of shape [steps + 1, N, dim], thetas of shape [steps, N]). Conventions shared with the
    implementation: for t < tau an agent with unreliable neighbours takes the clipping step;
    momentum (0 = the paper) is heavy-ball on the local term.
    """
    n, tau = topo.n, topo.tau
    W, Wt = topo.W, topo.W_tilde
    X = [np.tile(q.x0, (n, 1))]
    G = []
    V = np.zeros_like(X[0])
    thetas = np.zeros((steps, n))
    uses_unrel = theta is None or theta > 0
    for t in range(steps):
        Xt = X[t]
        Gt = np.stack([q.grad(i, Xt[i]) for i in range(n)])
        G.append(Gt)
        V = momentum * V + Gt if momentum else Gt
        new = np.empty_like(Xt)
        for i in range(n):
            rel = topo.reliable_neighbours(i)
            unrel = topo.unreliable_neighbours(i) if uses_unrel else []
            cli = Wt[i, i] * Xt[i] + sum(Wt[i, j] * Xt[j] for j in rel) - lr * V[i]
            if unrel and t < tau:
                th = 0.0
                pre = None
            else:
                th = theta
                pre = W[i, i] * Xt[i] + sum(W[i, j] * Xt[j] for j in rel) - lr * V[i]
                for k in unrel:
                    xk, gk = X[t - tau][k], G[t - tau][k]
                    gdc = np.zeros_like(gk)
                    if compensate:
                        for r in range(tau):  # Eq. 2, literally
                            gdc += gk + lam * gk * gk * (X[t - tau + r][i] - X[t - tau][i])
                    pre = pre + W[i, k] * (xk - lr * gdc)
            if th is None:
                sign = -1.0 if criterion == "printed" else 1.0
                th = 1.0 if (sign * _cos_descent(pre - Xt[i], Gt[i])
                             >= sign * _cos_descent(cli - Xt[i], Gt[i])) else 0.0
            new[i] = cli if th == 0.0 else (pre if th == 1.0 else th * pre + (1 - th) * cli)
            thetas[t, i] = th
        X.append(new)
    return np.stack(X), thetas


# ------------------------------------------------------------------------- in-process transport

class _Handle:
    t_wait = float("nan")  # mpidist.handles.waitall reads it: this transport never blocks

    def __init__(self, result):
        self.result, self.done = result, False

    @property
    def state(self) -> int:
        return 2 if self.done else 0

    def test(self):
        return self.done

    def wait(self, timeout=None):
        if not self.done:
            raise RuntimeError("in-process transport: waiting for a message nobody sent yet "
                               "(a deadlock under MPI)")
        return self.result


class LocalNet:
    """Matches sends and receives of agents living in one process: FIFO per (src, dst, tag)."""

    def __init__(self):
        self.sends = defaultdict(deque)   # (src, dst, tag) -> snapshots not yet received
        self.recvs = defaultdict(deque)   # (src, dst, tag) -> (out tensor, handle) posted
        self.log = []                     # (op, src, dst, tag, channel, step)

    def _match(self, key):
        while self.sends[key] and self.recvs[key]:
            data = self.sends[key].popleft()
            out, h = self.recvs[key].popleft()
            out.copy_(data)
            h.done = True


class LocalComm:
    """The slice of mpidist.comm.Communicator that Agent uses, for agent ``rank`` of ``net``."""

    def __init__(self, net: LocalNet, rank: int):
        self.net, self.rank, self.step = net, rank, 0

    def isend(self, tensor, dest, tag=0, channel="data", snapshot=True):
        key = (self.rank, dest, tag)
        self.net.sends[key].append(tensor.clone())
        self.net.log.append(("send", self.rank, dest, tag, channel, self.step))
        h = _Handle(tensor)
        h.done = True
        self.net._match(key)
        return h

    def irecv(self, out, source, tag=0, channel="data"):
        key = (source, self.rank, tag)
        h = _Handle(out)
        self.net.recvs[key].append((out, h))
        self.net.log.append(("recv", source, self.rank, tag, channel, self.step))
        self.net._match(key)
        return h


def run_agents(topo, variant, lam, lr, q: Quadratic, steps, momentum=0.0, dtype=torch.float64):
    """mpidist.pcasgd.Agent for every agent in one process, lockstep, on the quadratic.
    Returns (X [steps + 1, N, dim], thetas [steps, N], infos [steps][N], net)."""
    from mpidist.pcasgd import Agent
    net = LocalNet()
    n, dim = topo.n, q.x0.size
    recs = defaultdict(list)
    agents = [Agent(LocalComm(net, i), topo, i, variant, lam, steps, dim, dtype, "cpu", momentum,
                    metric=lambda t, name, v, i=i: recs[i].append((t, name, v)))
              for i in range(n)]
    xs = [torch.tensor(q.x0, dtype=dtype) for _ in range(n)]
    for ag, x in zip(agents, xs):
        ag.start(x)
    X, thetas, infos = [np.stack([x.numpy().copy() for x in xs])], np.zeros((steps, n)), []
    for t in range(steps):
        gs = [torch.tensor(q.grad(i, xs[i].numpy()), dtype=dtype) for i in range(n)]
        row = []
        for i, ag in enumerate(agents):
            ag.comm.step = t
            info = ag.step(t, xs[i], gs[i], lr)
            thetas[t, i] = info.theta
            row.append(info)
        infos.append(row)
        X.append(np.stack([x.numpy().copy() for x in xs]))
    for ag in agents:
        ag.finish()
    return np.stack(X), thetas, infos, net, recs
