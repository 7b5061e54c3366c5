"""MD-GAN (mpidist.mdgan): the pure rules of Algorithm 1 / Section IV, the exactness of the error
feedback, the GAN scores, and multi-rank runs checked against Table III through the trace.

Multi-rank launches (each costs seconds of start-up on 2 cores): one ``tests/programs/mdgan_checks.py``
under ``mpiexec -n 4`` (feedback exactness through MPI, an MD-GAN run with crashes and an FL-GAN
run checked against Table III, checkpoint/stop/resume of both, bit for bit), one real SIGKILL of a
worker under ``-n 3``, and two one-rank launches (standalone mode with its stop/resume, a usage
error).

This file holds the checks that need no multi-rank launch; tests/mpi/test_mdgan.py holds the launches."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from mpidist import checkpoint, mdgan, metrics
from mpidist.models import count_parameters
from mpidist.models import gan as gan_models


# ------------------------------------------------------------------------ batch distribution

@pytest.mark.parametrize("N", [1, 2, 3, 5, 10])
def test_k_log2_is_floor_log2_n(N):
    assert mdgan.batches_per_iteration("log2", N) == max(1, int(math.floor(math.log2(N))))
    assert mdgan.batches_per_iteration(1, N) == 1


def test_k_larger_than_n_is_refused():
    with pytest.raises(Exception, match="k <= N"):
        mdgan.batches_per_iteration(4, 3)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_distribute_follows_section_iv_b1(k):
    for n in range(1, 11):
        g, d = mdgan.distribute(n, k)
        # the paper's 1-based X^((n mod k)+1) and X^(((n+1) mod k)+1)
        assert g + 1 == (n % k) + 1 and d + 1 == ((n + 1) % k) + 1
        assert 0 <= g < k and 0 <= d < k
        if k >= 2:
            assert g != d  # "two distinct batches"
    if k >= 2:  # with N >= k every batch is used for feedback by some worker
        assert {mdgan.distribute(n, k)[0] for n in range(1, k + 1)} == set(range(k))


def test_swap_schedule_algorithm1_line11():
    m, b, E = 100, 10, 2
    due = [i for i in range(1, 61) if mdgan.swap_due(i, E, m, b)]
    assert due == [20, 40, 60]
    assert mdgan.iterations_per_epoch(5, 10) == 1


# ------------------------------------------------------------------------ swap permutation

@pytest.mark.parametrize("live", [[1, 2], [1, 2, 3], [2, 5, 7, 9], list(range(1, 11))])
def test_swap_is_a_derangement_of_the_live_workers(live):
    for s in range(50):
        perm = mdgan.swap_permutation(live, seed=3, swap_index=s)
        assert sorted(perm) == sorted(live)             # every live worker sends one
        assert sorted(perm.values()) == sorted(live)    # ... and receives exactly one
        assert all(src != dst for src, dst in perm.items())
        assert 0 not in perm.values()                   # never the server
        assert perm == mdgan.swap_permutation(list(reversed(live)), 3, s)  # same on every rank


def test_swap_skips_crashed_workers_and_needs_two():
    assert mdgan.swap_permutation([4], 0, 1) == {}
    assert mdgan.swap_permutation([], 0, 1) == {}
    live = mdgan.live_after([(10, 2), (20, 3)], 4, 15)
    assert live == [1, 3, 4]
    perm = mdgan.swap_permutation(live, 0, 7)
    assert 2 not in perm and 2 not in perm.values()


def test_swap_permutations_vary_and_are_uniformish():
    # over many swaps of 3 workers, both 3-cycles (the only derangements) appear about equally
    seen = {}
    for s in range(400):
        key = tuple(sorted(mdgan.swap_permutation([1, 2, 3], 0, s).items()))
        seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 2 and min(seen.values()) > 150


# ------------------------------------------------------------------------ crash schedule

def test_crash_schedule_one_worker_every_i_over_n():
    N, I = 10, 50_000
    sched = mdgan.crash_schedule(N, I, I // N, seed=0)
    assert [t for t, _ in sched] == [5000 * c for c in range(1, 11)]    # Figure 3
    assert sorted(w for _, w in sched) == list(range(1, 11))           # each worker once
    assert mdgan.live_after(sched, N, I) == []                         # all gone at I
    assert len(mdgan.live_after(sched, N, 24_999)) == 6


def test_crash_schedule_partial_and_off():
    sched = mdgan.crash_schedule(3, 40, 15, seed=1)
    assert [t for t, _ in sched] == [15, 30]
    assert len(mdgan.live_after(sched, 3, 40)) == 1
    assert mdgan.crash_schedule(3, 40, 0, 1) == []
    assert mdgan.crash_schedule(3, 40, 15, 1) == sched  # shared seed: the same on every rank


# ------------------------------------------------------------------------ Table III

def test_table3_mdgan_bytes():
    c = mdgan.table3_bytes("mdgan", num_workers=10, b=10, d=3072, theta=100_203, w=628_110)
    assert c["server_to_worker"] == 2 * 10 * 3072 * 4
    assert c["worker_to_server"] == 10 * 3072 * 4
    assert c["swap_per_worker"] == 100_203 * 4
    assert c["server_to_workers_total"] == 10 * c["server_to_worker"]
    # Table IV lists one batch, b x d x 32 bits = 0.938 Mb per worker (b = 10, CIFAR-10)
    assert c["worker_to_server"] * 8 / 2**20 == pytest.approx(0.938, abs=1e-3)


def test_table3_flgan_bytes_match_table_iv():
    c = mdgan.table3_bytes("flgan", num_workers=10, b=10, d=3072, theta=100_203, w=628_110)
    assert c["server_to_worker"] == c["worker_to_server"] == (100_203 + 628_110) * 4
    # Table IV: 22.2 Mb per worker, 222 Mb at the server, each way
    assert c["server_to_worker"] * 8 / 2**20 == pytest.approx(22.2, abs=0.05)
    assert c["server_to_workers_total"] * 8 / 2**20 == pytest.approx(222, abs=0.5)


# ------------------------------------------------------------------------ error feedback exactness

def _fixed_pair(arch, nc, N, seed=0):
    torch.manual_seed(seed)
    G, _ = gan_models.build_pair(arch, num_classes=nc)
    Ds = {}
    for n in range(1, N + 1):
        torch.manual_seed(seed + 100 + n)
        Ds[n] = gan_models.build_pair(arch, num_classes=nc)[1]
    return G, Ds


@pytest.mark.parametrize("k,nc,saturating", [(1, 10, False), (2, 10, False), (3, 0, False),
                                             (2, 0, True)])
def test_assembled_feedback_equals_autograd(k, nc, saturating):
    """Section IV-B2: Delta w assembled from the workers' F_n equals autograd on
    (1/N) sum_n B~(X_n^(g)) in one process, for fixed G and D_n."""
    N, b = 4, 6
    G, Ds = _fixed_pair("small", nc, N)
    torch.manual_seed(5)
    z = torch.randn(k * b, G.latent)
    labels = (torch.cat([mdgan.fake_labels(0, 1, j, b, nc) for j in range(k)]) if nc else None)
    ref = mdgan.reference_generator_grad(G, Ds, z, labels, k, b, saturating)
    # the distributed path: X = G(z) on the server, F_n on every worker, one backward
    X = G(z, labels)
    feedbacks = {}
    for n, D in Ds.items():
        g, _ = mdgan.distribute(n, k)
        yg = labels[g * b:(g + 1) * b] if nc else None
        fb, _ = mdgan.error_feedback(D, X.detach()[g * b:(g + 1) * b].clone(), yg, saturating)
        assert fb.shape == (b, 1, 16, 16)
        feedbacks[n] = fb
    grad_x = mdgan.assemble_grad(torch.zeros_like(X), feedbacks, k, b)
    params = [p for p in G.parameters() if p.requires_grad]
    got = torch.cat([g.reshape(-1) for g in torch.autograd.grad(X, params, grad_x)])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7), (got - ref).abs().max()
    assert ref.abs().sum() > 0


def test_feedback_is_the_input_gradient_of_b_tilde():
    """e_ni = dB~(X_n^(g))/dx_i, checked against a finite difference on one pixel."""
    _, Ds = _fixed_pair("small", 0, 1)
    D = Ds[1].double()
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64) * 2 - 1
    fb, val = mdgan.error_feedback(D, x, None)
    h = 1e-6
    xp = x.clone()
    xp[1, 0, 5, 7] += h
    with torch.no_grad():
        num = (mdgan.gen_loss(D, xp, None) - mdgan.gen_loss(D, x, None)) / h
    assert float(num) == pytest.approx(float(fb[1, 0, 5, 7]), rel=1e-4, abs=1e-9)
    with torch.no_grad():
        assert val == pytest.approx(float(mdgan.gen_loss(D, x, None)))


class _Logits(torch.nn.Module):
    """A "discriminator" whose output is its input: the logits of a test are written by hand."""

    def forward(self, x):
        return x


# two samples; column 0 the real/fake logit l, columns 1.. the class logits; D(x) = sigmoid(l)
_OUT = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), math.log(3.0), 0.0]], dtype=torch.float64)
_Y = torch.tensor([0, 0])


def test_gen_loss_closed_form_from_the_paper():
    """B~ on a tiny case by hand (Section II-2 and the ACGAN term): D(x_1) = sigmoid(0) = 1/2,
    D(x_2) = sigmoid(ln 3) = 3/4; class probabilities of class 0: 1/2 and 3/4.
    Non-saturating: -(1/2)(ln 1/2 + ln 3/4) = (1/2) ln(8/3); the class term is the same number.
    Saturating (the paper's (1/b) sum log(1 - D(x))): (1/2)(ln 1/2 + ln 1/4) = -(3/2) ln 2."""
    D = _Logits()
    half_ln_8_3 = 0.5 * math.log(8.0 / 3.0)
    assert float(mdgan.gen_loss(D, _OUT, None)) == pytest.approx(half_ln_8_3, rel=1e-12)
    assert float(mdgan.gen_loss(D, _OUT, _Y)) == pytest.approx(2 * half_ln_8_3, rel=1e-12)
    sat = -1.5 * math.log(2.0)
    assert float(mdgan.gen_loss(D, _OUT, None, saturating=True)) == pytest.approx(sat, rel=1e-12)
    assert float(mdgan.gen_loss(D, _OUT, _Y, saturating=True)) == pytest.approx(
        sat + half_ln_8_3, rel=1e-12)
    # labels 1: class probabilities 1/2 and 1/4 -> (1/2)(ln 2 + ln 4) = (3/2) ln 2
    y1 = torch.tensor([1, 1])
    assert float(mdgan.gen_loss(D, _OUT, y1)) == pytest.approx(
        half_ln_8_3 + 1.5 * math.log(2.0), rel=1e-12)


def test_disc_loss_closed_form_from_the_paper():
    """J_disc as a loss (Section II-1): -(1/b) sum [ln D(x_r) + ln(1 - D(x_g))] plus the class
    terms. Real batch = _OUT (D = 1/2, 3/4), generated batch = _OUT with the logits negated
    (D = 1/2, 1/4, so 1 - D = 1/2, 3/4): each half is (1/2) ln(8/3)."""
    D = _Logits()
    fake = _OUT.clone()
    fake[:, 0] = -fake[:, 0]
    h = 0.5 * math.log(8.0 / 3.0)
    assert float(mdgan.disc_loss(D, _OUT, None, fake, None)) == pytest.approx(2 * h, rel=1e-12)
    assert float(mdgan.disc_loss(D, _OUT, _Y, fake, _Y)) == pytest.approx(4 * h, rel=1e-12)


def test_error_feedback_closed_form_for_a_linear_discriminator():
    """F_n for D(x) = w . x + c (one logit, plain GAN): d/dx_i of -(1/b) sum_j ln sigmoid(w . x_j
    + c) is -(1/b) (1 - sigmoid(w . x_i + c)) w (non-saturating), and of (1/b) sum_j ln(1 -
    sigmoid(w . x_j + c)) is -(1/b) sigmoid(w . x_i + c) w (saturating)."""
    D = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        D.bias.fill_(0.25)
    x = torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.5, 2.0]], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s = torch.tensor([1 / (1 + math.exp(-(float(w @ xi) + 0.25))) for xi in x],
                     dtype=torch.float64)
    b = len(x)
    fb, val = mdgan.error_feedback(D, x, None)
    assert torch.allclose(fb, -((1 - s) / b)[:, None] * w, rtol=1e-12, atol=0)
    assert val == pytest.approx(float(-torch.log(s).mean()), rel=1e-12)
    fb, val = mdgan.error_feedback(D, x, None, saturating=True)
    assert torch.allclose(fb, -(s / b)[:, None] * w, rtol=1e-12, atol=0)
    assert val == pytest.approx(float(torch.log(1 - s).mean()), rel=1e-12)


