"""MD-GAN: one generator on a server, one discriminator per worker, error feedback, peer-to-peer
discriminator swaps (Hardy, Le Merrer, Sericola, "MD-GAN: Multi-Discriminator Generative
Adversarial Networks for Distributed Datasets", IPDPS 2019; Algorithm 1, Section IV).

    mpirun -n 5 python -m mpidist.mdgan                       # server + N = 4 workers, digits
    mpirun -n 5 python -m mpidist.mdgan -k log2 --crash-every # Figure 3: a worker stops every I/N
    mpirun -n 5 python -m mpidist.mdgan --mode flgan          # the FL-GAN baseline
    python -m mpidist.mdgan --mode standalone                 # one GAN on all the data

Rank 0 is the central server C holding the generator G (parameters w); ranks 1..N are the workers
W_n, each with its data share B_n and its discriminator D_n (parameters theta_n). One global
iteration i (Algorithm 1):

1. C draws k batches K = {X^(1..k)} of b generated images and sends worker n the two batches
   X_n^(g) = X^((n mod k)+1) and X_n^(d) = X^(((n+1) mod k)+1) (Section IV-B1) -- 2 x b x d values;
2. W_n performs L discriminator steps on J_disc(X_n^(r), X_n^(d)) with a local real batch X_n^(r);
3. W_n computes the error feedback F_n = {dB~(X_n^(g)) / dx_i} (Section IV-B2) and sends it
   (b x d values);
4. C backpropagates all F_n through G in one backward pass,
   Delta w = d/dw (1/N) sum_n B~(X_n^(g)), and takes an Adam step.

Every E epochs (i mod (E m / b) = 0) the workers swap discriminators peer to peer along a random
derangement drawn from the shared seed (never through the server). ACGAN (the paper's setting): D
also predicts the class; the class codes of generated batch j at iteration i are drawn from the
shared seed, so every worker knows the labels of its batches without a message.

Crash tolerance (Figure 3, ``--crash-every``): one worker stops for good every I/N iterations
(fail-stop: after pulling its batches of that iteration it sends the server a one-value notice
instead of its feedback and then sends nothing more; its data share is gone). The server receives
feedbacks and notices with nonblocking receives and never waits for a stopped worker; before each
swap it tells the live workers who is live (one small "membership" message), so swaps skip the
stopped workers. A real death of a worker process (``--fail-at I:RANK:kill``, or any SIGKILL)
ends the whole job through the MPI launcher; if a launcher did not, the server's deadline
(--comm-timeout) would.

Trace (per rank, HDF5): comm channels ``gen_batches`` (C -> W_n: X^(g) tag 11, X^(d) tag 12),
``feedback`` (W_n -> C, tag 13), ``crash_notice`` (tag 14), ``membership`` (tag 15), ``swap``
(W -> W, tag 16), ``fl_params`` (FL-GAN, w tag 21 and theta tag 22, both ways). Metrics: on rank 0
``score`` (classifier score, the paper's MNIST score), ``fid`` (Frechet distance on the scoring
classifier's features), ``score_real``/``fid_real`` (the same for real images: the ceiling),
``live_workers`` (every iteration), ``crash`` (value = the stopped worker's rank, at the iteration
its notice arrived); on workers ``loss_d``, ``loss_g``, ``swap_to``/``swap_from`` (peer ranks) and
``crash`` (own rank, when it stops; its trace also gets the attribute ``crashed_at``). At the end
every rank's trace gets the attribute ``params_sha256`` (its final parameters: w on the server, the
theta_n it holds on a worker; FL-GAN and standalone: w and theta), rank 0 prints G's.

Checkpoints (``--checkpoint-every C``, ``--resume DIR``, SIGUSR1/SIGTERM; files as in
mpidist.checkpoint): taken on every rank at the end of the same iteration, where no message is in
flight (after the swap); an iteration is a step, so ``--checkpoint-every C`` saves after iterations
C, 2C, ... (FL-GAN: at the end of the first round reaching each multiple of C, rounds being the
only points where its ranks meet); a duration (``--checkpoint-every 15m``) saves at the first stop
agreement (below) after it passed. A checkpoint holds, besides the RNG states and the clock: the
server's G (w and its BatchNorm statistics), G's Adam state, the live workers and the scores so
far; on each worker the D_n it holds now (after the swaps so far: swaps move theta, Adam's moments
stay with the worker), its Adam state, its data position and whether it has stopped (emulated
crash); FL-GAN: the server's averaged G and D, every worker's G, D, both Adam states and data
position; standalone: G, D, both Adam states, data position, scores. The per-iteration draws (class
codes, swap derangements, crash order) come from the shared seed by iteration number and need no
state. Every rank also saves the run's settings (mode, k, b, L, E, learning rates, betas,
architecture, latent size, losses, crash period T, data, seed); ``--resume`` with any of them
changed is refused with one line, while -I, the score flags and the run flags may change. A stop
signal (SIGUSR1 or SIGTERM on any rank, or whatever else mpidist.runtime turns into one) is agreed
every 10 iterations (STOP_AGREEMENT_ITERATIONS) and at every checkpoint (FL-GAN: every round) by
one 8-byte allreduce on channel ``control``; then every rank saves that iteration and the job ends
with status 0. A worker that stopped (emulated crash) still joins these agreements and checkpoints:
they are the job's messages, not the algorithm's. A resumed run continues the trace (each iteration
once) and ends with the same parameters as an uninterrupted run, bit for bit on CPU: resume with
the same command plus ``--resume <run dir>``.
"""
from __future__ import annotations

import hashlib
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, data, metrics, runtime
from .comm import FlatParams, waitall
from .errors import UsageError
from .models import gan as gan_models

# tags of the point-to-point messages (distinct per channel)
TAG_XG, TAG_XD, TAG_FEEDBACK, TAG_NOTICE, TAG_MEMBERSHIP, TAG_SWAP = 11, 12, 13, 14, 15, 16
TAG_FL_W, TAG_FL_THETA = 21, 22
# streams of the shared seed (every rank draws the same numbers from them)
_LABEL_STREAM, _SWAP_STREAM, _CRASH_STREAM = 101, 102, 103
_FOREVER = 1e9  # deadline of the final wait of a worker that stopped (it idles until the end)
STOP_AGREEMENT_ITERATIONS = 10  # a stop signal is agreed on every this many iterations


# =============================================================================== pure rules

def batches_per_iteration(k, num_workers: int) -> int:
    """k, the number of generated batches per iteration: an int, or "log2" for floor(log2 N)
    (Section IV-B4: the paper runs k = 1 and k = floor(log2 N)); 1 <= k <= N."""
    if k == "log2":
        k = max(1, int(math.floor(math.log2(num_workers)))) if num_workers >= 1 else 1
    k = int(k)
    if not 1 <= k <= max(num_workers, 1):
        raise UsageError(f"-k {k}: the server draws 1 <= k <= N = {num_workers} batches")
    return k


