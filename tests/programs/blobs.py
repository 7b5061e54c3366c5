"""A user's own module, outside the mpidist package (tests put this folder on PYTHONPATH).

Gaussian blobs as a tabular classification problem, a linear regression problem, a small MLP, a
custom loss, and a few deliberate mistakes for the bad-input tests."""
import torch
from torch.utils.data import TensorDataset

CENTRES = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])


def _blobs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CENTRES)
    x = CENTRES[y] + 0.7 * torch.randn(n, CENTRES.shape[1], generator=g)
    return TensorDataset(x, y)


def blobs(root):
    """(train, test) of 4-feature vectors in 3 classes: 600 and 300 samples."""
    return _blobs(600, 1), _blobs(300, 2)


def blobs_with_classes(root):
    return _blobs(600, 1), _blobs(300, 2), 3


def regression(root):
    """y = x . w + 0.5 + noise, 4 features, float targets."""
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def make(n):
        x = torch.randn(n, 4, generator=g)
        return TensorDataset(x, x @ w + 0.5 + 0.01 * torch.randn(n, generator=g))
    return make(512), make(256)


def mlp(in_shape, num_classes, hidden=32):
    """The user's network: FUNCTION(in_shape, num_classes, **kw) -> nn.Module."""
    n_in = 1
    for s in in_shape:
        n_in *= s
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, num_classes))


def l1(output, target):
    return (output.squeeze(-1) - target).abs().mean()


# ------------------------------------------------------------------ deliberate mistakes
def not_a_module(in_shape, num_classes):
    return "a string"


def wrong_outputs(in_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_shape[0], 7))


def not_a_pair(root):
    return 42


def tiny(root):
    """Fewer samples than a world of ranks needs."""
    return _blobs(3, 1), _blobs(3, 2)
