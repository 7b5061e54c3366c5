"""What MD-GAN's ranks send to whom and when, through :mod:`mpidist.comm` only.

MD-GAN (Algorithm 1), in every global iteration i (the trace's step is i):

- C -> W_n: X_n^(d) (tag 12) then X_n^(g) (tag 11), channel ``gen_batches``, b x d values each, to
  every live worker (:meth:`ServerLinks.send_batches`);
- W_n -> C: the error feedback F_n, b x d values, tag 13, channel ``feedback``; or, once, from a
  worker that stops (emulated crash, Figure 3), a one-value notice instead, tag 14, channel
  ``crash_notice``. The server receives both nonblocking and never waits for a stopped worker
  (:meth:`ServerLinks.collect`);
- with crashes, before each swap: C -> live W_n the live workers as a mask of N+1 int32, tag 15,
  channel ``membership``;
- SWAP: W -> W, theta_n (|theta| values), tag 16, channel ``swap``, never through the server;
- the Python API only (:class:`~mpidist.mdgan.MDGAN` with ``share_discriminator``), once before
  the first iteration: W_1 -> W_n theta_1, tag 17, channel ``init``, so that every D_n starts
  from the same theta (Section IV-A) whatever each worker's script built.

FL-GAN (Section III-c), once per round of E local epochs: C -> W_n (w, theta) and, at the round's
end, W_n -> C (w_n, theta_n), tags 21 and 22, channel ``fl_params``. A round is one exchange
spanning many iterations; its rows carry the iteration that ends the round (:func:`round_step`).
"""
from __future__ import annotations

import time

import torch

from ..comm import aligned_empty, waitall

TAG_XG, TAG_XD, TAG_FEEDBACK, TAG_NOTICE, TAG_MEMBERSHIP, TAG_SWAP = 11, 12, 13, 14, 15, 16
TAG_INIT = 17
TAG_FL_W, TAG_FL_THETA = 21, 22
NO_DEADLINE = float("inf")  # waits that last as long as the others compute (a round, an idle rank)


class ServerLinks:
    """The server's side of Algorithm 1's messages: the feedback buffers, allocated once, and one
    crash-notice receive per worker posted at the start (a worker sends at most one)."""

    def __init__(self, comm, workers, sample_shape, b: int, device):
        self.comm = comm
        self.feedback = {n: torch.empty((b,) + tuple(sample_shape), device=device) for n in workers}
        self._notice = {n: torch.zeros(1, dtype=torch.int64) for n in workers}
        self.notices = {n: comm.irecv(self._notice[n], n, TAG_NOTICE, "crash_notice")
                        for n in workers}
        self.member = torch.zeros(len(workers) + 1, dtype=torch.int32)

    def send_batches(self, X: torch.Tensor, live, batches, b: int) -> tuple[list, dict]:
        """Post X_n^(d) and X_n^(g) (``batches[n]`` = their indices (g, d) in the stacked K) to
        every live worker, X^(d) first since the worker trains on it meanwhile, and the receive of
        each F_n. Returns (the send handles, {n: feedback handle}). X must not change until the
        sends complete."""
        c, sends, fbs = self.comm, [], {}
        for n in sorted(live):
            g, d = batches[n]
            sends.append(c.isend(X[d * b:(d + 1) * b], n, TAG_XD, "gen_batches", snapshot=False))
            sends.append(c.isend(X[g * b:(g + 1) * b], n, TAG_XG, "gen_batches", snapshot=False))
            fbs[n] = c.irecv(self.feedback[n], n, TAG_FEEDBACK, "feedback")
        return sends, fbs

    def collect(self, fbs: dict, i: int, timeout: float) -> tuple[list, list]:
        """Wait (nonblocking, polling) until every worker of ``fbs`` has sent its feedback or a
        crash notice. Returns (the workers whose F_n arrived, the workers that stopped; the
        feedback receive of a stopped one is withdrawn). A worker that does neither for
        ``timeout`` seconds died without notice: raise, so the job ends instead of hanging.
        This polling is waiting: a feedback receive not complete at the first look gets the time
        of that look as its ``t_wait`` (``Handle.waiting``), as ``Handle.wait`` would give it."""
        pending, received, stopped = dict(fbs), [], []
        t0, nap, first = time.monotonic(), 20e-6, True
        while pending:
            progressed = False
            for n in list(pending):
                if pending[n].test():
                    received.append(n)
                    del pending[n]
                    progressed = True
                elif self.notices[n].test():
                    pending.pop(n).cancel()
                    stopped.append(n)
                    progressed = True
            if first:
                first, now = False, self.comm.clock()
                for h in pending.values():
                    h.waiting(now)
            if progressed:
                nap = 20e-6
                continue
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(
                    f"iteration {i}: worker rank(s) {sorted(pending)} sent neither the error "
                    f"feedback nor a crash notice in {timeout:g} s (--comm-timeout): a worker died "
                    "without notice; ending the job")
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)
        return sorted(received), stopped

    def send_membership(self, live) -> None:
        """Tell the live workers who is live, before a swap (so that swaps skip stopped ones)."""
        self.member.zero_()
        self.member[sorted(live)] = 1
        waitall([self.comm.isend(self.member, n, TAG_MEMBERSHIP, "membership")
                 for n in sorted(live)])

    def close(self) -> None:
        """Live workers never send a notice: withdraw those receives."""
        for h in self.notices.values():
            h.cancel()


