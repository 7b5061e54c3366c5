"""``python -m mpidist.dpsgd``: the flags (shared vocabulary from :mod:`mpidist.cli` plus the
graph; ``--model``/``--data``/``--loss`` also take a user's ``MODULE:FUNCTION``) and ``main``."""
from __future__ import annotations

from .. import cli, runtime, topology
from .train import DEFAULT_STEPS, train

#: what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "epochs", "eval_every"})


ABOUT = """\
D-PSGD: n workers on a graph. Every iteration each worker computes a stochastic
gradient at its own model while it exchanges models with its neighbours, then averages
them with the weights of a symmetric doubly stochastic W and steps:
x_i <- sum_j W_ij x_j - eta g_i(x_i)."""


def build_parser() -> cli.ArgumentParser:
    p = cli.parser("dpsgd", ABOUT)
    g = cli.training(p, "D-PSGD (Algorithm 1)", default_steps=DEFAULT_STEPS, unit="iterations k")
    cli.model_flags(g, default="cnn", what="the network whose parameters are x: a name, or "
                    "your own MODULE:FUNCTION(in_shape, num_classes, **model_args)")
    cli.loss_flag(g)
    cli.lr_flags(g, default=0.1, what="eta, the step size of line 5")
    g.add_argument("--batch-size", type=cli.positive_int, default=16, metavar="M",
                   help="mini-batch size of each worker's stochastic gradient (default 16)")
    t = p.add_argument_group("graph and mixing matrix W")
    t.add_argument("--graph", choices=topology.GRAPHS, default="ring",
                   help="who exchanges with whom: ring (i ~ i+-1, default), full, exponential "
                        "(i ~ i+-2^k)")
    t.add_argument("--mixing", choices=topology.MIXINGS, default="metropolis",
                   help="W's weights: metropolis, w_ij = 1/(1 + max(d_i, d_j)) (default; on a "
                        "ring 1/3 for the worker and each neighbour), or lazy, (I + that) / 2")
    cli.data_flags(p)
    return p


def check(args, world: int) -> str | None:
    """A configuration that does not fit the world size (every rank finds it alike)."""
    topology.build(world, (world,), args.graph, 0, args.mixing)  # raises TopologyError
    if args.steps is not None and args.epochs is not None:
        return "give --steps or --epochs, not both"
    return None


def main(argv=None) -> None:
    with runtime.start("dpsgd", build_parser(), argv, check=check,
                       may_change=RESUME_MAY_CHANGE) as run:
        train(run)
