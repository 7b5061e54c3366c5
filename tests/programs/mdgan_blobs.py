"""A user's own GAN networks for MD-GAN, outside the package (tests put this folder on PYTHONPATH):
a tiny MLP generator and discriminator for the 4-feature Gaussian blobs of ``blobs:blobs``, and a
few deliberate mistakes for the bad-input tests.

    --generator mdgan_blobs:generator       FUNCTION(latent_dim, out_shape, num_classes)
    --discriminator mdgan_blobs:discriminator   FUNCTION(in_shape, num_classes)
"""
import math

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset


class Generator(nn.Module):
    """G(z, labels) (ACGAN: the class as a one-hot vector beside the noise) or G(z) (plain):
    an MLP with a linear output, since the blobs are not bounded."""

    def __init__(self, latent_dim, out_shape, num_classes, hidden=32):
        super().__init__()
        self.out_shape, self.num_classes = tuple(out_shape), num_classes
        self.net = nn.Sequential(nn.Linear(latent_dim + num_classes, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, math.prod(out_shape)))

    def forward(self, z, labels=None):
        if self.num_classes:
            z = torch.cat([z, nn.functional.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        return self.net(z).view(-1, *self.out_shape)


def generator(latent_dim, out_shape, num_classes):
    return Generator(latent_dim, out_shape, num_classes)


def discriminator(in_shape, num_classes, hidden=32):
    """D(x) -> [n, 1 + num_classes]: the real/fake logit, then the class logits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, 1 + num_classes))


# ------------------------------------------------------------------ deliberate mistakes
def not_a_module(latent_dim, out_shape, num_classes):
    return "a string"


class _SevenFeatures(nn.Module):
    def __init__(self, latent_dim):
        super().__init__()
        self.fc = nn.Linear(latent_dim, 7)

    def forward(self, z, labels=None):
        return self.fc(z)


def wrong_samples(latent_dim, out_shape, num_classes):
    """Samples of 7 features for data of 4."""
    return _SevenFeatures(latent_dim)


def no_class_column(in_shape, num_classes):
    """One output only: a plain GAN's D, given to an ACGAN."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), 1))


def two(root):
    """Two samples: fewer than the workers of a world of 4 ranks."""
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, torch.tensor([0, 1])), TensorDataset(x, torch.tensor([0, 1]))
