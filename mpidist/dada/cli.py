"""DADA's command line: ``mpirun -n N python -m mpidist.dada`` (rank 0 the source, the others
targets), or ``python -m mpidist.dada --centralized`` for the ADDA baseline in one process."""
from __future__ import annotations

import argparse
import os

from .. import cli, runtime, user
from ..errors import UsageError
from .centralized import adapt_centralized
from .report import summary_centralized
from .rules import STRATEGIES, make_strategy
from .tasks import TASKS, target_rotations
from .train import adapt_distributed

ALGORITHM = "dada"
ABOUT = """\
DADA: ADDA's adversarial domain adaptation split across nodes. Rank 0 holds the labelled
source domain, every other rank an unlabelled target domain; after one initial transfer of
the networks only the discriminator's gradients (or weights) cross the network, every p
steps. --centralized runs the ADDA baseline in one process."""

# what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "eval_every"})


def _reword(p, dest: str, **attrs) -> None:
    """Give the shared flag ``dest`` DADA's own type, default or help (argparse has no public way
    to change an option once added)."""
    for action in p._actions:
        if action.dest == dest:
            for name, value in attrs.items():
                setattr(action, name, value)


def build_parser() -> cli.ArgumentParser:
    p = cli.parser(ALGORITHM, ABOUT)
    g = cli.training(p, "DADA (Algorithms 1 and 2, Table 1)", default_steps=1500)
    _reword(p, "steps", type=cli.positive_int, default=1500,
            help="N, the number of adaptation steps (Alg. 1 line 2; default 1500)")
    _reword(p, "eval_every", type=cli.positive_int, default=100,
            help="log each target's accuracy every this many steps (metric target_acc; default "
                 "100, and always at the end)")
    _reword(p, "epochs", help=argparse.SUPPRESS)  # DADA counts steps N: refused by check()
    g.add_argument("--strategy", choices=list(STRATEGIES), default=None,
                   help="how the discriminators D_s and D_t are kept in step (Table 1): sync "
                        "(average D's gradients every step: centralized ADDA), ga (Gradient "
                        "Accumulation: DADA itself), naive (average D's weights every p steps), "
                        "ma (Moving Average towards D_sync), dpsgd (the D-PSGD baseline); "
                        "default ga")
    g.add_argument("--sync-period", type=cli.positive_int, default=None, metavar="P",
                   help="p, the sync-up step: exchange when n %% p == 0 (Alg. 1 line 7); "
                        "default 2 for ga/naive/ma, sync and dpsgd are p = 1")
    g.add_argument("--centralized", action="store_true",
                   help="the ADDA baseline: one process (mpirun -n 1) with every domain and ONE "
                        "discriminator")
    g.add_argument("--batch-size", type=cli.positive_int, default=64,
                   help="size of the batches xi_s, xi_t (Alg. 1 line 3; default 64)")
    g.add_argument("--lr-disc", type=cli.positive_float, default=2e-4,
                   help="Adam learning rate of D (ADDA's 2e-4, beta1 0.5); with ga and p > 1, "
                        "p times it keeps D as fast as E_t (README: GA with D's learning rate)")
    g.add_argument("--lr-target", type=cli.positive_float, default=2e-4,
                   help="Adam learning rate of the target extractor E_t (ADDA's 2e-4, beta1 0.5)")
    g.add_argument("--pretrain-steps", type=cli.nonneg_int, default=300,
                   help="steps of the source's supervised pre-training of E_s and C_s "
                        "(default 300)")
    g.add_argument("--pretrain-lr", type=cli.positive_float, default=1e-3,
                   help="Adam learning rate of the pre-training (default 1e-3)")
    t = p.add_argument_group("task (the source and target domains)")
    t.add_argument("--task", choices=list(TASKS), default="digits-rot",
                   help="; ".join(f"{k}: {v.about}" for k, v in TASKS.items())
                        + " (default digits-rot: embedded data, no network)")
    t.add_argument("--rotation", type=float, nargs="+", default=None, metavar="DEG",
                   help="rotated tasks: the target's rotation in degrees, one for every target or "
                        "one per target rank (default 30 for digits-rot, 60 for mnist-rot)")
    t.add_argument("--extractor-weights", default=None, metavar="PATH",
                   help="a state dict to start the source extractor E_s from before its "
                        "pre-training (e.g. torchvision's ImageNet ResNet-50 for the Office-31 "
                        "tasks; its fc.* entries are ignored); the targets receive E_s as usual")
    u = p.add_argument_group(
        "your own domains and networks (MODULE:FUNCTION, imported on every rank; "
        "see mpidist/dada/README.md)")
    u.add_argument("--source-data", type=_spec, default=None, metavar="MODULE:FUNCTION",
                   help="the labelled source domain (rank 0): FUNCTION(root) -> (train, test[, "
                        "num_classes]), torch Datasets of (input, integer label); root is "
                        "--data-root. Needs --target-data; replaces --task")
    u.add_argument("--target-data", type=_spec, default=None, metavar="MODULE:FUNCTION",
                   help="the target domain(s), same form; labels are used only for the reported "
                        "accuracy. FUNCTION(root, index) when it takes a second argument: target "
                        "rank i gets FUNCTION(root, i), whole; else every target gets its "
                        "disjoint part of FUNCTION(root)'s training set (and its whole test set)")
    u.add_argument("--extractor", type=_spec, default=None, metavar="MODULE:FUNCTION",
                   help="E: FUNCTION(in_shape) -> nn.Module giving features [batch, F] (default "
                        "the task's ADDA extractor, LeNet on images)")
    u.add_argument("--classifier", type=_spec, default=None, metavar="MODULE:FUNCTION",
                   help="C: FUNCTION(feature_dim, num_classes) -> nn.Module giving class logits "
                        "(default the task's; a linear layer on your own extractor)")
    u.add_argument("--discriminator", type=_spec, default=None, metavar="MODULE:FUNCTION",
                   help="D: FUNCTION(feature_dim) -> nn.Module giving one domain logit [batch, 1] "
                        "(default ADDA's 500-500 discriminator)")
    cli.data_flags(p)  # --data-root, --download, --image-size
    _reword(p, "data_root", help="folder holding MNIST/USPS/SVHN in torchvision's layout, or "
                                 "Office-31 as <root>/<domain>/images/<class>/*.jpg")
    _reword(p, "image_size", help="pixels a side for both domains (default: the task's, 16 for "
                                  "digits-rot)")
    _reword(p, "data", default=None, help=argparse.SUPPRESS)  # --task chooses: refused by check()
    return p


