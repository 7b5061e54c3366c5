"""Bad input against the real entry points (issue 8), many cases in ONE process.

    python tests/programs/bad_input_driver.py OUTDIR               # the cases of a world of 1
    mpiexec -n 2 python tests/programs/bad_input_driver.py OUTDIR  # the cases of a world of 2

Every case calls ``mpidist.<algo>.main(argv)`` in this process (on every rank of the world) with
sys.stdout and sys.stderr captured, and checks what the issue promises for bad input:

- every rank ends with ``SystemExit(2)`` (a usage error), within CASE_LIMIT seconds;
- rank 0 printed exactly ONE line on stderr, ``mpidist.<algo>: error: ...``, saying what is
  wrong (the case's expected words), no traceback; the other ranks printed nothing; nothing went
  to stdout on any rank;
- every file that existed in the case's directory before (a previous run's trace, its
  checkpoints) still exists, byte-identical (sha256).

A crash that would end the job by MPI_Abort (an uncaught exception) is turned into a failure of
the case (``runtime.abort`` is replaced) so that the remaining cases still run; a case that runs
past CASE_LIMIT (bad input accepted: it trains) is stopped by SIGALRM and fails.

Output: one line per case, ``PASS <name> <json>`` or ``FAIL <name> <json>`` (json: message,
reasons, new files left in the case directory, seconds), then ``DONE <n>``. The case table is
plain data (no torch import), so tests/mpi/test_bad_input.py reads it to name one test per case.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import time

import checks
import in_process
from checks import snapshot

CASE_LIMIT = 60.0   # seconds a refused start may take: "within seconds, not minutes", with room
                    # for a busy machine (load 10 on 2 cores); measured: under 2 s when idle
ALARM = 120         # a case still running after this long is stopped (it accepted the input)

# what argparse and the runtime's validators say (the rule word of each kind of value)
POS_INT = "must be a positive integer"
POS_FLOAT = "must be > 0"
NONNEG = "must be >= 0"
UNIT = "must be in [0, 1]"


class Case:
    """One bad input: ``argv`` for ``mpidist.<algo>.main`` (``{d}`` = the case's directory),
    ``expect``: words the rank-0 line must hold (a tuple item: any one of its words), ``world``:
    the world size it runs in, ``setup``: name of a function below that prepares files in {d}."""

    def __init__(self, name, algo, argv, expect, world=1, setup=None, kind="", before=None):
        self.name, self.algo, self.argv, self.world = name, algo, list(argv), world
        self.expect = [expect] if isinstance(expect, (str, tuple)) else list(expect)
        self.setup, self.kind = setup, kind
        self.before = before  # argv of a real, valid run made first (e.g. to write a checkpoint)


# the smallest valid start of each entry point in each world (the bad flag is appended: argparse
# keeps the last value of a repeated flag)
BASE = {
    1: {"pcasgd": ["--clusters", "1", "--steps", "2"],
        "adacomm": ["--steps", "2", "--time-budget", "0"],
        "dada": ["--centralized", "--steps", "2", "--pretrain-steps", "2"],
        "mdgan": ["--mode", "standalone", "-I", "2"]},
    2: {"pcasgd": ["--clusters", "2", "--steps", "2"],
        "adacomm": ["--steps", "2", "--time-budget", "0"],
        "dada": ["--steps", "2", "--pretrain-steps", "2"],
        "mdgan": ["-I", "2"]},
}
RUN = ["--quiet", "--trace-dir", "{d}/run"]
ALGOS = ("pcasgd", "adacomm", "dada", "mdgan")
# mdgan's checkpoints are being added: before, every --resume is refused with this line

# size-like flags of each entry point: (flag, bad value, rule words)
SIZE_FLAGS = {
    "shared": [
        ("--comm-timeout", "0", POS_FLOAT), ("--comm-timeout", "-1", POS_FLOAT),
        ("--flush-seconds", "0", POS_FLOAT), ("--flush-seconds", "-1", POS_FLOAT),
        ("--progress-seconds", "-1", NONNEG), ("--link-latency", "-1", NONNEG),
        ("--link-bandwidth", "-1", NONNEG), ("--checkpoint-every", "-1", "argument"),
        ("--image-size", "0", POS_INT), ("--image-size", "-1", POS_INT),
    ],
    "pcasgd": [
        ("--steps", "0", POS_INT), ("--steps", "-1", POS_INT), ("--steps", "x", "invalid"),
        ("--epochs", "0", POS_FLOAT), ("--epochs", "-1", POS_FLOAT),
        ("--batch-size", "0", POS_INT), ("--batch-size", "-1", POS_INT),
        ("--lr", "0", POS_FLOAT), ("--lr", "-1", POS_FLOAT),
        ("--lr-decay", "0", POS_FLOAT), ("--lr-decay", "-1", POS_FLOAT),
        ("--lr-decay-epochs", "-5", "> 0"), ("--lr-decay-epochs", "0", "> 0"),
        ("--lr-decay-epochs", "a,b", "comma-separated"),
        ("--delay", "-1", NONNEG), ("--lam", "0", "(0, 1]"), ("--lam", "-1", "(0, 1]"),
        ("--lam", "2", "(0, 1]"), ("--momentum", "-1", NONNEG), ("--weight-decay", "-1", NONNEG),
        ("--eval-every", "-1", NONNEG), ("--theta", "-0.5", UNIT), ("--theta", "1.5", UNIT),
        ("--clusters", "0", "positive integer"), ("--clusters", "-1", "positive integer"),
        ("--clusters", "3,0", "positive integer"), ("--clusters", "a", "comma-separated"),
    ],
    "adacomm": [
        ("--tau", "0", POS_INT), ("--tau", "-1", POS_INT), ("--tau0", "0", POS_INT),
        ("--tau0", "-1", POS_INT), ("--tau0-grid", "0,1", ">= 1"), ("--tau0-grid", "-2", ">= 1"),
        ("--tau0-search-epochs", "0", POS_FLOAT), ("--tau0-search-epochs", "-1", POS_FLOAT),
        ("--interval", "0", POS_FLOAT), ("--interval", "-1", POS_FLOAT),
        ("--gamma", "0", "(0, 1)"), ("--gamma", "1", "(0, 1)"), ("--gamma", "-1", "(0, 1)"),
        ("--slack", "-1", NONNEG), ("--loss-window", "0", POS_INT),
        ("--loss-window", "-1", POS_INT),
        ("--lr", "0", POS_FLOAT), ("--lr", "-1", POS_FLOAT), ("--momentum", "-1", UNIT),
        ("--momentum", "2", UNIT), ("--global-momentum", "-1", UNIT),
        ("--global-momentum", "2", UNIT), ("--weight-decay", "-1", NONNEG),
        ("--lr-milestones", "0", "> 0"), ("--lr-milestones", "-1", "> 0"),
        ("--lr-decay", "0", POS_FLOAT), ("--lr-decay", "-1", POS_FLOAT),
        ("--batch-size", "0", POS_INT), ("--batch-size", "-1", POS_INT),
        ("--time-budget", "-1", NONNEG), ("--steps", "0", POS_INT), ("--steps", "-1", POS_INT),
        ("--steps", "x", "invalid"), ("--epochs", "0", POS_FLOAT), ("--epochs", "-1", POS_FLOAT),
    ],
    "dada": [
        ("--steps", "0", POS_INT), ("--steps", "-1", POS_INT), ("--steps", "x", "invalid"),
        ("--sync-period", "0", POS_INT), ("--sync-period", "-1", POS_INT),
        ("--batch-size", "0", POS_INT), ("--batch-size", "-1", POS_INT),
        ("--lr-disc", "0", POS_FLOAT), ("--lr-disc", "-1", POS_FLOAT),
        ("--lr-target", "0", POS_FLOAT), ("--lr-target", "-1", POS_FLOAT),
        ("--pretrain-steps", "-1", NONNEG), ("--pretrain-lr", "0", POS_FLOAT),
        ("--pretrain-lr", "-1", POS_FLOAT), ("--eval-every", "0", POS_INT),
        ("--eval-every", "-1", POS_INT), ("--rotation", "x", "invalid float"),
    ],
    "mdgan": [
        ("-I", "0", POS_INT), ("-I", "-1", POS_INT), ("-I", "x", "invalid"),
        ("-k", "0", POS_INT), ("-k", "-1", POS_INT), ("-k", "log3", "invalid"),
        ("-b", "0", POS_INT), ("-b", "-1", POS_INT), ("-L", "0", POS_INT), ("-L", "-1", POS_INT),
        ("-E", "0", POS_INT), ("-E", "-1", POS_INT), ("--lr-g", "0", POS_FLOAT),
        ("--lr-g", "-1", POS_FLOAT), ("--lr-d", "0", POS_FLOAT), ("--lr-d", "-1", POS_FLOAT),
        ("--beta1", "-1", UNIT), ("--beta1", "2", UNIT), ("--beta2", "-1", UNIT),
        ("--beta2", "2", UNIT), ("--latent", "0", POS_INT), ("--latent", "-1", POS_INT),
        ("--crash-every", "0", POS_INT), ("--crash-every", "-1", POS_INT),
        ("--score-every", "0", POS_INT), ("--score-every", "-1", POS_INT),
        ("--score-samples", "0", POS_INT), ("--score-samples", "-1", POS_INT),
    ],
}


def _cases() -> list[Case]:
    out = []

    def add(name, algo, argv, expect, world=1, setup=None, kind="", run=True, before=None):
        base = BASE[world][algo] + (RUN if run else ["--quiet"])
        out.append(Case(name, algo, base + argv, expect, world, setup, kind, before))

    # ---- flags: unknown, zero/negative sizes, malformed values (world 1: parsing comes first)
    for algo in ALGOS:
        add(f"{algo}:unknown-flag", algo, ["--bogus"], "unrecognized arguments: --bogus",
            kind="unknown flag")
        add(f"{algo}:unknown-value", algo, ["--device", "tpu"], "argument --device: invalid choice",
            kind="unknown flag")
        for flag, value, rule in SIZE_FLAGS["shared"] + SIZE_FLAGS[algo]:
            add(f"{algo}:{flag}={value}", algo, [flag, value],
                [(f"argument {flag}", f"{flag} {value}:"), rule], kind="size")
        add(f"{algo}:--fail-at-rank", algo, ["--fail-at", "2:7"], "rank 7 is not in a world of 1",
            kind="size")
        add(f"{algo}:--link-bandwidth=0.5", algo, ["--link-bandwidth", "0.5"], "bytes per second",
            kind="size")
        add(f"{algo}:--seed=-1", algo, ["--seed", "-1"], "argument --seed", kind="size")
        # numbers no run can use (issue 16): refused at start, one line
        add(f"{algo}:--seed=huge", algo, ["--seed", "99999999999999999999"],
            "argument --seed: must be below 2**53", kind="size")
        add(f"{algo}:--seed=5e9", algo, ["--seed", "5000000000"], "argument --seed: must be below",
            kind="size")
        add(f"{algo}:--comm-timeout=1e-9", algo, ["--comm-timeout", "1e-9"],
            "--comm-timeout 1e-09: no wait for a peer can be that short", kind="size")
        add(f"{algo}:--link-latency>=timeout", algo, ["--link-latency", "30", "--comm-timeout", "5"],
            "--link-latency 30 s can never meet --comm-timeout 5 s", kind="size")
        add(f"{algo}:--link-latency=inf", algo, ["--link-latency", "inf"],
            "argument --link-latency: must be a finite number", kind="size")
    add("pcasgd:--batch-size=5000", "pcasgd", ["--batch-size", "5000"],
        "batch size 5000 exceeds this rank's shard of 1438", kind="size")
    add("adacomm:--batch-size=5000", "adacomm", ["--batch-size", "5000"],
        "batch size 5000 exceeds", kind="size")
    add("dada:--batch-size=5000", "dada", ["--batch-size", "5000"], "batch size 5000 exceeds",
        kind="size")
    add("mdgan:-b=5000", "mdgan", ["-b", "5000"], "-b 5000 exceeds the 1438 samples", kind="size")
    add("mdgan:--image-size=7", "mdgan", ["--image-size", "7"], "side divisible by 4", kind="size")
    for algo in ("pcasgd", "adacomm"):
        add(f"{algo}:--lr=inf", algo, ["--lr", "inf"], "argument --lr: must be a finite number",
            kind="size")
    add("adacomm:no-stopping-rule", "adacomm", [], "no stopping rule", kind="size")
    out[-1].argv[:2] = []  # no --steps, and the base's --time-budget 0
    add("adacomm:--model-arg=width=-1", "adacomm", ["--model-arg", "width=-1"],
        ["--model cnn", "width=-1"], kind="size")
    add("adacomm:--model-arg=bogus=3", "adacomm", ["--model-arg", "bogus=3"],
        ["--model cnn", "bogus=3"], kind="size")
    add("adacomm:--model-arg=x", "adacomm", ["--model-arg", "x"], "expected key=value",
        kind="size")
    add("pcasgd:--model=bogus", "pcasgd", ["--model", "bogus"], "unknown model 'bogus'",
        kind="size")
    add("adacomm:--model=bogus", "adacomm", ["--model", "bogus"], "unknown model 'bogus'",
        kind="size")
    add("adacomm:--tau0-auto-pasgd", "adacomm", ["--method", "pasgd", "--tau0", "auto"],
        "--tau0 auto is AdaComm's grid search", kind="size")
    add("pcasgd:--theta-with-p", "pcasgd", ["--variant", "p", "--theta", "0.5"],
        "--variant p has its own theta", kind="size")
    add("pcasgd:--steps-and-epochs", "pcasgd", ["--epochs", "1"], "not both", kind="size")
    add("dada:--extractor-weights-missing", "dada", ["--extractor-weights", "{d}/none.pt"],
        "no such file", kind="size")
    add("dada:--centralized-strategy", "dada", ["--strategy", "ga"], "do not apply", kind="size")
    add("mdgan:--inception-weights-missing", "mdgan", ["--inception-weights", "{d}/none.pt"],
        "--inception-weights", kind="size")
    add("mdgan:--crash-every-standalone", "mdgan", ["--crash-every", "3"],
        "use it with --mode mdgan", kind="size")

    # ---- world size that does not fit the topology or the mode
    add("pcasgd:clusters-3,5-world-1", "pcasgd", ["--clusters", "3,5"],
        ["describes 8 agents but the job has 1 ranks", "mpirun -n 8"], kind="world")
    add("dada:world-1", "dada", ["--steps", "2"], "needs 2 or more ranks", kind="world", run=False)
    out[-1].argv.remove("--centralized")
    add("mdgan:mdgan-world-1", "mdgan", ["--mode", "mdgan"], "needs the server", kind="world")
    add("pcasgd:default-world-1", "pcasgd", [], "launch it as mpirun -n 8 python -m mpidist.pcasgd",
        kind="world")
    out[-1].argv[:2] = []  # no --clusters: python -m mpidist.pcasgd as a user types it
    add("mdgan:flgan-world-1", "mdgan", ["--mode", "flgan"], "needs the server", kind="world")
    w2 = dict(world=2, kind="world")
    add("pcasgd:clusters-1-world-2", "pcasgd", ["--clusters", "1"],
        "describes 1 agents but the job has 2 ranks", **w2)
    add("pcasgd:clusters-3,5-world-2", "pcasgd", ["--clusters", "3,5"],
        "describes 8 agents but the job has 2 ranks", **w2)
    add("mdgan:standalone-world-2", "mdgan", ["--mode", "standalone"], "runs in one process",
        **w2)
    add("mdgan:k-3-world-2", "mdgan", ["-k", "3"], "at most N = 1", **w2)
    add("mdgan:crash-every-flgan", "mdgan", ["--mode", "flgan", "--crash-every", "3"],
        "use it with --mode mdgan", **w2)
    add("dada:centralized-world-2", "dada", ["--centralized"], "in ONE process", **w2)
    add("dada:rotations-world-2", "dada", ["--rotation", "10", "20", "30"],
        "3 angles for 1 target", **w2)
    add("adacomm:--batch-size=1000-world-2", "adacomm", ["--batch-size", "1000"],
        "batch size 1000 exceeds this rank's shard of 719", **w2)
    add("pcasgd:--fail-at-rank-world-2", "pcasgd", ["--fail-at", "1:2"],
        "rank 2 is not in a world of 2", **w2)

    # ---- datasets that are not there (found after the start, on every rank alike)
    for world in (1, 2):
        s = "" if world == 1 else "-world-2"
        kw = dict(world=world, kind="data")
        add(f"pcasgd:mnist-missing{s}", "pcasgd",
            ["--data", "mnist", "--data-root", "/nonexistent"],
            ["mnist: no usable files under --data-root /nonexistent", "--download"], **kw)
        add(f"adacomm:cifar10-missing{s}", "adacomm",
            ["--data", "cifar10", "--data-root", "/nonexistent"],
            "cifar10: no usable files under --data-root /nonexistent", **kw)
        add(f"dada:mnist-rot-missing{s}", "dada", ["--task", "mnist-rot", "--data-root",
                                                   "/nonexistent"],
            "mnist: no usable files under --data-root /nonexistent", **kw)
        add(f"mdgan:svhn-missing{s}", "mdgan", ["--data", "svhn", "--data-root", "/nonexistent"],
            "svhn: no usable files under --data-root /nonexistent", **kw)
    kw = dict(kind="data")
    add("pcasgd:mnist-no-root", "pcasgd", ["--data", "mnist"], "mnist: needs --data-root", **kw)
    add("pcasgd:office31-missing", "pcasgd", ["--data", "office31-amazon", "--data-root",
                                              "/nonexistent"], "no image folder at", **kw)
    add("adacomm:usps-empty-root", "adacomm", ["--data", "usps", "--data-root", "{d}"],
        "usps: no usable files under --data-root", **kw)
    add("mdgan:cifar100-no-root", "mdgan", ["--data", "cifar100"], "needs --data-root", **kw)
    add("adacomm:unknown-dataset", "adacomm", ["--data", "imagenet"],
        "argument --data: invalid choice", **kw)
    add("dada:svhn-mnist-no-root", "dada", ["--task", "svhn-mnist"], "needs --data-root", **kw)

    # ---- --resume of what cannot be resumed (world 1: pcasgd, adacomm, mdgan standalone)
    kw = dict(kind="resume")
    for algo in ("pcasgd", "adacomm", "mdgan"):
        add(f"{algo}:resume-missing-dir", algo, ["--resume", "{d}/nowhere"],
            "no such directory", **kw)
        add(f"{algo}:resume-empty-dir", algo, ["--resume", "{d}"],
            "no complete checkpoint", **kw)
        other = "adacomm" if algo == "pcasgd" else "pcasgd"
        add(f"{algo}:resume-other-algorithm", algo, ["--resume", "{d}/old"],
            f"a checkpoint of {other}, not {algo}", setup=f"ckpt:{other}:1", **kw)
        add(f"{algo}:resume-other-world", algo, ["--resume", "{d}/old"],
            "saved by 2 ranks, this run has 1", setup=f"ckpt:{algo}:2", **kw)
        add(f"{algo}:resume-corrupt-rank-file", algo, ["--resume", "{d}/old"],
            "rank0.pt is unreadable or corrupt", setup=f"ckpt:{algo}:1:corrupt0", **kw)
    for algo in ("pcasgd", "adacomm"):
        add(f"{algo}:resume-missing-rank-file", algo, ["--resume", "{d}/old"],
            "rank0.pt is missing", setup=f"ckpt:{algo}:1:missing0", **kw)
        add(f"{algo}:resume-foreign-rank-file", algo, ["--resume", "{d}/old"],
            ["rank0.pt is not a checkpoint", "no "], setup=f"ckpt:{algo}:1:foreign0", **kw)
        add(f"{algo}:resume-corrupt-manifest", algo,
            ["--resume", "{d}/old/checkpoints/step-000000005"], "corrupt MANIFEST.json",
            setup=f"ckpt:{algo}:1:manifest", **kw)
        add(f"{algo}:resume-corrupt-manifest-run-dir", algo, ["--resume", "{d}/old"],
            ["no complete checkpoint", "unreadable MANIFEST.json"],
            setup=f"ckpt:{algo}:1:manifest", **kw)
        add(f"{algo}:resume-manifest-not-object", algo, ["--resume", "{d}/old"],
            ["no complete checkpoint", "unreadable MANIFEST.json"],
            setup=f"ckpt:{algo}:1:manifestlist", **kw)
        add(f"{algo}:resume-manifest-not-object-direct", algo,
            ["--resume", "{d}/old/checkpoints/step-000000005"], "corrupt MANIFEST.json",
            setup=f"ckpt:{algo}:1:manifestlist", **kw)
        add(f"{algo}:resume-into-held-trace-dir", algo,
            ["--resume", "{d}/old", "--trace-dir", "{d}/other"], "already holds a trace",
            setup=f"ckpt:{algo}:1:+other", **kw)
    add("pcasgd:resume-run-dir-trace-not-a-trace", "pcasgd", ["--resume", "{d}/old"],
        ["cannot write the trace file on rank 0", "not a readable mpidist trace"],
        setup="ckpt:pcasgd:1:texttrace", **kw)
    out[-1].argv = [a for a in out[-1].argv if a not in ("--trace-dir", "{d}/run")]
    add("dada:resume-centralized", "dada", ["--resume", "{d}"], "does not checkpoint or resume",
        **kw)
    # a real checkpoint of the same algorithm, resumed with another network (into a new directory,
    # and continuing the old one)
    # (refused from the flags saved with the checkpoint, before the networks are built)
    fit = ["a resumed run must continue the interrupted one, but this one changes --model 'cnn' "
           "-> 'mlp'", "resume with the flags of the interrupted run"]
    saved = {"pcasgd": ["--checkpoint-every", "2", "--steps", "3"],
             "adacomm": ["--method", "pasgd", "--tau", "1", "--checkpoint-every", "2", "--steps",
                         "3"]}
    for algo, extra in saved.items():
        same = extra[:4] if algo == "adacomm" else []
        add(f"{algo}:resume-other-model", algo, same + ["--resume", "{d}/old", "--model", "mlp"],
            fit, before=BASE[1][algo] + extra + ["--quiet", "--trace-dir", "{d}/old"], **kw)
    add("pcasgd:resume-other-model-continuing", "pcasgd", ["--resume", "{d}/old", "--model", "mlp"],
        fit, before=BASE[1]["pcasgd"] + saved["pcasgd"] + ["--quiet", "--trace-dir", "{d}/old"],
        **kw)
    out[-1].argv = [a for a in out[-1].argv if a not in ("--trace-dir", "{d}/run")]
    add("dada:resume-other-image-size-world-2", "dada", ["--resume", "{d}/old", "--image-size",
                                                         "20"],
        ["a resumed run must continue the interrupted one, but this one changes --image-size",
         "-> 20"], world=2,
        before=BASE[2]["dada"] + ["--checkpoint-every", "2", "--quiet", "--trace-dir", "{d}/old"],
        **kw)
    w2 = dict(world=2, kind="resume")
    for algo in ALGOS:
        add(f"{algo}:resume-corrupt-rank1-world-2", algo, ["--resume", "{d}/old"],
            "rank1.pt is unreadable or corrupt", setup=f"ckpt:{algo}:2:corrupt1", **w2)
    for algo in ("pcasgd", "adacomm", "dada"):
        add(f"{algo}:resume-missing-rank1-world-2", algo, ["--resume", "{d}/old"],
            "rank1.pt is missing", setup=f"ckpt:{algo}:2:missing1", **w2)
        add(f"{algo}:resume-other-world-world-2", algo, ["--resume", "{d}/old"],
            "saved by 3 ranks, this run has 2", setup=f"ckpt:{algo}:3", **w2)
        other = "adacomm" if algo != "adacomm" else "dada"
        add(f"{algo}:resume-other-algorithm-world-2", algo, ["--resume", "{d}/old"],
            f"a checkpoint of {other}, not {algo}", setup=f"ckpt:{other}:2", **w2)
    add("dada:resume-rank1-trace-not-a-trace-world-2", "dada", ["--resume", "{d}/old"],
        ["cannot write the trace file on rank 1", "not a readable mpidist trace"],
        setup="ckpt:dada:2:texttrace1", **w2)
    out[-1].argv = [a for a in out[-1].argv if a not in ("--trace-dir", "{d}/run")]

    # ---- trace directories that cannot be used
    for algo in ALGOS:
        kw = dict(kind="trace-dir")
        add(f"{algo}:trace-dir-parent-is-file", algo, ["--trace-dir", "{d}/file/run"],
            ["--trace-dir", "cannot create it (Not a directory)"], setup="file", **kw)
        add(f"{algo}:trace-dir-holds-trace", algo, [], ["already holds a trace", "choose another"],
            setup="oldrun", **kw)
    add("pcasgd:trace-dir-is-file", "pcasgd", ["--trace-dir", "{d}/file"],
        "cannot create it (File exists)", setup="file", kind="trace-dir")
    for algo in ALGOS:
        add(f"{algo}:trace-dir-holds-trace-world-2", algo, [], "already holds a trace",
            setup="oldrun", world=2, kind="trace-dir")
    add("adacomm:trace-dir-holds-rank1-world-2", "adacomm", [],
        ["cannot write the trace file on rank 1", "rank1.h5: already exists"],
        setup="oldrank1", world=2, kind="trace-dir")
    return out


CASES = _cases()

# Every refusal must also leave no new file behind: the "left" field of the results, asserted
# empty by tests/mpi/test_bad_input.py.


# ------------------------------------------------------------------------------------ set-ups

def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _old_trace(run_dir, world, algo="pcasgd"):
    """A previous run's real trace files rank<k>.h5 (with a row each) in run_dir."""
    from mpidist.trace import TraceWriter
    os.makedirs(run_dir, exist_ok=True)
    for k in range(world):
        w = TraceWriter(os.path.join(run_dir, f"rank{k}.h5"),
                        {"algorithm": algo, "rank": k, "world_size": world}, lambda: 1.0)
        w.metric(3, "loss", 0.5)
        w.close(status="ok")


def setup_case(spec: str, d: str) -> None:
    """Prepare the files of a case in d (rank 0 only). Specs:
    ``file``: d/file is a regular file; ``oldrun``: d/run holds a previous run's 2-rank trace and a
    figure; ``oldrank1``: d/run holds only rank1.h5; ``ckpt:ALGO:WORLD[:damage][:+other]``: d/old is
    a run directory with a trace and a complete checkpoint of step 5 of ALGO with WORLD ranks."""
    if spec == "file":
        with open(os.path.join(d, "file"), "w") as f:
            f.write("a regular file\n")
        return
    if spec == "oldrun":
        _old_trace(os.path.join(d, "run"), 2)
        os.makedirs(os.path.join(d, "run", "figures"))
        with open(os.path.join(d, "run", "figures", "loss.png"), "wb") as f:
            f.write(b"\x89PNG old figure")
        return
    if spec == "oldrank1":
        _old_trace(os.path.join(d, "tmp"), 2)
        os.makedirs(os.path.join(d, "run"))
        os.replace(os.path.join(d, "tmp", "rank1.h5"), os.path.join(d, "run", "rank1.h5"))
        os.remove(os.path.join(d, "tmp", "rank0.h5"))
        os.rmdir(os.path.join(d, "tmp"))
        return
    _, algo, world, *damage = spec.split(":")
    world = int(world)
    from mpidist import checkpoint
    old = os.path.join(d, "old")
    _old_trace(old, world, algo)
    root = os.path.join(old, "checkpoints")
    rng = dict.fromkeys(getattr(checkpoint, "RNG_KEYS", ()))
    for k in range(world):  # what Run.save_checkpoint writes, with an empty algorithm state
        checkpoint.save_rank(root, 5, k, {"algorithm": {}, "step": 5, "t": 1.0, "rng": rng})
    checkpoint.complete(root, 5, algo, world)
    step = checkpoint.step_dir(root, 5)
    for dmg in damage:
        if dmg.startswith("corrupt"):
            with open(os.path.join(step, f"rank{dmg[-1]}.pt"), "wb") as f:
                f.write(b"not a torch file" * 10)
        elif dmg.startswith("foreign"):  # a torch file, but not what the runtime saves
            checkpoint.save_rank(root, 5, int(dmg[-1]), {"model": {}, "step": 5})
        elif dmg.startswith("missing"):
            os.remove(os.path.join(step, f"rank{dmg[-1]}.pt"))
        elif dmg == "manifest":
            with open(os.path.join(step, "MANIFEST.json"), "w") as f:
                f.write('{"algorithm": "pcasg')  # cut short
        elif dmg == "manifestlist":
            with open(os.path.join(step, "MANIFEST.json"), "w") as f:
                f.write("[1, 2]")
        elif dmg.startswith("texttrace"):
            k = dmg[len("texttrace"):] or "0"
            with open(os.path.join(old, f"rank{k}.h5"), "w") as f:
                f.write("not HDF5\n" * 20)
        elif dmg == "+other":
            _old_trace(os.path.join(d, "other"), world)
        else:
            raise ValueError(dmg)
    if any(d.startswith(("corrupt", "foreign")) for d in damage):
        # a manifest that vouches for the damaged file: the loader's own refusal is what is tested
        # here (a checksum that does not match is tested in tests/mpi/test_checkpoint_security.py)
        checkpoint.complete(root, 5, algo, world)


# ------------------------------------------------------------------------------------ running

def _on_alarm(signum, frame):
    raise in_process.Alarm(f"still running after {ALARM} s: the input was accepted")


def words_missing(line: str, expect) -> list:
    miss = []
    for e in expect:
        alts = e if isinstance(e, tuple) else (e,)
        if not any(a in line for a in alts):
            miss.append(" | ".join(alts))
    return miss


def run_case(case: Case, base: str, comm) -> dict | None:
    import importlib
    rank = comm.Get_rank()
    d = os.path.join(base, case.name.replace(":", "_").replace("/", "_"))
    if rank == 0:
        os.makedirs(d)
        if case.setup:
            setup_case(case.setup, d)
    comm.Barrier()
    mod = importlib.import_module(f"mpidist.{case.algo}")
    prepared = ""
    if case.before:  # a real run first (every rank): it must finish normally
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(ALARM)
        try:
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                mod.main([a.replace("{d}", d) for a in case.before])
        except BaseException as e:  # noqa: BLE001
            prepared = f"the run before the case failed: {type(e).__name__}: {e}"
        finally:
            signal.alarm(0)
    comm.Barrier()
    before = snapshot(d) if rank == 0 else {}
    argv = [a.replace("{d}", d) for a in case.argv]
    t = time.monotonic()
    code, out, err, crash = in_process.call_main(mod, argv, ALARM)
    seconds = time.monotonic() - t
    crash = prepared or crash
    got = comm.gather({"rank": rank, "code": code, "crash": crash, "stdout": out,
                       "stderr": err, "seconds": seconds}, root=0)
    if rank != 0:
        return None
    why = []
    r0 = got[0]
    lines = [ln for ln in r0["stderr"].splitlines() if ln.strip()]
    message = lines[0] if lines else ""
    for g in got:
        if g["crash"]:
            why.append(f"rank {g['rank']}: {g['crash']}")
        elif g["code"] != 2:
            why.append(f"rank {g['rank']}: exit {g['code']!r}, expected 2")
        if g["stdout"].strip() and not case.before:  # (a resumed run says so before the error)
            why.append(f"rank {g['rank']} printed on stdout: {g['stdout'][-300:]!r}")
        if "Traceback" in g["stdout"] or "error" in g["stdout"].lower():
            why.append(f"rank {g['rank']} printed an error on stdout: {g['stdout'][-300:]!r}")
        if g["rank"] != 0 and g["stderr"].strip():
            why.append(f"rank {g['rank']} printed on stderr: {g['stderr'][-300:]!r}")
        if g["seconds"] > CASE_LIMIT:
            why.append(f"rank {g['rank']} took {g['seconds']:.1f} s")
    if len(lines) != 1:
        why.append(f"rank 0 printed {len(lines)} lines on stderr: {r0['stderr'][-600:]!r}")
    if "Traceback" in r0["stderr"]:
        why.append("a traceback on stderr")
    if not message.startswith(f"mpidist.{case.algo}: error: "):
        why.append(f"the line does not start with 'mpidist.{case.algo}: error: '")
    miss = words_missing(message, case.expect)
    if miss:
        why.append(f"the line lacks {miss}")
    after = snapshot(d)
    changed = [p for p, h in before.items() if after.get(p) != h]
    if changed:
        why.append(f"files of the earlier run changed or lost: {changed}")
    left = sorted(p for p in after if p not in before)
    return {"name": case.name, "ok": not why, "why": why, "message": message, "left": left,
            "seconds": round(max(g["seconds"] for g in got), 3)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    base = os.path.abspath(argv[0])
    only = set(argv[1:])
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    in_process.catch_aborts("bad_input_driver")
    stdout = sys.stdout
    if comm.Get_rank() == 0:
        os.makedirs(base, exist_ok=True)
    comm.Barrier()
    n = 0
    for case in CASES:
        if case.world != comm.Get_size() or (only and case.name not in only):
            continue
        res = run_case(case, base, comm)
        n += 1
        if res is not None:
            checks.line(res["ok"], f"{case.name} {json.dumps(res)}", stdout)
    if comm.Get_rank() == 0:
        stdout.write(f"DONE {n}\n")
        stdout.flush()
    return checks.status()  # run by hand, a FAIL is a non-zero exit


if __name__ == "__main__":
    sys.exit(main())