def distribute(n: int, k: int) -> tuple[int, int]:
    """Section IV-B1: worker n (1-based) gets X_n^(g) = X^((n mod k)+1) and
    X_n^(d) = X^(((n+1) mod k)+1); returned as 0-based batch indices (g, d). Distinct for k >= 2;
    for k = 1 both are the one batch."""
    return n % k, (n + 1) % k


def iterations_per_epoch(m: int, b: int) -> int:
    """m / b: iterations for a worker to see its m local samples once with batches of b."""
    return max(1, m // b)


def swap_due(i: int, epochs: int, m: int, b: int) -> bool:
    """Algorithm 1, line 11: swap after iteration i (1-based) when i mod (E m / b) = 0."""
    return i % (epochs * iterations_per_epoch(m, b)) == 0


def swap_permutation(live, seed: int, swap_index: int) -> dict[int, int]:
    """The swap of number ``swap_index``: {sender: receiver} over the live workers, a uniformly
    random derangement (every live worker sends its discriminator to another live worker and
    receives exactly one), drawn from the shared seed so that every worker computes the same one
    without a message. Fewer than two live workers: no swap ({})."""
    live = sorted(int(r) for r in live)
    if len(live) < 2:
        return {}
    rng = np.random.default_rng([seed, _SWAP_STREAM, swap_index])
    idx = np.arange(len(live))
    while True:  # rejection sampling: uniform over derangements, ~e tries on average
        p = rng.permutation(len(live))
        if not np.any(p == idx):
            return {live[a]: live[int(p[a])] for a in range(len(live))}


def crash_schedule(num_workers: int, iterations: int, every: int,
                   seed: int) -> list[tuple[int, int]]:
    """Figure 3: [(iteration, worker rank)] -- one worker stops for good at iterations every,
    2 every, ... (<= I), at most N of them, the order of the workers drawn from the shared seed.
    With every = I / N the last worker stops at iteration I, as in the paper."""
    if every <= 0:
        return []
    order = np.random.default_rng([seed, _CRASH_STREAM]).permutation(num_workers) + 1
    count = min(num_workers, iterations // every)
    return [((c + 1) * every, int(order[c])) for c in range(count)]


def live_after(schedule, num_workers: int, iteration: int) -> list[int]:
    """The workers still live after ``iteration`` under a crash schedule."""
    dead = {w for t, w in schedule if t <= iteration}
    return [n for n in range(1, num_workers + 1) if n not in dead]


def fake_labels(seed: int, i: int, j: int, b: int, num_classes: int) -> torch.Tensor:
    """The ACGAN class codes of generated batch j (0-based) at iteration i, from the shared seed:
    the server conditions G on them and the workers know them without a message."""
    rng = np.random.default_rng([seed, _LABEL_STREAM, i, j])
    return torch.from_numpy(rng.integers(0, num_classes, size=b))


def table3_bytes(mode: str, num_workers: int, b: int, d: int, theta: int, w: int,
                 itemsize: int = 4) -> dict:
    """Table III's communication, in bytes, per MD-GAN iteration or per FL-GAN round.

    MD-GAN: C -> W_n 2 b d values (the two batches; Section IV-D1's text, Table III writes b x d),
    W_n -> C b d values, each swap |theta| per worker (W -> W). FL-GAN: |theta| + |w| each way per
    worker and round."""
    if mode == "mdgan":
        per = {"server_to_worker": 2 * b * d, "worker_to_server": b * d, "swap_per_worker": theta}
    elif mode == "flgan":
        per = {"server_to_worker": theta + w, "worker_to_server": theta + w, "swap_per_worker": 0}
    else:
        raise ValueError(f"table3_bytes: mode {mode}")
    out = {key: v * itemsize for key, v in per.items()}
    out["server_to_workers_total"] = num_workers * out["server_to_worker"]
    out["workers_to_server_total"] = num_workers * out["worker_to_server"]
    return out


# =============================================================================== losses

def _rf(out):
    return out[:, 0]


def disc_loss(D, x_real, y_real, x_fake, y_fake) -> torch.Tensor:
    """J_disc (Section II-1), written as a loss to minimise: -(A~(X_r) + B~(X_g)) =
    mean BCE(D(x_r), real) + mean BCE(D(x_g), fake); ACGAN adds the class cross-entropy on both
    batches (labels None: plain GAN). Real and generated batches go through D separately (as
    mini-batch discrimination requires)."""
    o_r, o_f = D(x_real), D(x_fake)
    loss = (F.binary_cross_entropy_with_logits(_rf(o_r), torch.ones_like(_rf(o_r)))
            + F.binary_cross_entropy_with_logits(_rf(o_f), torch.zeros_like(_rf(o_f))))
    if y_real is not None:
        loss = loss + F.cross_entropy(o_r[:, 1:], y_real) + F.cross_entropy(o_f[:, 1:], y_fake)
    return loss


def gen_loss(D, x, y, saturating: bool = False) -> torch.Tensor:
    """B~(X_g), the generator's term on a batch (Section II-2), averaged over the batch:
    ``saturating``: (1/b) sum log(1 - D(x)) as in the paper's formula; default the
    non-saturating -(1/b) sum log D(x) that GAN codes (and the Keras ACGAN the paper ran) use.
    ACGAN adds the class cross-entropy of the codes y."""
    o = D(x)
    if saturating:
        loss = -F.softplus(_rf(o)).mean()  # log(1 - sigmoid(l)) = -softplus(l)
    else:
        loss = F.binary_cross_entropy_with_logits(_rf(o), torch.ones_like(_rf(o)))
    if y is not None:
        loss = loss + F.cross_entropy(o[:, 1:], y)
    return loss


def error_feedback(D, x_g, y_g, saturating: bool = False) -> tuple[torch.Tensor, float]:
    """F_n = {e_ni = dB~(X_n^(g)) / dx_i} (Section IV-B2): the gradient of the generator's term
    with respect to each generated sample, D's parameters untouched. Returns (F_n shaped like x_g,
    the value of B~)."""
    x = x_g.detach().requires_grad_(True)
    loss = gen_loss(D, x, y_g, saturating)
    (grad,) = torch.autograd.grad(loss, x)
    return grad, float(loss.detach())


def assemble_grad(grad_x: torch.Tensor, feedbacks: dict, k: int, b: int) -> torch.Tensor:
    """The gradient of (1/N) sum_n B~(X_n^(g)) with respect to the k generated batches (stacked,
    [k b, ...]): F_n added into the rows of batch g_n, divided by the number N of feedbacks received
    (Section IV-B2: Delta w = d B~(U_n X_n^(g)) / dw). Written into ``grad_x``."""
    grad_x.zero_()
    if not feedbacks:
        return grad_x
    for n, fb in feedbacks.items():
        g, _ = distribute(n, k)
        grad_x[g * b:(g + 1) * b].add_(fb)
    return grad_x.div_(len(feedbacks))


def reference_generator_grad(G, Ds: dict, z, labels, k: int, b: int, saturating: bool = False):
    """The same gradient computed in one process by autograd (tests): d/dw (1/N) sum_n
    B~_n(G(z)[batch g_n]) with every D_n at hand. Returns the flat gradient of w."""
    x = G(z, labels)
    loss = 0.0
    for n, D in Ds.items():
        g, _ = distribute(n, k)
        yg = None if labels is None else labels[g * b:(g + 1) * b]
        loss = loss + gen_loss(D, x[g * b:(g + 1) * b], yg, saturating)
    loss = loss / len(Ds)
    params = [p for p in G.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


# =============================================================================== set-up

def parse_k(s: str):
    if s == "log2":
        return "log2"
    return runtime.positive_int(s)


def build_parser() -> runtime.ArgumentParser:
    p = runtime.parser("mdgan", __doc__)
    g = p.add_argument_group("MD-GAN (names as in the paper, Table I)")
    g.add_argument("--mode", choices=["mdgan", "flgan", "standalone"], default="mdgan",
                   help="mdgan: Algorithm 1; flgan: every worker trains its own G and D for E "
                        "local epochs and the server averages both each round (Section III-c); "
                        "standalone: one GAN in one process on all the data (default mdgan)")
    g.add_argument("-k", type=parse_k, default=1, metavar="K|log2",
                   help="k, generated batches per iteration, 1 <= k <= N; 'log2' for "
                        "floor(log2 N) (Section IV-B4; default 1)")
    g.add_argument("--k-log2", dest="k", action="store_const", const="log2",
                   help="k = floor(log2 N), the paper's best setting (same as -k log2)")
    g.add_argument("-b", "--batch-size", type=runtime.positive_int, default=32,
                   help="b, the batch size of real and generated batches (default 32)")
    g.add_argument("-L", type=runtime.positive_int, default=1, dest="L",
                   help="L, discriminator learning steps per iteration (Algorithm 1; default 1)")
    g.add_argument("-E", type=runtime.positive_int, default=1, dest="E",
                   help="E, epochs between discriminator swaps (MD-GAN) or local epochs per "
                        "round (FL-GAN) (default 1)")
    g.add_argument("-I", "--iterations", type=runtime.positive_int, default=600,
                   help="I, global learning iterations (generator updates) (default 600)")
    g.add_argument("--lr-g", type=runtime.positive_float, default=1e-3,
                   help="Adam learning rate of G (default 1e-3)")
    g.add_argument("--lr-d", type=runtime.positive_float, default=1e-3,
                   help="Adam learning rate of every D_n (default 1e-3)")
    g.add_argument("--beta1", type=runtime.unit_float, default=0.5,
                   help="Adam beta1 of both sides (default 0.5, as the Keras ACGAN)")
    g.add_argument("--beta2", type=runtime.unit_float, default=0.999,
                   help="Adam beta2 of both sides (default 0.999)")
    g.add_argument("--arch", choices=list(gan_models.ARCHS), default="small",
                   help="G and D: small (CPU default, 16x16), mlp and cnn-mnist (the paper's "
                        "MNIST networks, 28x28), cnn-cifar (the paper's CIFAR-10 networks, "
                        "3x32x32) (default small)")
    g.add_argument("--gan", choices=["acgan", "plain"], default="acgan",
                   help="acgan: D also predicts the class, G is conditioned on it (the paper's "
                        "setting); plain: real/fake only (default acgan)")
    g.add_argument("--latent", type=runtime.positive_int, default=None,
                   help="l, the size of the noise vectors (default: the architecture's, 64 "
                        "small, 100 for the paper's)")
    g.add_argument("--gen-loss", choices=["nonsaturating", "saturating"],
                   default="nonsaturating",
                   help="B~ for G: -log D(G(z)) (default) or the paper's log(1 - D(G(z)))")
    g.add_argument("--crash-every", type=runtime.positive_int, nargs="?", const=0,
                   default=None, metavar="T",
                   help="Figure 3: one worker stops for good every T iterations (fail-stop with "
                        "a notice to the server); without T, T = I / N (mdgan mode)")
    s = p.add_argument_group("scores (rank 0; nothing is downloaded)")
    s.add_argument("--score-every", type=runtime.positive_int, default=None,
                   help="score G every this many iterations (default I / 20)")
    s.add_argument("--score-samples", type=runtime.positive_int, default=500,
                   help="generated samples per score, and real test images for the FID "
                        "(default 500 as the paper, capped by the test set)")
    s.add_argument("--scorer-cache", default=None,
                   help="folder of the cached scoring classifier (default $MPIDIST_CACHE or "
                        "~/.cache/mpidist)")
    s.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="score with torchvision's Inception-v3 loaded from this local state dict "
                        "(e.g. for CIFAR-10) instead of the dataset's own classifier")
    data.add_arguments(p)
    return p


def check_world(args, world: int) -> str | None:
    if args.mode == "standalone":
        if world != 1:
            return (f"--mode standalone runs in one process (got {world} ranks): run it without "
                    "mpirun or with -n 1")
    elif world < 2:
        return (f"--mode {args.mode} needs the server (rank 0) and at least one worker: run "
                "mpirun -n N+1 (e.g. -n 5 for N = 4 workers)")
    n = world - 1
    if args.mode != "standalone" and args.k != "log2" and args.k > n:
        return f"-k {args.k}: the server draws at most N = {n} batches (k <= N)"
    if args.crash_every is not None and args.mode != "mdgan":
        return "--crash-every is an MD-GAN experiment (Figure 3); use it with --mode mdgan"
    if args.inception_weights and not os.path.isfile(args.inception_weights):
        return (f"--inception-weights {args.inception_weights}: no such file (torchvision's "
                "inception_v3 state dict, e.g. inception_v3_google-0cc3c7bd.pth)")
    if getattr(args, "resume", None):
        return resume_mismatch(args, world)
    return None


# =============================================================================== checkpoints

# the settings a checkpoint belongs to, with the flag that sets each (run_config)
CONFIG_FLAGS = {"mode": "--mode", "k": "-k", "b": "-b", "L": "-L", "E": "-E", "lr_g": "--lr-g",
                "lr_d": "--lr-d", "beta1": "--beta1", "beta2": "--beta2", "arch": "--arch",
                "gan": "--gan", "latent": "--latent", "gen_loss": "--gen-loss",
                "crash_every": "--crash-every (T)", "data": "--data",
                "image_size": "--image-size", "seed": "--seed"}


def crash_period(args, num_workers: int) -> int | None:
    """T of ``--crash-every`` (without a value: I / N), or None without crashes."""
    if args.crash_every is None:
        return None
    return args.crash_every or max(1, args.iterations // num_workers)


def run_config(args, world: int) -> dict:
    """The settings that a checkpoint continues (CONFIG_FLAGS): what the saved state means (the
    networks, the optimizers) and what decides the schedule of the iterations after it (k, b, the
    swap period E m / b, the crash period T, the shared seed's draws). -I is not among them."""
    n = world - 1 if args.mode != "standalone" else 1
    k = batches_per_iteration(args.k, n) if args.mode == "mdgan" else 1
    return {"mode": args.mode, "k": k, "b": args.batch_size, "L": args.L, "E": args.E,
            "lr_g": args.lr_g, "lr_d": args.lr_d, "beta1": args.beta1, "beta2": args.beta2,
            "arch": args.arch, "gan": args.gan, "latent": args.latent, "gen_loss": args.gen_loss,
            "crash_every": crash_period(args, n), "data": args.data,
            "image_size": args.image_size, "seed": args.seed}


def config_mismatch(saved: dict, now: dict) -> str | None:
    """One line naming the settings in which a run differs from the checkpoint it resumes, or
    None when it continues the same run."""
    diff = [f"{CONFIG_FLAGS.get(key, key)} {saved.get(key)} -> {now.get(key)}"
            for key in CONFIG_FLAGS if saved.get(key) != now.get(key)]
    if not diff:
        return None
    return ("a resumed run must continue the run of the checkpoint, but this one changes "
            + ", ".join(diff) + " (only -I, the score flags and the run flags may change)")


def resume_mismatch(args, world: int) -> str | None:
    """--resume: refuse (one line, before anything starts) a checkpoint of other settings or of an
    iteration past -I. A checkpoint that cannot be read is left to the runtime to report."""
    try:
        d, manifest = checkpoint.find(args.resume, "mdgan", world)
        saved = checkpoint.load_rank(d, 0)["algorithm"]["config"]
        msg = config_mismatch(saved, run_config(args, world))
    except Exception:  # noqa: BLE001 - unreadable or not ours: the runtime's checks say which
        return None
    if msg:
        return f"--resume {d}: {msg}"
    if manifest["step"] > args.iterations:
        return (f"--resume {d}: the checkpoint is of iteration {manifest['step']}, past -I "
                f"{args.iterations}")
    return None


def params_sha256(*modules) -> str:
    """sha256 of the modules' parameters (their bytes, in order): equal runs, equal digests."""
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Checkpoints:
    """``--checkpoint-every``, ``--resume`` and the stop signal for every mode. Call it at the end
    of an iteration (FL-GAN: of a round) on every rank, where no message is in flight, and before
    ``run.step_done``: it agrees on a stop signal (one 8-byte max-allreduce on channel ``control``)
    every ``agree_every`` iterations and whenever a checkpoint is due, saves every rank's state when
    due or stopping, and returns True when the job must stop."""

    def __init__(self, run, agree_every: int = STOP_AGREEMENT_ITERATIONS):
        self.run, self.agree_every = run, agree_every
        self.every = run.args.checkpoint_every
        self.saved = run.resumed_state                # this rank's state, or None
        if self.saved is not None and not (isinstance(self.saved, dict)
                                           and {"config", "rng"} <= set(self.saved)):
            raise UsageError(f"--resume {run.args.resume}: rank {run.rank}'s file is not a "
                             "checkpoint of mpidist.mdgan (no MD-GAN state in it)")
        self.first = max(1, run.start_step)           # the first iteration to run
        self.last = self.first - 1                    # the iteration of the last checkpoint
        self.config = run_config(run.args, run.world_size)

    def restore_rng(self) -> None:
        """After a resume, once everything is built (building draws from the RNGs): the RNG
        states of the checkpoint, so that the next iteration draws what it drew in the
        uninterrupted run."""
        if self.saved is not None:
            self.run.set_rng_state(self.saved["rng"])

    def __call__(self, i: int, state_fn, timeout: float | None = None) -> bool:
        run = self.run
        total = run.args.iterations
        due = bool(self.every) and i // self.every > self.last // self.every
        code = 0
        if due or (i % self.agree_every == 0 and i < total):
            # the runtime's stop code: 2 x the signal's number, + 1 when this rank's
            # --checkpoint-every duration has passed (runtime.decode_stop)
            flag = torch.tensor([run.stop_code()], dtype=torch.float64)
            code = int(run.comm.iallreduce(flag, "max", "control").wait(timeout)[0])
        timed, stop = runtime.decode_stop(code)
        stop = stop and i < total            # a signal during the last iteration: just finish
        if due or stop or timed:
            run.save_checkpoint(i, {"config": self.config, "rng": run.rng_state(), **state_fn()})
            self.last = i
        if stop:
            run.announce_stop(i, code)
        return stop


class Setup:
    """What every rank derives alike from the arguments: data, shapes, models, schedules."""

    def __init__(self, run):
        a = run.args
        self.args, self.run = a, run
        self.N = run.world_size - 1 if a.mode != "standalone" else 1
        shape, _, _ = gan_models.ARCHS[a.arch]
        size = a.image_size or shape[1]
        self.train = data.load(a.data, a.data_root, a.download, True, size, shape[0])
        self.test = data.load(a.data, a.data_root, a.download, False, size, shape[0])
        self.shape = tuple(self.train.x.shape[1:])
        self.d = int(np.prod(self.shape))
        self.num_classes = self.train.num_classes if a.gan == "acgan" else 0
        self.k = batches_per_iteration(a.k, self.N) if a.mode == "mdgan" else 1
        self.b = a.batch_size
        # m: the local dataset size (the smallest share, so that all ranks agree on epochs)
        self.m = len(self.train) // self.N
        if self.b > self.m:
            raise UsageError(f"-b {self.b} exceeds the {self.m} samples of each of the N = "
                             f"{self.N} data shares ({self.train.name})")
        self.crashes = []
        if a.crash_every is not None:
            self.crashes = crash_schedule(self.N, a.iterations, crash_period(a, self.N), a.seed)
        self.score_every = a.score_every or max(1, a.iterations // 20)
        self.device = run.device

    def models(self):
        try:
            g, d = gan_models.build_pair(self.args.arch, self.shape, self.num_classes,
                                         self.args.latent)
        except ValueError as e:
            raise UsageError(f"--arch {self.args.arch}: {e}") from None
        return g.to(self.device), d.to(self.device)

    def adam(self, module, lr):
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(self.args.beta1,
                                                                    self.args.beta2))

    def shard(self, rank: int, world: int):
        s = data.Shard(self.train, rank, world, self.b, self.args.seed, self.device)
        s.x = s.x * 2 - 1  # G draws in [-1, 1] (tanh)
        return s


# =============================================================================== scoring (rank 0)

class Scoring:
    """Scores of G on rank 0 every ``score_every`` iterations: the classifier score and the FID on
    the scoring classifier's features (or Inception-v3 with --inception-weights), 500 samples."""

    def __init__(self, setup: Setup, G):
        run, a = setup.run, setup.args
        self.setup, self.G, self.run = setup, G, run
        n_ref = min(a.score_samples, len(setup.test))
        ref = setup.test.x[:n_ref]
        t0 = time.monotonic()
        if a.inception_weights:
            net = metrics.inception_net(a.inception_weights, setup.device)
            self.what = f"Inception-v3 from {a.inception_weights}"
        else:
            tr, te = setup.train, setup.test
            epochs = 12 if len(tr) < 10000 else 3
            model, info = metrics.load_or_train_scorer(
                tr.x, tr.y, tr.num_classes, f"{tr.name}", te.x, te.y, a.scorer_cache,
                epochs=epochs, log=run.log)
            model.to(setup.device)
            net = metrics.classifier_net(model)
            how = "cached" if info["cached"] else f"trained in {time.monotonic() - t0:.0f} s"
            self.what = (f"scoring classifier on {tr.name} ({how}, test accuracy "
                         f"{info['test_accuracy']:.3f}, sha256 "
                         f"{info.get('sha256', 'uncached')[:12]})")
        self.scorer = metrics.GanScorer(net, ref.to(setup.device), device=setup.device)
        self.n, self.n_ref = a.score_samples, n_ref
        real = setup.train.x[:self.n].to(setup.device)
        self.real = self.scorer.score(real)
        self.history = []  # (iteration, score, fid, live)
        self.noise = torch.Generator(device="cpu").manual_seed(a.seed + 7)

    @torch.no_grad()
    def samples(self, n: int, labels=None) -> torch.Tensor:
        """n images from G in [0, 1]: fixed noise, classes spread evenly for ACGAN. G stays in
        training mode (batch statistics), as during training."""
        G, nc = self.G, self.setup.num_classes
        z = torch.randn(n, G.latent, generator=self.noise).to(self.setup.device)
        if nc and labels is None:
            labels = torch.arange(n) % nc
        if labels is not None:
            labels = labels.to(self.setup.device)
        return ((G(z, labels) + 1) / 2).clamp_(0, 1)

    def __call__(self, i: int, live: int = -1) -> dict:
        self.noise.manual_seed(self.setup.args.seed + 7)  # the same noise at every scoring
        s = self.scorer.score(self.samples(self.n))
        self.run.metric(i, "score", s["score"])
        self.run.metric(i, "fid", s["fid"])
        self.history.append((i, s["score"], s["fid"], live))
        return s

    def save_grid(self, path: str) -> str:
        import torchvision.utils as vu
        nc = self.setup.num_classes or 10
        labels = torch.arange(nc).repeat_interleave(10) if self.setup.num_classes else None
        self.noise.manual_seed(self.setup.args.seed + 11)
        x = self.samples(10 * nc, labels).cpu()
        scale = max(1, 48 // x.shape[-1])  # small digits: enlarge (nearest) to be seen
        x = F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x
        vu.save_image(x, path, nrow=10, padding=2, pad_value=1.0)
        return path

    def summary(self, title: str) -> list[str]:
        lines = [title, f"  {'iteration':>9} {'score':>7} {'FID':>9} {'live':>5}"]
        for i, sc, fid, live in self.history:
            lines.append(f"  {i:9d} {sc:7.3f} {fid:9.2f} {live if live >= 0 else '':>5}")
        lines.append(f"  real images: score {self.real['score']:.3f}, FID {self.real['fid']:.2f} "
                     f"({self.n} training images against the {self.n_ref} test images of the "
                     "FID reference)")
        return lines


# =============================================================================== MD-GAN

class MDGANServer:
    """CENTRALSERVER(k, I) of Algorithm 1 on rank 0, one global iteration per :meth:`iteration`.

    After an iteration, ``fpG.grads`` holds Delta w (the Adam step does not clear it), ``last_z``
    and ``last_labels`` the noise and class codes of K, ``last_received`` the workers whose F_n
    arrived; ``live`` is the set of workers that have not stopped."""

    def __init__(self, setup: Setup, run, G):
        a, comm, dev = setup.args, run.comm, setup.device
        self.setup, self.run, self.comm, self.G = setup, run, comm, G
        self.fpG = FlatParams(G)
        self.opt = setup.adam(G, a.lr_g)
        self.k, self.b, self.N = setup.k, setup.b, setup.N
        self.workers = list(range(1, self.N + 1))
        self.live = set(self.workers)
        shape = setup.shape
        self.feedback = {n: torch.empty((self.b,) + shape, device=dev) for n in self.workers}
        self.grad_x = torch.zeros((self.k * self.b,) + shape, device=dev)
        self.notice_buf = {n: torch.zeros(1, dtype=torch.int64) for n in self.workers}
        self.notices = {n: comm.irecv(self.notice_buf[n], n, TAG_NOTICE, "crash_notice")
                        for n in self.workers}
        self.member = torch.zeros(self.N + 1, dtype=torch.int32)
        self.last_z = self.last_labels = None
        self.last_received: list[int] = []

    def iteration(self, i: int) -> list[int]:
        """Generate K, send each live worker its X_n^(g) and X_n^(d), gather the F_n (or crash
        notices), backpropagate them through G at once and step Adam. Returns the workers that
        stopped during this iteration."""
        a, comm, dev, run = self.setup.args, self.comm, self.setup.device, self.run
        k, b, G = self.k, self.b, self.G
        stopped, received = [], {}
        if self.live:
            z = torch.randn(k * b, G.latent, device=dev)
            labels = None
            if self.setup.num_classes:
                labels = torch.cat([fake_labels(a.seed, i, j, b, self.setup.num_classes)
                                    for j in range(k)]).to(dev)
            X = G(z, labels)                                       # K = {X^(1..k)}
            Xd = X.detach()
            sends, fbs = [], {}
            for n in sorted(self.live):
                g, d = distribute(n, k)  # X^(d) first: the worker trains on it meanwhile
                sends.append(comm.isend(Xd[d * b:(d + 1) * b], n, TAG_XD, "gen_batches",
                                        snapshot=False))
                sends.append(comm.isend(Xd[g * b:(g + 1) * b], n, TAG_XG, "gen_batches",
                                        snapshot=False))
                fbs[n] = comm.irecv(self.feedback[n], n, TAG_FEEDBACK, "feedback")
            stopped = _collect(fbs, self.notices, received, i, a.comm_timeout)
            for n in stopped:
                self.live.discard(n)
                run.metric(i, "crash", n)
                run.log.info(f"iteration {i}: worker rank {n} stopped (crash notice); "
                             f"{len(self.live)} workers live")
            waitall(sends)
            self.fpG.zero_grad()
            if received:
                assemble_grad(self.grad_x, {n: self.feedback[n] for n in received}, k, b)
                X.backward(self.grad_x)                            # Delta w from all F_n
                self.opt.step()
            self.last_z, self.last_labels = z, labels
        self.last_received = sorted(received)
        run.metric(i, "live_workers", len(self.live))
        if self.setup.crashes and self.live and swap_due(i, a.E, self.setup.m, b):
            self.member.zero_()                                    # who takes part in SWAP
            self.member[sorted(self.live)] = 1
            waitall([comm.isend(self.member, n, TAG_MEMBERSHIP, "membership")
                     for n in sorted(self.live)])
        return stopped

    def state_dict(self) -> dict:
        """The server's part of a checkpoint (at the end of an iteration): G (w and its BatchNorm
        statistics), G's Adam state and the live workers."""
        return {"G": self.G.state_dict(), "opt": self.opt.state_dict(),
                "live": sorted(self.live)}

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])  # copies into the parameters: FlatParams' views stay
        self.opt.load_state_dict(s["opt"])
        self.live = set(int(n) for n in s["live"])

    def finish(self) -> None:
        """Live workers never send a notice: withdraw those receives."""
        for n in self.workers:
            self.notices[n].cancel()


def _collect(fbs: dict, notices: dict, received: dict, i: int, timeout: float) -> list:
    """Wait (nonblocking, polling) until every worker of ``fbs`` has sent its feedback or a crash
    notice; fill ``received`` and return the workers that stopped (their feedback receive is
    withdrawn). A worker that does neither for ``timeout`` seconds died without notice: raise, so
    the job ends instead of hanging."""
    pending = dict(fbs)
    stopped = []
    t0 = time.monotonic()
    nap = 20e-6
    while pending:
        progressed = False
        for n in list(pending):
            if pending[n].test():
                received[n] = True
                del pending[n]
                progressed = True
            elif notices[n].test():
                pending.pop(n).cancel()
                stopped.append(n)
                progressed = True
        if progressed:
            nap = 20e-6
            continue
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(
                f"iteration {i}: worker rank(s) {sorted(pending)} sent neither the error feedback "
                f"nor a crash notice in {timeout:g} s (--comm-timeout): a worker died without "
                "notice; ending the job")
        time.sleep(nap)
        nap = min(nap * 2, 1e-3)
    return stopped


class MDGANWorker:
    """WORKER(C, B_n, I, L, b) and SWAP of Algorithm 1 on rank n >= 1, one global iteration per
    :meth:`iteration`; ``fpD`` holds theta_n as one flat buffer (what a swap moves)."""

    def __init__(self, setup: Setup, run, D=None):
        a, dev, n = setup.args, setup.device, run.rank
        self.setup, self.run, self.comm, self.n = setup, run, run.comm, n
        self.D = D if D is not None else shared_discriminator(setup)
        self.fpD = FlatParams(self.D)
        self.opt = setup.adam(self.D, a.lr_d)
        self.k, self.b = setup.k, setup.b
        self.shard = setup.shard(n - 1, setup.N)
        self.g_idx, self.d_idx = distribute(n, self.k)
        self.x_g = torch.empty((self.b,) + setup.shape, device=dev)
        self.x_d = torch.empty((self.b,) + setup.shape, device=dev)
        self.swap_buf = torch.empty_like(self.fpD.params)
        self.member = torch.zeros(setup.N + 1, dtype=torch.int32)
        self.crash_at = {w: t for t, w in setup.crashes}.get(n)
        self.saturating = a.gen_loss == "saturating"
        self.per_swap = a.E * iterations_per_epoch(setup.m, self.b)
        self.stopped = False  # set by the emulated crash

    def state_dict(self) -> dict:
        """The worker's part of a checkpoint (at the end of an iteration, after any swap): the
        D_n it holds now, its Adam state (which stays with the worker across swaps), its data
        position and whether it has stopped."""
        return {"D": self.D.state_dict(), "opt": self.opt.state_dict(),
                "shard": self.shard.state_dict(), "stopped": self.stopped}

    def load_state_dict(self, s: dict) -> None:
        self.D.load_state_dict(s["D"])  # copies into the parameters: FlatParams' views stay
        self.opt.load_state_dict(s["opt"])
        self.shard.load_state_dict(s["shard"])
        self.stopped = bool(s["stopped"])

    def iteration(self, i: int) -> bool:
        """One global iteration; False once this worker has stopped (emulated crash)."""
        a, comm, dev, n, run = self.setup.args, self.comm, self.setup.device, self.n, self.run
        nc, b = self.setup.num_classes, self.b
        hd = comm.irecv(self.x_d, 0, TAG_XD, "gen_batches")        # X_n^(g), X_n^(d) <- Pull(C)
        hg = comm.irecv(self.x_g, 0, TAG_XG, "gen_batches")
        x_r, y_r = self.shard.next()                                # X_n^(r)
        hd.wait()
        if self.crash_at == i:
            hg.wait()  # pulled whole, so that the server's sends complete
            comm.isend(torch.tensor([i], dtype=torch.int64), 0, TAG_NOTICE, "crash_notice").wait()
            run.metric(i, "crash", n)
            run.trace.set_attrs(crashed_at=i)
            run.log.info(f"emulated fail-stop crash at iteration {i}: notice sent, sending "
                         "nothing more")
            self.stopped = True
            return False
        y_g = fake_labels(a.seed, i, self.g_idx, b, nc).to(dev) if nc else None
        y_d = fake_labels(a.seed, i, self.d_idx, b, nc).to(dev) if nc else None
        if not nc:
            y_r = None
        for _ in range(a.L):                                        # L x DISCLEARNINGSTEP
            loss_d = disc_loss(self.D, x_r, y_r, self.x_d, y_d)
            self.fpD.zero_grad()
            loss_d.backward()
            self.opt.step()
        hg.wait()
        fb, loss_g = error_feedback(self.D, self.x_g, y_g, self.saturating)   # F_n
        h = comm.isend(fb, 0, TAG_FEEDBACK, "feedback", snapshot=False)       # SEND(C, F_n)
        run.metric(i, "loss_d", float(loss_d.detach()))
        run.metric(i, "loss_g", loss_g)
        if i % self.per_swap == 0:
            self.swap(i)
        h.wait()
        return True

    def swap(self, i: int) -> None:
        """SWAP(D_n): send theta_n to the worker the shared permutation names, receive one; with
        crashes, the live set comes from the server's membership message."""
        comm, n, N = self.comm, self.n, self.setup.N
        live = list(range(1, N + 1))
        if self.setup.crashes:
            comm.irecv(self.member, 0, TAG_MEMBERSHIP, "membership").wait()
            live = [r for r in range(1, N + 1) if self.member[r]]
        perm = swap_permutation(live, self.setup.args.seed, i // self.per_swap)
        if n not in perm:
            return
        src = next(s for s, r in perm.items() if r == n)
        hr = comm.irecv(self.swap_buf, src, TAG_SWAP, "swap")
        hs = comm.isend(self.fpD.params, perm[n], TAG_SWAP, "swap", snapshot=False)
        waitall([hr, hs])
        self.fpD.params.copy_(self.swap_buf)
        self.run.metric(i, "swap_to", perm[n])
        self.run.metric(i, "swap_from", src)


def shared_discriminator(setup: Setup):
    """A D_n whose initial theta_n is the same on every worker, drawn from the shared seed
    (Section IV-A: "the architecture and initial parameters of D_n could be different on every
    worker n; for simplicity, we assume that they are the same")."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.args.seed * 1000 + 999)
        return setup.models()[1]


def mdgan_server(setup: Setup, run, G, scoring: "Scoring", ckpt: Checkpoints) -> list:
    """Algorithm 1's server loop; returns the modules of its result (G)."""
    a = setup.args
    server = MDGANServer(setup, run, G)
    k, b = setup.k, setup.b
    run.say(f"MD-GAN: server + N = {setup.N} workers, k = {k}, b = {b}, L = {a.L}, E = {a.E}, "
            f"I = {a.iterations}, {a.gan} on {setup.train.name} {setup.shape} "
            f"({setup.m} samples per worker, swap every {a.E * iterations_per_epoch(setup.m, b)} "
            f"iterations)",
            gan_models.describe_pair(a.arch, G, setup.models()[1]),
            f"scores: {scoring.what}")
    if setup.crashes:
        run.say("crash schedule (iteration: worker rank): "
                + ", ".join(f"{t}: {w}" for t, w in setup.crashes))
    if ckpt.saved is not None:
        server.load_state_dict(ckpt.saved["server"])
        scoring.history = list(ckpt.saved["history"])
    ckpt.restore_rng()
    run.comm.step = ckpt.first
    state = lambda: {"server": server.state_dict(), "history": list(scoring.history)}  # noqa: E731
    for i in range(ckpt.first, a.iterations + 1):
        server.iteration(i)
        live = len(server.live)
        if i % setup.score_every == 0 or i == a.iterations:
            s = scoring(i, live)
            run.progress(i, a.iterations, force=True, score=s["score"], fid=s["fid"], live=live)
        else:
            run.progress(i, a.iterations, live=live)
        stop = ckpt(i, state)
        run.step_done(i)
        if stop:
            break
    server.finish()
    return [G]


def mdgan_worker(setup: Setup, run, ckpt: Checkpoints) -> MDGANWorker:
    """Algorithm 1's worker loop. A worker that stopped (emulated crash) sends nothing more but
    still joins the job's stop agreements and checkpoints (without a deadline: it idles)."""
    worker = MDGANWorker(setup, run)
    if ckpt.saved is not None:
        worker.load_state_dict(ckpt.saved["worker"])
    ckpt.restore_rng()
    run.comm.step = ckpt.first
    state = lambda: {"worker": worker.state_dict()}  # noqa: E731
    for i in range(ckpt.first, setup.args.iterations + 1):
        if not worker.stopped:
            worker.iteration(i)
        stop = ckpt(i, state, timeout=_FOREVER if worker.stopped else None)
        run.step_done(i)
        if stop:
            break
    return worker


# =============================================================================== FL-GAN, standalone

def local_iteration(G, D, opt_g, opt_d, x_r, y_r, num_classes, L, saturating):
    """One classical GAN iteration on local data (Section II): L steps of D on a real batch and a
    generated batch, then one step of G on a fresh generated batch through the updated D.
    Returns (loss_d, loss_g)."""
    b, dev = len(x_r), x_r.device
    z = torch.randn(b, G.latent, device=dev)
    y_d = torch.randint(num_classes, (b,), device=dev) if num_classes else None
    with torch.no_grad():
        x_d = G(z, y_d)
    for _ in range(L):
        loss_d = disc_loss(D, x_r, y_r if num_classes else None, x_d, y_d)
        opt_d.zero_grad(set_to_none=False)
        loss_d.backward()
        opt_d.step()
    z = torch.randn(b, G.latent, device=dev)
    y_g = torch.randint(num_classes, (b,), device=dev) if num_classes else None
    loss_g = gen_loss(D, G(z, y_g), y_g, saturating)
    opt_g.zero_grad(set_to_none=False)
    loss_g.backward()
    opt_g.step()
    return float(loss_d.detach()), float(loss_g.detach())


def flgan_rounds(setup: Setup) -> list[int]:
    """The iteration count at the end of every FL-GAN round: each round is E local epochs,
    E m / b iterations (Section III-c), the last one cut at I."""
    per = setup.args.E * iterations_per_epoch(setup.m, setup.b)
    return [min(r * per, setup.args.iterations)
            for r in range(1, -(-setup.args.iterations // per) + 1)]


def flgan_server(setup: Setup, run, G, scoring: Scoring, ckpt: Checkpoints) -> list:
    """FL-GAN's server: sends (w, theta) to every worker, receives their trained (w_n, theta_n)
    after E local epochs and averages both (federated averaging of G and D). A round lasts E local
    epochs, so its wait has no practical deadline (a dead worker ends the job via the launcher).
    The trace stamps a round's messages with the iteration that ends it. Returns [G, D]."""
    a, comm, dev = setup.args, run.comm, setup.device
    _, D = setup.models()
    fpG, fpD = FlatParams(G), FlatParams(D)
    N = setup.N
    workers = list(range(1, N + 1))
    ends = flgan_rounds(setup)
    run.say(f"FL-GAN: server + N = {N} workers, b = {setup.b}, L = {a.L}, E = {a.E} local "
            f"epochs per round ({ends[0]} iterations), {len(ends)} rounds, I = {a.iterations}, "
            f"{a.gan} on {setup.train.name} {setup.shape}",
            gan_models.describe_pair(a.arch, G, D), f"scores: {scoring.what}")
    if ckpt.saved is not None:
        G.load_state_dict(ckpt.saved["G"])
        D.load_state_dict(ckpt.saved["D"])
        scoring.history = list(ckpt.saved["history"])
    ckpt.restore_rng()
    w_in = torch.empty(N, fpG.numel, device=dev)
    t_in = torch.empty(N, fpD.numel, device=dev)
    prev = ckpt.first - 1
    state = lambda: {"G": G.state_dict(), "D": D.state_dict(),  # noqa: E731
                     "history": list(scoring.history)}
    for end in [e for e in ends if e > prev]:
        comm.step = end
        hs = []
        for n in workers:
            hs += [comm.isend(fpG.params, n, TAG_FL_W, "fl_params", snapshot=False),
                   comm.isend(fpD.params, n, TAG_FL_THETA, "fl_params", snapshot=False),
                   comm.irecv(w_in[n - 1], n, TAG_FL_W, "fl_params"),
                   comm.irecv(t_in[n - 1], n, TAG_FL_THETA, "fl_params")]
        waitall(hs, timeout=_FOREVER)
        torch.mean(w_in, 0, out=fpG.params)
        torch.mean(t_in, 0, out=fpD.params)
        run.metric(end, "live_workers", N)
        if end // setup.score_every > prev // setup.score_every or end == a.iterations:
            s = scoring(end, N)
            run.progress(end, a.iterations, force=True, score=s["score"], fid=s["fid"])
        prev = end
        stop = ckpt(end, state)
        run.step_done(end)
        if stop:
            break
    return [G, D]


def flgan_worker(setup: Setup, run, ckpt: Checkpoints) -> list:
    """FL-GAN's worker: E local epochs of a classical GAN per round between the server's
    averagings. Returns [G, D] (its own, as last sent)."""
    a, comm = setup.args, run.comm
    G, D = setup.models()
    fpG, fpD = FlatParams(G), FlatParams(D)
    opt_g, opt_d = setup.adam(G, a.lr_g), setup.adam(D, a.lr_d)
    shard = setup.shard(run.rank - 1, setup.N)
    saturating = a.gen_loss == "saturating"
    if ckpt.saved is not None:  # G and D come from the server at the next round; their
        G.load_state_dict(ckpt.saved["G"])  # BatchNorm statistics stay with the worker
        D.load_state_dict(ckpt.saved["D"])
        opt_g.load_state_dict(ckpt.saved["opt_g"])
        opt_d.load_state_dict(ckpt.saved["opt_d"])
        shard.load_state_dict(ckpt.saved["shard"])
    ckpt.restore_rng()
    i = ckpt.first - 1
    state = lambda: {"G": G.state_dict(), "D": D.state_dict(),  # noqa: E731
                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "shard": shard.state_dict()}
    for end in [e for e in flgan_rounds(setup) if e > i]:
        comm.step = end
        waitall([comm.irecv(fpG.params, 0, TAG_FL_W, "fl_params"),
                 comm.irecv(fpD.params, 0, TAG_FL_THETA, "fl_params")], timeout=_FOREVER)
        while i < end:
            i += 1
            x_r, y_r = shard.next()
            ld, lg = local_iteration(G, D, opt_g, opt_d, x_r, y_r, setup.num_classes, a.L,
                                     saturating)
            run.metric(i, "loss_d", ld)
            run.metric(i, "loss_g", lg)
        waitall([comm.isend(fpG.params, 0, TAG_FL_W, "fl_params", snapshot=False),
                 comm.isend(fpD.params, 0, TAG_FL_THETA, "fl_params", snapshot=False)])
        stop = ckpt(end, state)
        run.step_done(end)
        if stop:
            break
    return [G, D]


def standalone(setup: Setup, run, G, scoring: Scoring, ckpt: Checkpoints) -> list:
    """standalone-GAN: the same G and D trained in one process on all the data. Returns [G, D]."""
    a = setup.args
    _, D = setup.models()
    opt_g, opt_d = setup.adam(G, a.lr_g), setup.adam(D, a.lr_d)
    shard = setup.shard(0, 1)
    run.say(f"standalone GAN: b = {setup.b}, L = {a.L}, I = {a.iterations}, {a.gan} on "
            f"{setup.train.name} {setup.shape} ({len(setup.train)} samples)",
            gan_models.describe_pair(a.arch, G, D), f"scores: {scoring.what}")
    saturating = a.gen_loss == "saturating"
    if ckpt.saved is not None:
        for module, key in ((G, "G"), (D, "D"), (opt_g, "opt_g"), (opt_d, "opt_d"),
                            (shard, "shard")):
            module.load_state_dict(ckpt.saved[key])
        scoring.history = list(ckpt.saved["history"])
    ckpt.restore_rng()
    state = lambda: {"G": G.state_dict(), "D": D.state_dict(),  # noqa: E731
                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "shard": shard.state_dict(), "history": list(scoring.history)}
    for i in range(ckpt.first, a.iterations + 1):
        x_r, y_r = shard.next()
        ld, lg = local_iteration(G, D, opt_g, opt_d, x_r, y_r, setup.num_classes, a.L,
                                 saturating)
        run.metric(i, "loss_d", ld)
        run.metric(i, "loss_g", lg)
        if i % setup.score_every == 0 or i == a.iterations:
            s = scoring(i)
            run.progress(i, a.iterations, force=True, score=s["score"], fid=s["fid"])
        stop = ckpt(i, state)
        run.step_done(i)
        if stop:
            break
    return [G, D]


# =============================================================================== main

def main(argv=None) -> None:
    p = build_parser()
    with runtime.start("mdgan", p, argv, check=check_world,
                       may_change=None) as run:  # compares its settings itself
        run.trace.set_attrs(pid=os.getpid())
        setup = Setup(run)
        a = run.args
        ckpt = Checkpoints(run)
        if run.rank == 0:  # G, and the scores (the scoring classifier may be trained first)
            G, _ = setup.models()
            scoring = Scoring(setup, G)
            if ckpt.saved is None:  # a resumed trace has them already
                run.metric(0, "score_real", scoring.real["score"])
                run.metric(0, "fid_real", scoring.real["fid"])
        run.comm.barrier(timeout=_FOREVER)
        t0 = time.monotonic()
        crashed = False
        if a.mode == "standalone":
            result = standalone(setup, run, G, scoring, ckpt)
        elif run.rank == 0:
            result = (mdgan_server if a.mode == "mdgan" else flgan_server)(setup, run, G, scoring,
                                                                          ckpt)
        elif a.mode == "mdgan":
            worker = mdgan_worker(setup, run, ckpt)
            result, crashed = [worker.D], worker.stopped
        else:
            result = flgan_worker(setup, run, ckpt)
        digest = params_sha256(*result)
        run.trace.set_attrs(params_sha256=digest)
        if run.rank == 0 and not run.stopped:
            png = scoring.save_grid(os.path.join(run.run_dir, "samples.png"))
            live = scoring.history[-1][3] if scoring.history else -1
            since = "since the resume, " if ckpt.saved is not None else ""
            run.say(*scoring.summary(f"{a.mode}: scores of G over iterations "
                                     f"({since}wall {time.monotonic() - t0:.1f} s)"),
                    *([f"live workers at the end: {live} of {setup.N}"]
                      if a.mode == "mdgan" else []),
                    f"final parameters ({'w' if a.mode == 'mdgan' else 'w and theta'}): "
                    f"sha256 {digest[:16]}",
                    f"samples: {png}")
        # a stopped worker idles here until the others finish; everyone meets before closing
        run.comm.barrier(timeout=_FOREVER if crashed else None)


if __name__ == "__main__":
    main()
