"""``python -m mpidist.adacomm``: the flags (the shared vocabulary of :mod:`mpidist.cli` plus the
period's own), the paper's presets, the configuration check and ``main``."""
from __future__ import annotations

import argparse

from .. import cli, runtime
from .rules import METHODS, MOMENTUM_RESTARTS
from .train import time_budget, train

# Section 5: 4 workers, batch 128 per worker, weight decay 5e-4, T0 = 60 s, lr / 10 at epochs
# 80/120/160/200 of 240, local momentum 0.9, block momentum 0.3
_SECTION5 = dict(batch_size=128, weight_decay=5e-4, interval=60.0, time_budget=0.0, epochs=240.0,
                 lr_milestones=[80.0, 120.0, 160.0, 200.0], momentum=0.9, global_momentum=0.3)
PRESETS = {name: dict(_SECTION5, **v) for name, v in {
    "cifar10-vgg16": dict(data="cifar10", model="vgg16", lr=0.2),
    "cifar10-resnet50": dict(data="cifar10", model="resnet50", lr=0.4),
    "cifar100-vgg16": dict(data="cifar100", model="vgg16", lr=0.2),
    "cifar100-resnet50": dict(data="cifar100", model="resnet50", lr=0.4),
}.items()}

#: what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "epochs", "time_budget", "eval_every"})


ABOUT = """\
AdaComm: local-update SGD. Every worker makes tau local SGD steps, then the models are
averaged (PASGD); AdaComm re-chooses tau every T0 seconds of training from the loss,
tau_l = ceil(sqrt(eta_0/eta_l * F(x_l)/F(x_0)) tau_0), halving it on a plateau.
Baselines: fully synchronous SGD and PASGD with a fixed tau."""


def _tau0(s: str):
    return "auto" if s == "auto" else cli.positive_int(s)


