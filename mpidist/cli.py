"""The flag vocabulary every algorithm shares: one spelling for one idea.

An algorithm's ``cli.py`` builds its parser from these pieces and adds only its own flags::

    p = cli.parser("pcasgd", "PC-ASGD: ...")      # what it is; the paper and README are added
    g = cli.training(p, "PC-ASGD (Algorithm 1)", default_steps=900)   # --steps/--epochs, --eval-every
    cli.model_flags(g, default="cnn")                                    # --model, --model-arg
    cli.lr_flags(g, default=0.1)                                         # --lr, --lr-milestones, --lr-decay
    cli.preset_flag(g, PRESETS)                                          # --preset
    cli.data_flags(p)                                                    # --data, --data-root, ...
    args = ... runtime.start(..., argv=cli.with_preset(p, argv, PRESETS))

Older spellings stay as aliases of the same destination (``--lr-decay-epochs`` for
``--lr-milestones``, ``--paper`` for ``--preset``, ``-I``/``--iterations`` for ``--steps``,
``--score-every`` for ``--eval-every``), so that no documented command breaks; ``--help`` shows them
beside the flag they stand for.

``--help`` explains the algorithm's own flags and the data group, and names the run flags every
algorithm shares (group "run") without their help; ``--help-all`` explains those too and ends with
the note on code mpidist runs but does not ship (:meth:`ArgumentParser.format_help`). The flags'
value types live in :mod:`mpidist.cli_types` and are re-exported here (``cli.positive_int``, ...).
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap

from mpi4py import MPI

from .cli_types import (  # noqa: F401 - the flags' value types, used as cli.<name>
    seed_int, positive_int, nonneg_int, positive_float, nonneg_float, open_unit_float,
    left_open_unit_float, unit_float, key_value, epoch_list, checkpoint_period,
    _CheckpointEvery, fail_spec)
from .errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing on every rank and exiting, and prints
    ``--help`` on rank 0 only."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        raise UsageError(self._typed_spelling(message))

    def _typed_spelling(self, message: str) -> str:
        """argparse names a flag by all its spellings (``argument --lr-milestones/--lr-decay-epochs:
        ...``); name the one the user typed (``argument --lr-decay-epochs: ...``)."""
        m = re.match(r"argument ([^ :]+/[^ :]+): ", message)
        if m:
            typed = [f for f in m.group(1).split("/")
                     if any(a == f or a.startswith(f + "=") for a in getattr(self, "_argv", []))]
            if typed:
                message = f"argument {typed[0]}: " + message[m.end():]
        return message

    def exit(self, status=0, message=None):
        if message:
            raise UsageError(message.strip())
        raise SystemExit(status)

    run_group = None  # parser() sets the group of run flags every algorithm shares

    def format_help(self, full: bool = False) -> str:
        """``--help``: the algorithm's own flags in full, then the shared run flags by name only and
        a pointer to the note on code mpidist runs. ``--help-all`` (``full``): the run flags
        explained last, and the note itself (the epilog)."""
        own = [g for g in self._action_groups if g is not self.run_group]
        f = self._get_formatter()
        f.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        f.add_text(self.description)
        for g in own + ([self.run_group] if full and self.run_group else []):
            f.start_section(g.title)
            f.add_text(g.description)
            f.add_arguments(g._group_actions)
            f.end_section()
        f.add_text(self.epilog if full or self.run_group is None else self._run_flags_named())
        return f.format_help()

    def _run_flags_named(self) -> str:
        names = " ".join(a.option_strings[0] for a in self.run_group._group_actions
                         if a.help != argparse.SUPPRESS)
        listed = textwrap.fill(names, HELP_WIDTH, initial_indent="  ", subsequent_indent="  ",
                               break_on_hyphens=False)
        return f"{RUN_FLAGS_ABOUT}\n{listed}\n{USER_CODE_POINTER}"

    def print_help(self, file=None, full: bool = False):
        if MPI.COMM_WORLD.Get_rank() == 0:
            (file or sys.stdout).write(self.format_help(full))


HELP_WIDTH = 92  # columns whatever the terminal: the width of the algorithms' descriptions


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the flags' help at HELP_WIDTH columns whatever $COLUMNS says, and never inside a
    hyphenated word (--lr-milestones, gan-cnn-mnist-d); descriptions and epilogs print as
    written."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        super().__init__(prog, indent_increment, max_help_position, width or HELP_WIDTH)

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _HelpAll(argparse.Action):
    """``--help-all``: the help with the run flags explained, printed like ``--help``."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help(full=True)
        parser.exit()


