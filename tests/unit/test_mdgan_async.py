"""MD-GAN's asynchronous server (mpidist.mdgan.asynchronous): the parts that need no launch (the
stale gradient of an update, the learning-rate rules, the batches of a ticket, the flags).
tests/mpi/test_mdgan_async.py launches the runs."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch

from mpidist.comm import FlatParams
from mpidist.mdgan import asynchronous as am
from mpidist.mdgan import cli
from mpidist.models import gan as gan_models


@pytest.mark.parametrize("arch,shape,classes", [("small", (1, 16, 16), 10),
                                                ("mlp", (1, 28, 28), 0)])
def test_stale_gradient_is_the_gradient_at_the_version_that_made_the_batch(arch, shape, classes):
    """The server's update from a late F_n: dB~(X)/dw at the w that generated X (kept by the
    ticket), although G's parameters moved meanwhile; against autograd on a copy of G at that w."""
    torch.manual_seed(0)
    G, _ = gan_models.build_pair(arch, shape, classes)
    fp = FlatParams(G)
    snap = am.Snapshot(G, fp)
    latent = gan_models.ARCHS[arch][1]
    z = torch.randn(8, latent)
    labels = torch.randint(classes, (8,)) if classes else None
    G0 = copy.deepcopy(G)                       # G at version v
    X, w = snap.generate(fp.params, z, labels)
    with torch.no_grad():
        fp.params.add_(0.05 * torch.randn_like(fp.params))   # later updates move w in place
    F = torch.randn_like(X)                     # the error feedback of X
    (got,) = torch.autograd.grad(X, w, grad_outputs=F)
    X0 = G0(z, labels) if classes else G0(z)
    assert torch.allclose(X, X0, atol=1e-6)     # the samples are those of version v
    (X0 * F).sum().backward()
    ref = torch.cat([p.grad.reshape(-1) for p in G0.parameters() if p.requires_grad])
    assert float(ref.abs().sum()) > 0
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    # and not the gradient at the moved w (the test could not pass with a fresh forward)
    G1 = copy.deepcopy(G)
    X1 = G1(z, labels) if classes else G1(z)
    (X1 * F).sum().backward()
    now = torch.cat([p.grad.reshape(-1) for p in G1.parameters() if p.requires_grad])
    assert not torch.allclose(got, now, rtol=1e-3, atol=1e-5)


def test_lr_rules():
    """Staleness-aware: lr / max(1, tau); workers: lr / N; constant: lr."""
    assert [am.lr_scale("staleness", t, 4) for t in (0, 1, 2, 3, 8)] == [1, 1, 0.5, 1 / 3, 0.125]
    assert am.lr_scale("workers", 7, 4) == 0.25
    assert am.lr_scale("constant", 7, 4) == 1.0


def test_ticket_batches():
    """k = 1: one batch serves as X^(g) and X^(d); k >= 2: two distinct batches."""
    assert am.ticket_batches(1) == (1, 0, 0)
    assert am.ticket_batches(2) == (2, 0, 1) == am.ticket_batches(5)


def test_slow_worker_flag():
    assert cli.slow_worker("2:0.5") == (2, 0.5)
    assert cli.slow_worker("1:0") == (1, 0.0)
    for bad in ("0:1", "1:-1", "x:1", "1", "1:inf", "1:nan", ":1"):
        with pytest.raises(argparse.ArgumentTypeError, match="RANK:SECONDS"):
            cli.slow_worker(bad)


def test_async_flags_parse():
    a = cli.build_parser().parse_args(["--mode", "mdgan-async", "--async-lr", "workers",
                                       "--slow-worker", "3:1.5"])
    assert (a.mode, a.async_lr, a.slow_worker) == ("mdgan-async", "workers", (3, 1.5))
    a = cli.build_parser().parse_args([])
    assert (a.mode, a.async_lr, a.slow_worker) == ("mdgan", None, None)
