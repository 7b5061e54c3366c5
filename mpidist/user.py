"""A user's own model, data and loss, named on the command line as ``MODULE:FUNCTION``.

- ``--model MODULE:FUNCTION``: ``FUNCTION(in_shape, num_classes, **model_args) -> torch.nn.Module``
  (the zoo builders' signature; ``--model-arg KEY=VALUE`` passes keywords);
- ``--data MODULE:FUNCTION``: ``FUNCTION(root) -> (train, test)`` or ``(train, test, num_classes)``,
  where ``train``/``test`` are ``torch.utils.data.Dataset``s of ``(input_tensor, label)`` with inputs
  of any shape (vectors, sequences, images); ``--data-root`` is passed as ``root`` (or None);
- ``--loss cross_entropy|mse|MODULE:FUNCTION``: ``FUNCTION(output, target) -> scalar tensor``.

``MODULE`` is imported the normal Python way on every rank (an installed package, or a file on
``PYTHONPATH`` or in the working directory): **this runs that module's code**, as any import does.
Every mistake is a :class:`~mpidist.errors.UsageError` of one line (the runtime prints it on rank 0
and every rank exits with status 2).
"""
from __future__ import annotations

import importlib
import os
import sys

import torch
import torch.nn.functional as F

from .errors import UsageError

LOSSES = ("cross_entropy", "mse")


def is_spec(name: str) -> bool:
    """Whether ``name`` is a ``MODULE:FUNCTION`` reference rather than a built-in name."""
    return isinstance(name, str) and ":" in name