# ------------------------------------------------------------------------------ the parser
def about(what: str, paper: str, readme: str) -> str:
    """The short text ``--help`` prints before the flags: what the algorithm is (a few lines), the
    paper by title, authors and arXiv id, and where the long text lives."""
    return f"{what.strip()}\n\nPaper: {paper.strip()}\nTheory, trace channels, tests, results: {readme}"


# the end of every --help: where mpidist runs code it does not ship (issue 20)
USER_CODE = """\
Code that mpidist runs but does not ship:
  --model, --data, --loss (MD-GAN: --generator, --discriminator) MODULE:FUNCTION import MODULE
  like any Python import, on every rank: its top-level code runs. Name only modules you trust.
  --resume never runs code from a checkpoint (it loads tensors, numbers and strings, checked
  against SHA-256s); --trust-checkpoint lets it, for an older checkpoint you trust.
  The job templates in jobs/ run MPIDIST_SETUP as shell code, and the programs that
  MPIDIST_PYTHON, MPIDIST_MPIRUN and MPIDIST_MODULE name."""
# what --help prints instead of the run flags' group and the note above
RUN_FLAGS_ABOUT = """\
run flags shared by every algorithm: seed, device, traces, progress, checkpoints and resume,
emulated network, timeouts, failure injection (--help-all explains them):"""
USER_CODE_POINTER = ("Code that mpidist runs but does not ship (MODULE:FUNCTION, jobs/): "
                     "see --help-all.")


def parser(algorithm: str, description: str) -> ArgumentParser:
    """An argument parser with the flags every entry point shares (group "run"). For a registered
    algorithm, ``description`` (what it is, a few lines) is followed by its paper and README."""
    from .algorithms import ALGORITHMS
    if algorithm in ALGORITHMS:
        description = about(description, ALGORITHMS[algorithm].paper,
                            f"mpidist/{algorithm}/README.md")
    p = ArgumentParser(prog=f"python -m mpidist.{algorithm}", description=description,
                       usage=f"mpirun -n N python -m mpidist.{algorithm} [flags]  (flags below)",
                       formatter_class=HelpFormatter, epilog=USER_CODE)
    p.add_argument("--help-all", action=_HelpAll,
                   help="show this help with the run flags explained too")
    g = p.run_group = p.add_argument_group("run (shared by every mpidist algorithm)")
    g.add_argument("--seed", type=seed_int, default=0,
                   help="random seed; rank k seeds torch/numpy with seed*1000+k, shared choices "
                        "(permutations, schedules) use seed alone (default 0)")
    g.add_argument("--trace-dir", default=None,
                   help="run directory for the per-rank HDF5 traces rank<k>.h5 and any figures "
                        "(default runs/<algorithm>-<date>-<time>); must not hold a trace already")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: one GPU per node-local rank when CUDA is present, else CPU")
    g.add_argument("--link-latency", type=nonneg_float, default=0.0, metavar="SECONDS",
                   help="emulated network: latency added to every message (default 0 = off)")
    g.add_argument("--link-bandwidth", type=nonneg_float, default=0.0, metavar="BYTES_PER_S",
                   help="emulated network: bandwidth per rank's link, e.g. 1.25e8 for 1 Gbit/s "
                        "(default 0 = unlimited)")
    g.add_argument("--comm-timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="deadline of every wait for a peer; past it the run fails naming the peer "
                        "(default 300)")
    g.add_argument("--flush-seconds", type=positive_float, default=2.0,
                   help="how often each rank appends its trace rows to its file (default 2)")
    g.add_argument("--no-trace", action="store_true",
                   help="record no row per message (the trace's /comm stays empty; metrics, "
                        "status and attributes are still written): to measure what tracing costs")
    g.add_argument("--progress-seconds", type=nonneg_float, default=2.0,
                   help="rank 0 prints progress at most this often (default 2)")
    g.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    g.add_argument("--checkpoint-every", type=checkpoint_period, default=0, action=_CheckpointEvery,
                   metavar="STEPS|DURATION",
                   help="save every rank's state every STEPS steps, or every DURATION (90s, 15m, "
                        "2h), under <run dir>/checkpoints; 0 = only on SIGUSR1/SIGTERM (default)")
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the newest complete checkpoint in DIR (a run directory, its "
                        "checkpoints/ folder, or one checkpoint); the trace of that run continues. "
                        "Every rank file is checked against the SHA-256 in the checkpoint's "
                        "MANIFEST.json and loaded as tensors, numbers and strings only: a checkpoint "
                        "from elsewhere cannot run code")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="with --resume: load the checkpoint by a full unpickle, which runs any code "
                        "stored in it; needed for a checkpoint written before mpidist checked its "
                        "checkpoints (no checksums). Only for a checkpoint you trust")
    p.set_defaults(checkpoint_seconds=0.0)
    g.add_argument("--term-grace", type=positive_float, default=10.0, metavar="SECONDS",
                   help="after SIGTERM/SIGUSR1 the ranks agree on a step, checkpoint and exit 0; a "
                        "rank that cannot within SECONDS ends the job (default 10; keep it below "
                        "SLURM's KillWait)")
    g.add_argument("--fail-at", type=fail_spec, default=None, metavar="STEP:RANK[:raise|kill]",
                   help="inject a failure: rank RANK raises (default) or SIGKILLs itself after "
                        "step STEP (to test that the job ends cleanly)")
    return p


