"""MD-GAN with a user's own networks and data (``--generator`` / ``--discriminator`` /
``--data MODULE:FUNCTION``, tests/programs/mdgan_blobs.py and blobs.py) and the Python API
(:class:`mpidist.mdgan.MDGAN`): unit checks in this process, then three launches:
tests/programs/mdgan_user_checks.py under -n 4 (the command line on the blobs, the same run
through the API, the API checkpointed and resumed, FL-GAN and a plain GAN on the user's networks,
the bad inputs), the example script under -n 4, and one bad input through
``python -m mpidist.mdgan`` itself (-n 2).

This file holds the checks that need no multi-rank launch; tests/mpi/test_mdgan_user.py holds the launches."""
from __future__ import annotations
from types import SimpleNamespace
import pytest
import torch

from mpidist import data, mdgan
from mpidist.comm import Communicator
from mpidist.errors import UsageError




# ===================================================================================== in-process

def test_flags_take_a_users_networks_and_data():
    a = mdgan.build_parser().parse_args(
        ["--generator", "mdgan_blobs:generator", "--discriminator", "mdgan_blobs:discriminator",
         "--data", "blobs:blobs", "--latent-size", "8"])
    assert (a.generator, a.discriminator, a.data, a.latent) == (
        "mdgan_blobs:generator", "mdgan_blobs:discriminator", "blobs:blobs", 8)
    assert mdgan.build_parser().parse_args(["--latent", "5"]).latent == 5      # the older name
    d = mdgan.build_parser().parse_args([])
    assert (d.model, d.generator, d.discriminator, d.latent) == ("small", None, None, None)
    with pytest.raises(UsageError, match="argument --arch: MD-GAN trains two networks"):
        mdgan.build_parser().parse_args(["--arch", "blobs:mlp"])
    with pytest.raises(UsageError, match="invalid choice: 'big'"):
        mdgan.build_parser().parse_args(["--model", "big"])
    with pytest.raises(UsageError, match="expected MODULE:FUNCTION"):
        mdgan.build_parser().parse_args(["--generator", "mdgan_blobs"])


def test_network_keywords_reach_the_users_builders():
    """--generator-arg / --discriminator-arg KEY=VALUE: keywords of the user's FUNCTION."""
    a = mdgan.build_parser().parse_args(
        ["--generator", "mdgan_blobs:generator", "--discriminator", "mdgan_blobs:discriminator",
         "--discriminator-arg", "hidden=8"])
    assert a.discriminator_arg == [("hidden", 8)] and a.generator_arg == []
    D = mdgan.build_discriminator(a.discriminator, (4,), 3, **dict(a.discriminator_arg))
    # Linear(4, 8), Linear(8, 8), Linear(8, 1 + 3): weights and biases
    assert sum(p.numel() for p in D.parameters()) == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 4 + 4)
    with pytest.raises(UsageError) as e:
        mdgan.build_generator("mdgan_blobs:generator", 8, (4,), 3, depth=2)
    assert str(e.value).startswith("--generator mdgan_blobs:generator --generator-arg depth=2: "
                                   "cannot build it (")
    bare = mdgan.build_parser().parse_args(["--generator-arg", "hidden=8"])
    assert mdgan.check_world(bare, 3) == ("--generator-arg is for your own --generator "
                                          "MODULE:FUNCTION (none was given)")


def _user_pair(nc=3, latent=8, seed=0):
    import mdgan_blobs
    torch.manual_seed(seed)
    return mdgan_blobs.generator(latent, (4,), nc), mdgan_blobs.discriminator((4,), nc)


def test_check_networks_passes_and_changes_nothing():
    G, D = _user_pair()
    before = [p.clone() for p in list(G.parameters()) + list(D.parameters())]
    rng = torch.get_rng_state()
    mdgan.check_networks(G, D, (4,), 3, 8)
    assert torch.equal(rng, torch.get_rng_state()) and G.training and D.training
    assert all(torch.equal(a, b) for a, b in
               zip(before, list(G.parameters()) + list(D.parameters())))
    G0, D0 = _user_pair(nc=0)                    # a plain GAN: G(z), D(x) -> [n, 1]
    mdgan.check_networks(G0, D0, (4,), 0, 8)
    mdgan.check_networks(None, D, (4,), 3, 8)   # a worker holds D only


