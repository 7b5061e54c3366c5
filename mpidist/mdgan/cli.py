"""MD-GAN's command line: ``mpirun -n N+1 python -m mpidist.mdgan`` (rank 0 the server C, ranks
1..N the workers), or ``python -m mpidist.mdgan --mode standalone`` in one process."""
from __future__ import annotations

import argparse
import os

from .. import cli, runtime
from ..models import gan as gan_models
from .rules import batches_per_iteration, crash_period
from .train import train

ALGORITHM = "mdgan"
ABOUT = """\
MD-GAN: one generator G on a server (rank 0), one discriminator D_n per worker (ranks 1..N).
Every iteration the server sends each worker two generated batches and gets back the error
feedback that updates G; every E epochs the workers swap discriminators peer to peer.
--mode flgan: the FL-GAN baseline; --mode standalone: one GAN in one process."""

# what a --resume may change besides the run flags: when to stop, how G is scored, where the
# data files are; everything else (mode, k, b, L, E, Adam, networks, losses, T, data, seed) stays
RESUME_MAY_CHANGE = frozenset({"steps", "eval_every", "score_samples", "scorer_cache",
                               "inception_weights", "data_root", "download", "slow_worker"})
MDGAN_MODES = ("mdgan", "mdgan-async")


class _AsTyped(argparse.Action):
    """Stores ``convert(value)``; a value it refuses is reported under the spelling the user
    typed (``argument -I: must be a positive integer, got 0``), so that the paper's -I and the
    older --score-every keep their messages beside --steps and --eval-every."""
    convert = None

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            converted = self.convert(value)
        except argparse.ArgumentTypeError as e:
            why = str(e)
        except ValueError:  # argparse's own wording
            why = f"invalid {self.convert.__name__} value: {value!r}"
        else:
            setattr(namespace, self.dest, converted)
            return
        raise argparse.ArgumentError(None, f"argument {option_string}: {why}")


def _reword(p, dest: str, convert=None, **attrs) -> None:
    """Give the shared flag ``dest`` MD-GAN's own value check (``convert``, see :class:`_AsTyped`),
    default or help (argparse has no public way to change an option once added)."""
    for action in p._actions:
        if action.dest == dest:
            if convert is not None:
                action.__class__, action.type, action.convert = _AsTyped, None, convert
            for name, value in attrs.items():
                setattr(action, name, value)


def parse_k(s: str):
    return "log2" if s == "log2" else cli.positive_int(s)


def arch(s: str) -> str:
    """``--model``: a built-in pair of networks; a ``MODULE:FUNCTION`` is pointed to the flags
    of MD-GAN's two networks."""
    if ":" in s:
        raise argparse.ArgumentTypeError(
            f"MD-GAN trains two networks: give --generator MODULE:FUNCTION and --discriminator "
            f"MODULE:FUNCTION instead of --model {s} (--model names a built-in pair: "
            f"{', '.join(gan_models.ARCHS)})")
    if s not in gan_models.ARCHS:
        raise argparse.ArgumentTypeError(f"invalid choice: '{s}' (choose from "
                                         f"{', '.join(gan_models.ARCHS)})")
    return s


def slow_worker(s: str) -> tuple[int, float]:
    """``--slow-worker RANK:SECONDS``: (worker rank >= 1, seconds >= 0)."""
    rank, sep, secs = s.partition(":")
    try:
        r, t = int(rank), float(secs)
    except ValueError:
        r, t = 0, -1.0
    if not sep or r < 1 or not t >= 0 or t == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected RANK:SECONDS (a worker rank >= 1 and seconds >= 0), got '{s}'")
    return r, t


def spec(s: str) -> str:
    """``MODULE:FUNCTION`` of ``--generator`` / ``--discriminator``."""
    if ":" not in s or s.startswith(":") or s.endswith(":"):
        raise argparse.ArgumentTypeError(f"expected MODULE:FUNCTION, got '{s}'")
    return s


