"""Tests of mpidist.dada: the strategies of Table 1 as pure rules (one process, against short
reference implementations and closed forms), the networks, the data split, the configuration
checks; then three multi-rank launches (tests/programs/dada_checks.py under -n 2 and -n 3, the CLI under
-n 2) and the one-process ADDA baseline.

This file holds the checks that need no multi-rank launch; tests/mpi/test_dada.py holds the launches."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from mpidist import dada, models
from mpidist.comm import FlatParams


# ===================================================================================== schedule

def test_strategy_schedule_and_payload():
    ga = dada.make_strategy("ga", 3)
    assert [n for n in range(1, 10) if ga.is_sync_step(n)] == [3, 6, 9]
    assert ga.syncs(10) == 3 and ga.payload == "grads" and ga.channel == "disc_grads"
    assert dada.make_strategy("sync").period == 1
    assert dada.make_strategy("dpsgd").period == 1
    assert dada.make_strategy("ga").period == 2          # the default p of the async strategies
    for name in ("naive", "ma", "dpsgd"):
        assert dada.make_strategy(name).channel == "disc_params"
    with pytest.raises(dada.UsageError, match="known: sync, ga, naive, ma, dpsgd"):
        dada.make_strategy("fedavg")
    with pytest.raises(dada.UsageError, match="p = 1"):
        dada.make_strategy("sync", 2)


def test_exchange_bytes_falls_as_one_over_p():
    d = 2_006_004
    cost = {p: dada.exchange_bytes(dada.make_strategy("ga", p), 1200, d, 2) for p in (1, 2, 3, 4)}
    assert cost == {1: 1200 * d, 2: 600 * d, 3: 400 * d, 4: 300 * d}
    # one allreduce of D's size per sync-up step whatever the number of ranks; on a ring's wire
    # 2 (n - 1) / n of it: D with two ranks (one message each way), 4/3 D with three
    ga2 = dada.make_strategy("ga", 2)
    assert dada.exchange_bytes(ga2, 10, d, 3) == dada.exchange_bytes(ga2, 10, d, 64) == 5 * d
    assert dada.exchange_bytes(ga2, 10, d, 2, wire=True) == 5 * d
    assert dada.exchange_bytes(ga2, 10, d, 3, wire=True) == pytest.approx(5 * d * 4 / 3)


def test_rank_order_mean_is_the_same_bits_wherever_computed():
    torch.manual_seed(0)
    parts = [torch.randn(1000) * 10 ** i for i in range(3)]
    out = torch.empty(1000)
    a = dada.rank_order_mean(parts, out).clone()
    # a rank holds its own part in another buffer: the rank order makes the sum identical
    b = dada.rank_order_mean([parts[0].clone(), parts[1].clone(), parts[2].clone()],
                             torch.empty(1000))
    assert torch.equal(a, b)
    assert torch.allclose(a, (parts[0] + parts[1] + parts[2]) / 3)
    two = dada.rank_order_mean(parts[:2], torch.empty(1000))
    assert torch.equal(two, dada.rank_order_mean(parts[1::-1], torch.empty(1000)))  # a+b == b+a


# ===================================================================================== rules

LR = 0.1


def grad(n, i, shape):
    """A deterministic fake gradient of replica i at step n (different per replica: biased
    domains, as the source and target gradients are)."""
    g = torch.Generator().manual_seed(1000 * n + i)
    return torch.randn(shape, generator=g) + (i - 0.5) * 2.0


def simulate(name, p, steps, replicas=2, opt="sgd", grad_at_params=None):
    """Run DiscriminatorRule on ``replicas`` copies of a tiny D in one process, exchanging by
    plain rank-order averaging; returns the parameters of every replica after every step and the
    rules. ``grad_at_params(n, i, params)`` (optional) makes the gradient depend on the weights."""
    torch.manual_seed(0)
    base = nn.Linear(4, 3)
    nets = [copy.deepcopy(base) for _ in range(replicas)]
    fps = [FlatParams(m) for m in nets]
    mk = (lambda ps: torch.optim.SGD(ps, lr=LR)) if opt == "sgd" else \
         (lambda ps: torch.optim.Adam(ps, lr=LR, betas=(0.5, 0.999)))
    rules = [dada.DiscriminatorRule(dada.make_strategy(name, p), fp, mk(m.parameters()))
             for fp, m in zip(fps, nets)]
    hist = []
    for n in range(1, steps + 1):
        early = [r.before_grad(n) for r in rules]
        mean = None
        if early[0] is not None:
            mean = dada.rank_order_mean([e.clone() for e in early], torch.empty(fps[0].numel))
        for i, fp in enumerate(fps):
            g = grad(n, i, fp.numel) if grad_at_params is None else grad_at_params(n, i, fp.params)
            fp.grads.add_(g)                       # backward adds g^(n) into G_acc
        payloads = [r.after_grad(n) for r in rules]
        if payloads[0] is not None:
            assert mean is None
            mean = dada.rank_order_mean([q.clone() for q in payloads], torch.empty(fps[0].numel))
        if mean is not None:
            for r in rules:
                r.combine(n, mean)
        hist.append([fp.params.clone() for fp in fps])
    return hist, rules, torch.nn.utils.parameters_to_vector(base.parameters()).detach().clone()


def test_ga_identical_every_step_and_closed_form():
    hist, _, x0 = simulate("ga", 3, 9)
    x = x0.clone()
    for n in range(1, 10):
        a, b = hist[n - 1]
        assert torch.equal(a, b), f"GA: D_s != D_t after step {n}"
        if n % 3 == 0:  # apply the rank-average of the gradients accumulated over the window
            acc = sum(grad(m, 0, 15) + grad(m, 1, 15) for m in range(n - 2, n + 1))
            x = x - LR * acc / 2
        assert torch.allclose(a, x, atol=1e-6), f"step {n}"


def test_ga_p1_is_sync_bitwise_also_with_adam():
    h1, r1, _ = simulate("ga", 1, 6, opt="adam")
    hs, rs, _ = simulate("sync", 1, 6, opt="adam")
    assert all(torch.equal(a, b) for x, y in zip(h1, hs) for a, b in zip(x, y))
    # same averaged gradients, same optimizer state on both nodes
    s0 = [v["exp_avg_sq"] for v in r1[0].opt.state.values()]
    s1 = [v["exp_avg_sq"] for v in r1[1].opt.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(s0, s1))


def test_ga_keeps_adam_states_identical_with_p3():
    hist, rules, _ = simulate("ga", 3, 7, opt="adam")
    assert all(torch.equal(a, b) for a, b in hist)
    for k in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(u[k], v[k]) for u, v in zip(rules[0].opt.state.values(),
                                                            rules[1].opt.state.values()))


def naive_reference(p, steps):
    _, _, x0 = simulate("naive", p, 0)
    x = [x0.clone(), x0.clone()]
    out = []
    for n in range(1, steps + 1):
        x = [x[i] - LR * grad(n, i, 15) for i in range(2)]
        if n % p == 0:
            m = (x[0] + x[1]) / 2
            x = [m.clone(), m.clone()]
        out.append([t.clone() for t in x])
    return out


def test_naive_matches_reference_different_between_syncs():
    hist, _, _ = simulate("naive", 3, 7)
    ref = naive_reference(3, 7)
    for n, (h, r) in enumerate(zip(hist, ref), 1):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(h, r)), f"step {n}"
        assert torch.equal(h[0], h[1]) == (n % 3 == 0), f"step {n}"


def test_ma_matches_table1():
    """Local step: apply the local gradient, then average with D_sync; sync-up step: average the
    weights of D_s and D_t and store the average as D_sync."""
    p, steps = 3, 8
    hist, rules, x0 = simulate("ma", p, steps)
    x, d_sync = [x0.clone(), x0.clone()], x0.clone()
    for n in range(1, steps + 1):
        x = [x[i] - LR * grad(n, i, 15) for i in range(2)]
        if n % p == 0:
            d_sync = (x[0] + x[1]) / 2
            x = [d_sync.clone(), d_sync.clone()]
        else:
            x = [(x[i] + d_sync) / 2 for i in range(2)]
        h = hist[n - 1]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(h, x)), f"step {n}"
        assert torch.equal(h[0], h[1]) == (n % p == 0)
    assert torch.allclose(rules[0].d_sync, d_sync) and torch.equal(rules[0].d_sync, rules[1].d_sync)


def test_ma_diverges_less_than_naive():
    """Table 1's "expected divergence": MA low, Naive high, GA none."""
    def div(name):
        hist, _, _ = simulate(name, 4, 12)
        return max(float((a - b).norm()) for a, b in hist)
    assert div("ga") == 0.0 < div("ma") < div("naive")