make_parser = build_parser  # the name tests and tools use


def _spec(s: str) -> str:
    """A ``MODULE:FUNCTION`` reference (imported when the run starts)."""
    if not user.is_spec(s) or s.startswith(":") or s.endswith(":"):
        raise argparse.ArgumentTypeError(f"expected MODULE:FUNCTION, got '{s}'")
    return s


def check(args, world_size: int) -> str | None:
    """Configuration errors that every rank sees alike (runtime.start prints them on rank 0)."""
    task = TASKS[args.task]
    if args.epochs is not None:
        return ("--epochs: DADA runs N adaptation steps on a batch of every domain each "
                "(Algorithm 1 line 2); give --steps")
    if args.data is not None:
        return (f"--data: DADA has a source and a target domain: give --source-data and "
                f"--target-data (MODULE:FUNCTION each), or --task (known: {', '.join(TASKS)})")
    if bool(args.source_data) != bool(args.target_data):
        given, missing = (("--source-data", "--target-data") if args.source_data
                          else ("--target-data", "--source-data"))
        return f"{given} needs {missing} too: DADA adapts from a source domain to a target domain"
    if args.source_data:
        if args.task != "digits-rot":
            return (f"--task {args.task} and --source-data/--target-data: choose one (your "
                    "own domains replace the task)")
        if args.rotation:
            return ("--rotation applies to the built-in rotated tasks; with --target-data your "
                    "FUNCTION makes the target domain (FUNCTION(root, index) for one per target)")
    external = [] if args.source_data else sorted({task.source, task.target} - {"digits"})
    if external and args.data_root is None:
        return (f"--task {args.task} needs --data-root, the folder holding "
                f"{' and '.join(external)} "
                f"(torchvision's layout; Office-31 as <root>/<domain>/images/<class>/); "
                f"the default task digits-rot needs none")
    if args.extractor_weights and not os.path.isfile(args.extractor_weights):
        return f"--extractor-weights {args.extractor_weights}: no such file"
    if args.rotation and not task.rotated:
        return f"--rotation applies to the rotated tasks (digits-rot, mnist-rot), not {args.task}"
    if args.centralized:
        if world_size != 1:
            return ("--centralized runs ADDA in ONE process with every domain: launch it with "
                    "mpirun -n 1 (or plain python)")
        if args.strategy or args.sync_period:
            return "--centralized has one discriminator: --strategy/--sync-period do not apply"
        if args.resume or args.checkpoint_every or args.checkpoint_seconds:
            return "--centralized (a short one-process baseline) does not checkpoint or resume"
        return None
    if world_size < 2:
        return ("DADA needs 2 or more ranks (rank 0 the source, the others targets): mpirun -n 2 "
                "python -m mpidist.dada; or --centralized for the one-process ADDA baseline")
    try:
        make_strategy(args.strategy or "ga", args.sync_period)
        if task.rotated:
            target_rotations(args, world_size - 1)
    except UsageError as e:
        return str(e)
    return None


def main(argv=None) -> dict:
    with runtime.start(ALGORITHM, build_parser(), argv, check=check,
                       may_change=RESUME_MAY_CHANGE) as run:
        if run.args.centralized:
            res = adapt_centralized(run.args, run.device, run=run)
            summary_centralized(run, res)
        else:
            res = adapt_distributed(run)
    return res
