"""MD-GAN in a user's own training script: :class:`MDGAN` puts the user's generator on the server
(rank 0) and the user's discriminator on every worker (ranks 1..N), and ``step(i)`` runs global
iteration i of Algorithm 1 (Hardy, Le Merrer, Sericola) in the role of the calling rank, every
message through ``run.comm`` (so into the run's trace). Every rank runs the same script under
``mpirun -n N+1``::

    with mpidist.init("mdgan", seed=0) as run:
        G, D = MyGenerator().to(run.device), MyDiscriminator().to(run.device)
        md = MDGAN(run, G, D, train_set, latent_size=16, k=1, batch=32)
        loop = Loop(run, total=I, first_step=1, state=lambda i: {"mdgan": md.state_dict()})
        for i in loop:                 # iterations 1..I, as Algorithm 1 counts them
            md.step(i)                 # server: generate, send, gather feedback, update G
            if loop.end_step(i):       # workers: train D_n, send the feedback, swap when due
                break
        md.finish()

The command line (``python -m mpidist.mdgan``, MD-GAN mode) drives the same object
(:mod:`mpidist.mdgan.train`): with ``--generator``/``--discriminator`` it builds the user's
networks on every rank and calls this constructor with the flags' values.
"""
from __future__ import annotations

import torch

from .. import data
from ..errors import UsageError
from .context import Config, check_networks
from .exchange import NO_DEADLINE, share_initial_theta
from .rules import crash_schedule, generate
from .server import MDGANServer
from .worker import MDGANWorker


def as_dataset(dataset, num_classes=None) -> data.Dataset:
    """The training set as one :class:`mpidist.data.Dataset`: a torch ``Dataset`` of
    ``(input, label)`` pairs (as ``--data MODULE:FUNCTION`` returns), a pair of tensors
    ``(inputs, labels)``, or a :class:`mpidist.data.Dataset` (used as it is)."""
    if isinstance(dataset, data.Dataset):
        return dataset
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and all(
            isinstance(t, torch.Tensor) for t in dataset):
        x, y = dataset
    else:
        try:
            n = len(dataset)
            pairs = [dataset[i] for i in range(n)]
            x = torch.stack([torch.as_tensor(p[0], dtype=torch.float32) for p in pairs])
            y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        except Exception as e:
            raise UsageError(f"MDGAN: dataset must be a torch Dataset of (input, label) pairs or "
                             f"a pair of tensors (inputs, labels) ({type(e).__name__}: {e})") \
                from None
    if len(x) != len(y) or len(x) == 0:
        raise UsageError(f"MDGAN: dataset has {len(x)} inputs and {len(y)} labels")
    x = x.float().contiguous()
    if y.is_floating_point():
        k = 0
    else:
        y = y.long()
        k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    return data.Dataset(x, y, "dataset", k)