def test_fake_labels_are_shared_and_differ_per_batch():
    a = mdgan.fake_labels(0, 7, 1, 32, 10)
    assert torch.equal(a, mdgan.fake_labels(0, 7, 1, 32, 10))
    assert not torch.equal(a, mdgan.fake_labels(0, 7, 0, 32, 10))
    assert a.dtype == torch.int64 and int(a.min()) >= 0 and int(a.max()) < 10


# ------------------------------------------------------------------------ architectures

def test_paper_mlp_parameter_counts():
    """Section V-A b: MLP G 716,560 and D 670,219 parameters (ACGAN: + the class embedding)."""
    g, d = gan_models.build_pair("mlp", num_classes=10)
    assert count_parameters(d) == 670_219
    assert count_parameters(g) - g.cond.embed.weight.numel() == 716_560
    g0, _ = gan_models.build_pair("mlp", num_classes=0)
    assert count_parameters(g0) == 716_560


@pytest.mark.parametrize("arch", list(gan_models.ARCHS))
def test_architectures_shapes(arch):
    g, d = gan_models.build_pair(arch, num_classes=10)
    shape = gan_models.ARCHS[arch][0]
    with torch.no_grad():
        x = g.sample(4)
    assert tuple(x.shape) == (4,) + shape and float(x.abs().max()) <= 1
    assert tuple(d(x).shape) == (4, 11)
    assert tuple(gan_models.build_pair(arch, num_classes=0)[1](x).shape) == (4, 1)