def test_dpsgd_averages_weights_then_applies_the_local_gradient():
    """D-PSGD (Lian et al. 2017): x_i <- mean_j x_j - lr grad_i(x_i), the gradient taken at the
    local weights before averaging."""
    A = torch.linspace(-1, 1, 15)

    def g_at(n, i, params):  # a gradient that depends on where it is taken
        return A * params + grad(n, i, 15)
    hist, _, x0 = simulate("dpsgd", 1, 5, grad_at_params=g_at)
    x = [x0.clone(), x0.clone()]
    for n in range(1, 6):
        m = (x[0] + x[1]) / 2
        x = [m - LR * g_at(n, i, x[i]) for i in range(2)]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(hist[n - 1], x)), f"step {n}"
        assert not torch.equal(hist[n - 1][0], hist[n - 1][1])


def test_naive_p1_differs_from_dpsgd():
    """Naive with p = 1 averages after the local step, D-PSGD before: different algorithms."""
    A = torch.linspace(-1, 1, 15)
    g_at = lambda n, i, params: A * params + grad(n, i, 15)  # noqa: E731
    hn, _, _ = simulate("naive", 1, 3, grad_at_params=g_at)
    hd, _, _ = simulate("dpsgd", 1, 3, grad_at_params=g_at)
    assert torch.equal(hn[-1][0], hn[-1][1]) and not torch.allclose(hn[-1][0], hd[-1][0])


