"""What moves to whom and when (Algorithm 1's exchange, a deterministic emulation of the paper's
fixed delay), through :mod:`mpidist.comm` only.

- Reliable neighbours (Def. 1): right after its update of step t-1 an agent sends x_t to them
  (channel ``params``, tag 301, posted at step t-1; x_0 at the start with stamp -1); they are
  consumed at step t ("one step late"; the iterate used is the current x_t^j of line 6) and overlap
  with step t's forward/backward.
- Unreliable neighbours (Def. 2): after its backward pass of step s an agent sends x_s (channel
  ``params``, tag 302) and, when Eq. 2 needs it, g_s (channel ``grads``, tag 303); they are
  consumed at step s + tau exactly, whenever they arrive. Receives are posted tau + 1 messages
  ahead into a ring of buffers (:class:`Mailbox`); MPI's non-overtaking order makes message s land
  in slot s mod (tau + 1).
- Every message carries its step stamp in one extra element; the consumer checks it (the
  staleness actually used is logged by the agent). A message that would be consumed after the last
  step is not sent (both sides derive the same plan from the variant and the topology), so every
  send has its receive. Variants that never read unreliable neighbours (C-ASGD, theta = 0) do not
  send to them; D-ASGD sends no gradients.
"""
from __future__ import annotations

import torch

from .. import topology
from ..comm import aligned_empty, aligned_zeros, waitall
from ..errors import UsageError
from .rules import UpdateRule, Variant


TAG_RELIABLE, TAG_UNRELIABLE_PARAMS, TAG_UNRELIABLE_GRADS = 301, 302, 303
# the largest step stamp a message element holds exactly, by dtype
_STAMP_LIMIT = {torch.float32: 1 << 24, torch.float64: 1 << 53}


def max_steps(dtype) -> int:
    """The longest run whose step stamps a message of ``dtype`` holds exactly (the plan of an
    open-ended run, :class:`mpidist.pcasgd.PCASGD` without ``steps``)."""
    return _STAMP_LIMIT.get(dtype, 1 << 11) - 2


def _host(t: torch.Tensor):
    """The numpy view of a CPU tensor (its elements are read and written in a tenth of the time a
    tensor's take); None on a device or for a dtype numpy lacks (bfloat16)."""
    if t.device.type != "cpu":
        return None
    try:
        return t.numpy()
    except (TypeError, RuntimeError):
        return None


