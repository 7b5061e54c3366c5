"""What DADA's nodes send to whom and when, through :mod:`mpidist.comm` only.

- Once, before the adaptation (Algorithm 2 line 1): the source broadcasts E_s, C_s and a freshly
  initialised D to the targets (channels ``init_extractor``, ``init_classifier``, ``init_disc``).
- At every sync-up step (Algorithm 1 line 7, Algorithm 2 line 8): every rank sends its D-sized
  payload (G_acc or D's weights, as the strategy says) to every other rank and averages all of
  them in rank order (channel ``disc_grads`` or ``disc_params``). Nothing else: no images,
  features or labels.
- After the adaptation, for rank 0's summary only: each target's rotation and two accuracies
  (three float64, channel ``report``).
"""
from __future__ import annotations

import torch

from ..comm import FlatParams, flatten, unflatten, waitall
from ..errors import UsageError
from .rules import rank_order_mean
from .tasks import Domain, load_domain

TAG_DISC, TAG_REPORT = 31, 32
INIT_CHANNELS = ("init_extractor", "init_classifier", "init_disc")


class DiscExchange:
    """Algorithm 1 line 7 / Algorithm 2 line 8, "exchange with the other node, average": the
    rank's D-sized payload goes to every other rank (isend) while theirs come in (irecv, into
    buffers allocated once); :meth:`wait` returns the rank-order mean (:func:`rank_order_mean`).
    With two ranks that is one message of D's size each way per sync-up step."""

    def __init__(self, comm, numel: int, dtype, device, channel: str):
        self.comm, self.channel = comm, channel
        self.peers = [r for r in range(comm.size) if r != comm.rank]
        self.recv = {r: torch.empty(numel, dtype=dtype, device=device) for r in self.peers}
        self.mean = torch.empty(numel, dtype=dtype, device=device)
        self.handles, self.own = [], None
        self.syncs = self.bytes_sent = self.bytes_received = 0

    @property
    def pending(self) -> bool:
        return self.own is not None

    def post(self, payload: torch.Tensor) -> None:
        """Post the exchange of ``payload``, which must not change until :meth:`wait`."""
        if self.pending:
            raise RuntimeError("DiscExchange: an exchange is already in flight")
        c, nbytes = self.comm, payload.numel() * payload.element_size()
        self.handles = [c.irecv(self.recv[r], r, TAG_DISC, self.channel) for r in self.peers]
        self.handles += [c.isend(payload, r, TAG_DISC, self.channel, snapshot=False)
                         for r in self.peers]
        self.own = payload
        self.syncs += 1
        self.bytes_sent += nbytes * len(self.peers)
        self.bytes_received += nbytes * len(self.peers)

    def wait(self) -> torch.Tensor:
        waitall(self.handles)
        parts = [self.own if r == self.comm.rank else self.recv[r] for r in range(self.comm.size)]
        self.handles, self.own = [], None
        return rank_order_mean(parts, self.mean)

    def counters(self) -> tuple[int, int, int]:
        """(sync-ups, bytes sent, bytes received) so far: what a checkpoint keeps."""
        return self.syncs, self.bytes_sent, self.bytes_received

    def set_counters(self, saved) -> None:
        self.syncs, self.bytes_sent, self.bytes_received = saved


def transfer_initial_models(comm, net, disc_fp: FlatParams) -> int:
    """Algorithm 2 line 1: E_t, C_t and D_t are initialised by the source node: three broadcasts
    from rank 0 (E's and C's floating state, D's flat weights). Returns the bytes broadcast."""
    handles, copies = [], []
    for channel, module in zip(INIT_CHANNELS[:2], (net.extractor, net.classifier)):
        state = [t for t in module.state_dict().values() if t.is_floating_point()]
        flat = flatten(state)
        handles.append(comm.ibcast(flat, 0, channel))
        copies.append((state, flat))
    handles.append(comm.ibcast(disc_fp.params, 0, INIT_CHANNELS[2]))
    # the targets wait out the source's pre-training: no practical deadline (a failing source
    # aborts the job), and a polling wait that naps rather than MPI's spinning Wait
    waitall(handles, timeout=1e9)
    nbytes = sum(h.nbytes for h in handles)
    if comm.rank != 0:
        with torch.no_grad():
            for state, flat in copies:
                for t, v in zip(state, unflatten(flat, state)):
                    t.copy_(v)
    return nbytes


def load_own_domain(comm, args, k: int) -> Domain:
    """Each rank loads its own domain; a failure anywhere ends every rank with the same message,
    and so do domains with different numbers of classes."""
    dom, err = None, ""
    try:
        dom = load_domain(args, comm.rank, k)
    except UsageError as e:
        err = str(e)
    got = comm.allgather_object((err, dom.train.num_classes if dom else 0))
    errors = [e for e, _ in got if e]
    if errors:
        raise UsageError(errors[0])
    classes = {c for _, c in got}
    if len(classes) != 1:
        raise UsageError(f"the domains have different numbers of classes {sorted(classes)}")
    return dom


def report_accuracies(comm, k: int, rotation: float, before: float, after: float):
    """Reporting only (never used in training): each target sends (rotation, source-only accuracy,
    adapted accuracy) to rank 0, which returns [(rank, rotation, before, after)] for its k targets
    (None on the targets)."""
    if comm.rank == 0:
        got = {r: torch.empty(3, dtype=torch.float64) for r in range(1, k + 1)}
        waitall([comm.irecv(got[r], r, TAG_REPORT, "report") for r in got])
        return [(r, *got[r].tolist()) for r in got]
    mine = torch.tensor([rotation, before, after], dtype=torch.float64)
    comm.isend(mine, 0, TAG_REPORT, "report").wait()
    return None
