"""D-PSGD's equations, pure (no MPI, no comm): Lian et al. 2017, "Can Decentralized Algorithms
Outperform Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient
Descent", Algorithm 1.

n workers on a graph with a symmetric doubly stochastic mixing matrix W. At iteration k worker i
holds x_{k,i}, draws a mini-batch, computes the stochastic gradient
g_i = grad F_i(x_{k,i}; xi_{k,i}) at its OWN model (line 3), averages its neighbours' models
(line 4) and applies its gradient (line 5):

    x_{k+1,i} = sum_j W_ij x_{k,j} - eta g_i(x_{k,i})          (one worker, Algorithm 1 lines 4-5)
    X_{k+1}   = W X_k - eta G(X_k)                              (one row per worker)

The paper writes the matrix form with one COLUMN per worker, X_{k+1} = X_k W - eta dF(X_k; xi_k);
W being symmetric, that is the same update. The average x_bar = mean_i x_i follows plain SGD on the
averaged gradient (1^T W = 1^T); the deviations from it contract by W: with eta = 0,
X_{k+1} - 1 x_bar = (W - J)(X_k - 1 x_bar), J = 11^T / n, so their norm shrinks at least by
:func:`mixing_rate` (W's second largest eigenvalue modulus, below 1 by the paper's spectral-gap
assumption) every iteration. The step size eta is the paper's gamma.
"""
from __future__ import annotations

import numpy as np
import torch


def mix_step(X, W, G, eta: float):
    """Algorithm 1 for all workers at once, in closed form: ``W X - eta G`` (numpy arrays or
    torch tensors; row i is worker i's model / gradient). The reference the tests compare with."""
    return W @ X - eta * G


def mix_into(x: torch.Tensor, w_self: float, neighbours, g: torch.Tensor | None = None,
             eta: float = 0.0) -> torch.Tensor:
    """Algorithm 1 lines 4-5 for one worker, in place: ``x <- W_ii x + sum_j W_ij x_j - eta g``.

    ``neighbours``: (W_ij, x_j) pairs, in a fixed order (rank order: every run adds alike, so a
    resumed run is bitwise equal to an uninterrupted one). ``g`` is the gradient taken at the
    ``x`` this call receives (before mixing); ``g=None``: line 4 only, the mix (a user's optimizer
    then applies the gradient, :class:`mpidist.dpsgd.DPSGD`). Returns ``x``."""
    x.mul_(float(w_self))
    for w, xj in neighbours:
        x.add_(xj, alpha=float(w))
    return x if g is None else x.add_(g, alpha=-float(eta))


def consensus_distance(X) -> np.ndarray:
    """||x_i - x_bar|| for every row i of X (numpy, float64)."""
    X = np.asarray(X, dtype=np.float64)
    return np.linalg.norm(X - X.mean(0, keepdims=True), axis=1)


def mixing_rate(W) -> float:
    """rho = max(|lambda_2(W)|, |lambda_n(W)|), the factor by which pure mixing (eta = 0) shrinks
    ||X - 1 x_bar|| at least, every iteration; exactly when the deviation is an eigenvector of
    that eigenvalue. Below 1 for a connected graph (the paper's spectral-gap assumption)."""
    ev = np.sort(np.abs(np.linalg.eigvalsh(np.asarray(W, dtype=np.float64))))[::-1]
    return float(ev[1]) if len(ev) > 1 else 0.0


def slowest_mode(W) -> np.ndarray:
    """A unit eigenvector of W for the eigenvalue of modulus :func:`mixing_rate` (orthogonal to
    the all-ones vector): starting the workers at ``x_i = v_i u`` makes pure mixing shrink their
    consensus distance by exactly that factor every iteration."""
    ev, vec = np.linalg.eigh(np.asarray(W, dtype=np.float64))
    order = np.argsort(-np.abs(ev), kind="stable")
    return vec[:, order[1]] if len(ev) > 1 else np.zeros(len(ev))
