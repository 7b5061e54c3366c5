"""DADA's adaptation tasks (``--task``): which datasets are the source and the target domains, and
how a node loads its own domain (the source on rank 0, target i on rank i); or a user's own
domains (``--source-data MODULE:FUNCTION``, ``--target-data MODULE:FUNCTION``)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from .. import data, user
from ..errors import UsageError


@dataclass(frozen=True)
class Task:
    """One adaptation task of the paper: datasets (names of :func:`mpidist.data.load`), the image
    size and channels both domains are brought to, and the ADDA network."""
    source: str
    target: str
    size: int
    channels: int
    model: str
    rotated: bool = False   # the target is the source dataset rotated by --rotation degrees
    about: str = ""
    rotation: float = 0.0   # the default --rotation of a rotated task


TASKS = {
    "digits-rot": Task("digits", "digits", 16, 1, "adda-lenet", True,
                       "embedded UCI digits, upright -> rotated (Rotated MNIST in miniature)",
                       30.0),
    "mnist-rot": Task("mnist", "mnist", 28, 1, "adda-lenet", True,
                      "Rotated MNIST, 0 degrees -> 60..300 (Table 2)", 60.0),
    "mnist-usps": Task("mnist", "usps", 28, 1, "adda-lenet", False, "MNIST -> USPS (Table 3)"),
    "usps-mnist": Task("usps", "mnist", 28, 1, "adda-lenet", False, "USPS -> MNIST (Table 3)"),
    "svhn-mnist": Task("svhn", "mnist", 32, 1, "adda-lenet", False,
                       "SVHN -> MNIST, both grey 32x32 (Table 3)"),
    "office-a-w": Task("office31-amazon", "office31-webcam", 224, 3, "adda-resnet50", False,
                       "Office-31 Amazon -> Webcam (Table 3)"),
    "office-w-d": Task("office31-webcam", "office31-dslr", 224, 3, "adda-resnet50", False,
                       "Office-31 Webcam -> DSLR (Table 3)"),
    "office-d-w": Task("office31-dslr", "office31-webcam", 224, 3, "adda-resnet50", False,
                       "Office-31 DSLR -> Webcam (Table 3)"),
}
_SPLIT_SEED = 20190  # the fixed split of a rotated task's images into source and target parts


@dataclass
class Domain:
    """One node's data: ``index`` 0 is the source, 1..k the targets."""
    index: int
    label: str
    rotation: float
    train: data.Dataset
    test: data.Dataset


def target_rotations(args, k: int) -> list[float]:
    """The rotation of each of the k targets of a rotated task: ``--rotation`` holds one angle
    (every target) or one per target."""
    rot = args.rotation if args.rotation else [TASKS[args.task].rotation]
    if len(rot) not in (1, k):
        raise UsageError(f"--rotation gives {len(rot)} angles for {k} target(s): give one angle "
                         f"(every target) or one per target")
    return [float(r) for r in (rot * k if len(rot) == 1 else rot)]


def num_targets(args, world_size: int) -> int:
    """k: every rank but the source in a distributed run; in --centralized, one target per
    --rotation angle (rotated tasks) or one."""
    if args.centralized:
        return len(args.rotation) if (TASKS[args.task].rotated and args.rotation) else 1
    return world_size - 1


def user_domains(args) -> bool:
    """Whether the domains are the user's own (``--source-data``/``--target-data``)."""
    return bool(getattr(args, "source_data", None))


def takes_index(fn) -> bool:
    """Whether a ``--target-data`` FUNCTION accepts a second positional argument, the target's
    index: ``FUNCTION(root, index)``."""
    try:
        inspect.signature(fn).bind(None, 1)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (some builtins): call it with root alone
        return False
    return True


def _reflag(e: UsageError, spec: str, flag: str) -> UsageError:
    """mpidist.user names the flag ``--data``; DADA's user said ``--source-data`` or
    ``--target-data``."""
    return UsageError(str(e).replace(f"--data {spec}", f"{flag} {spec}", 1))


