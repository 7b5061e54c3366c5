"""PC-ASGD, predicting-clipping asynchronous SGD: agents on a graph split into reliable clusters,
neighbours in other clusters tau steps late; each step an agent takes the predicting step (stale
neighbours extrapolated with a delay-compensated gradient, Eq. 2), the clipping step (stale
neighbours dropped), or a mix, chosen by Eq. 12.

Paper: "Asynchronous Training Schemes in Distributed Learning with Time Delay" (Algorithm 1,
Eq. 2, Eq. 12). Theory, flags, trace channels, tests, results: README.md here.

In your own training script (every rank under ``mpirun`` is one agent), :class:`PCASGD` wraps your
model and does the exchange and update of a step from your gradients::

    agent = mpidist.pcasgd.PCASGD(run, model, steps=T, delay=20, clusters=(3, 5), lr=0.1)
    ...  loss.backward(); agent.step(t)  ...  agent.finish()

(example: ``mpirun -n 4 python -m mpidist.pcasgd.example``).

Modules: ``rules`` (variants, Eq. 2, Eq. 12, lines 6-8, pure), ``exchange`` (what moves to whom
and when through :mod:`mpidist.comm`), ``agent`` (one step of an agent on flat tensors),
``wrapper`` (:class:`PCASGD`, the agent around a user's model), ``train`` (the command line's run
on :class:`mpidist.loop.Loop`), ``cli`` (flags, presets, ``main``), ``example`` (a user's script).
"""
from .agent import Agent, StepInfo  # noqa: F401
from .cli import (CLASSIFIERS, PRESETS, RESUME_MAY_CHANGE, build_parser, check, main,  # noqa: F401
                  with_preset)
from .exchange import (TAG_RELIABLE, TAG_UNRELIABLE_GRADS, TAG_UNRELIABLE_PARAMS,  # noqa: F401
                       Exchange, Mailbox, Outbox)
from .rules import (CRITERIA, VARIANTS, ParamHistory, UpdateRule, Variant,  # noqa: F401
                    compensated_gradient, criterion, descent_cosine, get_variant)
from .train import DEFAULT_STEPS, augment_crop_flip, lr_at, train  # noqa: F401
from .wrapper import MEET_EVERY, PCASGD  # noqa: F401

_with_preset = with_preset  # the name tests/*/test_pcasgd.py calls
