"""What every rank of an MD-GAN run derives alike from its flags: the data and its shares, the
sample shape, G and D, the optimizers, the schedules (k, swaps, crashes, FL-GAN rounds)."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .. import data
from ..errors import UsageError
from ..models import gan as gan_models
from .rules import (batches_per_iteration, crash_schedule, flgan_round_ends,
                    iterations_per_epoch)


class Setup:
    """The run's settings and the objects built from them, the same on every rank."""

    def __init__(self, run):
        a = run.args
        self.args, self.run, self.device = a, run, run.device
        self.N = run.world_size - 1 if a.mode != "standalone" else 1
        shape, _, _ = gan_models.ARCHS[a.model]
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
        self.steps = a.steps
        self.per_swap = a.E * iterations_per_epoch(self.m, self.b)  # also FL-GAN's round
        self.crashes = []
        if a.crash_every is not None:  # T, resolved by cli.check_world
            self.crashes = crash_schedule(self.N, a.steps, a.crash_every, a.seed)
        self.round_ends = flgan_round_ends(a.steps, self.per_swap)
        self.score_every = a.eval_every or max(1, a.steps // 20)
        self.saturating = a.gen_loss == "saturating"

    def scored(self, i: int) -> bool:
        """Whether G is scored after iteration i: every --eval-every iterations and at the end."""
        return i % self.score_every == 0 or i == self.steps

    def models(self):
        try:
            g, d = gan_models.build_pair(self.args.model, self.shape, self.num_classes,
                                         self.args.latent)
        except ValueError as e:
            raise UsageError(f"--model {self.args.model}: {e}") from None
        return g.to(self.device), d.to(self.device)

    def describe(self, G, D) -> str:
        return gan_models.describe_pair(self.args.model, G, D)

    def adam(self, module, lr):
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(self.args.beta1,
                                                                    self.args.beta2))

    def shard(self, rank: int, world: int):
        s = data.Shard(self.train, rank, world, self.b, self.args.seed, self.device)
        s.x = s.x * 2 - 1  # G draws in [-1, 1] (tanh)
        return s


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
