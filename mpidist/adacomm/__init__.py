"""AdaComm: local-update SGD with periodic model averaging and an adaptive communication period.

Paper: "Adaptive Communication Strategies to Achieve the Best Error-Runtime Trade-off in
Local-Update SGD", J. Wang, G. Joshi (Eq. 1 PASGD, Eq. 6 and its refinement, Eqs. 7-8 block
momentum). Theory, flags, trace channels, tests, results: README.md here.

In your own training script: :class:`AdaComm` wraps your model and torch optimizer (``example``
shows it whole). Modules: ``rules`` (the averaging predicate, the tau rule, the learning rate;
pure), ``exchange`` (the one averaged flat buffer and what moves through :mod:`mpidist.comm`),
``optimizer`` (:class:`AdaComm` and the wrapper underneath it, for one's own scripts and the
command line), ``worker`` (one worker's step, the tau_0 grid search), ``train`` (the run on
:class:`mpidist.loop.Loop`), ``cli`` (flags, ``main``), ``example`` (a user's script).
"""
from .. import models  # noqa: F401  (tests build the default network through mpidist.adacomm)
from .cli import PRESETS, RESUME_MAY_CHANGE, _presets, check, main, make_parser  # noqa: F401
from .exchange import CTRL, FlatState, GradientAverager, ModelAverager  # noqa: F401
from .optimizer import FlatSGD, PeriodicAveragingSGD, Report
from .wrapper import AdaComm  # noqa: F401
from .rules import (METHODS, MOMENTUM_RESTARTS, CommSchedule, Interval,  # noqa: F401
                    basic_tau, lr_decays_due, momentum_restart_due, next_tau)
from .train import evaluate_averaged, phase_steps, time_budget, train  # noqa: F401
from .worker import Trainer, search_tau0  # noqa: F401