def test_minibatch_discrimination_matches_its_definition():
    m = gan_models.MinibatchDiscrimination(4, kernels=2, dims=3)
    f = torch.randn(5, 4)
    out = m(f)
    M = (f @ m.T).view(5, 2, 3)
    o = torch.zeros(5, 2)
    for i in range(5):
        for j in range(5):
            o[i] += torch.exp(-(M[i] - M[j]).abs().sum(1))
    assert torch.allclose(out, torch.cat([f, o], 1), atol=1e-6)


# ------------------------------------------------------------------------ scores

def test_classifier_score_closed_forms():
    K = 10
    onehot = np.eye(K)[np.arange(200) % K]           # confident and evenly spread: K
    assert metrics.classifier_score(onehot) == pytest.approx(K)
    assert metrics.classifier_score(np.eye(K)[np.zeros(50, int)]) == pytest.approx(1.0)
    assert metrics.classifier_score(np.full((30, K), 1.0 / K)) == pytest.approx(1.0)
    half = np.eye(K)[np.arange(100) % 2]             # two classes: 2
    assert metrics.classifier_score(half) == pytest.approx(2.0)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag([1.0, 2.0, 3.0, 4.0]), np.diag([4.0, 1.0, 0.5, 2.0])
    # diagonal covariances: ||mu1-mu2||^2 + sum (sqrt(a) - sqrt(b))^2
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2).sum()
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-10)
    a = rng.normal(size=(6, 6))
    s = a @ a.T
    assert metrics.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-8)
    # general covariances: against scipy's matrix square root
    from scipy import linalg
    b_ = rng.normal(size=(6, 6))
    t = b_ @ b_.T
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    cs = linalg.sqrtm(s @ t).real
    ref = ((m1 - m2) ** 2).sum() + np.trace(s + t - 2 * cs)
    assert metrics.frechet_distance(m1, s, m2, t) == pytest.approx(ref, rel=1e-7)