class Mailbox:
    """Messages from one neighbour, consumed exactly ``lag`` steps after the step stamped in them.

    Message ``s`` (stamps ``first`` .. ``last``) holds one tensor per channel, each ``numel``
    values plus the stamp. ``lag + 1`` slots: receives are posted ahead (message s into slot
    s mod (lag + 1)); :meth:`take` at step t waits for message t - lag, checks its stamp and
    :meth:`release` re-posts the slot for message t + 1. MPI's non-overtaking rule (same source,
    tag and communicator) makes the n-th posted receive get the n-th sent message.

    ``resume=(c, saved)``: continue after step c from a checkpoint; ``saved`` maps the stamps that
    had arrived but were not consumed yet (:meth:`snapshot`) to their buffers.
    """

    def __init__(self, comm, peer: int, channels, numel: int, dtype, device, lag: int,
                 first: int, last: int, resume=None):
        self.comm, self.peer, self.channels, self.numel = comm, peer, list(channels), numel
        self.lag, self.first, self.last = lag, first, last
        self.slots = lag + 1
        self.bufs = [[aligned_zeros(numel + 1, dtype, device) for _ in self.channels]
                     for _ in range(self.slots)]
        # made once: the message part of each buffer, and its stamp as a numpy element on the CPU
        # (reading a tensor's element costs microseconds, a numpy array's a tenth of one)
        self.views = [[b[:numel] for b in slot] for slot in self.bufs]
        self.host = [[_host(b) for b in slot] for slot in self.bufs]
        if any(a is None for slot in self.host for a in slot):
            self.host = None
        self.handles: list = [None] * self.slots
        c, saved = resume if resume is not None else (first - 1, {})
        w0, w1 = self._window(c)
        for s in range(w0, w1 + 1):
            if s <= c:  # arrived before the checkpoint: restore it
                k = s % self.slots
                for b, v in zip(self.bufs[k], saved[s]):
                    b.copy_(v)
                self.handles[k] = []
            else:
                self._post(s)

    def _window(self, c: int) -> tuple[int, int]:
        """The stamps held or awaited after step c: from the next one to consume to the last
        posted ahead."""
        w0 = max(self.first, c + 1 - self.lag)
        return w0, min(w0 + self.slots - 1, self.last)

    def snapshot(self, c: int) -> dict:
        """After step c: the messages sent up to step c and not consumed yet, {stamp: [buffers]}
        (waits for them: their senders posted them by step c)."""
        out = {}
        for s in self.wait_through(c):
            out[s] = [b.clone() for b in self.bufs[s % self.slots]]
        return out

    def wait_through(self, c: int) -> range:
        """After step c: wait for the messages sent up to step c and not consumed yet (their
        senders posted them by step c); returns their stamps."""
        w0, w1 = self._window(c)
        stamps = range(w0, min(c, w1) + 1)
        for s in stamps:
            waitall(self.handles[s % self.slots])
        return stamps

    def _post(self, s: int) -> None:
        k = s % self.slots
        assert self.handles[k] is None, "mailbox slot re-posted before it was consumed"
        self.handles[k] = [self.comm.irecv(b, self.peer, tag, name)
                           for b, (name, tag) in zip(self.bufs[k], self.channels)]

    def take(self, t: int):
        """The message of step t - lag: (list of views, one per channel, stamp). Blocks until it
        has arrived; raises if the stamp inside is not t - lag."""
        s = t - self.lag
        if not self.first <= s <= self.last:
            raise RuntimeError(f"no message {s} from agent {self.peer} (stamps {self.first}.."
                               f"{self.last})")
        k = s % self.slots
        waitall(self.handles[k])
        if self.host is not None:
            stamps = [float(a[self.numel]) for a in self.host[k]]
        else:
            stamps = torch.stack([b[self.numel] for b in self.bufs[k]]).tolist()
        if any(int(v) != s for v in stamps):
            raise RuntimeError(f"step {t}: message from agent {self.peer} carries stamps {stamps}, "
                               f"expected {s} (lag {self.lag})")
        return list(self.views[k]), s

    def release(self, t: int) -> None:
        """After the message of step t - lag was used: post the receive of message t + 1."""
        s = t - self.lag
        k = s % self.slots
        self.handles[k] = None
        nxt = s + self.slots
        if nxt <= self.last:
            self._post(nxt)

    def pending(self) -> int:
        return sum(h is not None for h in self.handles)

    def withdraw(self) -> None:
        """Stopping early (a stop signal): cancel the receives posted ahead for later steps, so that
        no request is left pending at the end (a matched one completes as usual)."""
        for k, hs in enumerate(self.handles):
            if hs is not None:
                for h in hs:
                    h.cancel()
                self.handles[k] = None


class Outbox:
    """Send buffers (numel values + stamp) that stay untouched until every send from them is done:
    one copy per message step however many neighbours receive it, no allocation once warm."""

    def __init__(self, comm, numel: int, dtype, device):
        self.comm, self.numel, self.dtype, self.device = comm, numel, dtype, device
        self.free: list = []
        self.busy: list = []

    def _recycle(self) -> None:
        still = []
        for buf, hs in self.busy:
            if all(h.test() for h in hs):
                self.free.append(buf)
            else:
                still.append((buf, hs))
        self.busy = still

    def acquire(self) -> tuple:
        """A free send buffer (whole, head, numpy view): write the values into its head, then
        :meth:`post` it."""
        self._recycle()
        return self.free.pop() if self.free else self._new()

    def post(self, buf: tuple, stamp: int, dests, tag: int, channel: str) -> None:
        """Send ``buf`` (from :meth:`acquire`, its head filled) with ``stamp`` to ``dests``."""
        whole, _, host = buf
        if host is not None:
            host[self.numel] = stamp  # (a numpy element: a tenth of a tensor's setitem)
        else:
            whole[self.numel] = stamp
        hs = [self.comm.isend(whole, d, tag, channel, snapshot=False) for d in dests]
        self.busy.append((buf, hs))

    def send(self, src: torch.Tensor, stamp: int, dests, tag: int, channel: str) -> None:
        if not dests:
            return
        buf = self.acquire()
        buf[1].copy_(src)
        self.post(buf, stamp, dests, tag, channel)

    def _new(self) -> tuple:
        """A send buffer: (numel values + stamp, its first numel values, its numpy view or
        None off the CPU), the views made once."""
        whole = aligned_empty(self.numel + 1, self.dtype, self.device)
        return whole, whole[:self.numel], _host(whole)

    def drain(self) -> None:
        for _, hs in self.busy:
            waitall(hs)
        self.free += [b for b, _ in self.busy]
        self.busy = []



