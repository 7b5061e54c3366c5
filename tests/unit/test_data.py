"""Tests of mpidist/data.py: the embedded digits, the transforms, the per-rank shards, and the
papers' datasets read by torchvision's own loaders.

No network: every torchvision dataset is written here, in tmp_path, in its real on-disk format
(MNIST idx files, USPS bz2 libsvm text, SVHN .mat, CIFAR pickled batches, Office-31 JPEG folders),
with known pixels and labels, and read back through ``mpidist.data.load``.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import pickle
import struct
from importlib import resources

import numpy as np
import pytest
import torch

import torchvision.datasets as tvd
from mpidist import data
from mpidist.data import DataError
from mpidist.errors import UsageError


def _rng(seed=0):
    return np.random.default_rng(seed)


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def _check_images(ds, expected_u8: np.ndarray, labels, num_classes: int, name: str):
    """ds holds exactly ``expected_u8`` ([N, C, H, W] uint8) / 255 and ``labels``."""
    assert ds.name == name and ds.num_classes == num_classes
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert tuple(ds.x.shape) == expected_u8.shape
    assert ds.x.is_contiguous()
    assert 0.0 <= ds.x.min().item() and ds.x.max().item() <= 1.0
    assert ds.y.tolist() == list(labels)
    want = torch.from_numpy(expected_u8.astype(np.float32) / np.float32(255.0))
    torch.testing.assert_close(ds.x, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ MNIST

def _write_idx(path, arr: np.ndarray):
    """IDX format (LeCun's MNIST files): magic 0x0000 0x08 (uint8) ndim, big-endian dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.tobytes())


def _write_mnist(root, n_train=5, n_test=3):
    """torchvision 0.29 MNIST reads the *uncompressed* files under <root>/MNIST/raw and its
    _check_exists needs all four of them (no MD5 for these)."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    r = _rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = r.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        img[0, 0, 0], img[0, 0, 1] = 0, 255          # both ends of the range
        lab = r.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), img)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), lab)
        out[prefix] = (img, lab)
    return out


def test_mnist_reads_idx_files(tmp_path):
    files = _write_mnist(tmp_path)
    for train, prefix in ((True, "train"), (False, "t10k")):
        img, lab = files[prefix]
        ds = data.load("mnist", root=tmp_path, train=train)
        _check_images(ds, img[:, None], lab.tolist(), 10, "mnist")


def test_mnist_resize_and_channels(tmp_path):
    _write_mnist(tmp_path)
    ds = data.load("mnist", root=str(tmp_path), train=True, size=32, channels=3)
    assert tuple(ds.x.shape) == (5, 3, 32, 32) and ds.x.dtype == torch.float32
    assert 0.0 <= ds.x.min().item() and ds.x.max().item() <= 1.0
    assert torch.equal(ds.x[:, 0], ds.x[:, 1]) and torch.equal(ds.x[:, 0], ds.x[:, 2])
    torch.testing.assert_close(ds.x[:, :1], data.resize(data.load("mnist", root=tmp_path).x, 32))


def test_mnist_missing_files_is_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        data.load("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "--download" in msg and msg.startswith("mnist")
    assert isinstance(e.value, UsageError)   # the runtime turns it into one line and exit 2
    # the train files alone do not satisfy torchvision's check (it wants the t10k files too)
    _write_mnist(tmp_path)
    os.remove(os.path.join(tmp_path, "MNIST", "raw", "t10k-labels-idx1-ubyte"))
    with pytest.raises(DataError, match="--download"):
        data.load("mnist", root=tmp_path, train=True)


# ------------------------------------------------------------------------------ USPS

def _write_usps(path, levels: np.ndarray, labels):
    """libsvm text as in usps.bz2: "<label 1..10> 1:v 2:v ... 256:v" with v in [-1, 1].

    Pixel levels k in 0..16 are written as v = k/8 - 1 (exact binary fractions), which
    torchvision maps to uint8 floor((v + 1) / 2 * 255) = floor(k * 255 / 16)."""
    with bz2.open(path, "wt") as f:
        for k_img, lab in zip(levels, labels):
            vals = " ".join(f"{i + 1}:{k / 8 - 1:g}" for i, k in enumerate(k_img.ravel()))
            f.write(f"{lab + 1} {vals}\n")


def test_usps_reads_bz2_libsvm(tmp_path):
    r = _rng(2)
    for train, fname, n in ((True, "usps.bz2", 4), (False, "usps.t.bz2", 3)):
        levels = r.integers(0, 17, size=(n, 16, 16))
        levels[0, 0, :2] = (0, 16)
        labels = [9, 0, 3, 7][:n]                    # file labels 10, 1, 4, 8
        _write_usps(tmp_path / fname, levels, labels)
        ds = data.load("usps", root=tmp_path, train=train)
        expected = np.floor(levels * 255 / 16).astype(np.uint8)[:, None]
        _check_images(ds, expected, labels, 10, "usps")
    ds = data.load("usps", root=tmp_path, train=True, size=28, channels=1)
    assert tuple(ds.x.shape) == (4, 1, 28, 28)


def test_usps_missing_file_is_data_error(tmp_path):
    # torchvision's USPS opens usps.bz2 without checking first (FileNotFoundError, not RuntimeError)
    with pytest.raises(DataError) as e:
        data.load("usps", root=tmp_path, train=False)
    assert "usps.t.bz2" in str(e.value) and str(tmp_path) in str(e.value)
    assert "--download" in str(e.value)


# ------------------------------------------------------------------------------ SVHN

def _write_svhn(root, split, n, monkeypatch):
    """<root>/<split>_32x32.mat with X (32, 32, 3, N) uint8 and y (N, 1), digit 0 labelled 10.

    torchvision checks the file's MD5 against the real archive's; we register the MD5 of the file
    written here instead (monkeypatch, restored after the test), so its own check still runs."""
    import scipy.io
    r = _rng(3 if split == "train" else 4)
    img = r.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    digits = np.arange(n) % 10                            # includes the digit 0
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    path = os.path.join(root, f"{split}_32x32.mat")
    scipy.io.savemat(path, {"X": img.transpose(2, 3, 1, 0), "y": y})   # X[h, w, c, n]
    url, fname, _ = tvd.SVHN.split_list[split]
    monkeypatch.setitem(tvd.SVHN.split_list, split, [url, fname, _md5(path)])
    return img, digits.tolist()


def test_svhn_reads_mat(tmp_path, monkeypatch):
    for train, split, n in ((True, "train", 11), (False, "test", 4)):
        img, digits = _write_svhn(tmp_path, split, n, monkeypatch)
        assert 0 in digits
        ds = data.load("svhn", root=tmp_path, train=train)
        _check_images(ds, img, digits, 10, "svhn")
    ds = data.load("svhn", root=tmp_path, size=28, channels=1)
    assert tuple(ds.x.shape) == (11, 1, 28, 28)
    torch.testing.assert_close(ds.x, data.resize(data.load("svhn", root=tmp_path).x, 28)
                               .mean(1, keepdim=True))


def test_svhn_missing_or_corrupted_is_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        data.load("svhn", root=tmp_path)
    assert str(tmp_path) in str(e.value) and "--download" in str(e.value)
    # a file whose MD5 is not the real archive's: torchvision's check refuses it (no monkeypatch)
    import scipy.io
    scipy.io.savemat(tmp_path / "train_32x32.mat",
                     {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.ones((1, 1), np.uint8)})
    with pytest.raises(DataError, match="corrupted"):
        data.load("svhn", root=tmp_path)


# ------------------------------------------------------------------------------ CIFAR

def _write_cifar(root, hundred: bool, monkeypatch):
    """The pickled batches of cifar-10-batches-py / cifar-100-python: dict with "data" (N, 3072)
    uint8 rows (1024 R, 1024 G, 1024 B, each row-major 32x32) and "labels" / "fine_labels".

    torchvision checks every file's MD5 against the real archive's; we register the MD5s of the
    files written here instead (monkeypatch on the class attributes, undone after the test)."""
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    folder = os.path.join(root, cls.base_folder)
    os.makedirs(folder)
    r = _rng(5 if hundred else 6)
    key = "fine_labels" if hundred else "labels"
    k = 100 if hundred else 10
    written = {}

    def batch(name, n):
        img = r.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        lab = r.integers(0, k, size=n).tolist()
        entry = {"data": img.reshape(n, 3072), key: lab}
        if hundred:
            entry["coarse_labels"] = [v // 5 for v in lab]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
        return img, lab

    lists = {}
    for attr, names in (("train_list", [n for n, _ in cls.train_list]),
                        ("test_list", [n for n, _ in cls.test_list])):
        parts = [batch(nm, 2 if attr == "train_list" else 3) for nm in names]
        written[attr] = (np.concatenate([p[0] for p in parts]), sum((p[1] for p in parts), []))
        lists[attr] = [[nm, _md5(os.path.join(folder, nm))] for nm in names]
    meta_path = os.path.join(folder, cls.meta["filename"])
    with open(meta_path, "wb") as f:
        pickle.dump({cls.meta["key"]: [f"class{i}" for i in range(k)]}, f)
    for attr, value in lists.items():
        monkeypatch.setattr(cls, attr, value)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(meta_path)})
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickled_batches(tmp_path, monkeypatch, name):
    written = _write_cifar(tmp_path, name == "cifar100", monkeypatch)
    k = 100 if name == "cifar100" else 10
    for train, attr in ((True, "train_list"), (False, "test_list")):
        img, lab = written[attr]
        ds = data.load(name, root=tmp_path, train=train)
        _check_images(ds, img, lab, k, name)
    assert len(data.load(name, root=tmp_path)) == (10 if name == "cifar10" else 2)
    ds = data.load(name, root=tmp_path, train=False, size=16, channels=1)
    assert tuple(ds.x.shape) == (3, 1, 16, 16)


def test_cifar_missing_is_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        data.load("cifar100", root=tmp_path)
    assert str(tmp_path) in str(e.value) and "--download" in str(e.value)


# ------------------------------------------------------------------------------ Office-31

OFFICE_CLASSES = ["back_pack", "bike", "calculator"]


def _write_office(root, domain, with_images_dir=True):
    """<root>/<domain>/images/<class>/*.jpg (the archive's layout). Each 16x16 image has a left and
    a right half of one colour each, on JPEG's 8x8 block borders, saved at quality 100 without
    chroma subsampling, so JPEG keeps the colours to within a few levels."""
    from PIL import Image
    base = os.path.join(root, domain, "images") if with_images_dir else os.path.join(root, domain)
    r = _rng(7)
    imgs, labels = [], []
    for c, cname in enumerate(OFFICE_CLASSES):
        os.makedirs(os.path.join(base, cname))
        for j in range(2):
            left, right = r.integers(0, 256, size=3), r.integers(0, 256, size=3)
            a = np.empty((16, 16, 3), np.uint8)
            a[:, :8], a[:, 8:] = left, right
            Image.fromarray(a).save(os.path.join(base, cname, f"frame_{j:04d}.jpg"), quality=100,
                                    subsampling=0)
            imgs.append(a.transpose(2, 0, 1))
            labels.append(c)
    return np.stack(imgs), labels


@pytest.mark.parametrize("domain,with_images_dir", [("amazon", True), ("webcam", False)])
def test_office31_image_folder(tmp_path, domain, with_images_dir):
    img, labels = _write_office(tmp_path, domain, with_images_dir)
    for train in (True, False):                      # no split: the whole domain both times
        ds = data.load(f"office31-{domain}", root=tmp_path, train=train, size=16)
        assert ds.name == f"office31-{domain}" and ds.num_classes == len(OFFICE_CLASSES)
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert tuple(ds.x.shape) == (6, 3, 16, 16)
        assert ds.y.tolist() == labels               # sorted class folders -> 0, 1, 2
        assert 0.0 <= ds.x.min().item() and ds.x.max().item() <= 1.0
        want = torch.from_numpy(img.astype(np.float32) / 255)
        assert (ds.x - want).abs().max().item() <= 3 / 255      # JPEG at quality 100
    ds = data.load(f"office31-{domain}", root=tmp_path, size=8, channels=1)
    assert tuple(ds.x.shape) == (6, 1, 8, 8)
    assert tuple(data.load(f"office31-{domain}", root=tmp_path).x.shape) == (6, 3, 224, 224)


def test_office31_errors(tmp_path):
    with pytest.raises(DataError) as e:
        data.load("office31-dslr", root=tmp_path)
    assert os.path.join(str(tmp_path), "dslr") in str(e.value)
    os.makedirs(tmp_path / "dslr" / "images" / "mug")        # a class folder without images
    with pytest.raises(DataError, match="no images"):
        data.load("office31-dslr", root=tmp_path)
    with pytest.raises(DataError, match="amazon, dslr, webcam"):
        data.load("office31-phone", root=tmp_path)


# ------------------------------------------------------------------------------ names, roots

def test_unknown_name_and_missing_root():
    for root in (None, "/nonexistent"):
        with pytest.raises(DataError) as e:
            data.load("imagenet", root=root)
        msg = str(e.value)
        assert "imagenet" in msg
        for known in data.DATASETS:
            assert known in msg
    for name in data.DATASETS[1:]:
        with pytest.raises(DataError, match="--data-root"):
            data.load(name)


def test_add_arguments():
    import argparse
    p = argparse.ArgumentParser()
    data.add_arguments(p, default_size=32)
    a = p.parse_args([])
    assert (a.data, a.data_root, a.download, a.image_size) == ("digits", None, False, 32)
    a = p.parse_args(["--data", "svhn", "--data-root", "/d", "--download", "--image-size", "28"])
    assert (a.data, a.data_root, a.download, a.image_size) == ("svhn", "/d", True, 28)
    with pytest.raises(SystemExit):
        p.parse_args(["--data", "imagenet"])


# ------------------------------------------------------------------------------ digits

def _digits_table() -> np.ndarray:
    with resources.files("mpidist.datasets").joinpath("digits.csv.gz").open("rb") as f:
        return np.loadtxt(gzip.open(f), delimiter=",", dtype=np.float32)


def test_digits_default():
    tr, te = data.load(), data.load(train=False)
    assert (len(tr), len(te)) == (1438, 359)
    for ds in (tr, te):
        assert ds.name == "digits" and ds.num_classes == 10 and ds.shape == (1, 16, 16)
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert 0.0 <= ds.x.min().item() and ds.x.max().item() <= 1.0
        assert ds.x.max().item() > 0.9
    assert sorted(set(tr.y.tolist())) == list(range(10)) == sorted(set(te.y.tolist()))
    # fixed across calls
    tr2 = data.load()
    assert torch.equal(tr.x, tr2.x) and torch.equal(tr.y, tr2.y)
    # at 8x8 (no resize) train and test are a partition of the table: disjoint and covering
    table = _digits_table()
    rows = lambda ds: {tuple(r) for r in np.concatenate(   # noqa: E731
        [ds.x.reshape(len(ds), 64).numpy() * 16, ds.y.numpy()[:, None]], 1).round(4).tolist()}
    r_tr, r_te = rows(data.load(size=8)), rows(data.load(size=8, train=False))
    assert len(r_tr) == 1438 and len(r_te) == 359 and not r_tr & r_te
    assert r_tr | r_te == {tuple(r) for r in table.round(4).tolist()}
    # 16x16 is the bilinear resize of the 8x8 images
    torch.testing.assert_close(tr.x, data.resize(data.load(size=8).x, 16))
    # channels and rotated domains through load()
    assert data.load(channels=3, size=28).shape == (3, 28, 28)
    torch.testing.assert_close(data.load(train=False, rotate_deg=90).x, data.rotate(te.x, 90))


# ------------------------------------------------------------------------------ transforms

def _centred_pattern(n=16) -> torch.Tensor:
    """A pattern with no rotational symmetry (an L) around the centre of an n x n image."""
    x = torch.zeros(2, 1, n, n)
    x[0, 0, 4:12, 6] = 1.0          # vertical bar
    x[0, 0, 11, 6:11] = 0.5         # foot to the right
    x[0, 0, 5, 7] = 0.25
    x[1, 0] = torch.linspace(0, 1, n * n).view(n, n)   # a ramp (covers the borders too)
    return x


def test_rotate_90_is_rot90():
    x = _centred_pattern()
    # counter-clockwise as displayed (row 0 on top): torch.rot90 with k = 1 on (H, W)
    for deg, k in ((90, 1), (180, 2), (270, 3), (-90, 3), (450, 1)):
        torch.testing.assert_close(data.rotate(x, deg), torch.rot90(x, k, (-2, -1)),
                                   rtol=0, atol=1e-5)
    # the top of the bar goes to the left: x[4, 6] -> (row 16-1-6, col 4)
    assert data.rotate(x, 90)[0, 0, 9, 4].item() == pytest.approx(1.0, abs=1e-5)
    # rectangular and multi-channel images: 180 degrees is a flip of both axes
    y = torch.rand(3, 3, 8, 12)
    torch.testing.assert_close(data.rotate(y, 180), y.flip(-1, -2), rtol=0, atol=1e-5)


def test_rotate_identity_and_mass():
    x = _centred_pattern()
    for deg in (0, 360, -720):
        assert torch.equal(data.rotate(x, deg), x)
    # a centred disc is (nearly) invariant under any rotation; zeros fill the corners
    n = 16
    c = (n - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(n) - c, torch.arange(n) - c, indexing="ij")
    disc = ((yy ** 2 + xx ** 2) <= 5 ** 2).float()[None, None]
    r = data.rotate(disc, 37)
    assert r.shape == disc.shape
    assert abs(r.sum().item() - disc.sum().item()) < 0.05 * disc.sum().item()
    assert data.rotate(torch.ones(1, 1, n, n), 45)[0, 0, 0, 0].item() == pytest.approx(0.0)


def test_resize_closed_form():
    x = torch.rand(4, 3, 10, 10)
    assert data.resize(x, None) is x and data.resize(x, 10) is x
    assert data.resize(x, 7).shape == (4, 3, 7, 7) and data.resize(x, 23).shape == (4, 3, 23, 23)
    # bilinear (half-pixel centres) doubling of a row [a, b]: [a, a/4 + 3b/4 ...] closed form
    a, b = 0.2, 0.6
    two = torch.tensor([[a, b], [a, b]]).view(1, 1, 2, 2)
    up = data.resize(two, 4)
    want = torch.tensor([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    torch.testing.assert_close(up[0, 0], want.expand(4, 4))
    # downsizing (antialiased) keeps constant images constant
    const = torch.full((2, 1, 28, 28), 0.3)
    torch.testing.assert_close(data.resize(const, 16), torch.full((2, 1, 16, 16), 0.3))


def test_to_channels():
    g = torch.rand(2, 1, 5, 5)
    rgb = data.to_channels(g, 3)
    assert rgb.shape == (2, 3, 5, 5) and all(torch.equal(rgb[:, i], g[:, 0]) for i in range(3))
    c = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(data.to_channels(c, 1), c.mean(1, keepdim=True))
    assert data.to_channels(c, None) is c and data.to_channels(c, 3) is c
    with pytest.raises(DataError):
        data.to_channels(torch.rand(1, 2, 4, 4), 3)


# ------------------------------------------------------------------------------ shards

def test_shard_indices():
    n, world = 103, 4
    parts = [data.shard_indices(n, r, world, seed=1) for r in range(world)]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n))                   # disjoint and covering
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]           # nearly equal
    again = [data.shard_indices(n, r, world, seed=1) for r in range(world)]
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))     # same seed, same split
    other = [data.shard_indices(n, r, world, seed=2) for r in range(world)]
    assert any(not np.array_equal(p, q) for p, q in zip(parts, other))
    with pytest.raises(ValueError):
        data.shard_indices(n, world, world, seed=1)
    with pytest.raises(DataError):
        data.shard_indices(3, 0, 4, seed=1)


def _indexed_dataset(n=60) -> data.Dataset:
    """y = sample id, and x carries the id too, so a batch says which samples it holds."""
    ids = torch.arange(n)
    x = (ids.float() / n).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return data.Dataset(x, ids.clone(), "ids", n)


def test_shard_batches_epochs_and_resume():
    ds = _indexed_dataset(60)
    world, bs = 3, 5                                   # 20 samples per rank, 4 batches per epoch
    seen_by_rank = []
    for rank in range(world):
        sh = data.Shard(ds, rank, world, bs, seed=7)
        mine = set(data.shard_indices(len(ds), rank, world, 7).tolist())
        assert sh.batches_per_epoch == 4
        epochs = []
        for ep in range(3):
            order = []
            for _ in range(sh.batches_per_epoch):
                xb, yb = sh.next()
                assert xb.shape == (bs, 1, 2, 2) and yb.shape == (bs,)
                torch.testing.assert_close(xb[:, 0, 0, 0], yb.float() / len(ds))  # x, y pair up
                order += yb.tolist()
            assert set(order) <= mine and sorted(order) == sorted(mine)   # each once per epoch
            epochs.append(order)
        assert epochs[0] != epochs[1] and epochs[1] != epochs[2]          # reshuffled
        assert sh.epoch == 2
        seen_by_rank.append(set(epochs[0]))
    assert set.union(*seen_by_rank) == set(range(60))
    assert sum(len(s) for s in seen_by_rank) == 60                        # disjoint

    # same seed -> same sequence; another seed -> another one
    a, b = data.Shard(ds, 1, world, bs, seed=7), data.Shard(ds, 1, world, bs, seed=7)
    c = data.Shard(ds, 1, world, bs, seed=8)
    sa = [a.next()[1].tolist() for _ in range(9)]
    assert sa == [b.next()[1].tolist() for _ in range(9)]
    assert sa != [c.next()[1].tolist() for _ in range(9)]

    # resume from state_dict (mid-epoch, and at an epoch boundary)
    for k in (6, 8):
        s1 = data.Shard(ds, 2, world, bs, seed=7)
        for _ in range(k):
            s1.next()
        state = s1.state_dict()
        rest = [s1.next()[1].tolist() for _ in range(7)]
        s2 = data.Shard(ds, 2, world, bs, seed=7)
        s2.load_state_dict(state)
        assert [s2.next()[1].tolist() for _ in range(7)] == rest


def test_shard_blocks_give_the_rows_of_the_epoch_order():
    """Batches come from blocks gathered AHEAD batches at a time: the same rows, in the same
    order, as one gather per step would give (x[order[pos:pos + b]]), across block and epoch
    boundaries and after a resume; a batch changed in place changes nothing else."""
    ds = _indexed_dataset(60)
    for ahead, block_bytes in ((1, 8 << 20), (3, 8 << 20), (64, 8 << 20), (64, 40), (64, 1)):
        sh = data.Shard(ds, 0, 2, 4, seed=3)                 # 30 samples: 7 batches per epoch
        sh.AHEAD, sh.BLOCK_BYTES = ahead, block_bytes        # (a row: 16 bytes; 40: 1 batch)
        ref_epoch, ref_pos, ref_order = 0, 0, sh._shuffle()
        for step in range(20):
            if ref_pos + 4 > len(ref_order):
                ref_epoch, ref_pos = ref_epoch + 1, 0
                rng = np.random.default_rng([3, 0, ref_epoch])
                ref_order = torch.from_numpy(rng.permutation(30))
            want = sh.x[ref_order[ref_pos:ref_pos + 4]]
            ref_pos += 4
            xb, yb = sh.next()
            torch.testing.assert_close(xb, want)
            xb.fill_(-1.0)                                   # the caller's own business
            want_block = min(ahead, max(1, block_bytes // 64), 7) * 4
            assert len(sh._block[1]) <= want_block                # bounded by AHEAD and bytes
        assert sh.epoch == ref_epoch == 2 and (sh.x >= 0).all()
    a = data.Shard(ds, 1, 2, 4, seed=3)
    a.AHEAD = 3
    for _ in range(5):
        a.next()
    b = data.Shard(ds, 1, 2, 4, seed=3)
    b.load_state_dict(a.state_dict())                        # mid-block
    for _ in range(9):
        torch.testing.assert_close(a.next()[1], b.next()[1])


def test_shard_drop_last_and_errors():
    ds = _indexed_dataset(23)                            # one rank: 23 samples, batches of 5
    sh = data.Shard(ds, 0, 1, 5, seed=0)
    assert sh.batches_per_epoch == 4
    ep0 = sum((sh.next()[1].tolist() for _ in range(4)), [])
    assert len(set(ep0)) == 20                           # 3 samples left out, none repeated
    sh.next()
    assert sh.epoch == 1                                 # the short last batch was dropped
    with pytest.raises(DataError, match="batch size"):
        data.Shard(ds, 0, 4, 7, seed=0)                  # shards of 5-6 samples
    sub = ds.subset([3, 1])
    assert sub.y.tolist() == [3, 1] and len(sub) == 2 and sub.shape == (1, 2, 2)
