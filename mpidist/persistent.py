"""Persistent requests: one fixed message between the same buffer and peer at every step
(``Communicator.send_init`` / ``recv_init``), started with one ``MPI_Start`` each time."""
from __future__ import annotations

import atexit
import weakref

import torch
from mpi4py import MPI

from .handles import CommError, Handle, posted


class Persistent:
    """A fixed message, between the same buffer and peer at every step (D-PSGD's neighbour
    exchange): MPI's persistent request (``MPI_Send_init``/``MPI_Recv_init``)
    made once, so each :meth:`start` is one ``MPI_Start`` and one :class:`Handle`, without the
    checks and buffer views of :meth:`Communicator.isend`. Every completed message is one trace row,
    as with ``isend``/``irecv``.

    ``start()`` returns the handle of this message; starting again before that handle completed
    raises :class:`CommError` (MPI allows one message in flight per persistent request). Where a
    persistent request does not fit (CUDA tensors, the emulated link) ``start()`` posts an ordinary
    ``isend(snapshot=False)``/``irecv``. :meth:`free` releases the request (after waiting for a
    message in flight); so does garbage collection, and, for those still alive, the end of the
    program before MPI finalizes (else MPICH warns of leaked requests).
    """
    __slots__ = ("comm", "tensor", "peer", "tag", "channel", "send", "req", "handle",
                 "op", "name", "nbytes", "__weakref__")

    def __init__(self, comm, tensor: torch.Tensor, peer: int, tag: int,
                 channel: str, send: bool):
        self.comm, self.tensor, self.peer, self.tag, self.send = comm, tensor, peer, tag, send
        self.channel = channel
        # the trace row's fixed fields, made once
        self.op, self.name = b"send" if send else b"recv", comm._name(channel)
        self.nbytes = tensor.nbytes
        self.handle = None
        self.req = None
        if comm.link is None and not tensor.is_cuda:
            view = comm._view(tensor, tensor.nbytes)
            self.req = (comm.mpi.Send_init if send else comm.mpi.Recv_init)(view, peer, tag)
            _LIVE.add(self)

    def start(self) -> Handle:
        h = self.handle
        if h is not None and h.state != 2:
            raise CommError(f"rank {self.comm.rank}: {h.describe()} started again before its "
                            "previous message completed (wait for its handle first)")
        c = self.comm
        req = self.req
        if req is None:
            if self.send:
                h = c.isend(self.tensor, self.peer, self.tag, self.channel, snapshot=False)
            else:
                h = c.irecv(self.tensor, self.peer, self.tag, self.channel)
        else:
            t_post = c.clock()
            req.Start()
            h = posted(c, req, (c.step, self.op, self.peer, self.tag, self.name, self.nbytes,
                                t_post), self.tensor)
        self.handle = h
        return h

    def free(self) -> None:
        """Wait for a message in flight, then release the MPI request."""
        if self.handle is not None and self.handle.state != 2:
            self.handle.wait()
        self._release()
        self.handle = None

    def _release(self) -> None:
        """Free the MPI request unless a message is in flight on it (or MPI has ended)."""
        req, h = self.req, self.handle
        if req is None or (h is not None and h.state != 2):
            return
        self.req = None
        if MPI.Is_initialized() and not MPI.Is_finalized():
            req.Free()

    def __del__(self):
        try:
            self._release()
        except Exception:  # noqa: BLE001 - never raise from garbage collection
            pass


_LIVE: "weakref.WeakSet[Persistent]" = weakref.WeakSet()


@atexit.register  # registered after mpi4py's MPI_Finalize hook, so it runs before it
def _release_all() -> None:
    for p in list(_LIVE):
        try:
            p._release()
        except Exception:  # noqa: BLE001 - the program is ending
            pass
