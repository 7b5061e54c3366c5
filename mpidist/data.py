"""Datasets every algorithm shares, held in memory as tensors, and their split across ranks.

- ``digits`` (the default, shipped with the install, no network): the UCI handwritten digits,
  1797 real 8x8 images (``mpidist/datasets/README.md``), resized to ``size``; ``rotate`` gives the
  rotated domains that DADA adapts to.
- The papers' datasets through torchvision's own loaders and on-disk formats: ``mnist``, ``usps``,
  ``svhn``, ``cifar10``, ``cifar100``, and Office-31 domains (``office31-amazon``,
  ``office31-dslr``, ``office31-webcam``) as image folders. They read ``root``; ``download=True``
  lets torchvision fetch them on a machine with a network. A missing path is a :class:`DataError`
  naming it.

Images are float32 in [0, 1], shape [N, C, H, W]; labels int64. :class:`Shard` yields one rank's
mini-batches: a disjoint part of the data per rank, reshuffled every epoch, the same for the same
seed.
"""
from __future__ import annotations

import argparse
import gzip
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from . import user
from .errors import UsageError


class DataError(UsageError):
    """A dataset that cannot be loaded as asked (missing files, unknown name)."""


@dataclass
class Dataset:
    x: torch.Tensor          # float32 [N, ...]: images [N, C, H, W] in [0, 1], or a user's inputs
    y: torch.Tensor          # int64 [N] class labels, or float regression targets [N, ...]
    name: str
    num_classes: int         # classes, or the number of outputs of a regression

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    def subset(self, idx) -> "Dataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Dataset(self.x[idx], self.y[idx], self.name, self.num_classes)


# ------------------------------------------------------------------------------ transforms

def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a [N, C, H, W] batch to size x size (no-op for None or same size)."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < x.shape[-1]).clamp_(0, 1)


def to_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by the mean; no-op for None or same count."""
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.repeat(1, channels, 1, 1)
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise DataError(f"cannot convert {x.shape[1]} channels to {channels}")


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every image by ``degrees`` counter-clockwise about its centre (zeros fill), as seen
    with row 0 at the top (torchvision's convention: 90 degrees is ``torch.rot90(x, 1, (-2, -1))``)."""
    if degrees % 360 == 0:
        return x
    th = np.deg2rad(degrees)
    c, s = float(np.cos(th)), float(np.sin(th))
    # affine_grid maps each output pixel to the input point it samples (the inverse rotation),
    # in normalised coordinates with x to the right and y (rows) downwards
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------------------ loaders

_DIGITS_TEST_FRACTION = 0.2


def digits(train: bool = True, size: int | None = 16, rotate_deg: float = 0.0) -> Dataset:
    """The embedded UCI digits: a fixed 80/20 train/test split (same on every machine)."""
    with resources.files("mpidist.datasets").joinpath("digits.csv.gz").open("rb") as f:
        table = np.loadtxt(gzip.open(f), delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :64] / 16.0).view(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, 64].astype(np.int64))
    order = np.random.default_rng(12345).permutation(len(y))
    n_test = int(round(len(y) * _DIGITS_TEST_FRACTION))
    idx = order[n_test:] if train else order[:n_test]
    x = resize(x[idx], size)
    if rotate_deg:
        x = rotate(x, rotate_deg)
    return Dataset(x.contiguous(), y[idx].contiguous(), "digits", 10)


def _from_uint8(images: np.ndarray | torch.Tensor, layout: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images))
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    return x.contiguous().float().div_(255.0)


def _torchvision(name: str, root: str, train: bool, download: bool) -> Dataset:
    import torchvision.datasets as tvd
    try:
        if name == "mnist":
            d = tvd.MNIST(root, train=train, download=download)
            return Dataset(_from_uint8(d.data, "NHW"), d.targets.long(), name, 10)
        if name == "usps":
            d = tvd.USPS(root, train=train, download=download)
            return Dataset(_from_uint8(d.data, "NHW"), torch.as_tensor(d.targets).long(), name, 10)
        if name == "svhn":
            d = tvd.SVHN(root, split="train" if train else "test", download=download)
            return Dataset(_from_uint8(d.data, "NCHW"), torch.as_tensor(d.labels).long(), name, 10)
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            d = cls(root, train=train, download=download)
            return Dataset(_from_uint8(d.data, "NHWC"), torch.as_tensor(d.targets).long(), name,
                           10 if name == "cifar10" else 100)
    except (RuntimeError, FileNotFoundError) as e:  # "Dataset not found or corrupted. ..."; USPS
        # opens its file without a check first, so a missing usps.bz2 is a FileNotFoundError
        raise DataError(f"{name}: no usable files under --data-root {root} ({e}); put them there "
                        f"or pass --download on a machine with a network") from None
    raise DataError(f"unknown dataset {name}")


OFFICE31_DOMAINS = {"amazon", "dslr", "webcam"}