def training(p: ArgumentParser, title: str, default_steps: int | None = None,
             unit: str = "steps", eval_default: str = "ten times per run",
             epochs: bool = True, eval_every: int = 0, eval_positive: bool = False,
             steps_help: str | None = None, eval_help: str | None = None,
             epochs_help: str | None = None) -> argparse._ArgumentGroup:
    """The algorithm's group, with the run length (``--steps`` / ``--epochs``) and the evaluation
    cadence (``--eval-every``). ``unit`` names a step in the paper's words (iterations, ...).
    ``--steps`` and ``--epochs`` refuse 0 and negatives alike in every algorithm (not given: None,
    so that code tests ``is None``, never a 0); ``eval_positive``: 0 for ``--eval-every`` too;
    ``epochs=False``: the algorithm counts steps only (``--epochs`` is not offered);
    ``eval_every``: the default of ``--eval-every`` (0: ``eval_default`` says what happens)."""
    g = p.add_argument_group(title)
    if default_steps:
        dflt = f"default {default_steps}" + (" unless --epochs is given" if epochs else "")
    else:
        dflt = "default: from --epochs" if epochs else "no default"
    g.add_argument("--steps", "-I", "--iterations", dest="steps", type=positive_int,
                   default=None if epochs else default_steps, metavar="T",
                   help=steps_help or f"number of {unit} ({dflt})")
    if epochs:
        g.add_argument("--epochs", type=positive_float, default=None,
                       help=epochs_help or "train this many passes over the data instead of "
                                           "--steps")
    g.add_argument("--eval-every", "--score-every", dest="eval_every",
                   type=positive_int if eval_positive else nonneg_int,
                   default=eval_every, metavar="STEPS",
                   help=eval_help or f"evaluate every this many {unit} (default "
                                     f"{eval_every or '0: ' + eval_default}; always at the end)")
    return g


def run_length(args, steps_per_epoch: int, default: int) -> int:
    """The steps that :func:`training`'s flags ask for: ``--steps``, else ``--epochs`` passes of
    ``steps_per_epoch`` steps (at least one step), else ``default``."""
    if args.steps is not None:
        return args.steps
    if args.epochs is not None:
        return max(1, round(args.epochs * steps_per_epoch))
    return default


