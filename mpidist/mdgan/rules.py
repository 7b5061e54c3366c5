"""MD-GAN's pure rules (no MPI): who gets which generated batch, when discriminators swap and with
whom, when emulated workers crash, the GAN losses and the error feedback, Table III's byte counts.

Everything here is a function of its arguments and of the shared seed, so every rank computes the
same schedules without a message (Hardy, Le Merrer, Sericola, "MD-GAN: Multi-Discriminator
Generative Adversarial Networks for Distributed Datasets"; Algorithm 1, Sections II and IV).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError

# streams of the shared seed (every rank draws the same numbers from them)
_LABEL_STREAM, _SWAP_STREAM, _CRASH_STREAM = 101, 102, 103


# =============================================================================== schedules

def batches_per_iteration(k, num_workers: int) -> int:
    """k, the number of generated batches per iteration: an int, or "log2" for floor(log2 N)
    (Section IV-B4: the paper runs k = 1 and k = floor(log2 N)); 1 <= k <= N."""
    if k == "log2":
        k = max(1, int(math.floor(math.log2(num_workers)))) if num_workers >= 1 else 1
    k = int(k)
    if not 1 <= k <= max(num_workers, 1):
        raise UsageError(f"-k {k}: the server draws 1 <= k <= N = {num_workers} batches")
    return k


def distribute(n: int, k: int) -> tuple[int, int]:
    """Section IV-B1: worker n (1-based) gets X_n^(g) = X^((n mod k)+1) and
    X_n^(d) = X^(((n+1) mod k)+1); returned as 0-based batch indices (g, d). Distinct for k >= 2;
    for k = 1 both are the one batch."""
    return n % k, (n + 1) % k


def iterations_per_epoch(m: int, b: int) -> int:
    """m / b: iterations for a worker to see its m local samples once with batches of b."""
    return max(1, m // b)


def swap_due(i: int, epochs: int, m: int, b: int) -> bool:
    """Algorithm 1, line 11: swap after iteration i (1-based) when i mod (E m / b) = 0."""
    return i % (epochs * iterations_per_epoch(m, b)) == 0


def swap_permutation(live, seed: int, swap_index: int) -> dict[int, int]:
    """The swap of number ``swap_index``: {sender: receiver} over the live workers, a uniformly
    random derangement (every live worker sends its discriminator to another live worker and
    receives exactly one), drawn from the shared seed so that every worker computes the same one
    without a message. Fewer than two live workers: no swap ({})."""
    live = sorted(int(r) for r in live)
    if len(live) < 2:
        return {}
    rng = np.random.default_rng([seed, _SWAP_STREAM, swap_index])
    idx = np.arange(len(live))
    while True:  # rejection sampling: uniform over derangements, ~e tries on average
        p = rng.permutation(len(live))
        if not np.any(p == idx):
            return {live[a]: live[int(p[a])] for a in range(len(live))}


def crash_period(every: int, iterations: int, num_workers: int) -> int:
    """T of ``--crash-every``: as given, or I / N when given without a value (``every`` 0), so
    that the last worker stops at iteration I as in Figure 3."""
    return every or max(1, iterations // num_workers)


def crash_schedule(num_workers: int, iterations: int, every: int,
                   seed: int) -> list[tuple[int, int]]:
    """Figure 3: [(iteration, worker rank)] -- one worker stops for good at iterations every,
    2 every, ... (<= I), at most N of them, the order of the workers drawn from the shared seed.
    With every = I / N the last worker stops at iteration I, as in the paper."""
    if every <= 0:
        return []
    order = np.random.default_rng([seed, _CRASH_STREAM]).permutation(num_workers) + 1
    count = min(num_workers, iterations // every)
    return [((c + 1) * every, int(order[c])) for c in range(count)]


def live_after(schedule, num_workers: int, iteration: int) -> list[int]:
    """The workers still live after ``iteration`` under a crash schedule."""
    dead = {w for t, w in schedule if t <= iteration}
    return [n for n in range(1, num_workers + 1) if n not in dead]


def flgan_round_ends(iterations: int, per_round: int) -> list[int]:
    """FL-GAN (Section III-c): the iteration that ends every round of E local epochs
    (``per_round`` = E m / b iterations), the last round cut at I."""
    return [min(r * per_round, iterations) for r in range(1, -(-iterations // per_round) + 1)]


def flgan_round(i: int, iterations: int, per_round: int) -> tuple[int, int]:
    """(first, last) iteration of the FL-GAN round that iteration i (1-based) belongs to."""
    r = (i - 1) // per_round
    return r * per_round + 1, min((r + 1) * per_round, iterations)


def fake_labels(seed: int, i: int, j: int, b: int, num_classes: int) -> torch.Tensor:
    """The ACGAN class codes of generated batch j (0-based) at iteration i, from the shared seed:
    the server conditions G on them and the workers know them without a message."""
    rng = np.random.default_rng([seed, _LABEL_STREAM, i, j])
    return torch.from_numpy(rng.integers(0, num_classes, size=b))


def table3_bytes(mode: str, num_workers: int, b: int, d: int, theta: int, w: int,
                 itemsize: int = 4) -> dict:
    """Table III's communication, in bytes, per MD-GAN iteration or per FL-GAN round.

    MD-GAN: C -> W_n 2 b d values (the two batches; Section IV-D1's text, Table III writes b x d),
    W_n -> C b d values, each swap |theta| per worker (W -> W). FL-GAN: |theta| + |w| each way per
    worker and round."""
    if mode == "mdgan":
        per = {"server_to_worker": 2 * b * d, "worker_to_server": b * d, "swap_per_worker": theta}
    elif mode == "flgan":
        per = {"server_to_worker": theta + w, "worker_to_server": theta + w, "swap_per_worker": 0}
    else:
        raise ValueError(f"table3_bytes: mode {mode}")
    out = {key: v * itemsize for key, v in per.items()}
    out["server_to_workers_total"] = num_workers * out["server_to_worker"]
    out["workers_to_server_total"] = num_workers * out["worker_to_server"]
    return out


# =============================================================================== losses

def generate(G, z, labels=None):
    """G's samples: ``G(z, labels)`` for a conditional (ACGAN) generator, ``G(z)`` for a plain
    one (``labels`` None)."""
    return G(z) if labels is None else G(z, labels)


def _rf(out):
    return out[:, 0]


def disc_loss(D, x_real, y_real, x_fake, y_fake) -> torch.Tensor:
    """J_disc (Section II-1), written as a loss to minimise: -(A~(X_r) + B~(X_g)) =
    mean BCE(D(x_r), real) + mean BCE(D(x_g), fake); ACGAN adds the class cross-entropy on both
    batches (labels None: plain GAN). Real and generated batches go through D separately (as
    mini-batch discrimination requires)."""
    o_r, o_f = D(x_real), D(x_fake)
    loss = (F.binary_cross_entropy_with_logits(_rf(o_r), torch.ones_like(_rf(o_r)))
            + F.binary_cross_entropy_with_logits(_rf(o_f), torch.zeros_like(_rf(o_f))))
    if y_real is not None:
        loss = loss + F.cross_entropy(o_r[:, 1:], y_real) + F.cross_entropy(o_f[:, 1:], y_fake)
    return loss


def gen_loss(D, x, y, saturating: bool = False) -> torch.Tensor:
    """B~(X_g), the generator's term on a batch (Section II-2), averaged over the batch:
    ``saturating``: (1/b) sum log(1 - D(x)) as in the paper's formula; default the
    non-saturating -(1/b) sum log D(x) that GAN codes (and the Keras ACGAN the paper ran) use.
    ACGAN adds the class cross-entropy of the codes y."""
    o = D(x)
    if saturating:
        loss = -F.softplus(_rf(o)).mean()  # log(1 - sigmoid(l)) = -softplus(l)
    else:
        loss = F.binary_cross_entropy_with_logits(_rf(o), torch.ones_like(_rf(o)))
    if y is not None:
        loss = loss + F.cross_entropy(o[:, 1:], y)
    return loss


def error_feedback(D, x_g, y_g, saturating: bool = False) -> tuple[torch.Tensor, float]:
    """F_n = {e_ni = dB~(X_n^(g)) / dx_i} (Section IV-B2): the gradient of the generator's term
    with respect to each generated sample, D's parameters untouched. Returns (F_n shaped like x_g,
    the value of B~)."""
    x = x_g.detach().requires_grad_(True)
    loss = gen_loss(D, x, y_g, saturating)
    (grad,) = torch.autograd.grad(loss, x)
    return grad, float(loss.detach())


def assemble_grad(grad_x: torch.Tensor, feedbacks: dict, k: int, b: int) -> torch.Tensor:
    """The gradient of (1/N) sum_n B~(X_n^(g)) with respect to the k generated batches (stacked,
    [k b, ...]): F_n added into the rows of batch g_n, divided by the number N of feedbacks received
    (Section IV-B2: Delta w = d B~(U_n X_n^(g)) / dw). Written into ``grad_x``."""
    grad_x.zero_()
    if not feedbacks:
        return grad_x
    for n, fb in feedbacks.items():
        g, _ = distribute(n, k)
        grad_x[g * b:(g + 1) * b].add_(fb)
    return grad_x.div_(len(feedbacks))


def reference_generator_grad(G, Ds: dict, z, labels, k: int, b: int, saturating: bool = False):
    """The same gradient computed in one process by autograd (tests): d/dw (1/N) sum_n
    B~_n(G(z)[batch g_n]) with every D_n at hand. Returns the flat gradient of w."""
    x = generate(G, z, labels)
    loss = 0.0
    for n, D in Ds.items():
        g, _ = distribute(n, k)
        yg = None if labels is None else labels[g * b:(g + 1) * b]
        loss = loss + gen_loss(D, x[g * b:(g + 1) * b], yg, saturating)
    loss = loss / len(Ds)
    params = [p for p in G.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])