class WorkerLinks:
    """A worker's side of Algorithm 1's messages, into buffers allocated once: the two generated
    batches, the membership mask, and the discriminator a swap brings."""

    def __init__(self, comm, sample_shape, b: int, device, num_workers: int, theta: torch.Tensor):
        self.comm = comm
        self.x_g = torch.empty((b,) + tuple(sample_shape), device=device)
        self.x_d = torch.empty((b,) + tuple(sample_shape), device=device)
        self.member = torch.zeros(num_workers + 1, dtype=torch.int32)
        self.swap_buf = aligned_empty(theta.numel(), theta.dtype, theta.device).view(theta.shape)

    def pull(self) -> tuple:
        """X_n^(g), X_n^(d) <- Pull(C): the handles of (X^(d), X^(g))."""
        c = self.comm
        return (c.irecv(self.x_d, 0, TAG_XD, "gen_batches"),
                c.irecv(self.x_g, 0, TAG_XG, "gen_batches"))

    def send_feedback(self, fb: torch.Tensor):
        """SEND(C, F_n); ``fb`` must not change until the handle completes."""
        return self.comm.isend(fb, 0, TAG_FEEDBACK, "feedback", snapshot=False)

    def send_notice(self, i: int) -> None:
        """The emulated crash: a one-value notice (the iteration) instead of the feedback."""
        self.comm.isend(torch.tensor([i], dtype=torch.int64), 0, TAG_NOTICE, "crash_notice").wait()

    def live_workers(self, num_workers: int) -> list[int]:
        """The server's membership message of this swap."""
        self.comm.irecv(self.member, 0, TAG_MEMBERSHIP, "membership").wait()
        return [r for r in range(1, num_workers + 1) if self.member[r]]

    def swap(self, theta: torch.Tensor, to: int, source: int) -> torch.Tensor:
        """SWAP(D_n): send theta to worker ``to``, receive the one worker ``source`` sends."""
        hr = self.comm.irecv(self.swap_buf, source, TAG_SWAP, "swap")
        hs = self.comm.isend(theta, to, TAG_SWAP, "swap", snapshot=False)
        waitall([hr, hs])
        return self.swap_buf


def share_initial_theta(comm, theta: torch.Tensor, num_workers: int) -> None:
    """Worker 1's theta to workers 2..N (channel ``init``), received into their ``theta``; the
    server takes no part. Called by every worker."""
    if comm.rank == 1:
        waitall([comm.isend(theta, n, TAG_INIT, "init") for n in range(2, num_workers + 1)])
    elif comm.rank > 1:
        comm.irecv(theta, 1, TAG_INIT, "init").wait()


def round_step(handles: list, end: int) -> list:
    """Stamp an FL-GAN round's messages with the iteration that ends the round (posted at its
    start, they would carry its first iteration): the trace counts one exchange per round."""
    for h in handles:
        h.step = end
    return handles


def server_round(comm, w: torch.Tensor, theta: torch.Tensor, w_in: torch.Tensor,
                 theta_in: torch.Tensor, workers, end: int) -> None:
    """FL-GAN's server: (w, theta) to every worker, (w_n, theta_n) back into rows n - 1 of
    ``w_in``/``theta_in``. A round lasts E local epochs: no deadline (a dead worker ends the job
    through the launcher)."""
    hs = []
    for n in workers:
        hs += [comm.isend(w, n, TAG_FL_W, "fl_params", snapshot=False),
               comm.isend(theta, n, TAG_FL_THETA, "fl_params", snapshot=False),
               comm.irecv(w_in[n - 1], n, TAG_FL_W, "fl_params"),
               comm.irecv(theta_in[n - 1], n, TAG_FL_THETA, "fl_params")]
    waitall(round_step(hs, end), timeout=NO_DEADLINE)


def worker_round_start(comm, w: torch.Tensor, theta: torch.Tensor, end: int) -> None:
    """FL-GAN's worker, at a round's start: the server's averaged (w, theta) into its own G, D."""
    waitall(round_step([comm.irecv(w, 0, TAG_FL_W, "fl_params"),
                        comm.irecv(theta, 0, TAG_FL_THETA, "fl_params")], end),
            timeout=NO_DEADLINE)


def worker_round_end(comm, w: torch.Tensor, theta: torch.Tensor, end: int) -> None:
    """FL-GAN's worker, at a round's end: its trained (w_n, theta_n) to the server."""
    waitall(round_step([comm.isend(w, 0, TAG_FL_W, "fl_params", snapshot=False),
                        comm.isend(theta, 0, TAG_FL_THETA, "fl_params", snapshot=False)], end))