def _int_list(s: str) -> list[int]:
    try:
        out = [int(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{s}'")
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError("every candidate tau must be >= 1")
    return out


def make_parser() -> cli.ArgumentParser:
    p = cli.parser("adacomm", ABOUT)
    g = cli.training(p, "AdaComm (Wang & Joshi)", unit="local steps per worker",
                     eval_default="none",
                     steps_help="stop after this many local steps per worker (default: no step "
                                "limit)",
                     epochs_help="stop after this many passes of all workers over the data "
                                 "(default: no epoch limit)")
    g.add_argument("--time-budget", type=cli.nonneg_float, default=None, metavar="SECONDS",
                   help="stop at the first averaging after this many seconds of agreed training "
                        "time; 0 = no time limit. The run ends at whichever of --time-budget, "
                        "--steps and --epochs comes first. Default: 30 s when neither --steps nor "
                        "--epochs is given, else no time limit")
    g.add_argument("--method", choices=METHODS, default="adacomm",
                   help="sync: fully synchronous SGD (gradients averaged every step); pasgd: "
                        "periodic averaging every --tau local steps (Eq. 1); adacomm: tau adapted "
                        "every --interval seconds (Eq. 6 with the refinement) (default adacomm)")
    g.add_argument("--tau", type=cli.positive_int, default=8,
                   help="tau, the communication period of PASGD: local steps between averagings "
                        "(Eq. 1; --method pasgd; default 8)")
    g.add_argument("--tau0", type=_tau0, default=8,
                   help="tau_0, AdaComm's initial period (Eq. 6), or 'auto' for the grid search "
                        "over --tau0-grid, --tau0-search-epochs each (default 8)")
    g.add_argument("--tau0-grid", type=_int_list, default=[1, 2, 4, 8, 16, 32],
                   help="candidate tau_0 values of the grid search (default 1,2,4,8,16,32)")
    g.add_argument("--tau0-search-epochs", type=cli.positive_float, default=2.0,
                   help="epochs each candidate of the grid search runs (paper: one or two; "
                        "default 2)")
    g.add_argument("--interval", type=cli.positive_float, default=5.0, metavar="SECONDS",
                   help="T_0, the wall-clock length of an interval; tau is re-chosen at the first "
                        "averaging of each (paper: 60 s; default 5)")
    g.add_argument("--gamma", type=cli.open_unit_float, default=0.5,
                   help="gamma < 1, the faster decay tau_l = gamma tau_{l-1} when Eq. 6 does not "
                        "lower tau (the refinement; default 1/2)")
    g.add_argument("--slack", type=cli.nonneg_int, default=0,
                   help="s, the refinement's slack: decay by gamma when Eq.6 + s >= tau_{l-1} "
                        "(default 0)")
    g.add_argument("--loss-window", type=cli.positive_int, default=20, metavar="STEPS",
                   help="F(x): each worker's mean mini-batch loss over its last STEPS local steps, "
                        "averaged over workers (default 20)")
    cli.preset_flag(g, PRESETS, "the paper's Section 5 setting: dataset and network, lr 0.2 "
                    "(VGG-16) or 0.4 (ResNet-50), batch 128, weight decay 5e-4, T0 60 s, lr /10 at "
                    "epochs 80/120/160/200, 240 epochs, momentum 0.9 / 0.3; run with 4 workers "
                    "and --data-root")
    o = p.add_argument_group("optimizer (every worker's local SGD)")
    cli.lr_flags(o, default=0.05, what="eta_0, the initial learning rate, 0.2 for VGG-16 and 0.4 "
                                       "for ResNet-50 in the paper")
    o.add_argument("--momentum", type=cli.unit_float, default=0.9,
                   help="local momentum of every worker's SGD; restarted after averagings as "
                        "--momentum-restart says (paper: 0.9; for sync the usual momentum; "
                        "default 0.9)")
    o.add_argument("--momentum-restart", choices=MOMENTUM_RESTARTS, default=MOMENTUM_RESTARTS[0],
                   help="when the local momentum is cleared after an averaging: "
                        "while-tau-above-1: not between two one-step periods, so tau = 1 is "
                        "synchronous momentum SGD; always: after every averaging (the paper's "
                        "sentence read literally; at tau = 1 only the block momentum is left); "
                        "never (default while-tau-above-1)")
    o.add_argument("--global-momentum", type=cli.unit_float, default=0.3,
                   help="beta_glob, the block momentum of Eqs. 7-8 applied at each averaging "
                        "(paper: 0.3; 0 = plain averaging, Eq. 1; default 0.3)")
    o.add_argument("--weight-decay", type=cli.nonneg_float, default=5e-4,
                   help="L2 weight decay (paper and default: 5e-4)")
    o.add_argument("--lr-decay-after-tau1", action=argparse.BooleanOptionalAction, default=True,
                   help="AdaComm: a due learning-rate decay waits until tau has decayed to 1 "
                        "(paper: 'first decay tau to 1, then the learning rate'; default on)")
    m = p.add_argument_group("network and loss (built-in, or your own MODULE:FUNCTION)")
    cli.model_flags(m, default="cnn", what="the network every worker trains, or your own "
                                           "MODULE:FUNCTION(in_shape, num_classes, **model_args)")
    cli.loss_flag(m)
    m.add_argument("--batch-size", type=cli.positive_int, default=32,
                   help="mini-batch per worker (paper: 128; default 32)")
    cli.data_flags(p)
    return p


def check(args, world_size: int) -> str | None:
    """A configuration that cannot run (every rank finds it alike)."""
    if not time_budget(args) and args.steps is None and args.epochs is None:
        return "no stopping rule: give --time-budget, --steps or --epochs"
    if args.method != "adacomm" and args.tau0 == "auto":
        return "--tau0 auto is AdaComm's grid search; use it with --method adacomm"
    return None


class _Defaults:
    """Catches what :func:`mpidist.cli.with_preset` would make a parser's defaults."""

    def __init__(self):
        self.values = {}

    def set_defaults(self, **values):
        self.values.update(values)


def _presets(argv) -> dict:
    """The values ``--preset``/``--paper`` in ``argv`` sets as defaults (explicit flags win)."""
    d = _Defaults()
    cli.with_preset(d, argv, PRESETS)
    return d.values


def main(argv=None) -> None:
    p = make_parser()
    argv = cli.with_preset(p, argv, PRESETS)
    with runtime.start("adacomm", p, argv, check=check, may_change=RESUME_MAY_CHANGE) as run:
        train(run)
