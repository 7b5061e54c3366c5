"""The workers W_n (ranks 1..N): Algorithm 1's WORKER and SWAP, one global iteration per call;
and the classical local GAN that FL-GAN's workers and the standalone baseline train."""
from __future__ import annotations

import time

import torch

from ..comm import FlatParams
from .context import shared_discriminator
from .exchange import WorkerLinks, worker_round_end, worker_round_start
from .rules import (disc_loss, distribute, error_feedback, fake_labels, flgan_round, gen_loss,
                    generate, swap_permutation)


class MDGANWorker:
    """WORKER(C, B_n, I, L, b) and SWAP of Algorithm 1 on rank n >= 1: D_n (``fpD`` holds theta_n
    as one flat buffer, what a swap moves), its Adam state and the data share B_n.

    ``setup``: the run's :class:`~mpidist.mdgan.context.Config`; ``D``: the discriminator (None:
    the command line's, the same on every worker, :func:`shared_discriminator`). After an
    iteration ``loss_d`` and ``loss_g`` hold J_disc's last value and B~ of X_n^(g)."""

    def __init__(self, setup, run, D=None):
        n = run.rank
        self.setup, self.run, self.n = setup, run, n
        self.D = D if D is not None else shared_discriminator(setup)
        self.fpD = FlatParams(self.D)
        self.opt = setup.adam(self.D, setup.lr_d)
        self.b = setup.b
        self.shard = setup.shard(n - 1, setup.N)
        self.g_idx, self.d_idx = distribute(n, setup.k)
        self.links = WorkerLinks(run.comm, setup.shape, self.b, setup.device, setup.N,
                                 self.fpD.params)
        self.crash_at = {w: t for t, w in setup.crashes}.get(n)
        self.stopped = False  # set by the emulated crash
        self.loss_d = self.loss_g = float("nan")
        self.slow = setup.slow.get(n, 0.0)  # --slow-worker: seconds of sleep per iteration

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
        s, run, links = self.setup, self.run, self.links
        nc, b, seed = s.num_classes, self.b, s.seed
        hd, hg = links.pull()                                       # X_n^(g), X_n^(d) <- Pull(C)
        x_r, y_r = self.shard.next()                                # X_n^(r)
        hd.wait()
        if self.crash_at == i:
            self.crash(i, hg)
            return False
        y_g = fake_labels(seed, i, self.g_idx, b, nc).to(s.device) if nc else None
        y_d = fake_labels(seed, i, self.d_idx, b, nc).to(s.device) if nc else None
        self.train_d(x_r, y_r, y_d)
        hg.wait()
        fb, loss_g = error_feedback(self.D, links.x_g, y_g, s.saturating)   # F_n
        h = links.send_feedback(fb)                                         # SEND(C, F_n)
        self.loss_g = loss_g
        run.metric(i, "loss_d", self.loss_d)
        run.metric(i, "loss_g", loss_g)
        if i % s.per_swap == 0:
            self.swap(i)
        h.wait()
        return True

    def crash(self, step: int, hg) -> None:
        """The emulated fail-stop crash at ``step``: take the pulled X^(g) whole (so that the
        server's sends complete), send the crash notice, record it, and stop for good."""
        hg.wait()
        self.links.send_notice(step)
        self.run.metric(step, "crash", self.n)
        self.run.trace.set_attrs(crashed_at=step)
        self.run.log.info(f"emulated fail-stop crash at step {step}: notice sent, sending "
                          "nothing more")
        self.stopped = True

    def train_d(self, x_r, y_r, y_d) -> None:
        """L x DISCLEARNINGSTEP on J_disc(X_n^(r), X_n^(d)) (``loss_d`` its last value); then,
        for ``--slow-worker`` on this rank, the emulated extra compute time (a sleep)."""
        s, nc = self.setup, self.setup.num_classes
        for _ in range(s.L):
            loss_d = disc_loss(self.D, x_r, y_r if nc else None, self.links.x_d, y_d)
            self.fpD.zero_grad()
            loss_d.backward()
            self.opt.step()
        self.loss_d = float(loss_d.detach())
        if self.slow:
            time.sleep(self.slow)

    def swap(self, i: int) -> None:
        """SWAP(D_n): send theta_n to the worker the shared permutation names, receive one; with
        crashes, the live set comes from the server's membership message."""
        N = self.setup.N
        live = self.links.live_workers(N) if self.setup.crashes else list(range(1, N + 1))
        perm = swap_permutation(live, self.setup.seed, i // self.setup.per_swap)
        if self.n not in perm:
            return
        source = next(src for src, dst in perm.items() if dst == self.n)
        self.fpD.params.copy_(self.links.swap(self.fpD.params, perm[self.n], source))
        self.run.metric(i, "swap_to", perm[self.n])
        self.run.metric(i, "swap_from", source)


class LocalGAN:
    """A classical GAN on local data (Section II): G, D, their Adam states and a data share.
    FL-GAN's workers and the standalone baseline train it."""

    def __init__(self, setup, G, D, shard_rank: int, shards: int):
        self.setup, self.G, self.D = setup, G, D
        self.opt_g, self.opt_d = setup.adam(G, setup.lr_g), setup.adam(D, setup.lr_d)
        self.shard = setup.shard(shard_rank, shards)

    def iteration(self) -> tuple[float, float]:
        """L steps of D on a real batch and a generated batch, then one step of G on a fresh
        generated batch through the updated D. Returns (loss_d, loss_g)."""
        s, G, D = self.setup, self.G, self.D
        nc, dev = s.num_classes, s.device
        x_r, y_r = self.shard.next()
        b = len(x_r)
        z = torch.randn(b, s.latent, device=dev)
        y_d = torch.randint(nc, (b,), device=dev) if nc else None
        with torch.no_grad():
            x_d = generate(G, z, y_d)
        for _ in range(s.L):
            loss_d = disc_loss(D, x_r, y_r if nc else None, x_d, y_d)
            self.opt_d.zero_grad(set_to_none=False)
            loss_d.backward()
            self.opt_d.step()
        z = torch.randn(b, s.latent, device=dev)
        y_g = torch.randint(nc, (b,), device=dev) if nc else None
        loss_g = gen_loss(D, generate(G, z, y_g), y_g, s.saturating)
        self.opt_g.zero_grad(set_to_none=False)
        loss_g.backward()
        self.opt_g.step()
        return float(loss_d.detach()), float(loss_g.detach())

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "shard": self.shard.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        for key, part in (("G", self.G), ("D", self.D), ("opt_g", self.opt_g),
                          ("opt_d", self.opt_d), ("shard", self.shard)):
            part.load_state_dict(s[key])


class FLGANWorker(LocalGAN):
    """FL-GAN's worker: E local epochs of a classical GAN per round between the server's
    averagings; G and D come from the server at every round's start (their BatchNorm statistics
    stay with the worker)."""

    def __init__(self, setup, run):
        G, D = setup.models()
        super().__init__(setup, G, D, run.rank - 1, setup.N)
        self.run = run
        self.fpG, self.fpD = FlatParams(G), FlatParams(D)

    def step(self, i: int) -> None:
        """Iteration i of a round: the server's (w, theta) first at a round's start, this
        worker's (w_n, theta_n) back at its end."""
        s, comm = self.setup, self.run.comm
        start, end = flgan_round(i, s.steps, s.per_swap)
        if i == start:
            worker_round_start(comm, self.fpG.params, self.fpD.params, end)
        loss_d, loss_g = self.iteration()
        self.run.metric(i, "loss_d", loss_d)
        self.run.metric(i, "loss_g", loss_g)
        if i == end:
            worker_round_end(comm, self.fpG.params, self.fpD.params, end)
