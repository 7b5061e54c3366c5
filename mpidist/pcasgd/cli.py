"""``python -m mpidist.pcasgd``: the flags (the shared vocabulary of :mod:`mpidist.cli` plus the
paper's variants, delay and topology), the presets, the world-size check and ``main``. The run
itself (:func:`mpidist.pcasgd.train.train`) drives :class:`mpidist.pcasgd.PCASGD`, the object a
user's own script wraps around its model."""
from __future__ import annotations

import argparse

from .. import cli, models, runtime, topology
from .rules import CRITERIA, VARIANTS, get_variant
from .train import DEFAULT_STEPS, train

#: The paper's settings (Sec. 5.2) with one flag. Training details follow bearpaw's
#: pytorch-classification, which the paper cites for its CIFAR settings (its Appendix E with the
#: exact values is not in our copy): SGD with momentum 0.9, weight decay 1e-4, learning rate 0.1
#: divided by 10 at 50% and 75% of the epochs, random crop and horizontal flip.
PRESETS = {
    "cifar10-preresnet110": dict(data="cifar10", model="preresnet110", batch_size=128, lr=0.1,
                                 momentum=0.9, weight_decay=1e-4, epochs=164,
                                 lr_milestones=[81.0, 122.0], augment=True),
    "cifar100-preresnet110": dict(data="cifar100", model="preresnet110", batch_size=128, lr=0.1,
                                  momentum=0.9, weight_decay=1e-4, epochs=164,
                                  lr_milestones=[81.0, 122.0], augment=True),
    "cifar10-densenet": dict(data="cifar10", model="densenet", batch_size=64, lr=0.1,
                             momentum=0.9, weight_decay=1e-4, epochs=300,
                             lr_milestones=[150.0, 225.0], augment=True),
    "cifar100-densenet": dict(data="cifar100", model="densenet", batch_size=64, lr=0.1,
                              momentum=0.9, weight_decay=1e-4, epochs=300,
                              lr_milestones=[150.0, 225.0], augment=True),
}

CLASSIFIERS = models.CLASSIFIERS  # what --model offers

#: what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "epochs", "eval_every", "show_topology"})

_STEPS_FLAGS = ("--steps", "-I", "--iterations")


ABOUT = """\
PC-ASGD: agents on a graph split into reliable clusters; a neighbour in another cluster
is seen tau steps late. Each step an agent either predicts such a neighbour's current
state from its stale one (predicting step, Eq. 2's delay-compensated gradient) or leaves
it out (clipping step), taking the update better aligned with -gradient (Eq. 12)."""