def test_fid_from_features_identical_and_shifted():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(400, 5))
    assert metrics.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    assert metrics.fid_from_features(f, f + 2.0) == pytest.approx(5 * 4.0, rel=1e-8)


def test_scorer_is_cached_with_a_checksum(tmp_path):
    from mpidist import data
    ds = data.load("digits")
    x, y = ds.x[:256], ds.y[:256]
    kw = dict(cache_dir=str(tmp_path), epochs=1)
    m1, info1 = metrics.load_or_train_scorer(x, y, 10, "digits", **kw)
    assert not info1["cached"] and os.path.exists(info1["path"])
    assert info1["sha256"] == metrics.file_sha256(info1["path"])
    m2, info2 = metrics.load_or_train_scorer(x, y, 10, "digits", **kw)
    assert info2["cached"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # a damaged file fails its checksum and is trained again (deterministically: same weights)
    with open(info1["path"], "r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    m3, info3 = metrics.load_or_train_scorer(x, y, 10, "digits", **kw)
    assert not info3["cached"] and info3["sha256"] == metrics.file_sha256(info3["path"])
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)
    # other data: another cache entry
    _, info4 = metrics.load_or_train_scorer(ds.x[256:512], ds.y[256:512], 10, "digits", **kw)
    assert info4["path"] != info1["path"] and not info4["cached"]


def test_gan_scorer_ranks_real_above_noise():
    from mpidist import data
    tr, te = data.load("digits"), data.load("digits", train=False)
    model, _ = metrics.train_scorer(tr.x, tr.y, 10, epochs=2)
    s = metrics.GanScorer(metrics.classifier_net(model), te.x)
    real, noise = s.score(tr.x[:300]), s.score(torch.rand(300, 1, 16, 16))
    assert real["score"] > noise["score"] and real["fid"] < noise["fid"]


# ------------------------------------------------------------------------ checkpoint settings

def _args(*argv):
    return mdgan.build_parser().parse_args(list(argv))


def _resolved(*argv, world):
    """The arguments as a run uses them: parsed, then checked and resolved by check_world."""
    a = _args(*argv)
    assert mdgan.check_world(a, world) is None
    return a


def _changes(saved: dict, now) -> str | None:
    """What the runtime refuses when ``now`` resumes a checkpoint saved with ``saved``."""
    return checkpoint.resume_mismatch(saved, vars(now), mdgan.RESUME_MAY_CHANGE)


def test_check_world_resolves_k_and_the_crash_period():
    c = _resolved("-k", "log2", "-I", "100", "--crash-every", world=5)
    assert c.k == 2 and c.crash_every == 25 and c.mode == "mdgan"  # floor(log2 4), I/N
    assert _resolved("-k", "2", world=5).crash_every is None
    assert _resolved("--mode", "flgan", "-k", "3", world=5).k == 1  # no k in FL-GAN
    assert _resolved("--mode", "standalone", world=1).k == 1


def test_resume_allows_only_iterations_scores_and_run_flags():
    base = vars(_resolved("-k", "2", "-I", "40", "--crash-every", "10", world=4))
    same = _resolved("-k", "2", "-I", "400", "--crash-every", "10", "--score-every", "7",
                     "--checkpoint-every", "5", "--seed", "0", world=4)
    assert _changes(base, same) is None
    msg = _changes(base, _resolved("-k", "1", "-I", "40", "--crash-every", "10", world=4))
    assert msg is not None and "-k 2 -> 1" in msg and "\n" not in msg
    msg = _changes(base, _resolved("--mode", "flgan", "-I", "40", world=4))
    assert "--mode 'mdgan' -> 'flgan'" in msg and "--crash-every 10 -> None" in msg
    # T = I / N without a value: another -I is another crash schedule, refused
    a = vars(_resolved("-I", "60", "--crash-every", world=4))
    b = _resolved("-I", "90", "--crash-every", world=4)
    assert "--crash-every 20 -> 30" in _changes(a, b)
    for flag, val in (("-b", "16"), ("--lr-g", "0.01"), ("--seed", "3"), ("--arch", "mlp"),
                      ("-E", "2"), ("--gan", "plain")):
        other = _resolved("-k", "2", "-I", "40", "--crash-every", "10", flag, val, world=4)
        assert _changes(base, other) is not None, flag


def test_resume_is_checked_against_the_checkpoint(tmp_path):
    """--resume is checked against the flags saved in the checkpoint (the runtime reads them
    before anything starts) and refused past -I (mdgan.past_end, before the first row); a missing
    checkpoint or one of another world size is left to the runtime's own message."""
    root = str(tmp_path / "checkpoints")
    saved = vars(_resolved("-k", "2", "-I", "40", world=4))
    for r in range(4):
        checkpoint.save_rank(root, 20, r, {"algorithm": {}, "step": 20, "t": 1.0, "args": saved,
                                           "rng": dict.fromkeys(checkpoint.RNG_KEYS)})
    checkpoint.complete(root, 20, "mdgan", 4)
    d, manifest = checkpoint.find(str(tmp_path), "mdgan", 4)
    on_disk, first = checkpoint.load_rank(d, 0)["args"], manifest["step"] + 1
    ok = _resolved("-k", "2", "-I", "60", "--resume", str(tmp_path), world=4)
    assert _changes(on_disk, ok) is None and mdgan.past_end(ok, first) is None
    msg = _changes(on_disk, _resolved("-k", "3", "-I", "60", "--resume", str(tmp_path), world=4))
    assert "-k 2 -> 3" in msg
    msg = mdgan.past_end(_resolved("-k", "2", "-I", "10", "--resume", str(tmp_path), world=4),
                         first)
    assert msg.startswith("--resume ") and "checkpoint is of iteration 20, past -I 10" in msg
    # another world size, or nothing there: the runtime says so itself
    assert mdgan.check_world(_args("-k", "2", "--resume", str(tmp_path)), 3) is None
    assert mdgan.check_world(_args("--resume", str(tmp_path / "none")), 4) is None


def test_params_sha256_sees_every_bit():
    G, D = gan_models.build_pair("small", num_classes=10)
    h = mdgan.params_sha256(G, D)
    assert h == mdgan.params_sha256(G, D) and h != mdgan.params_sha256(D, G)
    with torch.no_grad():
        p = next(D.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(float("inf")))
    assert mdgan.params_sha256(G, D) != h


def test_inception_scorer_from_a_local_file(tmp_path):
    """--inception-weights: Inception-v3 read from a local state dict (here random weights, since
    nothing is downloaded): softmax over 1000 classes and 2048 pool features; a wrong file is a
    usage error naming it."""
    import torchvision
    from mpidist.errors import UsageError
    m = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pt"
    torch.save(m.state_dict(), path)
    net = metrics.inception_net(str(path))
    probs, feats = net(torch.rand(2, 1, 16, 16))
    assert tuple(probs.shape) == (2, 1000) and tuple(feats.shape) == (2, 2048)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(UsageError, match="not an Inception-v3 state dict"):
        metrics.inception_net(str(bad))
    with pytest.raises(UsageError, match="no such file"):
        metrics.inception_net(str(tmp_path / "missing.pt"))
