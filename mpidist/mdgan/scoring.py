"""G's scores on rank 0 (nothing is downloaded): the classifier score (the paper's "MNIST score")
and the Frechet distance on the scoring classifier's features, or on Inception-v3's with
``--inception-weights``, on 500 generated samples; for ACGAN the sample accuracy (how many
samples the scoring classifier puts in the class they were generated for); and the samples saved
at the end (an image grid, or a tensor file for data that are not images).

The scoring classifier is trained on the run's own training set: the cached convolutional
``ScoreNet`` of :mod:`mpidist.metrics` for images, a small MLP (:class:`VectorScoreNet`, trained
anew each run, in a second or so for small tables) for a user's data of any other shape. Data
whose labels are not classes (float regression targets, or a single class) get no scores: the
score and the FID both need a classifier of the data's classes (the run says so in one line).
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import metrics, user
from .rules import generate


class VectorScoreNet(nn.Module):
    """The scoring classifier of a user's non-image data: standardisation by the training set's
    mean and std (fixed), then FC 64-ReLU, FC 64-ReLU (the features of the FID), FC classes."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int,
                 features: int = 64):
        super().__init__()
        self.register_buffer("mean", mean.reshape(-1).clone())
        self.register_buffer("std", std.reshape(-1).clamp_min(1e-6).clone())
        d = self.mean.numel()
        self.body = nn.Sequential(nn.Linear(d, features), nn.ReLU(),
                                  nn.Linear(features, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def features(self, x):
        return self.body((x.reshape(len(x), -1) - self.mean) / self.std)

    def forward(self, x):
        return self.head(self.features(x))


def train_vector_scorer(x, y, num_classes: int, test_x=None, test_y=None, steps: int = 600,
                        batch_size: int = 64, lr: float = 1e-3, seed: int = 0):
    """Train a :class:`VectorScoreNet` for ``max(steps, 12 epochs)`` mini-batches of Adam;
    returns (model in eval mode, test accuracy or nan). Deterministic for a given seed; the
    global RNG is untouched."""
    gen = torch.Generator().manual_seed(seed)
    flat = x.reshape(len(x), -1).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VectorScoreNet(flat.mean(0), flat.std(0), num_classes)
    bs = min(batch_size, len(y))
    epochs = max(12, math.ceil(steps / max(1, len(y) // bs)))
    metrics.fit_classifier(model, flat, y, epochs, bs, lr, gen)
    acc = float("nan")
    if test_x is not None:
        acc, _ = metrics.evaluate(model, test_x.reshape(len(test_x), -1).float(), test_y)
    return model, acc


def _is_image(shape) -> bool:
    """[C, H, W] with H, W >= 4: what the convolutional ScoreNet takes."""
    return len(shape) == 3 and shape[1] >= 4 and shape[2] >= 4


def _fork(device):
    """The RNG states restored afterwards (scoring must not change what training draws)."""
    devices = [device] if torch.device(device).type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


class Scoring:
    """Scores of G every ``setup.score_every`` iterations; ``history`` holds (iteration, score,
    FID, live workers, sample accuracy) of every scoring (it goes into rank 0's checkpoints).
    ``enabled`` is False for data without classes: ``what`` then says why, and a scoring only
    records the live workers."""

    def __init__(self, setup, G):
        run, a = setup.run, setup.args
        self.setup, self.G, self.run = setup, G, run
        self.history = []  # (iteration, score, fid, live, sample accuracy)
        self.noise = torch.Generator(device="cpu").manual_seed(a.seed + 7)
        self.n = a.score_samples
        tr, te = setup.train, setup.test
        self.classes = 0        # the scoring classifier's classes (sample accuracy if = G's)
        # a user's data or networks: the scorer draws nothing from the training's RNG
        mine = setup.user_nets or user.is_spec(a.data)
        if not a.inception_weights and (tr.y.is_floating_point() or tr.num_classes < 2):
            self.enabled, self.scorer = False, None
            kind = "float (regression) targets" if tr.y.is_floating_point() else "one class"
            self.what = (f"none: the labels of {tr.name} are {kind}, not classes, and the "
                         "classifier score and FID need a classifier of the data's classes")
            return
        self.enabled = True
        n_ref = min(a.score_samples, len(te))
        ref = te.x[:n_ref]
        t0 = time.monotonic()
        with _fork(setup.device) if mine else _nothing():
            if a.inception_weights:
                net = metrics.inception_net(a.inception_weights, setup.device)
                self.what = f"Inception-v3 from {a.inception_weights}"
            elif _is_image(setup.shape):
                epochs = 12 if len(tr) < 10000 else 3
                model, info = metrics.load_or_train_scorer(
                    tr.x, tr.y, tr.num_classes, f"{tr.name}", te.x, te.y, a.scorer_cache,
                    epochs=epochs, log=run.log)
                model.to(setup.device)
                net = metrics.classifier_net(model)
                self.classes = tr.num_classes
                how = "cached" if info["cached"] else f"trained in {time.monotonic() - t0:.0f} s"
                self.what = (f"scoring classifier on {tr.name} ({how}, test accuracy "
                             f"{info['test_accuracy']:.3f}, sha256 "
                             f"{info.get('sha256', 'uncached')[:12]})")
            else:
                model, acc = train_vector_scorer(tr.x, tr.y, tr.num_classes, te.x, te.y)
                model.to(setup.device)
                net = metrics.classifier_net(model)
                self.classes = tr.num_classes
                self.what = (f"MLP scoring classifier on {tr.name} (inputs of shape "
                             f"{setup.shape}: trained in {time.monotonic() - t0:.1f} s, not "
                             f"cached; test accuracy {acc:.3f})")
            self.scorer = metrics.GanScorer(net, ref.to(setup.device), device=setup.device)
            self.n_ref = n_ref
            real = tr.x[:self.n].to(setup.device)
            self.real = self.scorer.score(real)

    @torch.no_grad()
    def samples(self, n: int, labels=None) -> torch.Tensor:
        """n samples of G in the data's space (the built-in images mapped back to [0, 1]): fixed
        noise, classes spread evenly for ACGAN. G stays in training mode (batch statistics), as
        during training."""
        s, nc = self.setup, self.setup.num_classes
        z = torch.randn(n, s.latent, generator=self.noise).to(s.device)
        if nc and labels is None:
            labels = torch.arange(n) % nc
        if labels is not None:
            labels = labels.to(s.device)
        with _fork(s.device):
            x = generate(self.G, z, labels)
        return ((x + 1) / 2).clamp_(0, 1) if s.scaled else x

    def __call__(self, i: int, live: int = -1) -> dict:
        """Score G after iteration i: ``{"score", "fid"}`` and for ACGAN ``"acc"`` (the sample
        accuracy), each a metric row of step i; {} when the run has no scores."""
        nan = float("nan")
        if not self.enabled:
            self.history.append((i, nan, nan, live, nan))
            return {}
        self.noise.manual_seed(self.setup.args.seed + 7)  # the same noise at every scoring
        x = self.samples(self.n)
        p, f = self.scorer.probs_features(x)
        s = {"score": metrics.classifier_score(p),
             "fid": metrics.frechet_distance(*metrics.feature_statistics(f),
                                             *self.scorer.ref_stats)}
        nc = self.setup.num_classes
        if nc and self.classes == nc:  # classes spread evenly: sample j has class j mod nc
            s["acc"] = float(np.mean(p.argmax(1) == np.arange(len(p)) % nc))
        self.run.metric(i, "score", s["score"])
        self.run.metric(i, "fid", s["fid"])
        if "acc" in s:
            self.run.metric(i, "sample_accuracy", s["acc"])
        self.history.append((i, s["score"], s["fid"], live, s.get("acc", nan)))
        return s

    def save_samples(self, run_dir: str) -> str:
        """The samples of the end: ``samples.png`` (a 10 x 10 grid, one row per class) for
        images, else ``samples.pt`` (``{"x": 10 per class, "labels": ...}``, in the data's
        space)."""
        nc = self.setup.num_classes or 10
        labels = torch.arange(nc).repeat_interleave(10) if self.setup.num_classes else None
        self.noise.manual_seed(self.setup.args.seed + 11)
        x = self.samples(10 * nc, labels).cpu()
        if not (_is_image(self.setup.shape) and self.setup.shape[0] in (1, 3)):
            path = os.path.join(run_dir, "samples.pt")
            torch.save({"x": x, "labels": labels}, path)
            return path
        import torchvision.utils as vu
        path = os.path.join(run_dir, "samples.png")
        if not self.setup.scaled:  # a user's images: to [0, 1] for the picture only
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
        scale = max(1, 48 // x.shape[-1])  # small digits: enlarge (nearest) to be seen
        x = F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x
        vu.save_image(x, path, nrow=10, padding=2, pad_value=1.0)
        return path

    def summary(self, title: str) -> list[str]:
        if not self.enabled:
            return [title, f"  scores: {self.what}"]
        acc = any(not math.isnan(h[4]) for h in self.history)
        lines = [title, f"  {'iteration':>9} {'score':>7} {'FID':>9} {'live':>5}"
                 + (f" {'sample acc':>10}" if acc else "")]
        for i, sc, fid, live, a in self.history:
            lines.append(f"  {i:9d} {sc:7.3f} {fid:9.2f} {live if live >= 0 else '':>5}"
                         + (f" {100 * a:9.1f}%" if acc else ""))
        what = "images" if _is_image(self.setup.shape) else "samples"
        lines.append(f"  real {what}: score {self.real['score']:.3f}, FID {self.real['fid']:.2f} "
                     f"({self.n} training {what} against the {self.n_ref} test {what} of the "
                     "FID reference)")
        return lines


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