def build_parser() -> cli.ArgumentParser:
    p = cli.parser(ALGORITHM, ABOUT)
    g = cli.training(p, "MD-GAN (names as in the paper, Table I)", unit="iterations")
    _reword(p, "steps", cli.positive_int, default=600, metavar="I",
            help="I, global learning iterations = generator updates (default 600)")
    _reword(p, "eval_every", cli.positive_int,
            help="score G every this many iterations (default I / 20; always at the end)")
    _reword(p, "epochs", help=argparse.SUPPRESS)  # MD-GAN counts iterations: refused by check
    g.add_argument("--mode", choices=["mdgan", "mdgan-async", "flgan", "standalone"],
                   default="mdgan",
                   help="mdgan: Algorithm 1; mdgan-async: the asynchronous server of Section "
                        "VII (each F_n applied as it arrives, -I counts generator updates); "
                        "flgan: every worker trains its own G and D for E "
                        "local epochs and the server averages both each round (Section III-c); "
                        "standalone: one GAN in one process on all the data (default mdgan)")
    g.add_argument("-k", type=parse_k, default=1, metavar="K|log2",
                   help="k, generated batches per iteration, 1 <= k <= N; 'log2' for "
                        "floor(log2 N) (Section IV-B4; default 1)")
    g.add_argument("--k-log2", dest="k", action="store_const", const="log2",
                   help="k = floor(log2 N), the paper's best setting (same as -k log2)")
    g.add_argument("-b", "--batch-size", type=cli.positive_int, default=32,
                   help="b, the batch size of real and generated batches (default 32)")
    g.add_argument("-L", type=cli.positive_int, default=1, dest="L",
                   help="L, discriminator learning steps per iteration (Algorithm 1; default 1)")
    g.add_argument("-E", type=cli.positive_int, default=1, dest="E",
                   help="E, epochs between discriminator swaps (MD-GAN) or local epochs per "
                        "round (FL-GAN) (default 1)")
    g.add_argument("--lr-g", type=cli.positive_float, default=1e-3,
                   help="Adam learning rate of G (default 1e-3)")
    g.add_argument("--lr-d", type=cli.positive_float, default=1e-3,
                   help="Adam learning rate of every D_n (default 1e-3)")
    g.add_argument("--beta1", type=cli.unit_float, default=0.5,
                   help="Adam beta1 of both sides (default 0.5, as the Keras ACGAN)")
    g.add_argument("--beta2", type=cli.unit_float, default=0.999,
                   help="Adam beta2 of both sides (default 0.999)")
    g.add_argument("--model", "--arch", dest="model", type=arch, default="small",
                   metavar="{" + ",".join(gan_models.ARCHS) + "}",
                   help="G and D: small (16x16, quick on a CPU), mlp and cnn-mnist (the paper's "
                        "MNIST networks, 28x28), cnn-cifar (the paper's CIFAR-10 networks, "
                        "3x32x32) (default small)")
    g.add_argument("--generator", type=spec, default=None, metavar="MODULE:FUNCTION",
                   help="your G instead of --model's: FUNCTION(latent_dim, out_shape, "
                        "num_classes) -> nn.Module, called G(z, labels) (ACGAN) or G(z) "
                        "(--gan plain), returning samples of out_shape (mpidist/mdgan/README.md)")
    g.add_argument("--discriminator", type=spec, default=None, metavar="MODULE:FUNCTION",
                   help="your D instead of --model's: FUNCTION(in_shape, num_classes) -> "
                        "nn.Module, D(x) -> logits [n, 1 + num_classes] (column 0 real/fake, "
                        "then the classes; num_classes is 0 with --gan plain)")
    g.add_argument("--generator-arg", type=cli.key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="a keyword for your --generator's FUNCTION, e.g. "
                   "hidden=64 (repeat it for more)")
    g.add_argument("--discriminator-arg", type=cli.key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="a keyword for your --discriminator's FUNCTION")
    g.add_argument("--gan", choices=["acgan", "plain"], default="acgan",
                   help="acgan: D also predicts the class, G is conditioned on it (the paper's "
                        "setting); plain: real/fake only (default acgan)")
    g.add_argument("--latent-size", "--latent", dest="latent", type=cli.positive_int,
                   default=None, metavar="N",
                   help="l, the size of the noise vectors (default: --model's, 64 small, 100 "
                        "for the paper's; also given to --generator's FUNCTION)")
    g.add_argument("--gen-loss", choices=["nonsaturating", "saturating"],
                   default="nonsaturating",
                   help="B~ for G: -log D(G(z)) (default) or the paper's log(1 - D(G(z)))")
    g.add_argument("--crash-every", type=cli.positive_int, nargs="?", const=0,
                   default=None, metavar="T",
                   help="Figure 3: one worker stops for good every T iterations (fail-stop with "
                        "a notice to the server); without T, T = I / N (mdgan mode)")
    g.add_argument("--async-lr", choices=["staleness", "workers", "constant"], default=None,
                   help="mdgan-async: the Adam step of an update uses lr_g / max(1, staleness) "
                        "(default, staleness-aware async SGD), lr_g / N, or lr_g")
    g.add_argument("--slow-worker", type=slow_worker, default=None, metavar="RANK:SECONDS",
                   help="experiment aid (mdgan, mdgan-async): worker RANK sleeps SECONDS per "
                        "iteration after training its D (an emulated slow worker)")
    s = p.add_argument_group("scores (rank 0; nothing is downloaded)")
    s.add_argument("--score-samples", type=cli.positive_int, default=500,
                   help="generated samples per score, and real test images for the FID "
                        "(default 500 as the paper, capped by the test set)")
    s.add_argument("--scorer-cache", default=None,
                   help="folder of the cached scoring classifier (default $MPIDIST_CACHE or "
                        "~/.cache/mpidist)")
    s.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="score with torchvision's Inception-v3 loaded from this local state dict "
                        "(e.g. for CIFAR-10) instead of the dataset's own classifier")
    cli.data_flags(p)
    return p


