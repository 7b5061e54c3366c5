"""A user's own DADA module, outside the mpidist package (tests put this folder on PYTHONPATH).

The source domain is the shared Gaussian blobs (``blobs:blobs``: 4 features, 3 classes, 600/300
samples); a target domain is the same blobs rotated in the plane of the first two features and
shifted. Small MLPs for the extractor E, the classifier C and the discriminator D, in the forms
``python -m mpidist.dada`` asks for::

    --source-data dada_blobs:source --target-data dada_blobs:target \\
    --extractor dada_blobs:extractor --classifier dada_blobs:classifier \\
    --discriminator dada_blobs:discriminator

plus ``dada_blobs:targets`` (FUNCTION(root, index): target rank i rotated by i x 30 degrees) and a
few deliberate mistakes for the bad-input tests.
"""
import math

import torch
from torch.utils.data import TensorDataset

from blobs import blobs

ANGLE = 60.0                                    # degrees, in the plane of features 0 and 1
SHIFT = torch.tensor([0.8, -0.4, 0.6, 0.0])


def _move(ds, degrees: float, shift: torch.Tensor):
    x, y = ds.tensors
    th = math.radians(degrees)
    r = torch.eye(4)
    r[0, 0], r[0, 1], r[1, 0], r[1, 1] = math.cos(th), -math.sin(th), math.sin(th), math.cos(th)
    return TensorDataset(x @ r.T + shift, y)


def source(root):
    """The labelled source domain: FUNCTION(root) -> (train, test)."""
    return blobs(root)


def target(root):
    """The target domain: the source's blobs rotated by ANGLE degrees and shifted."""
    train, test = blobs(root)
    return _move(train, ANGLE, SHIFT), _move(test, ANGLE, SHIFT)


def targets(root, index):
    """One target domain per target rank: FUNCTION(root, index), rotated by index x 30 degrees."""
    train, test = blobs(root)
    return _move(train, 30.0 * index, SHIFT), _move(test, 30.0 * index, SHIFT)


def extractor(in_shape, width=32, features=16):
    """E: FUNCTION(in_shape) -> nn.Module giving features [batch, F]."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(in_shape), width),
                               torch.nn.ReLU(), torch.nn.Linear(width, features), torch.nn.ReLU())


def classifier(feature_dim, num_classes):
    """C: FUNCTION(feature_dim, num_classes) -> nn.Module giving class logits."""
    return torch.nn.Linear(feature_dim, num_classes)


def discriminator(feature_dim, hidden=32):
    """D: FUNCTION(feature_dim) -> nn.Module giving one domain logit per sample [batch, 1]."""
    return torch.nn.Sequential(torch.nn.Linear(feature_dim, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 1))


# ------------------------------------------------------------------ deliberate mistakes
def not_a_module(*args):
    return "a string"


def image_features(in_shape):
    """Features that are not [batch, F]."""
    return torch.nn.Sequential(torch.nn.Linear(in_shape[0], 8), torch.nn.Unflatten(1, (2, 4)))


def wrong_classes(feature_dim, num_classes):
    return torch.nn.Linear(feature_dim, num_classes + 4)


def two_logits(feature_dim):
    return torch.nn.Linear(feature_dim, 2)


def two_features(root):
    """Inputs of another shape than the source's."""
    g = torch.Generator().manual_seed(5)
    return (TensorDataset(torch.randn(90, 2, generator=g), torch.arange(90) % 3),
            TensorDataset(torch.randn(30, 2, generator=g), torch.arange(30) % 3))


def not_a_pair(root):
    return 42
