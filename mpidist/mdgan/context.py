"""What every rank of an MD-GAN run derives alike: the settings the roles read (:class:`Config`,
from the flags or from the Python API's keywords), and for the command line the data, G and D and
the schedules built from the flags (:class:`Setup`); a user's own generator and discriminator
(``--generator`` / ``--discriminator MODULE:FUNCTION``) and the one-batch check of their outputs."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .. import data, user
from ..errors import UsageError
from ..models import build as build_zoo
from ..models import count_parameters
from ..models import gan as gan_models
from .rules import (batches_per_iteration, crash_schedule, flgan_round_ends, generate,
                    iterations_per_epoch)


class Config:
    """The settings the roles of one MD-GAN run read (Algorithm 1's symbols), the same on every
    rank: built from the flags by :class:`Setup`, or from the keywords of :class:`~mpidist.mdgan.
    MDGAN`.

    ``train``: the whole training set (a :class:`mpidist.data.Dataset`), of which worker n trains
    on the disjoint shard n - 1 of N drawn from ``seed``; ``scaled``: its inputs are images in
    [0, 1] that D sees in [-1, 1] (2x - 1, the built-in datasets; a user's data are used as they
    are). ``m`` is the size of the smallest share (so that all ranks agree on epochs) and
    ``per_swap`` = E m / b the iterations between swaps (Algorithm 1, line 11; FL-GAN's round)."""

    def __init__(self, *, train, N: int, k, b: int, L: int = 1, E: int = 1, lr_g: float = 1e-3,
                 lr_d: float = 1e-3, beta1: float = 0.5, beta2: float = 0.999,
                 num_classes: int = 0, latent: int = 64, saturating: bool = False, seed: int = 0,
                 crashes=(), device="cpu", comm_timeout: float = 300.0, scaled: bool = False,
                 slow: dict | None = None, async_lr: str = "staleness"):
        if len(train) < N:
            raise UsageError(f"{train.name}: {len(train)} training samples cannot be split over "
                             f"N = {N} workers")
        self.train, self.N, self.b, self.L, self.E = train, N, int(b), int(L), int(E)
        self.k = batches_per_iteration(k, N)
        self.lr_g, self.lr_d, self.beta1, self.beta2 = lr_g, lr_d, beta1, beta2
        self.num_classes, self.latent, self.saturating = int(num_classes), int(latent), saturating
        self.seed, self.device, self.comm_timeout, self.scaled = seed, device, comm_timeout, scaled
        self.shape = tuple(train.x.shape[1:])
        self.d = int(np.prod(self.shape))
        self.m = len(train) // N
        if self.b > self.m:
            raise UsageError(f"batch {self.b} exceeds the {self.m} samples of each of the N = "
                             f"{N} data shares ({train.name})")
        self.per_swap = self.E * iterations_per_epoch(self.m, self.b)
        self.crashes = list(crashes)
        self.slow = dict(slow or {})   # --slow-worker: {worker rank: seconds of sleep per iteration}
        self.async_lr = async_lr       # --async-lr (mdgan-async): the learning-rate rule

    def adam(self, module, lr):
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(self.beta1, self.beta2))

    def shard(self, rank: int, world: int):
        s = data.Shard(self.train, rank, world, self.b, self.seed, self.device)
        if self.scaled:
            s.x = s.x * 2 - 1  # G draws in [-1, 1] (tanh)
        return s


# ------------------------------------------------------------------ a user's G and D

def _given(flag: str, spec: str, kw: dict) -> str:
    return " ".join([f"{flag} {spec}"] + [f"{flag}-arg {k}={v}" for k, v in kw.items()])


def build_generator(spec: str, latent: int, shape, num_classes: int, **kw) -> torch.nn.Module:
    """``--generator MODULE:FUNCTION``: ``FUNCTION(latent_dim, out_shape, num_classes, **kw)``
    (``kw`` from ``--generator-arg KEY=VALUE``)."""
    return user.build_module(spec, "--generator",
                             lambda fn: fn(int(latent), tuple(shape), num_classes, **kw),
                             given=_given("--generator", spec, kw))


def build_discriminator(spec: str, shape, num_classes: int, **kw) -> torch.nn.Module:
    """``--discriminator MODULE:FUNCTION``: ``FUNCTION(in_shape, num_classes, **kw)`` (``kw`` from
    ``--discriminator-arg KEY=VALUE``)."""
    return user.build_module(spec, "--discriminator",
                             lambda fn: fn(tuple(shape), num_classes, **kw),
                             given=_given("--discriminator", spec, kw))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def check_networks(G, D, shape, num_classes: int, latent: int, g_name: str = "generator",
                   d_name: str = "discriminator") -> None:
    """One forward pass of two samples through G and D before training (a one-line UsageError
    otherwise): ``G(z, labels)`` (``G(z)`` when ``num_classes`` is 0) of noise [2, latent] must
    return [2, *shape]; ``D(x)`` of those samples must return [2, 1 + num_classes] (column 0 the
    real/fake logit, columns 1.. the class logits; see :func:`mpidist.mdgan.disc_loss`). It
    changes nothing: eval mode, no gradient, the RNG states restored. Either module may be None
    (a role that does not hold it)."""
    want_x = (2,) + tuple(shape)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        x = None
        if G is not None:
            dev = next(G.parameters()).device
            z = torch.zeros(2, latent, device=dev)
            labels = torch.zeros(2, dtype=torch.long, device=dev) if num_classes else None
            x = _forward(G, lambda: generate(G, z, labels), g_name,
                         f"G({'z, labels' if num_classes else 'z'}) on noise of shape (2, "
                         f"{latent})")
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != want_x:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise UsageError(f"{g_name}: G({'z, labels' if num_classes else 'z'}) on noise "
                                 f"of shape (2, {latent}) returned {got}, expected {want_x} "
                                 "(samples shaped like the data)")
        if D is not None:
            dev = next(D.parameters()).device
            x = torch.zeros(want_x, device=dev) if x is None else x.to(dev)
            out = _forward(D, lambda: D(x), d_name, f"D(x) on samples of shape {want_x}")
            want = (2, 1 + num_classes)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                what = ("column 0 the real/fake logit, columns 1.. the logits of the "
                        f"{num_classes} classes (ACGAN)" if num_classes else
                        "the real/fake logit (plain GAN)")
                raise UsageError(f"{d_name}: D(x) on samples of shape {want_x} returned {got}, "
                                 f"expected {want} ({what})")


def _forward(module, call, name: str, what: str):
    was = module.training
    module.eval()
    try:
        return call()
    except Exception as e:  # a shape or dtype mismatch inside the user's module
        raise UsageError(f"{name}: {what} failed ({type(e).__name__}: {_first_line(e)})") \
            from None
    finally:
        module.train(was)


def describe_networks(g_name: str, G, d_name: str, D, train) -> str:
    """``generator mod:gen (|w| = 1,234 parameters), discriminator mod:disc (|theta| = 567
    parameters) on blobs:blobs: 600 training samples of shape (4,)``."""
    return (f"generator {g_name} (|w| = {count_parameters(G):,} parameters), discriminator "
            f"{d_name} (|theta| = {count_parameters(D):,} parameters) on {train.name}: "
            f"{len(train)} training samples of shape {tuple(train.x.shape[1:])}")


# ------------------------------------------------------------------ the command line's settings

class Setup(Config):
    """The run's settings and the objects built from them, the same on every rank (the command
    line): the data of ``--data``, G and D of ``--model`` or the user's ``--generator`` /
    ``--discriminator``, the scoring and FL-GAN schedules."""

    def __init__(self, run):
        a = run.args
        self.args, self.run = a, run
        N = run.world_size - 1 if a.mode != "standalone" else 1
        self.user_nets = bool(a.generator or a.discriminator)
        shape, arch_latent, _ = gan_models.ARCHS[a.model]
        if a.generator and a.discriminator:   # no built-in network: the data as they come
            size, channels = a.image_size, None
        else:                                  # a built-in network's image shape
            size, channels = a.image_size or shape[1], shape[0]
        train = data.load(a.data, a.data_root, a.download, True, size, channels)
        self.test = data.load(a.data, a.data_root, a.download, False, size, channels)
        if a.gan == "acgan" and train.y.is_floating_point():
            raise UsageError(f"--data {a.data} has float labels (regression targets), not "
                             "classes: use --gan plain (ACGAN conditions G and D on classes)")
        if len(train) < N:
            raise UsageError(f"--data {a.data}: {len(train)} training samples cannot be split "
                             f"over N = {N} workers")
        if a.batch_size > len(train) // N:
            raise UsageError(f"-b {a.batch_size} exceeds the {len(train) // N} samples of each "
                             f"of the N = {N} data shares ({train.name})")
        crashes = []
        if a.crash_every is not None:  # T, resolved by cli.check_world
            crashes = crash_schedule(N, a.steps, a.crash_every, a.seed)
        super().__init__(
            train=train, N=N, k=a.k if a.mode != "flgan" else 1, b=a.batch_size, L=a.L, E=a.E,
            lr_g=a.lr_g, lr_d=a.lr_d, beta1=a.beta1, beta2=a.beta2,
            num_classes=train.num_classes if a.gan == "acgan" else 0,
            latent=a.latent or arch_latent, saturating=a.gen_loss == "saturating", seed=a.seed,
            crashes=crashes, device=run.device, comm_timeout=a.comm_timeout,
            scaled=not user.is_spec(a.data),
            slow=dict([a.slow_worker]) if getattr(a, "slow_worker", None) else None,
            async_lr=getattr(a, "async_lr", None) or "staleness")
        self.steps = a.steps
        self.round_ends = flgan_round_ends(a.steps, self.per_swap)  # FL-GAN's rounds
        self.score_every = a.eval_every or max(1, a.steps // 20)
        self._task = None
        if self.user_nets:  # every rank checks alike, on a pair built aside (no RNG drawn)
            with torch.random.fork_rng(devices=[]):
                G, D = self.models()
            check_networks(G, D, self.shape, self.num_classes, self.latent,
                           self.generator_name, self.discriminator_name)
            self._task = self.describe(G, D)

    def task(self) -> str:
        """One line naming the networks as given, their parameter counts and the data (the
        trace's ``task`` attribute)."""
        if self._task is None:
            with torch.random.fork_rng(devices=[]):  # a pair built aside: no RNG drawn
                G, D = self.models()
            t = self.train
            self._task = (f"--model {self.args.model}: {self.describe(G, D)} on {t.name}: "
                          f"{len(t)} training samples of shape {tuple(t.x.shape[1:])}")
        return self._task

    @property
    def generator_name(self) -> str:
        return f"--generator {self.args.generator}" if self.args.generator else \
            f"--model {self.args.model}"

    @property
    def discriminator_name(self) -> str:
        return f"--discriminator {self.args.discriminator}" if self.args.discriminator else \
            f"--model {self.args.model}"

    def gan_train(self):
        """The training set as D sees it ([-1, 1] for the built-in images): what the Python API
        is given by the command line (its shards are then those of :meth:`shard`, bit for bit)."""
        t = self.train
        return data.Dataset(t.x * 2 - 1, t.y, t.name, t.num_classes) if self.scaled else t

    def api_keywords(self) -> dict:
        """The keywords of :class:`~mpidist.mdgan.MDGAN` that make the run of these flags."""
        a = self.args
        return dict(latent_size=self.latent, k=self.k, batch=self.b, L=self.L, E=self.E,
                    lr_g=self.lr_g, lr_d=self.lr_d, betas=(self.beta1, self.beta2),
                    num_classes=self.num_classes, saturating=self.saturating,
                    crash_every=a.crash_every, share_discriminator=True)

    def scored(self, i: int) -> bool:
        """Whether G is scored after iteration i: every --eval-every iterations and at the end."""
        return i % self.score_every == 0 or i == self.steps

    def models(self):
        """(G, D) on the run's device: the built-in pair of ``--model``, or the user's
        ``--generator`` / ``--discriminator`` (each one not given is ``--model``'s)."""
        a, nc = self.args, self.num_classes
        if not self.user_nets:
            try:
                g, d = gan_models.build_pair(a.model, self.shape, nc, a.latent)
            except ValueError as e:
                raise UsageError(self._unfit(e)) from None
            return g.to(self.device), d.to(self.device)
        try:
            g = (build_generator(a.generator, self.latent, self.shape, nc,
                                 **dict(getattr(a, "generator_arg", None) or []))
                 if a.generator else
                 build_zoo(f"gan-{a.model}-g", self.shape, nc, latent=self.latent))
            d = (build_discriminator(a.discriminator, self.shape, nc,
                                     **dict(getattr(a, "discriminator_arg", None) or []))
                 if a.discriminator else build_zoo(f"gan-{a.model}-d", self.shape, nc))
        except ValueError as e:
            raise UsageError(self._unfit(e)) from None
        return g.to(self.device), d.to(self.device)

    def _unfit(self, e: ValueError) -> str:
        """A built-in network that cannot take the data: one line (with a hint for data that are
        not images: the built-in networks are image GANs)."""
        msg = f"--model {self.args.model}: {e}"
        if len(self.shape) != 3:
            msg += (f" (the built-in networks make images; {self.train.name} has samples of "
                    f"shape {self.shape}: give your own --generator and --discriminator "
                    "MODULE:FUNCTION)")
        return msg

    def describe(self, G, D) -> str:
        if not self.user_nets:
            return gan_models.describe_pair(self.args.model, G, D)
        return describe_networks(self.generator_name.split(" ", 1)[1], G,
                                 self.discriminator_name.split(" ", 1)[1], D, self.train)


def shared_discriminator(setup: Setup):
    """A D_n whose initial theta_n is the same on every worker, drawn from the shared seed
    (Section IV-A: "the architecture and initial parameters of D_n could be different on every
    worker n; for simplicity, we assume that they are the same")."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.args.seed * 1000 + 999)
        return setup.models()[1]


def params_sha256(*modules) -> str:
    """sha256 of the modules' parameters (their bytes, in order): equal runs, equal digests."""
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