def resolve(spec: str, flag: str):
    """The function ``MODULE:FUNCTION`` names (imported like any module; the working directory is
    on the path, as for ``python -m``)."""
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise UsageError(f"{flag} {spec}: expected MODULE:FUNCTION")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # the user's module failed to import: say why, in one line
        raise UsageError(f"{flag} {spec}: cannot import module '{mod_name}' "
                         f"({type(e).__name__}: {e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UsageError(f"{flag} {spec}: module '{mod_name}' has no function '{fn_name}'")
    return fn


# ------------------------------------------------------------------------------ models
def build_module(spec: str, flag: str, call, given: str | None = None,
                 signature: str = "") -> torch.nn.Module:
    """``call(FUNCTION)`` for ``flag MODULE:FUNCTION``, checked to give a trainable module.

    A builder that raises TypeError/ValueError/RuntimeError (wrong signature, bad keywords) is
    refused in one line naming what was given (``given``, default ``flag spec``) and the
    ``signature`` it was called with."""
    fn = resolve(spec, flag)
    try:
        module = call(fn)
    except (TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        called = f" as {signature}" if signature else ""
        raise UsageError(f"{given or f'{flag} {spec}'}: cannot build it{called} ({first})") \
            from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{flag} {spec}: returned {type(module).__name__}, expected a "
                         "torch.nn.Module")
    if not any(p.requires_grad for p in module.parameters()):
        raise UsageError(f"{flag} {spec}: the module has no trainable parameters")
    return module


def build_model(spec: str, in_shape, num_classes: int, **kw) -> torch.nn.Module:
    """``FUNCTION(in_shape, num_classes, **kw)`` of ``--model MODULE:FUNCTION``, checked."""
    flags = " ".join([f"--model {spec}"] + [f"--model-arg {k}={v}" for k, v in kw.items()])
    return build_module(spec, "--model", lambda fn: fn(tuple(in_shape), num_classes, **kw),
                        given=flags)


# ------------------------------------------------------------------------------ data
def _stack(ds, spec: str, part: str):
    """(inputs [N, ...] float32, labels [N]) of a torch Dataset of (input, label) pairs."""
    try:
        n = len(ds)
    except TypeError:
        raise UsageError(f"--data {spec}: {part} is a {type(ds).__name__}, expected a "
                         "torch.utils.data.Dataset of (input, label) with a length") from None
    if n == 0:
        raise UsageError(f"--data {spec}: the {part} set is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise UsageError(f"--data {spec}: {part}[{i}] is not an (input, label) pair")
        x, y = item
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(torch.as_tensor(y))
    try:
        x, y = torch.stack(xs), torch.stack(ys)
    except RuntimeError as e:
        raise UsageError(f"--data {spec}: the {part} inputs or labels differ in shape ({e})") \
            from None
    return x.contiguous(), y


def load_dataset(spec: str, root: str | None):
    """(train, test, num_classes) as tensors from ``--data MODULE:FUNCTION``. Integer labels are
    classes (``num_classes`` from the optional third element, else the largest label + 1); float
    labels are regression targets (``num_classes`` = the number of outputs a model needs)."""
    fn = resolve(spec, "--data")
    got = fn(root)
    if not (isinstance(got, (tuple, list)) and len(got) in (2, 3)):
        raise UsageError(f"--data {spec}: returned {type(got).__name__}, expected (train, test) "
                         "or (train, test, num_classes)")
    (xtr, ytr), (xte, yte) = _stack(got[0], spec, "train"), _stack(got[1], spec, "test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise UsageError(f"--data {spec}: train inputs {tuple(xtr.shape[1:])} and test inputs "
                         f"{tuple(xte.shape[1:])} differ in shape")
    if ytr.is_floating_point():
        return (xtr, ytr.float(), xte, yte.float(),
                int(got[2]) if len(got) == 3 else max(1, ytr[0].numel()))
    ytr, yte = ytr.long(), yte.long()
    k = int(got[2]) if len(got) == 3 else int(max(ytr.max(), yte.max())) + 1
    if int(min(ytr.min(), yte.min())) < 0 or int(max(ytr.max(), yte.max())) >= k:
        raise UsageError(f"--data {spec}: labels must lie in 0..{k - 1}")
    return xtr, ytr, xte, yte, k


# ------------------------------------------------------------------------------ loss
def loss_function(spec: str):
    """``--loss``: cross_entropy (classification), mse (regression), or MODULE:FUNCTION."""
    if spec == "cross_entropy":
        return F.cross_entropy
    if spec == "mse":
        return lambda out, y: F.mse_loss(out, y.reshape(out.shape).to(out.dtype))
    if not is_spec(spec):
        raise UsageError(f"--loss {spec}: expected cross_entropy, mse or MODULE:FUNCTION")
    return resolve(spec, "--loss")


def check_fit(model, loss_fn, x, y, model_name: str, loss_name: str,
              num_classes: int | None = None) -> None:
    """One forward pass of one batch before training: the model's output must fit the labels
    under the loss (a one-line UsageError otherwise); with ``num_classes``, a classifier must give
    exactly that many logits. It changes nothing: eval mode (no batch-norm
    statistics updated), no gradient, the RNG states restored (dropout draws nothing for later)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
            value = loss_fn(out, y)
    except Exception as e:  # a shape or dtype mismatch: name the shapes
        shape = tuple(out.shape) if "out" in locals() and hasattr(out, "shape") else "?"
        raise UsageError(f"--model {model_name} does not fit the data under --loss {loss_name}: "
                         f"inputs {tuple(x.shape)}, output {shape}, labels {tuple(y.shape)} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None
    finally:
        model.train(was)
    if num_classes is not None and loss_fn is F.cross_entropy and \
            (out.dim() != 2 or out.shape[1] != num_classes):
        raise UsageError(f"--model {model_name} does not fit the data under --loss {loss_name}: "
                         f"output {tuple(out.shape)}, expected (batch, {num_classes}) for "
                         f"{num_classes} classes")
    if not (isinstance(value, torch.Tensor) and value.numel() == 1):
        raise UsageError(f"--loss {loss_name}: must return a scalar tensor, got "
                         f"{type(value).__name__}")