def check_world(args, world: int) -> str | None:
    """Configuration errors that every rank sees alike (runtime.start prints them on rank 0).
    Then it resolves what the run uses: k as a number (1 outside MD-GAN mode) and the crash
    period T (I / N for --crash-every without a value), so that the trace records them and a
    --resume that would change them is refused like any other changed setting."""
    if args.mode == "standalone":
        if world != 1:
            return (f"--mode standalone runs in one process (got {world} ranks): run it without "
                    "mpirun or with -n 1")
    elif world < 2:
        return (f"--mode {args.mode} needs the server (rank 0) and at least one worker: run "
                "mpirun -n N+1 (e.g. -n 5 for N = 4 workers)")
    n = world - 1 if args.mode != "standalone" else 1
    if args.mode != "standalone" and args.k != "log2" and args.k > n:
        return f"-k {args.k}: the server draws at most N = {n} batches (k <= N)"
    if args.crash_every is not None and args.mode not in MDGAN_MODES:
        return ("--crash-every is an MD-GAN experiment (Figure 3); use it with --mode mdgan or "
                "mdgan-async")
    if args.slow_worker is not None:
        if args.mode not in MDGAN_MODES:
            return ("--slow-worker slows one MD-GAN worker; use it with --mode mdgan or "
                    "mdgan-async")
        if args.slow_worker[0] > n:
            return (f"--slow-worker {args.slow_worker[0]}:{args.slow_worker[1]:g}: rank "
                    f"{args.slow_worker[0]} is not a worker (workers are ranks 1..{n})")
    if args.async_lr is not None and args.mode != "mdgan-async":
        return "--async-lr is the learning-rate rule of --mode mdgan-async"
    for net in ("generator", "discriminator"):
        if getattr(args, f"{net}_arg") and not getattr(args, net):
            return f"--{net}-arg is for your own --{net} MODULE:FUNCTION (none was given)"
    if args.epochs is not None:
        return ("--epochs: MD-GAN counts I global iterations (generator updates, Algorithm 1); "
                "give -I (the epochs between swaps are -E)")
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        return (f"--inception-weights {args.inception_weights}: no such file (torchvision's "
                "inception_v3 state dict, e.g. inception_v3_google-0cc3c7bd.pth)")
    args.k = batches_per_iteration(args.k, n) if args.mode in MDGAN_MODES else 1
    if args.crash_every is not None:
        args.crash_every = crash_period(args.crash_every, args.steps, n)
    return None


def main(argv=None) -> None:
    with runtime.start(ALGORITHM, build_parser(), argv, check=check_world,
                       may_change=RESUME_MAY_CHANGE) as run:
        train(run)