class Exchange:
    """Agent ``i``'s messages in Algorithm 1: its mailboxes (posted at construction), its outbox
    and the plan of what it sends at which step, for a run of ``steps`` steps (T, known to every
    agent so that no message is sent that nobody consumes).

    ``comm``: an object with ``isend(t, dest, tag, channel, snapshot)`` / ``irecv(t, src, tag,
    channel)`` returning handles with ``wait``/``test`` (mpidist.comm.Communicator, or a test
    double). ``rule``: the agent's :class:`UpdateRule`, whose neighbour lists say whom it reads.
    ``resume=(c, saved)``: continue after step c with the messages of :meth:`state_dict`.
    """

    def __init__(self, comm, topo: topology.Topology, i: int, variant: Variant, rule: UpdateRule,
                 steps: int, numel: int, dtype=torch.float32, device="cpu", resume=None):
        if steps + 1 >= _STAMP_LIMIT.get(dtype, 1 << 11):
            raise UsageError(f"{steps} steps do not fit the step stamps of {dtype} messages")
        self.comm, self.i, self.steps, self.tau = comm, i, steps, topo.tau
        self.reliable, self.unreliable = rule.reliable, rule.unreliable
        # what this agent sends: x_{t+1} to reliable neighbours after its update (stamps -1..T-2);
        # x_s (and g_s) to unreliable neighbours after its backward of step s, for s + tau <= T-1.
        # Sender and receiver derive the same plan from the variant and the topology.
        self.send_unreliable = topo.unreliable_neighbours(i) if variant.uses_unreliable else []
        self.send_grads = variant.compensate and topo.tau > 0
        c, st = resume if resume is not None else (None, None)
        self.resumed = resume is not None
        self.rel_box = [Mailbox(comm, j, [("params", TAG_RELIABLE)], numel, dtype, device, 1,
                                -1, steps - 2, None if st is None else (c, st["reliable"][n]))
                        for n, j in enumerate(self.reliable)]
        ch = [("params", TAG_UNRELIABLE_PARAMS)]
        if rule.needs_grads:
            ch.append(("grads", TAG_UNRELIABLE_GRADS))
        self.unrel_box = [Mailbox(comm, k, ch, numel, dtype, device, topo.tau, 0,
                                  steps - 1 - topo.tau,
                                  None if st is None else (c, st["unreliable"][n]))
                          for n, k in enumerate(self.unreliable)]
        self.out = Outbox(comm, numel, dtype, device)
        self._update_buf = None  # the send buffer the update of this step writes into

    def state_dict(self, c: int) -> dict:
        """After step c: the messages that arrived but are consumed later. Waits for this agent's
        sends to complete, so that nothing is in flight from it."""
        self.out.drain()
        return {"reliable": [b.snapshot(c) for b in self.rel_box],
                "unreliable": [b.snapshot(c) for b in self.unrel_box]}

    def start(self, x0: torch.Tensor) -> None:
        """Send x_0 to the reliable neighbours (stamp -1: consumed at step 0); nothing when
        resuming (the checkpoint holds what was in flight).

        The trace row of this send carries step -1, the step of its stamp, like every reliable
        send of x_{t+1} that step t posts: the communicator stamps its rows with ``comm.step``,
        which ``Run.step_done`` sets; before step 0 nothing else can say -1, so it is set here for
        this one send and put back (tests/*/test_pcasgd.py reads these rows)."""
        if self.resumed:
            return
        old = getattr(self.comm, "step", 0)
        self.comm.step = -1
        try:
            if self.steps >= 1:
                self.out.send(x0, -1, self.reliable, TAG_RELIABLE, "params")
        finally:
            self.comm.step = old

    def send_own(self, t: int, x: torch.Tensor, g: torch.Tensor) -> None:
        """Step t, after the backward pass: x_t (and g_t for Eq. 2) to the unreliable neighbours,
        unless it would be consumed after the last step."""
        if t + self.tau <= self.steps - 1 and self.send_unreliable:
            self.out.send(x, t, self.send_unreliable, TAG_UNRELIABLE_PARAMS, "params")
            if self.send_grads:
                self.out.send(g, t, self.send_unreliable, TAG_UNRELIABLE_GRADS, "grads")

    def take_reliable(self, t: int):
        """Step t: [x_t^j for the reliable neighbours j] and the largest staleness (None: none)."""
        rel, stale = [], None
        for box in self.rel_box:
            (xj,), s = box.take(t)
            rel.append(xj)
            stale = max(stale or 0, t - s)
        return rel, stale

    def take_unreliable(self, t: int):
        """Step t >= tau: [(x_{t-tau}^k, g_k or None) for the unreliable neighbours k] and the
        largest staleness; (None, None) before step tau or without unreliable neighbours."""
        if not self.unrel_box or t < self.tau:
            return None, None
        unrel, stale = [], None
        for box in self.unrel_box:
            msg, s = box.take(t)
            unrel.append((msg[0], msg[1] if len(msg) > 1 else None))
            stale = max(stale or 0, t - s)
        return unrel, stale

    def release(self, t: int, took_unreliable: bool) -> None:
        """After the update of step t: re-post the mailbox slots read at step t."""
        for box in self.rel_box:
            box.release(t)
        if took_unreliable:
            for box in self.unrel_box:
                box.release(t)

    def update_buffer(self, t: int) -> torch.Tensor | None:
        """Step t, before the update: where the update may write x_{t+1} when it goes to the
        reliable neighbours, the send buffer itself (no copy into it after); None when it is not
        sent. :meth:`send_update` sends it."""
        if t <= self.steps - 2 and self.reliable:
            self._update_buf = self.out.acquire()
            return self._update_buf[1]
        return None

    def send_update(self, t: int, x: torch.Tensor) -> None:
        """Step t, after the update: x_{t+1} to the reliable neighbours (consumed at step t+1),
        from the buffer of :meth:`update_buffer` if it was asked for (then it holds x_{t+1})."""
        buf, self._update_buf = self._update_buf, None
        if buf is not None:
            self.out.post(buf, t, self.reliable, TAG_RELIABLE, "params")
        elif t <= self.steps - 2:
            self.out.send(x, t, self.reliable, TAG_RELIABLE, "params")

    def stop_early(self) -> None:
        """After the checkpoint of a stop signal: withdraw the receives posted ahead and complete
        every send (the peers posted their receives for them, up to the same step)."""
        for box in self.rel_box + self.unrel_box:
            box.withdraw()
        self.out.drain()

    def settle(self, c: int) -> None:
        """End the exchange after step c, wherever the plan would have gone on (a stop before the
        last planned step, or an open-ended plan): wait for the messages the neighbours sent up to
        step c (every agent stopped after step c too), withdraw the receives posted for later
        ones, complete every send. Nothing is left in flight."""
        for box in self.rel_box + self.unrel_box:
            box.wait_through(c)
            box.withdraw()
        self.out.drain()

    def finish(self) -> None:
        """Complete every send (all receives were consumed by the last step)."""
        left = sum(b.pending() for b in self.rel_box + self.unrel_box)
        if left:
            raise RuntimeError(f"agent {self.i}: {left} receives still posted after the last step")
        self.out.drain()
