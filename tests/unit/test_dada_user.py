"""DADA with a user's own domains and networks (``--source-data``, ``--target-data``,
``--extractor``, ``--classifier``, ``--discriminator`` as MODULE:FUNCTION) and the Python API
(:class:`mpidist.dada.DiscriminatorSync`): unit checks in this process, then three launches
(tests/programs/dada_user_checks.py under -n 2: the command line, the same run through the
API, a checkpoint and resume of the API run, the bad inputs; the example script under -n 2; one
bad input through ``python -m mpidist.dada`` itself).

This file holds the checks that need no multi-rank launch; tests/mpi/test_dada_user.py holds the launches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from mpidist import dada
from mpidist.comm import Communicator


USER = ["--source-data", "dada_blobs:source", "--target-data", "dada_blobs:target",
        "--extractor", "dada_blobs:extractor", "--classifier", "dada_blobs:classifier",
        "--discriminator", "dada_blobs:discriminator"]



def _args(argv):
    return dada.make_parser().parse_args(argv)


# ===================================================================================== in-process

def test_user_domains_whole_source_split_or_indexed_targets():
    import blobs
    import dada_blobs
    args = _args(USER)
    src = dada.load_domain(args, 0, 2)
    ref = blobs.blobs(None)[0]
    assert src.train.x.shape == (600, 4) and src.label == "dada_blobs:source"
    assert torch.equal(src.train.x[7], ref[7][0]) and src.train.num_classes == 3
    # FUNCTION(root): one target domain, its training set split disjointly over the k targets
    parts = [dada.load_domain(args, i, 2) for i in (1, 2)]
    assert [len(p.train) for p in parts] == [300, 300]
    rows = {tuple(r.tolist()) for p in parts for r in p.train.x}
    assert len(rows) == 600 and all(len(p.test) == 300 for p in parts)
    moved = dada_blobs.target(None)[0].tensors[0]
    assert rows == {tuple(r.tolist()) for r in moved}
    # FUNCTION(root, index): target rank i gets its own whole domain
    args = _args(USER[:2] + ["--target-data", "dada_blobs:targets"] + USER[4:])
    t1, t2 = (dada.load_domain(args, i, 2) for i in (1, 2))
    assert len(t1.train) == len(t2.train) == 600 and t1.label == "dada_blobs:targets(1)"
    assert torch.equal(t2.train.x, dada_blobs.targets(None, 2)[0].tensors[0])
    assert not torch.equal(t1.train.x, t2.train.x)


def test_user_networks_seeded_and_counted():
    args = _args(USER)
    net = dada.build_network(args, 3, "cpu", seed=5, in_shape=(4,))
    again = dada.build_network(args, 3, "cpu", seed=5, in_shape=(4,))
    assert net.feature_dim == 16
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))
    assert sum(p.numel() for p in net.extractor.parameters()) == 4 * 32 + 32 + 32 * 16 + 16
    disc = dada.build_discriminator(args, 16, "cpu")
    assert disc(torch.zeros(5, 16)).shape == (5, 1)
    state = torch.get_rng_state()
    dada.check_networks(args, dada.load_domain(args, 0, 1), "cpu")
    assert torch.equal(state, torch.get_rng_state())          # the check draws nothing
    # only the classifier is the user's: the task's LeNet extractor with it
    lenet = dada.build_network(_args(["--classifier", "dada_blobs:classifier"]), 10, "cpu")
    assert isinstance(lenet.classifier, nn.Linear) and lenet.classifier.in_features == 500


@pytest.mark.parametrize("argv, message", [
    (["--extractor", "dada_blobs:image_features"], "expected features [batch, F]"),
    (["--classifier", "dada_blobs:wrong_classes"], "output (2, 7), labels (2,) of 3 classes"),
    (["--discriminator", "dada_blobs:two_logits"], "one domain logit per sample [batch, 1]"),
    (["--discriminator", "dada_blobs:not_a_module"], "returned str, expected a torch.nn.Module"),
    (["--extractor", "nosuchmod:f"], "--extractor nosuchmod:f: cannot import module 'nosuchmod'"),
    (["--classifier", "dada_blobs:nope"], "module 'dada_blobs' has no function 'nope'"),
])
def test_network_mistakes_are_one_line(argv, message):
    base = dict(zip(USER[::2], USER[1::2]))
    base.update(dict(zip(argv[::2], argv[1::2])))
    args = _args([x for kv in base.items() for x in kv])
    with pytest.raises(dada.UsageError) as e:
        dada.check_networks(args, dada.load_domain(args, 0, 1), "cpu")
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_data_mistakes_are_one_line():
    bad = _args(["--source-data", "dada_blobs:not_a_pair"] + USER[2:])
    with pytest.raises(dada.UsageError, match=r"^--source-data dada_blobs:not_a_pair: returned "
                                              r"int, expected \(train, test\)"):
        dada.load_domain(bad, 0, 1)


def test_flag_checks():
    def msg(argv, world=2):
        return dada.check(_args(argv), world)
    assert msg(USER) is None
    assert "needs --target-data" in msg(USER[:2])
    assert "needs --source-data" in msg(USER[2:4])
    assert "give --source-data and --target-data" in msg(["--data", "blobs:blobs"])
    assert "choose one" in msg(USER + ["--task", "mnist-usps"])
    assert "--rotation applies to the built-in rotated tasks" in msg(USER + ["--rotation", "9"])
    assert msg(USER + ["--centralized"], 1) is None
    with pytest.raises(dada.UsageError, match="expected MODULE:FUNCTION, got 'blobs'"):
        _args(["--source-data", "blobs"])


def _one_rank_sync(strategy, period, set_to_none=False):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    ref = copy.deepcopy(D)
    opt = torch.optim.Adam(D.parameters(), 0.1, betas=(0.5, 0.999))
    sync = dada.DiscriminatorSync(Communicator(), D, opt, strategy=strategy, period=period)
    return D, ref, opt, sync


def _loss(D, n):
    g = torch.Generator().manual_seed(n)
    return D(torch.randn(8, 3, generator=g)).square().mean()


@pytest.mark.parametrize("set_to_none", [False, True])
def test_sync_ga_on_one_rank_is_accumulate_then_step(set_to_none):
    """World of one: GA with p = 3 applies the gradient summed over each window of 3 steps (the
    average over one rank), and nothing in between; a user's zero_grad(set_to_none=True) after
    each step does not break the accumulation."""
    D, ref, opt, sync = _one_rank_sync("ga", 3)
    ref_opt = torch.optim.Adam(ref.parameters(), 0.1, betas=(0.5, 0.999))
    for n in range(1, 10):
        _loss(D, n).backward()
        sync.step()
        if set_to_none:
            opt.zero_grad(set_to_none=True)
        _loss(ref, n).backward()                   # the reference accumulates in .grad
        if n % 3 == 0:
            ref_opt.step()
            ref_opt.zero_grad()
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in
                   zip(D.parameters(), ref.parameters())), f"step {n}"
    assert sync.steps == 9 and sync.exchange.syncs == 3


def test_sync_state_dict_resumes_bitwise():
    """state_dict in the middle of an accumulation window, loaded into a fresh sync: the same bits
    as the uninterrupted run (MA also keeps D_sync)."""
    for strategy in ("ga", "ma"):
        D, _, _, sync = _one_rank_sync(strategy, 3)
        for n in range(1, 5):
            _loss(D, n).backward()
            sync.step()
        saved = copy.deepcopy(sync.state_dict())
        for n in range(5, 9):
            _loss(D, n).backward()
            sync.step()
        D2, _, _, sync2 = _one_rank_sync(strategy, 3)
        sync2.load_state_dict(saved)
        assert sync2.steps == 4
        for n in range(5, 9):
            _loss(D2, n).backward()
            sync2.step()
        assert torch.equal(sync.fp.params, sync2.fp.params), strategy
    with pytest.raises(ValueError, match="strategy ma with p = 3, not ga"):
        _one_rank_sync("ga", 3)[3].load_state_dict(saved)