def test_three_replicas_ga():
    hist, _, _ = simulate("ga", 2, 6, replicas=3)
    assert all(torch.equal(h[0], h[1]) and torch.equal(h[1], h[2]) for h in hist)


# ===================================================================================== networks

def test_adda_networks():
    net = models.build("adda-lenet", (1, 16, 16), 10)
    assert net.feature_dim == 500
    assert net.extractor(torch.zeros(3, 1, 16, 16)).shape == (3, 500)
    assert net(torch.zeros(3, 1, 16, 16)).shape == (3, 10)
    net28 = models.build("adda-lenet", (1, 28, 28), 10)  # ADDA's LeNet: 800 flat features
    assert net28.extractor[1].in_features == 800
    d = models.build("adda-discriminator", (500,), 1)
    assert d(torch.zeros(3, 500)).shape == (3, 1)
    assert models.count_parameters(d) == 500 * 500 + 500 + 500 * 500 + 500 + 500 + 1


def test_target_extractor_step_fools_the_discriminator():
    """ADDA's inverted label: one step of E_t lowers D's "target" logit on the batch."""
    args = dada.make_parser().parse_args(["--batch-size", "32", "--lr-target", "1e-3"])
    dom = dada.load_domain(args, 1, 1)
    torch.manual_seed(0)
    net = models.build("adda-lenet", (1, 16, 16), 10)
    disc = models.build("adda-discriminator", (500,), 1)
    node = dada.TargetNode(net, dom, disc, args, torch.device("cpu"))
    x = node.batches.x[:32]
    before = disc(net.extractor(x)).mean().item()
    d_before = [p.detach().clone() for p in disc.parameters()]
    logits = disc(net.extractor(x))
    node.extractor_step(logits)
    after = disc(net.extractor(x)).mean().item()
    assert after < before
    assert all(torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))  # D untouched
    assert all(p.grad is None or not p.grad.any() for p in disc.parameters())