def test_check_networks_names_the_mistake():
    import mdgan_blobs
    G, D = _user_pair()
    with pytest.raises(UsageError, match=r"G\(z, labels\) on noise of shape \(2, 8\) returned "
                                         r"\(2, 7\), expected \(2, 4\)"):
        mdgan.check_networks(mdgan_blobs.wrong_samples(8, (4,), 3), D, (4,), 3, 8)
    with pytest.raises(UsageError, match=r"D\(x\) on samples of shape \(2, 4\) returned \(2, 1\), "
                                         r"expected \(2, 4\) \(column 0 the real/fake logit"):
        mdgan.check_networks(G, mdgan_blobs.no_class_column((4,), 3), (4,), 3, 8)
    with pytest.raises(UsageError, match=r"generator: G\(z, labels\) on noise of shape \(2, 5\) "
                                         r"failed \(RuntimeError"):
        mdgan.check_networks(G, D, (4,), 3, 5)   # the builder's latent_dim was 8
    with pytest.raises(UsageError, match="returned str, expected a torch.nn.Module"):
        mdgan.build_generator("mdgan_blobs:not_a_module", 8, (4,), 3)
    with pytest.raises(UsageError, match="--discriminator mdgan_blobs:nope: module 'mdgan_blobs' "
                                         "has no function 'nope'"):
        mdgan.build_discriminator("mdgan_blobs:nope", (4,), 3)


@pytest.mark.parametrize("k,nc,saturating", [(1, 3, False), (2, 3, False), (3, 0, True)])
def test_assembled_feedback_equals_autograd_on_user_networks(k, nc, saturating):
    """Section IV-B2 on the user's MLPs: Delta w assembled from the workers' F_n equals autograd
    on (1/N) sum_n B~(X_n^(g)) in one process."""
    Nw, b = 3, 5
    G, _ = _user_pair(nc)
    Ds = {n: _user_pair(nc, seed=100 + n)[1] for n in range(1, Nw + 1)}
    torch.manual_seed(5)
    z = torch.randn(k * b, 8)
    labels = torch.cat([mdgan.fake_labels(0, 1, j, b, nc) for j in range(k)]) if nc else None
    ref = mdgan.reference_generator_grad(G, Ds, z, labels, k, b, saturating)
    X = mdgan.generate(G, z, labels)
    fbs = {}
    for n, D in Ds.items():
        g, _ = mdgan.distribute(n, k)
        yg = labels[g * b:(g + 1) * b] if nc else None
        fbs[n], _ = mdgan.error_feedback(D, X.detach()[g * b:(g + 1) * b].clone(), yg, saturating)
    grad_x = mdgan.assemble_grad(torch.zeros_like(X), fbs, k, b)
    got = torch.cat([g.reshape(-1) for g in torch.autograd.grad(X, list(G.parameters()), grad_x)])
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7) and ref.abs().sum() > 0


def test_as_dataset_forms():
    import blobs
    train, _ = blobs.blobs(None)
    a = mdgan.as_dataset(train)
    b = mdgan.as_dataset((a.x, a.y))
    assert a.x.shape == (600, 4) and a.num_classes == 3 and torch.equal(a.x, b.x)
    assert mdgan.as_dataset(a) is a
    r, _ = blobs.regression(None)
    assert mdgan.as_dataset(r).num_classes == 0 and mdgan.as_dataset(r).y.is_floating_point()
    with pytest.raises(UsageError, match="torch Dataset of \\(input, label\\) pairs"):
        mdgan.as_dataset(42)


def test_api_refuses_a_world_of_one():
    G, D = _user_pair()
    run = SimpleNamespace(comm=Communicator(), rank=0, device="cpu",
                          args=SimpleNamespace(seed=0, comm_timeout=10.0))
    with pytest.raises(UsageError, match="needs the server \\(rank 0\\) and at least one worker"):
        mdgan.MDGAN(run, G, D, (torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)),
                    latent_size=8)


def test_vector_scorer_ranks_real_above_noise():
    """The MLP scoring classifier of a user's vectors: real blobs score higher than samples of one
    blob only (a collapsed G: score near 1) and have a lower FID against the test blobs than both
    that and wide noise; its training leaves the global RNG alone."""
    from mpidist import metrics
    tr, te = data.load("blobs:blobs"), data.load("blobs:blobs", train=False)
    rng = torch.get_rng_state()
    model, acc = mdgan.train_vector_scorer(tr.x, tr.y, 3, te.x, te.y)
    assert torch.equal(rng, torch.get_rng_state())
    assert acc > 0.9
    s = metrics.GanScorer(metrics.classifier_net(model), te.x)
    g = torch.Generator().manual_seed(3)
    one = tr.x[tr.y == 0][:150]
    real, collapsed = s.score(tr.x[:300]), s.score(one)
    noise = s.score(torch.randn(300, 4, generator=g) * 3)
    assert real["score"] > 2.5 and collapsed["score"] < 1.3
    assert real["fid"] < collapsed["fid"] and real["fid"] < noise["fid"]
