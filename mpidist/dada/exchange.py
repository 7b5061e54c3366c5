"""What DADA's nodes send to whom and when, through :mod:`mpidist.comm` only.

- Once, before the adaptation (Algorithm 2 line 1): the source broadcasts E_s, C_s and a freshly
  initialised D to the targets (channels ``init_extractor``, ``init_classifier``, ``init_disc``).
- At every sync-up step (Algorithm 1 line 7, Algorithm 2 line 8): one allreduce of the ranks'
  D-sized payloads (G_acc or D's weights, as the strategy says), divided by the number of ranks:
  "exchange with the other node(s), average" (channel ``disc_grads`` or ``disc_params``). Nothing
  else: no images, features or labels.
- After the adaptation, for rank 0's summary only: each target's rotation and two accuracies
  (three float64, channel ``report``).
"""
from __future__ import annotations

import torch

from ..comm import FlatParams, aligned_empty, flatten, unflatten, waitall
from ..errors import UsageError
from .tasks import Domain, load_domain

TAG_DISC, TAG_REPORT = 31, 32
INIT_CHANNELS = ("init_extractor", "init_classifier", "init_disc")


class DiscExchange:
    """Algorithm 1 line 7 / Algorithm 2 line 8, "exchange with the other node, average": ONE
    nonblocking allreduce (``Communicator.iallreduce``, op ``avg``) of the rank's D-sized payload,
    copied into a buffer allocated once, so that the payload itself may change at once;
    :meth:`wait` returns the average over all ranks.

    The paper asks only for the average of the accumulated gradients (or weights) of all nodes;
    an allreduce computes it with ``2 (n - 1) / n`` D-sized volumes out of each of the n ranks on a
    ring (or ``log2 n`` of them by recursive doubling) instead of the ``n - 1`` of an exchange
    with every other rank, so the traffic per rank no longer grows with the number of targets.
    With two ranks the sum is ``a + b`` on both (IEEE addition commutes), so the bits are those
    of the rank-order mean :func:`~mpidist.dada.rules.rank_order_mean` of the former all-to-all
    exchange; with more ranks MPI picks the order of the additions (equal to float tolerance).
    Every rank gets the same bits in any case: MPICH's allreduce algorithms (recursive doubling,
    reduce-scatter + allgather, ring) reduce each element once, or symmetrically on both partners,
    which is what keeps GA's discriminators bitwise identical (tested at 2, 3 and 4 ranks). The
    trace holds one ``allreduce`` row of D's size per sync-up step and rank."""

    def __init__(self, comm, numel: int, dtype, device, channel: str):
        self.comm, self.channel = comm, channel
        self.mean = aligned_empty(numel, dtype, device)
        self.handle = None
        self.syncs = self.bytes_sent = self.bytes_received = 0

    @property
    def pending(self) -> bool:
        return self.handle is not None

    def post(self, payload: torch.Tensor) -> None:
        """Post the allreduce of (a copy of) ``payload``."""
        if self.pending:
            raise RuntimeError("DiscExchange: an exchange is already in flight")
        nbytes = payload.numel() * payload.element_size()
        self.mean.copy_(payload)
        self.handle = self.comm.iallreduce(self.mean, "avg", self.channel)
        self.syncs += 1
        self.bytes_sent += nbytes        # the buffer handed to MPI (the trace's row), per rank
        self.bytes_received += nbytes

    def wait(self) -> torch.Tensor:
        """The average over all ranks of the posted payloads (a buffer of the exchange's, valid
        until the next :meth:`post`)."""
        waitall([self.handle])
        self.handle = None
        return self.mean

    def counters(self) -> tuple[int, int, int]:
        """(sync-ups, bytes sent, bytes received) so far: what a checkpoint keeps."""
        return self.syncs, self.bytes_sent, self.bytes_received

    def set_counters(self, saved) -> None:
        self.syncs, self.bytes_sent, self.bytes_received = saved


def broadcast_initial(comm, modules, disc_fp: FlatParams, channels=INIT_CHANNELS) -> int:
    """Algorithm 2 line 1: rank 0's ``modules`` (E_s, C_s: their floating state) and D's flat
    weights go to every other rank, one broadcast each on ``channels`` (``init_extractor``,
    ``init_classifier``, ``init_disc``). Returns the bytes broadcast."""
    handles, copies = [], []
    for channel, module in zip(channels, modules):
        state = [t for t in module.state_dict().values() if t.is_floating_point()]
        flat = flatten(state)
        handles.append(comm.ibcast(flat, 0, channel))
        copies.append((state, flat))
    handles.append(comm.ibcast(disc_fp.params, 0, channels[len(modules)]))
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


def transfer_initial_models(comm, net, disc_fp: FlatParams) -> int:
    """Algorithm 2 line 1: E_t, C_t and D_t are initialised by the source node: three broadcasts
    from rank 0 (E's and C's floating state, D's flat weights). Returns the bytes broadcast."""
    return broadcast_initial(comm, (net.extractor, net.classifier), disc_fp)


def agreed(comm, fn):
    """``fn()`` on every rank; a UsageError on any rank ends every rank with the first one (by
    rank), so that every rank exits alike (one line, status 2). Returns this rank's result."""
    out, err = None, ""
    try:
        out = fn()
    except UsageError as e:
        err = str(e)
    errors = [e for e in comm.allgather_object(err) if e]
    if errors:
        raise UsageError(errors[0])
    return out


def gather_domains(comm, args, k: int):
    """Each rank loads its own domain (:func:`load_domain`); a failure anywhere ends every rank
    with the same message, and so do domains with different numbers of classes or input shapes,
    and a domain with fewer training samples than one batch. Returns (this rank's Domain, the list
    of every rank's (label, training samples, input shape))."""
    dom, err = None, ""
    try:
        dom = load_domain(args, comm.rank, k)
        if len(dom.train) < args.batch_size:
            role = "the source" if comm.rank == 0 else f"target rank {comm.rank}"
            err = (f"{dom.label}: {role} holds {len(dom.train)} training samples, fewer than one "
                   f"batch (--batch-size {args.batch_size})"
                   + (f"; its domain is split over {k} targets" if comm.rank and k > 1 else ""))
    except UsageError as e:
        err = str(e)
    info = (dom.label, len(dom.train), dom.train.shape) if dom else None
    got = comm.allgather_object((err, dom.train.num_classes if dom else 0, info))
    errors = [e for e, _, _ in got if e]
    if errors:
        raise UsageError(errors[0])
    classes = {c for _, c, _ in got}
    if len(classes) != 1:
        raise UsageError(f"the domains have different numbers of classes {sorted(classes)}")
    shapes = [i[2] for _, _, i in got]
    if len(set(shapes)) != 1:
        raise UsageError(f"the domains' inputs differ in shape (source {shapes[0]}, "
                         + ", ".join(f"target rank {r} {s}" for r, s in enumerate(shapes) if r)
                         + "): one extractor serves every domain")
    return dom, [i for _, _, i in got]


def load_own_domain(comm, args, k: int) -> Domain:
    """This rank's domain, agreed by all ranks (:func:`gather_domains`)."""
    return gather_domains(comm, args, k)[0]


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
