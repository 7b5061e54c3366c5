"""The server C (rank 0): Algorithm 1's CENTRALSERVER, one global iteration per call, and FL-GAN's
averaging server (Section III-c), one round per call."""
from __future__ import annotations

import torch

from ..comm import FlatParams, aligned_empty, waitall
from .exchange import ServerLinks, server_round
from .rules import assemble_grad, distribute, fake_labels, generate, swap_due


class MDGANServer:
    """CENTRALSERVER(k, I) of Algorithm 1, holding G (parameters w) and its Adam state.

    ``setup``: the run's :class:`~mpidist.mdgan.context.Config`; ``G``: the generator, called
    ``G(z, labels)`` (``G(z)`` for a plain GAN). After an iteration, ``fpG.grads`` holds Delta w
    (the Adam step does not clear it), ``last_z`` and ``last_labels`` the noise and class codes
    of K, ``last_received`` the workers whose F_n arrived; ``live`` is the set of workers that
    have not stopped."""

    def __init__(self, setup, run, G):
        dev = setup.device
        self.setup, self.run, self.G = setup, run, G
        self.fpG = FlatParams(G)
        self.opt = setup.adam(G, setup.lr_g)
        self.k, self.b, self.N = setup.k, setup.b, setup.N
        self.workers = list(range(1, self.N + 1))
        self.live = set(self.workers)
        self.batches = {n: distribute(n, self.k) for n in self.workers}   # Section IV-B1
        self.links = ServerLinks(run.comm, self.workers, setup.shape, self.b, dev)
        self.grad_x = torch.zeros((self.k * self.b,) + setup.shape, device=dev)
        self.last_z = self.last_labels = None
        self.last_received: list[int] = []

    def iteration(self, i: int) -> list[int]:
        """Generate K, send each live worker its X_n^(g) and X_n^(d), gather the F_n (or crash
        notices), backpropagate them through G at once and step Adam. Returns the workers that
        stopped during this iteration."""
        s, run, G = self.setup, self.run, self.G
        k, b = self.k, self.b
        stopped, received = [], []
        if self.live:
            z = torch.randn(k * b, s.latent, device=s.device)
            labels = None
            if s.num_classes:
                labels = torch.cat([fake_labels(s.seed, i, j, b, s.num_classes)
                                    for j in range(k)]).to(s.device)
            X = generate(G, z, labels)                             # K = {X^(1..k)}
            sends, fbs = self.links.send_batches(X.detach(), self.live, self.batches, b)
            received, stopped = self.links.collect(fbs, i, s.comm_timeout)
            for n in stopped:
                self.live.discard(n)
                run.metric(i, "crash", n)
                run.log.info(f"iteration {i}: worker rank {n} stopped (crash notice); "
                             f"{len(self.live)} workers live")
            waitall(sends)
            self.fpG.zero_grad()
            if received:
                assemble_grad(self.grad_x, {n: self.links.feedback[n] for n in received}, k, b)
                X.backward(self.grad_x)                            # Delta w from all F_n
                self.opt.step()
            self.last_z, self.last_labels = z, labels
        self.last_received = received
        run.metric(i, "live_workers", len(self.live))
        if s.crashes and self.live and swap_due(i, s.E, s.m, b):
            self.links.send_membership(self.live)                  # who takes part in SWAP
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
        self.links.close()


class FLGANServer:
    """FL-GAN's server: sends (w, theta) to every worker, receives their (w_n, theta_n) after E
    local epochs and averages both (federated averaging of G and D)."""

    def __init__(self, setup, run, G):
        self.setup, self.run, self.G = setup, run, G
        _, self.D = setup.models()
        self.fpG, self.fpD = FlatParams(G), FlatParams(self.D)
        self.workers = list(range(1, setup.N + 1))
        dt, n = torch.get_default_dtype(), setup.N  # receive buffers: a row per worker
        self.w_in = aligned_empty(n * self.fpG.numel, dt, setup.device).view(n, -1)
        self.theta_in = aligned_empty(n * self.fpD.numel, dt, setup.device).view(n, -1)

    def round(self, end: int) -> None:
        """The round ending at iteration ``end``: send, receive, average."""
        server_round(self.run.comm, self.fpG.params, self.fpD.params, self.w_in, self.theta_in,
                     self.workers, end)
        torch.mean(self.w_in, 0, out=self.fpG.params)
        torch.mean(self.theta_in, 0, out=self.fpD.params)
        self.run.metric(end, "live_workers", len(self.workers))

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