# ===================================================================================== data, flags

def test_rotated_split_is_disjoint_and_rotated():
    """Source and targets hold disjoint images (a fixed split), each target rotated by its angle."""
    from mpidist import data
    args = dada.make_parser().parse_args(["--rotation", "60", "120"])
    doms = [dada.load_domain(args, i, 2) for i in range(3)]
    assert [d.rotation for d in doms] == [0.0, 60.0, 120.0]
    half = np.array_split(np.random.default_rng(dada._SPLIT_SEED).permutation(1438), 2)
    parts = [half[0], *np.array_split(half[1], 2)]
    assert sum(len(q) for q in parts) == 1438 and len(set(np.concatenate(parts))) == 1438
    full = data.digits(True, 16)
    for d, part in zip(doms, parts):
        assert torch.allclose(d.train.x, data.rotate(full.x[part], d.rotation), atol=1e-6)
        assert torch.equal(d.train.y, full.y[part])
    assert torch.allclose(doms[2].test.x, data.rotate(data.digits(False, 16).x, 120), atol=1e-6)


def test_check_messages():
    p = dada.make_parser()

    def msg(argv, world):
        return dada.check(p.parse_args(argv), world)
    assert "needs --data-root" in msg(["--task", "mnist-usps"], 2)
    assert "mnist and usps" in msg(["--task", "mnist-usps"], 2)
    assert "office31-amazon and office31-webcam" in msg(["--task", "office-a-w"], 2)
    assert "2 or more ranks" in msg([], 1)
    assert "ONE process" in msg(["--centralized"], 2)
    assert msg(["--centralized"], 1) is None
    assert "do not apply" in msg(["--centralized", "--strategy", "ga"], 1)
    assert "does not checkpoint" in msg(["--centralized", "--checkpoint-every", "5"], 1)
    assert "p = 1" in msg(["--strategy", "dpsgd", "--sync-period", "2"], 2)
    assert "2 angles for 3 target" in msg(["--rotation", "60", "120"], 4)
    assert msg(["--rotation", "60", "120"], 3) is None
    assert "rotated tasks" in msg(["--task", "mnist-usps", "--data-root", "/x",
                                   "--rotation", "9"], 2)
    assert msg([], 2) is None


def test_extractor_weights(tmp_path):
    src = models.build("adda-lenet", (1, 16, 16), 10)
    path = tmp_path / "e.pt"
    torch.save(src.extractor.state_dict(), path)
    dst = models.build("adda-lenet", (1, 16, 16), 10)
    dada.load_extractor_weights(dst.extractor, str(path), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(src.extractor.parameters(),
                                                 dst.extractor.parameters()))
    p = dada.make_parser()
    assert "no such file" in dada.check(p.parse_args(["--extractor-weights", "/nope.pt"]), 2)
    wrong = models.build("adda-lenet", (1, 28, 28), 10)  # 800 flat features, not 200
    with pytest.raises((ValueError, RuntimeError)):
        dada.load_extractor_weights(wrong.extractor, str(path), "cpu")


def test_missing_data_root_files_is_one_line_error(tmp_path):
    args = dada.make_parser().parse_args(["--task", "usps-mnist", "--data-root", str(tmp_path)])
    with pytest.raises(dada.UsageError) as e:
        dada.load_domain(args, 0, 1)
    assert "usps" in str(e.value) and "\n" not in str(e.value)
