"""The learning task of a supervised run, shared by every algorithm: data, model, loss, evaluation.

``--data`` (a built-in name or a user's ``MODULE:FUNCTION``), ``--model`` with ``--model-arg``
(the zoo or ``MODULE:FUNCTION``) and ``--loss`` (cross_entropy, mse or ``MODULE:FUNCTION``) become
one :class:`Task`; before any training the model is run once on one batch so that a model whose
output does not fit the labels is one line, not a traceback in the middle of a step
(:func:`mpidist.user.check_fit`). Accuracy is reported for classification (cross-entropy) only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import data, models, user
from .errors import UsageError


def build_model(args, in_shape, num_classes: int) -> torch.nn.Module:
    """``--model`` with its ``--model-arg`` keywords; a keyword the builder refuses is one line."""
    kw = dict(getattr(args, "model_arg", None) or [])
    try:
        return models.build(args.model, in_shape, num_classes, **kw)
    except (TypeError, ValueError, RuntimeError) as e:  # a keyword the builder refuses
        flags = " ".join([f"--model {args.model}"] + [f"--model-arg {k}={v}" for k, v in kw.items()])
        raise UsageError(f"{flags}: cannot build it ({e})") from None


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Task:
    train: data.Dataset
    test: data.Dataset
    model: torch.nn.Module
    loss_fn: object                 # (output, target) -> scalar tensor
    loss_name: str
    classification: bool            # accuracy makes sense (cross-entropy on integer labels)

    def describe(self, model_name: str) -> str:
        """``blobs:mlp (195 parameters) on blobs:blobs: 600 training samples of shape (4,)``."""
        return (f"{model_name} ({parameter_count(self.model)} parameters) on {self.train.name}: "
                f"{len(self.train)} training samples of shape {tuple(self.train.x.shape[1:])}")

    def loss(self, output, target) -> torch.Tensor:
        return self.loss_fn(output, target)

    def _summed_loss(self, out, y) -> float:
        """The loss summed over a batch: exactly (sum reduction) for the built-in losses, so
        that the mean over the test set equals :func:`mpidist.metrics.evaluate`'s; a user's
        loss as its value times the batch size."""
        if self.loss_name == "cross_entropy":
            return float(F.cross_entropy(out, y, reduction="sum"))
        if self.loss_name == "mse":
            return float(F.mse_loss(out, y.reshape(out.shape).to(out.dtype), reduction="sum")) \
                / max(1, out[0].numel())
        return float(self.loss_fn(out, y)) * len(y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device="cpu", batch_size: int = 512):
        """(accuracy in [0, 1], or nan for a regression; mean loss per sample) on the test set,
        in eval mode (the model's mode is restored)."""
        was = model.training
        model.eval()
        correct, total, n = 0, 0.0, len(self.test)
        for i in range(0, n, batch_size):
            xb = self.test.x[i:i + batch_size].to(device)
            yb = self.test.y[i:i + batch_size].to(device)
            out = model(xb)
            total += self._summed_loss(out, yb)
            if self.classification:
                correct += int((out.argmax(1) == yb).sum())
        model.train(was)
        acc = correct / max(n, 1) if self.classification else math.nan
        return acc, total / max(n, 1)


def load(args, device="cpu", image_size: int | None = None, channels: int | None = None,
         check_batch: int = 2) -> Task:
    """The task of ``args`` (``--data``, ``--data-root``, ``--download``, ``--image-size``,
    ``--model``, ``--model-arg``, ``--loss``), its model on ``device``, checked with one forward
    pass of ``check_batch`` training samples."""
    size = image_size if image_size is not None else getattr(args, "image_size", None)
    root, download = getattr(args, "data_root", None), getattr(args, "download", False)
    train = data.load(args.data, root, download, True, size, channels)
    test = data.load(args.data, root, download, False, size, channels)
    loss_name = getattr(args, "loss", "cross_entropy")
    loss_fn = user.loss_function(loss_name)
    model = build_model(args, train.shape, train.num_classes).to(device)
    classification = loss_name == "cross_entropy" and not train.y.is_floating_point()
    if loss_name == "cross_entropy" and train.y.is_floating_point():
        raise UsageError(f"--data {args.data} has float (regression) labels: use --loss mse or "
                         "your own --loss MODULE:FUNCTION")
    user.check_fit(model, loss_fn, train.x[:check_batch].to(device),
                   train.y[:check_batch].to(device), args.model, loss_name,
                   train.num_classes if classification else None)
    return Task(train, test, model, loss_fn, loss_name, classification)
