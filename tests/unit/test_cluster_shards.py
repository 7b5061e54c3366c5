"""PC-ASGD's --shards clusters:F (mpidist.data.cluster_shard_indices): disjoint shards that cover the
data set, with each cluster's share of its own classes equal to F (closed form, and its binomial
spread)."""
import numpy as np
import pytest
import torch

from mpidist import data
from mpidist.errors import UsageError
from mpidist.pcasgd.cli import build_parser, shards_spec

CLUSTERS = (3, 5)


def _all(y, own, clusters=CLUSTERS, seed=4):
    return [data.cluster_shard_indices(y, r, clusters, seed, own) for r in range(sum(clusters))]


def test_shards_are_disjoint_cover_everything_and_equal_within_a_cluster():
    y = torch.arange(4000) % 10
    parts = _all(y, 0.8)
    joined = np.concatenate(parts)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)
    for lo, hi in ((0, 3), (3, 8)):
        sizes = [len(p) for p in parts[lo:hi]]
        assert max(sizes) - min(sizes) <= 1, sizes


@pytest.mark.parametrize("own", [1.0, 0.8, 0.5])
def test_each_cluster_keeps_the_share_F_of_its_own_classes(own):
    """Class k belongs to cluster k mod 2; cluster c holds, of all the samples of its classes,
    the share F (exactly for F = 1; within 4 binomial standard deviations otherwise)."""
    y = torch.arange(10000) % 10
    parts = _all(y, own)
    for c, (lo, hi) in enumerate(((0, 3), (3, 8))):
        mine = np.concatenate(parts[lo:hi])
        labels = y.numpy()[mine]
        own_classes = (np.arange(len(y)) % 10) % 2 == c
        share = np.isin(labels, np.flatnonzero(np.arange(10) % 2 == c)).sum() / own_classes.sum()
        sd = np.sqrt(own * (1 - own) / own_classes.sum())
        assert abs(share - own) <= 4 * sd + 1e-12, (c, share, own)
    if own == 1.0:
        assert set(y.numpy()[parts[0]] % 2) == {0} and set(y.numpy()[parts[7]] % 2) == {1}


def test_same_seed_same_shards_and_regression_targets_are_refused():
    y = torch.arange(500) % 10
    assert all((a == b).all() for a, b in zip(_all(y, 0.7), _all(y, 0.7)))
    assert not all(np.array_equal(a, b) for a, b in zip(_all(y, 0.7), _all(y, 0.7, seed=5)))
    with pytest.raises(data.DataError, match="class labels"):
        data.cluster_shard_indices(torch.rand(100), 0, CLUSTERS, 0, 0.8)


def test_the_flag_parses_and_refuses_in_one_line():
    assert shards_spec("iid") is None and shards_spec("clusters:0.75") == 0.75
    p = build_parser()
    assert p.parse_args(["--shards", "clusters:1"]).shards == 1.0
    for bad in ("clusters:1.5", "clusters", "byclass:0.5"):
        with pytest.raises(UsageError, match="--shards"):
            p.parse_args(["--shards", bad])
