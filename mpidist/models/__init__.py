"""The model zoo, by name: ``build("cnn", in_shape=(1, 16, 16), num_classes=10)``.

Small CPU defaults (``small.py``) and the papers' CIFAR networks (``cifar.py``). Every builder takes
``in_shape`` (C, H, W) and ``num_classes``; an unknown name raises an error listing the known ones.
"""
from __future__ import annotations

import torch.nn as nn

MODELS: dict = {}


def register(name: str):
    """Decorator: make a builder ``f(in_shape, num_classes, **kw) -> nn.Module`` known by name."""
    def deco(f):
        MODELS[name] = f
        return f
    return deco


def build(name: str, in_shape, num_classes: int, **kw) -> nn.Module:
    """The zoo's model ``name``, or a user's ``MODULE:FUNCTION`` (:func:`mpidist.user.build_model`)."""
    from .. import user
    if user.is_spec(name):
        return user.build_model(name, in_shape, num_classes, **kw)
    if name not in MODELS:
        from ..errors import UsageError
        raise UsageError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[name](tuple(in_shape), num_classes, **kw)


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


from . import cifar, small  # noqa: E402,F401  (they register their models)
from . import adda  # noqa: E402,F401  (DADA: ADDA extractor, classifier, discriminator)
from . import gan  # noqa: E402,F401  (MD-GAN: generators and discriminators)

#: the zoo's classifiers (small.py, cifar.py): what a classification algorithm's --model offers
CLASSIFIERS = sorted(name for name, build in MODELS.items()
                     if build.__module__ in (small.__name__, cifar.__name__))