def _user_sets(spec: str, flag: str, root, size, index: int | None):
    """(train, test) :class:`mpidist.data.Dataset` of ``FUNCTION(root)`` or, when ``index`` is
    given, ``FUNCTION(root, index)`` (checked by :mod:`mpidist.user` alike)."""
    if index is None:
        try:
            return (data.load(spec, root, train=True, size=size),
                    data.load(spec, root, train=False, size=size))
        except UsageError as e:
            raise _reflag(e, spec, flag) from None
    got = user.resolve(spec, flag)(root, index)
    if not (isinstance(got, (tuple, list)) and len(got) in (2, 3)):
        raise UsageError(f"{flag} {spec}: FUNCTION(root, {index}) returned {type(got).__name__}, "
                         "expected (train, test) or (train, test, num_classes)")
    try:
        (xtr, ytr), (xte, yte) = (user._stack(got[0], spec, "train"),
                                  user._stack(got[1], spec, "test"))
    except UsageError as e:
        raise _reflag(e, spec, flag) from None
    if ytr.is_floating_point() or yte.is_floating_point():
        raise UsageError(f"{flag} {spec}: float labels; DADA adapts a classifier: give integer "
                         "class labels")
    ytr, yte = ytr.long(), yte.long()
    k = int(got[2]) if len(got) == 3 else int(max(ytr.max(), yte.max())) + 1
    if int(min(ytr.min(), yte.min())) < 0 or int(max(ytr.max(), yte.max())) >= k:
        raise UsageError(f"{flag} {spec}: labels must lie in 0..{k - 1}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise UsageError(f"{flag} {spec}: train inputs {tuple(xtr.shape[1:])} and test inputs "
                         f"{tuple(xte.shape[1:])} differ in shape")
    if xtr.dim() == 4 and size:
        xtr, xte = data.resize(xtr, size), data.resize(xte, size)
    name = f"{spec}({index})"
    return (data.Dataset(xtr.contiguous(), ytr, name, k),
            data.Dataset(xte.contiguous(), yte, name, k))


def load_user_domain(args, index: int, k: int) -> Domain:
    """Domain ``index`` of a user's task: the source (index 0) is ``--source-data``'s
    ``FUNCTION(root)``, whole. Target i (1..k) is ``--target-data``'s ``FUNCTION(root, i)``, whole,
    when FUNCTION takes a second argument; otherwise ``FUNCTION(root)`` is the one target domain,
    its training set split into k disjoint parts (target i holds the i-th, as for the built-in
    tasks: no sample is on two nodes) and its whole test set tested on by every target."""
    root, size = args.data_root, args.image_size
    if index == 0:
        train, test = _user_sets(args.source_data, "--source-data", root, size, None)
    else:
        spec = args.target_data
        by_index = takes_index(user.resolve(spec, "--target-data"))
        train, test = _user_sets(spec, "--target-data", root, size, index if by_index else None)
        if not by_index:
            perm = np.random.default_rng(_SPLIT_SEED).permutation(len(train))
            train = train.subset(np.array_split(perm, k)[index - 1])
    if train.y.is_floating_point():
        flag = "--source-data" if index == 0 else "--target-data"
        raise UsageError(f"{flag} {train.name}: float labels; DADA adapts a classifier: give "
                         "integer class labels")
    return Domain(index, train.name, 0.0, train, test)


def load_domain(args, index: int, k: int) -> Domain:
    """Domain ``index`` of a task with k targets, as the node that owns it loads it.

    Rotated tasks: the training images are split once (fixed seed) into a source half and a target
    half, the target half into k disjoint parts, so that no image is on two nodes; the target's
    test set is the test set rotated by its angle. Other tasks: the source uses its whole training
    set, target i the i-th of k disjoint parts of the target's, tested on the target's test set.
    """
    if user_domains(args):
        return load_user_domain(args, index, k)
    task = TASKS[args.task]
    size = args.image_size or task.size

    def get(name, train, rot=0.0):
        return data.load(name, root=args.data_root, download=args.download, train=train,
                         size=size, channels=task.channels, rotate_deg=rot)
    if task.rotated:
        rot = 0.0 if index == 0 else target_rotations(args, k)[index - 1]
        train = get(task.source, True, rot)
        halves = np.array_split(np.random.default_rng(_SPLIT_SEED).permutation(len(train)), 2)
        part = halves[0] if index == 0 else np.array_split(halves[1], k)[index - 1]
        label = f"{task.source} {rot:g} deg"
        return Domain(index, label, rot, train.subset(part), get(task.source, False, rot))
    name = task.source if index == 0 else task.target
    train = get(name, True)
    if index > 0:
        perm = np.random.default_rng(_SPLIT_SEED).permutation(len(train))
        train = train.subset(np.array_split(perm, k)[index - 1])
    return Domain(index, name, 0.0, train, get(name, False))