def model_flags(g, default: str, known=None, what: str = "network") -> None:
    """``--model NAME`` and ``--model-arg KEY=VALUE`` (keywords of the model's builder)."""
    from . import models
    names = sorted(known if known is not None else models.MODELS)
    g.add_argument("--model", default=default,
                   help=f"{what} (default {default}; known: {', '.join(names)})")
    g.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the model's builder, e.g. width=32 (cnn) or hidden=512 (mlp)")


def lr_flags(g, default: float, what: str = "eta, the learning rate") -> None:
    """``--lr``, ``--lr-milestones`` (alias ``--lr-decay-epochs``) and ``--lr-decay``: eta times
    lr-decay at every milestone epoch passed."""
    g.add_argument("--lr", type=positive_float, default=default, metavar="ETA",
                   help=f"{what} (default {default:g})")
    g.add_argument("--lr-milestones", "--lr-decay-epochs", dest="lr_milestones", type=epoch_list,
                   default=[], metavar="EPOCHS",
                   help="epochs at which eta is multiplied by --lr-decay, e.g. 81,122 (default none)")
    g.add_argument("--lr-decay", type=positive_float, default=0.1,
                   help="factor applied to eta at each milestone (default 0.1)")


def lr_at(epoch: float, lr: float, milestones, decay: float) -> float:
    """The step-wise schedule of ``lr_flags``: ``lr * decay ** #{milestones <= epoch}``."""
    return lr * decay ** sum(epoch >= m for m in milestones)


def preset_flag(g, presets: dict, what: str = "the paper's settings in one flag") -> None:
    """``--preset NAME`` (alias ``--paper``): defaults from ``presets[NAME]``; explicit flags win
    (see :func:`with_preset`)."""
    g.add_argument("--preset", "--paper", dest="preset", choices=sorted(presets), default=None,
                   help=f"{what}; explicit flags override its values")


def with_preset(p: ArgumentParser, argv, presets: dict, adjust=None) -> list[str]:
    """Scan ``argv`` for ``--preset``/``--paper`` and make that preset's values the parser's
    defaults, so that explicit flags still override them. ``adjust(values, argv)`` may edit the
    values (e.g. drop the preset's epochs when ``--steps`` is given). Returns argv as a list."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for k, a in enumerate(argv):
        name = None
        if a in ("--preset", "--paper") and k + 1 < len(argv):
            name = argv[k + 1]
        elif a.startswith(("--preset=", "--paper=")):
            name = a.split("=", 1)[1]
        if name in presets:
            values = dict(presets[name])
            if adjust is not None:
                adjust(values, argv)
            p.set_defaults(**values)
    return argv


def given(argv, *flags: str) -> bool:
    """Whether any of ``flags`` appears in ``argv`` (as ``--flag V`` or ``--flag=V``)."""
    return any(a in flags or a.split("=", 1)[0] in flags for a in argv)


def data_flags(p: ArgumentParser, default_size: int | None = None, dataset: bool = True,
               root_help: str | None = None, size_help: str | None = None) -> None:
    """The data group (``--data``, ``--data-root``, ``--download``, ``--image-size``);
    ``dataset=False`` for an algorithm that chooses its data otherwise (DADA's ``--task``)."""
    from . import data
    data.add_arguments(p, default_size, dataset=dataset, root_help=root_help, size_help=size_help)


def loss_flag(g, default: str = "cross_entropy") -> None:
    """``--loss cross_entropy|mse|MODULE:FUNCTION`` (:func:`mpidist.user.loss_function`)."""
    g.add_argument("--loss", default=default, metavar="cross_entropy|mse|MODULE:FUNCTION",
                   help="training loss: cross_entropy (classification; accuracy is reported), mse "
                        "(regression), or your own FUNCTION(output, target) -> scalar tensor "
                        f"(default {default})")


def settings_argv(settings: dict) -> list[str]:
    """``dict(trace_dir="runs/x", quiet=True)`` -> ``["--trace-dir", "runs/x", "--quiet"]``: the
    Python API's keywords as the command line's flags (False/None leave a flag out)."""
    argv = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v is not None and v is not False:
            argv += [flag, str(v)]
    return argv