def build_parser() -> cli.ArgumentParser:
    p = cli.parser("pcasgd", ABOUT)
    g = cli.training(p, "PC-ASGD (Algorithm 1, Eq. 2, Eq. 12)", default_steps=DEFAULT_STEPS,
                     unit="iterations t")
    g.add_argument("--variant", choices=list(VARIANTS), default="pc",
                   help="pc: PC-ASGD, theta_t by the criterion of Eq. 12; p: P-ASGD (theta = 1, "
                        "predicting only); c: C-ASGD (theta = 0, clipping only); dasgd: the "
                        "D-ASGD baseline, stale neighbour parameters used as they are "
                        "(default pc)")
    g.add_argument("--theta", type=cli.unit_float, default=None,
                   help="fix the tradeoff parameter theta_t in [0, 1] of line 8 (with --variant pc; "
                        "default: chosen each step by Eq. 12)")
    g.add_argument("--criterion", choices=CRITERIA, default="descent",
                   help="how --variant pc reads Eq. 12: descent (default; predicting when its update "
                        "is at least as aligned with -g as clipping's, as the paper's text says) or "
                        "printed (the inequality as typeset, cosines with +g)")
    g.add_argument("--delay", type=cli.nonneg_int, default=20, metavar="TAU",
                   help="tau, the delay in steps of unreliable neighbours (Def. 2), exactly "
                        "emulated; 0: no delay, every neighbour reliable (default 20)")
    g.add_argument("--lam", type=cli.left_open_unit_float, default=0.5, metavar="LAMBDA",
                   help="lambda of Eq. 2, the scale of the Hessian estimate lambda g (.) g, in "
                        "(0, 1] (default 0.5)")
    cli.lr_flags(g, default=0.1, what="eta, the learning rate of lines 6-7")
    g.add_argument("--momentum", type=cli.nonneg_float, default=0.0,
                   help="heavy-ball momentum on the local gradient term of lines 6-7; not part of "
                        "Algorithm 1 (default 0 = the paper's update)")
    g.add_argument("--weight-decay", type=cli.nonneg_float, default=0.0,
                   help="L2 weight decay added to g_i (default 0)")
    g.add_argument("--batch-size", type=cli.positive_int, default=16,
                   help="mini-batch per agent (default 16)")
    cli.model_flags(g, default="cnn", known=CLASSIFIERS,
                    what="the network whose parameters are x, or your MODULE:FUNCTION(in_shape, "
                         "num_classes, **model_args) -> torch.nn.Module")
    cli.loss_flag(g)
    g.add_argument("--augment", action="store_true",
                   help="random crop (padding 4) and horizontal flip of training images")
    cli.preset_flag(g, PRESETS, what="the paper's settings (Sec. 5.2): dataset, network, batch "
                    "size, learning rate and schedule, epochs (needs --data-root with the "
                    "dataset; runs on GPU when present)")
    t = p.add_argument_group("topology (Sec. 5.2)")
    t.add_argument("--clusters", default=None, metavar="SIZES",
                   help="sizes of the reliable clusters of consecutive ranks, e.g. 3,5; their sum "
                        "must equal the number of ranks (default: the paper's network for 5, 8 or "
                        "20 agents: 3,2 / 3,5 / 6,6,6,2; two halves for any other number, e.g. "
                        "2,2 for 4)")
    t.add_argument("--graph", choices=topology.GRAPHS, default="full",
                   help="the graph of agents: full (fully connected, the paper's), ring or "
                        "exponential (i ~ i +- 2^k) (default full)")
    t.add_argument("--mixing", choices=topology.MIXINGS, default="lazy",
                   help="mixing matrices W, W~: lazy = (I + Metropolis-Hastings)/2 (Assumption 2 "
                        "in full: symmetric, doubly stochastic, I >= W > 0) or metropolis (plain "
                        "averaging on the full graph) (default lazy)")
    t.add_argument("--shards", default="iid", type=shards_spec, metavar="iid|clusters:F",
                   help="how the training set is split over agents: iid (a random equal part "
                        "each, the paper's) or clusters:F (class k belongs to cluster k mod C and "
                        "stays there with probability F, so clusters see different class mixes "
                        "and need their delayed neighbours; F = 1 disjoint classes) (default iid)")
    t.add_argument("--show-topology", action="store_true",
                   help="print the clusters, neighbours, W and W~ (Assumption 2) and exit")
    cli.data_flags(p)
    return p


def shards_spec(text: str):
    """``--shards``: "iid" -> None, "clusters:F" -> F in [0, 1]."""
    if text == "iid":
        return None
    kind, _, frac = text.partition(":")
    try:
        f = float(frac)
    except ValueError:
        f = -1.0
    if kind != "clusters" or not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(
            f"'{text}': give iid or clusters:F with F in [0, 1] (e.g. clusters:0.8)")
    return f


def with_preset(p: cli.ArgumentParser, argv) -> list[str]:
    """Apply ``--preset``'s values as defaults, so that explicit flags still override them; an
    explicit ``--steps`` replaces the preset's epochs."""
    def adjust(values, argv):
        if cli.given(argv, *_STEPS_FLAGS):
            del values["epochs"]
    return cli.with_preset(p, argv, PRESETS, adjust)


def check(args, world: int) -> str | None:
    """Every rank alike: the clusters must fit the world size, --theta only with pc, --model a
    classifier."""
    if world == 1 and args.clusters is None:
        return ("PC-ASGD needs several agents, one per rank: launch it as mpirun -n 8 python -m "
                "mpidist.pcasgd (the paper's network 1: 8 agents in clusters 3,5)")
    clusters = None if args.clusters is None else topology.parse_clusters(args.clusters)
    topology.build(world, clusters, args.graph, args.delay, args.mixing)  # raises TopologyError
    get_variant(args.variant, args.theta, args.criterion)
    if args.steps is not None and args.epochs is not None:
        return "give --steps or --epochs, not both"
    if args.model in models.MODELS and args.model not in CLASSIFIERS:
        return (f"--model {args.model} is not a classifier; PC-ASGD trains one of "
                f"{', '.join(CLASSIFIERS)} (or a MODULE:FUNCTION of yours)")
    return None


def main(argv=None) -> None:
    p = build_parser()
    argv = with_preset(p, argv)
    with runtime.start("pcasgd", p, argv, check=check, may_change=RESUME_MAY_CHANGE) as run:
        train(run)