class MDGAN:
    """This rank's role of MD-GAN on the user's networks: the server C (rank 0, holding
    ``generator``) or a worker W_n (rank n >= 1, holding ``discriminator``).

    ``run``: the :class:`mpidist.runtime.Run` of ``mpidist.init`` (the seed, the device, the
    traced communicator; world size N + 1 >= 2). ``generator``: called ``G(z, labels)`` with
    noise z [n, latent_size] and int64 class labels [n] (ACGAN) or ``G(z)`` (plain GAN), returns
    samples shaped like the data's inputs; ``discriminator``: ``D(x)`` returns logits
    [n, 1 + num_classes], column 0 real/fake (BCE with logits: 1 real, 0 generated), columns 1..
    the classes (cross-entropy; ACGAN only). Build them and move them to ``run.device`` first;
    each rank needs only its own (the other may be None). ``dataset``: the WHOLE training set,
    the same on every rank (see :func:`as_dataset`); worker n trains on its disjoint shard
    n - 1 of N drawn from the run's seed (what the command line does); the server reads only its
    shape and classes. ``num_classes``: None = the dataset's classes (integer labels: ACGAN;
    float labels: a plain GAN), 0 = a plain GAN (labels ignored).

    Algorithm 1's settings: ``latent_size`` l, ``k`` generated batches per iteration (or
    "log2"), ``batch`` b, ``L`` discriminator steps per iteration, ``E`` epochs between swaps,
    Adam's ``lr_g``, ``lr_d`` and ``betas``, ``saturating`` (B~ = log(1 - D(G(z))) instead of
    -log D(G(z))), ``crash_every`` T (Figure 3's emulated crashes: one worker stops every T
    iterations). ``share_discriminator``: worker 1 sends its initial theta to the other workers
    before the first iteration (channel ``init``), so that every D_n starts alike (Section IV-A)
    whatever each rank built; not on a resumed run (``run.resumed_state``), whose D_n come from
    :meth:`load_state_dict`.
    """

    def __init__(self, run, generator, discriminator, dataset, *, latent_size: int,
                 k=1, batch: int = 32, L: int = 1, E: int = 1, lr_g: float = 1e-3,
                 lr_d: float = 1e-3, betas=(0.5, 0.999), num_classes: int | None = None,
                 saturating: bool = False, crash_every: int | None = None,
                 share_discriminator: bool = True):
        world = run.comm.size
        if world < 2:
            raise UsageError("MDGAN needs the server (rank 0) and at least one worker: run the "
                             "script with mpirun -n N+1 (e.g. -n 5 for N = 4 workers)")
        train = as_dataset(dataset, num_classes)
        if num_classes is None:
            num_classes = train.num_classes
        if num_classes and train.y.is_floating_point():
            raise UsageError(f"MDGAN: num_classes={num_classes} but the dataset's labels are "
                             "floats, not classes: give num_classes=0 (a plain GAN)")
        N = world - 1
        crashes = crash_schedule(N, N * crash_every, crash_every, run.args.seed) \
            if crash_every else []
        cfg = Config(train=train, N=N, k=k, b=batch, L=L, E=E, lr_g=lr_g, lr_d=lr_d,
                     beta1=betas[0], beta2=betas[1], num_classes=num_classes,
                     latent=latent_size, saturating=saturating, seed=run.args.seed,
                     crashes=crashes, device=run.device, comm_timeout=run.args.comm_timeout)
        if (generator if run.rank == 0 else discriminator) is None:
            role = "the server: give the generator" if run.rank == 0 else \
                "a worker: give the discriminator"
            raise UsageError(f"MDGAN: rank {run.rank} is {role}")
        check_networks(generator if run.rank == 0 else None, discriminator, cfg.shape,
                       cfg.num_classes, cfg.latent)
        self._start(run, cfg, generator, discriminator,
                    share_discriminator and getattr(run, "resumed_state", None) is None)

    @classmethod
    def from_config(cls, run, cfg: Config, generator=None, discriminator=None) -> "MDGAN":
        """The role of a run whose settings are made already (the command line's built-in
        networks: every worker's D is built alike from the shared seed when None)."""
        self = cls.__new__(cls)
        self._start(run, cfg, generator, discriminator, False)
        return self

    def _start(self, run, cfg: Config, generator, discriminator, share: bool) -> None:
        self.run, self.config = run, cfg
        self.is_server = run.rank == 0
        if self.is_server:
            self.role = MDGANServer(cfg, run, generator)
        else:
            self.role = MDGANWorker(cfg, run, discriminator)
            if share:
                share_initial_theta(run.comm, self.role.fpD.params, cfg.N)

    # ------------------------------------------------------------------ what a user reads
    @property
    def generator(self):
        """G (the server's), or None on a worker."""
        return self.role.G if self.is_server else None

    @property
    def discriminator(self):
        """The D_n this worker holds now (after the swaps so far), or None on the server."""
        return None if self.is_server else self.role.D

    @property
    def live(self) -> list[int]:
        """The server: the workers that have not stopped (emulated crashes)."""
        return sorted(self.role.live) if self.is_server else []

    @property
    def stopped(self) -> bool:
        """A worker: whether it has stopped (emulated crash)."""
        return not self.is_server and self.role.stopped

    # ------------------------------------------------------------------ one iteration
    def step(self, i: int) -> dict:
        """Global iteration ``i`` (counted from 1, as Algorithm 1) in this rank's role. The
        server: draw k batches from G, send each live worker its X_n^(d) and X_n^(g), gather the
        error feedbacks, one backward pass of G and an Adam step; returns ``{"live": number of
        live workers, "stopped": workers that stopped now}``. A worker: L steps of D_n on a real
        batch of its shard and X_n^(d), the feedback F_n on X_n^(g), and the swap of D_n when
        one is due; returns ``{"loss_d": ..., "loss_g": ...}`` (nan once stopped)."""
        if i < 1:
            raise ValueError(f"MDGAN.step({i}): iterations are counted from 1 (Algorithm 1); "
                             "use Loop(run, total=I, first_step=1)")
        if self.is_server:
            stopped = self.role.iteration(i)
            return {"live": len(self.role.live), "stopped": stopped}
        w = self.role
        if not w.stopped:
            w.iteration(i)
        if w.stopped:  # it only waits for the job's agreements from now on, without a deadline
            self.run.comm.timeout = NO_DEADLINE
            return {"loss_d": float("nan"), "loss_g": float("nan")}
        return {"loss_d": w.loss_d, "loss_g": w.loss_g}

    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: torch.Generator | None = None):
        """The server: n samples of G (noise from ``generator``, or torch's RNG), conditioned on
        ``labels`` (int64 [n]; ACGAN; default: classes spread evenly)."""
        if not self.is_server:
            raise RuntimeError("MDGAN.sample: only the server (rank 0) holds G")
        cfg = self.config
        z = torch.randn(n, cfg.latent, generator=generator).to(cfg.device)
        if cfg.num_classes and labels is None:
            labels = torch.arange(n) % cfg.num_classes
        return generate(self.role.G, z, None if labels is None else labels.to(cfg.device))

    def finish(self) -> None:
        """After the last iteration: the server withdraws its crash-notice receives."""
        if self.is_server:
            self.role.finish()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """This rank's state at the end of an iteration (after any swap): the server G, its Adam
        state and the live workers (key ``server``), a worker the D_n it holds, its Adam state,
        its data position and whether it stopped (key ``worker``); and this process's RNG states
        (key ``rng``: the server draws its noise from torch's RNG)."""
        key = "server" if self.is_server else "worker"
        return {"rng": self.run.rng_state(), key: self.role.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Put a :meth:`state_dict` back (build everything else first: the RNG states it restores
        are those the uninterrupted run had after that iteration)."""
        self.role.load_state_dict(state["server" if self.is_server else "worker"])
        self.run.set_rng_state(state["rng"])
