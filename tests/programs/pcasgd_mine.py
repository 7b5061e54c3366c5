"""A user's module for tests/*/test_pcasgd_user.py beside blobs.py (the shared fixture): a dataset
too small for the world's shards."""
import torch
from torch.utils.data import TensorDataset


def one(root):
    """One training sample: fewer than the ranks of any multi-rank job."""
    return TensorDataset(torch.ones(1, 4), torch.zeros(1, dtype=torch.long)), \
        TensorDataset(torch.ones(2, 4), torch.zeros(2, dtype=torch.long))