def image_folder(path: str, size: int, name: str) -> Dataset:
    """An ImageFolder (one sub-folder per class) loaded into memory at size x size RGB."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T
    if not os.path.isdir(path):
        raise DataError(f"{name}: no image folder at {path}")
    try:
        d = tvd.ImageFolder(path, transform=T.Compose([T.Resize((size, size)), T.ToTensor()]))
    except FileNotFoundError as e:  # no class sub-folders, or a class folder without images
        raise DataError(f"{name}: {path} holds no images in class folders ({e})") from None
    if len(d) == 0:
        raise DataError(f"{name}: {path} holds no images")
    xs, ys = zip(*(d[i] for i in range(len(d))))
    return Dataset(torch.stack(xs), torch.tensor(ys), name, len(d.classes))


def office31(domain: str, root: str, size: int) -> Dataset:
    """Office-31 domain as laid out by its archive: <root>/<domain>/images/<class>/*.jpg."""
    base = os.path.join(root, domain)
    path = os.path.join(base, "images") if os.path.isdir(os.path.join(base, "images")) else base
    return image_folder(path, size, f"office31-{domain}")


DATASETS = ("digits", "mnist", "usps", "svhn", "cifar10", "cifar100",
            *(f"office31-{d}" for d in sorted(OFFICE31_DOMAINS)))


_USER_CACHE: dict = {}


def dataset_name(s: str) -> str:
    """``--data``: a built-in name or a user's ``MODULE:FUNCTION``."""
    if s in DATASETS or s.startswith("office31-") or user.is_spec(s):
        return s
    raise argparse.ArgumentTypeError(f"invalid choice: '{s}' (known: {', '.join(DATASETS)}, or "
                                     "MODULE:FUNCTION for your own)")


def load(name: str = "digits", root: str | None = None, download: bool = False, train: bool = True,
         size: int | None = None, channels: int | None = None, rotate_deg: float = 0.0) -> Dataset:
    """Load a dataset by name (see ``DATASETS``), resized to ``size`` and converted to ``channels``.

    Office-31 has no train/test split: the whole domain is returned for both. A ``MODULE:FUNCTION``
    name loads a user's dataset (:func:`mpidist.user.load_dataset`, called once per process).
    """
    if user.is_spec(name):
        key = (name, root)
        if key not in _USER_CACHE:
            _USER_CACHE[key] = user.load_dataset(name, root)
        xtr, ytr, xte, yte, k = _USER_CACHE[key]
        x, y = (xtr, ytr) if train else (xte, yte)
        if x.dim() == 4 and (size or channels or rotate_deg):
            x = to_channels(rotate(resize(x, size), rotate_deg) if rotate_deg else resize(x, size),
                            channels)
        return Dataset(x.contiguous(), y, name, k)
    if name not in DATASETS and not name.startswith("office31-"):
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    if name == "digits":
        ds = digits(train, size or 16, rotate_deg)
    else:
        if root is None:
            raise DataError(f"{name}: needs --data-root (the folder holding its files)")
        if name.startswith("office31-"):
            domain = name.split("-", 1)[1]
            if domain not in OFFICE31_DOMAINS:
                raise DataError(f"unknown Office-31 domain {domain} (known: "
                                f"{', '.join(sorted(OFFICE31_DOMAINS))})")
            ds = office31(domain, root, size or 224)
        else:
            ds = _torchvision(name, root, train, download)
            ds.x = resize(ds.x, size)
        if rotate_deg:
            ds.x = rotate(ds.x, rotate_deg)
    ds.x = to_channels(ds.x, channels).contiguous()
    return ds


# ------------------------------------------------------------------------------ shards

def shard_indices(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    """Rank ``rank``'s part of ``range(n)``: a seeded permutation cut into ``world`` disjoint,
    nearly equal parts (the same on every rank for the same seed)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    if n < world:
        raise DataError(f"{n} samples cannot be split over {world} ranks")
    perm = np.random.default_rng(seed).permutation(n)
    return np.array_split(perm, world)[rank]


def cluster_shard_indices(y: torch.Tensor, rank: int, clusters, seed: int,
                          own: float) -> np.ndarray:
    """Rank ``rank``'s shard when shards differ between reliable clusters (PC-ASGD's
    ``--shards clusters:F``): class k belongs to cluster k mod C (C = len(clusters)); a sample of a
    cluster's own classes stays in that cluster with probability F and otherwise goes to one of
    the C - 1 other clusters, uniformly; each cluster's samples are then cut into equal disjoint
    shards, one per agent of the cluster (clusters of consecutive ranks, as in
    :mod:`mpidist.topology`). F = 1/C gives every cluster the same class mix in expectation, F = 1
    disjoint classes: the more F exceeds 1/C, the more an agent needs its delayed neighbours in
    other clusters. The same on every rank for the same seed."""
    clusters = [int(c) for c in clusters]
    world = sum(clusters)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    if y.is_floating_point() or y.dim() != 1:
        raise DataError("--shards clusters:F deals classes to clusters: it needs class labels, "
                        "not regression targets")
    n_c = len(clusters)
    rng = np.random.default_rng([seed, 7])
    home = y.cpu().numpy().astype(np.int64) % n_c
    other = (home + 1 + rng.integers(0, max(n_c - 1, 1), len(home))) % n_c
    where = np.where(rng.random(len(home)) < own, home, other) if n_c > 1 else home
    first = int(np.searchsorted(np.cumsum(clusters), rank, side="right"))  # rank's cluster
    members = rng.permutation(np.flatnonzero(where == first))
    start = sum(clusters[:first])
    if len(members) < clusters[first]:
        raise DataError(f"cluster {first} got {len(members)} samples for {clusters[first]} agents")
    return np.sort(np.array_split(members, clusters[first])[rank - start])


class Shard:
    """Endless mini-batches from one rank's disjoint shard, reshuffled every epoch.

    ``rank``/``world`` choose the shard (:func:`shard_indices` with ``seed``; or ``indices``, e.g.
    from :func:`cluster_shard_indices`); each epoch visits it
    in a new order drawn from ``seed``, ``rank`` and the epoch number, so a run is reproducible and
    a resumed run can continue from ``state_dict()``. Incomplete last batches are dropped.

    The rows of the next batches (at most ``AHEAD`` of them and ``BLOCK_BYTES`` of inputs, at
    least one batch) are gathered in one ``index_select`` into a block of their own, and each
    batch is a slice of it: one gather per block instead of a random-row gather per step (timed
    in 1500-step PC-ASGD runs on the digits, 2 ranks: 46-88 us per batch on average with one
    gather per batch, 24-34 us with blocks, of a 3-4 ms step). A batch shares memory with its
    block only: changing it in place changes no other batch.
    """

    AHEAD = 64              # batches per gathered block at most
    BLOCK_BYTES = 8 << 20   # ... and input bytes per block at most (large images: one batch)

    def __init__(self, ds: Dataset, rank: int, world: int, batch_size: int, seed: int = 0,
                 device="cpu", indices: np.ndarray | None = None):
        self.ds = ds
        self.indices = shard_indices(len(ds), rank, world, seed) if indices is None else indices
        if batch_size > len(self.indices):
            raise DataError(f"batch size {batch_size} exceeds this rank's shard of "
                            f"{len(self.indices)} samples ({ds.name}, {world} ranks)")
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.x, self.y = ds.x[self.indices].to(device), ds.y[self.indices].to(device)
        self.epoch, self.pos, self._n = 0, 0, len(self.indices)
        self._order = self._shuffle()
        self._block = None  # (first position, x rows, y rows) gathered ahead

    @property
    def batches_per_epoch(self) -> int:
        return len(self.indices) // self.batch_size

    def _shuffle(self) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.rank, self.epoch])
        return torch.from_numpy(rng.permutation(len(self.indices))).to(self.x.device)

    def _gather(self) -> tuple:
        """The rows of the batches from ``pos`` on, up to AHEAD of them in this epoch."""
        b = self.batch_size
        row = max(1, self.x[:1].nbytes)
        ahead = max(1, min(self.AHEAD, self.BLOCK_BYTES // (row * b)))
        n = min(ahead, (self._n - self.pos) // b) * b
        idx = self._order[self.pos:self.pos + n]
        # index_select: the same rows as x[idx], in about 40 % of the time of advanced indexing
        return self.pos, self.x.index_select(0, idx), self.y.index_select(0, idx)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.batch_size
        if self.pos + b > self._n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._shuffle()
            self._block = None
        block = self._block
        if block is None or self.pos + b > block[0] + len(block[1]):
            block = self._block = self._gather()
        i = self.pos - block[0]
        self.pos += b
        return block[1][i:i + b], block[2][i:i + b]

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._order = self._shuffle()
        self._block = None


def image_size(s: str) -> int:
    """``--image-size``: pixels a side, a positive integer."""
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def add_arguments(p, default_size: int | None = None, dataset: bool = True,
                  root_help: str | None = None, size_help: str | None = None) -> None:
    """The data flags every entry point shares (group "data"); ``dataset=False`` leaves out
    ``--data`` (an algorithm that chooses its data otherwise)."""
    g = p.add_argument_group("data")
    if dataset:
        g.add_argument("--data", default="digits", type=dataset_name,
                       metavar="NAME|MODULE:FUNCTION",
                       help=f"dataset: {', '.join(DATASETS)} (default digits: the embedded UCI "
                            "handwritten digits, no network), or your own: FUNCTION(root) -> "
                            "(train, test[, num_classes]) of torch Datasets of (input, label)")
    g.add_argument("--data-root", default=None,
                   help=root_help or "folder holding the dataset's files in torchvision's layout "
                                     "(passed as root to your own FUNCTION)")
    g.add_argument("--download", action="store_true",
                   help="let torchvision download a missing dataset into --data-root (needs a network)")
    g.add_argument("--image-size", type=image_size, default=default_size,
                   help=size_help or "resize images to this many pixels a side (default: the "
                                     "dataset's own; digits 16)")
