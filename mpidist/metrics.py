"""Evaluation shared by the algorithms: classification accuracy and loss on held-out data.

(MD-GAN's scores, a classifier-based inception-like score and an FID on that classifier's features,
are added here by its module's work.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             device="cpu") -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) of ``model`` on (x, y), in eval mode; the model's
    train/eval mode is restored afterwards."""
    was = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    model.train(was)
    return correct / max(len(y), 1), loss / max(len(y), 1)


# ------------------------------------------------------------------------------------------------
# GAN scores (MD-GAN, Section V-A c): a classifier-based inception-like score ("MNIST score") and a
# Frechet distance on that classifier's features, with a scoring classifier trained once on the
# same dataset and cached with a checksum; optionally Inception-v3 from a local weights file.
# Nothing is ever downloaded.

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import torch.nn as nn  # noqa: E402


def classifier_score(probs) -> float:
    """The inception score of Salimans et al. with any classifier (the paper's "MNIST score"):
    ``exp( E_x KL( p(y|x) || p(y) ) )`` with ``p(y)`` the mean of ``p(y|x)`` over the samples,
    computed on all samples at once (as tf-gan's ``classifier_score_from_logits``). ``probs``:
    [n, classes] rows of class probabilities. Between 1 (all samples alike or all uncertain) and
    the number of classes (confident and evenly spread)."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    py = p.mean(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(py)), 0.0).sum(1)
    return float(np.exp(kl.mean()))


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with n-1) of [n, f] feature rows, in float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature_statistics needs [n >= 2, f] features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017):
    ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``. The trace of the square root is taken as
    ``sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``, a symmetric PSD matrix with the same eigenvalues as
    S1 S2, so it needs no complex matrix square root."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt, 0.0))


def fid_from_features(f1, f2) -> float:
    """Frechet distance between the Gaussians fitted to two sets of feature rows."""
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))


class ScoreNet(nn.Module):
    """The scoring classifier: conv3x3(16)-ReLU-pool, conv3x3(32)-ReLU-pool, 4x4 average pool,
    FC 128-ReLU (the features of the FID), FC classes. Any [C, H, W] input with H, W >= 4."""

    def __init__(self, in_shape, num_classes: int, features: int = 128):
        super().__init__()
        c = in_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of a dataset's images and labels (shapes included): the identity of the data a
    cached scoring classifier was trained on."""
    h = hashlib.sha256()
    for t in (x, y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fit_classifier(model, x, y, epochs: int, batch_size: int, lr: float, gen):
    """Adam on cross-entropy for ``epochs`` passes of shuffled mini-batches (``gen`` draws the
    order; an incomplete last batch is dropped); returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def train_scorer(train_x, train_y, num_classes: int, test_x=None, test_y=None, epochs: int = 12,
                 batch_size: int = 64, lr: float = 1e-3, seed: int = 0):
    """Train a :class:`ScoreNet` on images in [0, 1]; returns (model in eval mode, test accuracy
    or nan). Deterministic for a given seed (its own torch generator; global RNG untouched)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ScoreNet(tuple(train_x.shape[1:]), num_classes)
    fit_classifier(model, train_x, train_y, epochs, batch_size, lr, gen)
    acc = float("nan")
    if test_x is not None:
        acc, _ = evaluate(model, test_x, test_y)
    return model, acc


def default_cache_dir() -> str:
    """``$MPIDIST_CACHE``, else ``~/.cache/mpidist``."""
    return os.environ.get("MPIDIST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "mpidist")


def load_or_train_scorer(train_x, train_y, num_classes: int, name: str, test_x=None, test_y=None,
                         cache_dir: str | None = None, epochs: int = 12, seed: int = 0, log=None):
    """The scoring classifier of dataset ``name``, trained once and cached.

    The cache holds ``scorer-<name>-<C>x<H>x<W>-<key>.pt`` (the state dict) and a ``.json`` beside
    it with the file's sha256, the data's fingerprint, the training settings and the test accuracy;
    ``key`` hashes the data fingerprint and the settings. A cached file is used only when its
    sha256 matches the recorded one; otherwise (missing, damaged, edited) the classifier is trained
    again and the cache rewritten atomically. Returns (model in eval mode, info dict with
    ``path``, ``sha256``, ``test_accuracy``, ``cached`` = whether it was loaded)."""
    cache_dir = cache_dir or default_cache_dir()
    fp = data_fingerprint(train_x, train_y)
    settings = {"net": "ScoreNet-v1", "epochs": epochs, "seed": seed, "batch_size": 64,
                "lr": 1e-3, "num_classes": num_classes}
    key = hashlib.sha256(json.dumps([fp, settings], sort_keys=True).encode()).hexdigest()[:16]
    shape = "x".join(str(s) for s in train_x.shape[1:])
    path = os.path.join(cache_dir, f"scorer-{name}-{shape}-{key}.pt")
    meta_path = path[:-3] + ".json"
    model = ScoreNet(tuple(train_x.shape[1:]), num_classes)
    if os.path.exists(path) and os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            digest = file_sha256(path)
            if digest != meta.get("sha256"):
                raise ValueError(f"checksum mismatch (file {digest[:12]}, recorded "
                                 f"{str(meta.get('sha256'))[:12]})")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.eval()
            return model, dict(meta, path=path, cached=True)
        except Exception as e:  # damaged or edited cache: train again
            if log is not None:
                log.warning(f"scoring classifier cache {path} not usable ({e}); training it again")
    model, acc = train_scorer(train_x, train_y, num_classes, test_x, test_y, epochs=epochs,
                              seed=seed)
    meta = {"dataset": name, "data_sha256": fp, "settings": settings, "test_accuracy": acc}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        meta["sha256"] = file_sha256(tmp)
        os.replace(tmp, path)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, meta_path)
    except OSError as e:
        if log is not None:
            log.warning(f"cannot cache the scoring classifier in {cache_dir} ({e}); using it "
                        "uncached")
        path = None
    return model, dict(meta, path=path, cached=False)


class GanScorer:
    """Scores of generated images against real reference images, through a feature network.

    ``net`` maps a batch of images in [0, 1] to (class probabilities [n, K], features [n, f]).
    :meth:`score` returns ``{"score": classifier score, "fid": Frechet distance of features}`` of
    the samples against the reference images (the paper: 500 generated samples against a batch of
    the same size from the test set). ``reference()`` gives the same two numbers for held-out real
    images: the ceiling of the score and the floor of the FID at this sample size.
    """

    def __init__(self, net, reference_x: torch.Tensor, batch_size: int = 500, device="cpu"):
        self.net, self.batch_size, self.device = net, batch_size, device
        _, feats = self.probs_features(reference_x)
        self.ref_x = reference_x
        self.ref_stats = feature_statistics(feats)

    @torch.no_grad()
    def probs_features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        ps, fs = [], []
        for i in range(0, len(x), self.batch_size):
            p, f = self.net(x[i:i + self.batch_size].to(self.device))
            ps.append(p.double().cpu().numpy())
            fs.append(f.double().cpu().numpy())
        return np.concatenate(ps), np.concatenate(fs)

    def score(self, samples: torch.Tensor) -> dict:
        """Scores of generated ``samples`` (images in [0, 1], the reference's shape)."""
        p, f = self.probs_features(samples)
        return {"score": classifier_score(p),
                "fid": frechet_distance(*feature_statistics(f), *self.ref_stats)}

    def reference(self, real_x: torch.Tensor) -> dict:
        """The same scores for real images ``real_x`` (e.g. training images not in the
        reference)."""
        return self.score(real_x)


def classifier_net(model: ScoreNet):
    """A :class:`GanScorer` network from a trained ScoreNet: (softmax, FC-128 features)."""
    model.eval()

    def net(x):
        f = model.features(x)
        return F.softmax(model.head(f), 1), f
    return net


def inception_net(weights_path: str, device="cpu"):
    """A :class:`GanScorer` network from torchvision's Inception-v3 with weights read from a local
    file (e.g. the state dict of ``Inception_V3_Weights.IMAGENET1K_V1``; never downloaded):
    images are resized to 299x299, grey repeated to RGB, normalised with ImageNet's mean and
    std; returns (softmax over the 1000 classes, the 2048 pool features). Scores from these
    weights are not numerically those of the TF Inception graph the paper used."""
    import torchvision
    from .errors import UsageError
    if not os.path.isfile(weights_path):
        raise UsageError(f"--inception-weights {weights_path}: no such file")
    m = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                        transform_input=False)
    try:
        sd = torch.load(weights_path, map_location="cpu", weights_only=True)
        m.load_state_dict(sd.get("state_dict", sd) if isinstance(sd, dict) else sd)
    except Exception as e:
        raise UsageError(f"--inception-weights {weights_path}: not an Inception-v3 state dict "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    m.eval().to(device)
    feats = {}
    m.avgpool.register_forward_hook(lambda mod, i, o: feats.__setitem__("f", o.flatten(1)))
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def net(x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        logits = m((x - mean) / std)
        return F.softmax(logits, 1), feats["f"]
    return net
