"""How bytes move between ranks: nonblocking, traced, on flat torch buffers.

This is the only module of mpidist that calls mpi4py's point-to-point and collective operations, so
every byte an algorithm moves becomes one row of the trace (`mpidist.trace`).

- ``isend``/``irecv`` (point to point) and ``iallreduce``/``ibcast`` (collectives) take contiguous
  torch tensors and return a :class:`Handle` with ``wait()``/``test()``; :func:`waitall` waits on
  many. CPU tensors go to MPI as zero-copy views of their memory (never pickled).
- A handle owns its buffer until it completes. ``isend`` sends from a snapshot (one memcpy into a
  buffer taken from a pool, no allocation once the pool is warm) so that an optimizer step cannot
  race with a send in flight; ``snapshot=False`` sends the caller's memory itself when the caller
  promises not to touch it until ``wait()``.
- CUDA tensors: with a CUDA-aware MPI (detected at start-up, see :func:`cuda_aware_mpi`) device
  buffers go to MPI directly after the current stream is synchronised; otherwise they are staged
  through pinned host buffers.
- ``send_init``/``recv_init``: a fixed message (same buffer, same peer, every step) as an MPI
  persistent request made once; ``start()`` posts it again and returns its handle
  (:class:`Persistent`), with less Python per message than ``isend``/``irecv``.
- ``wait(timeout)`` raises :class:`CommTimeout` naming rank, peer, tag and channel when the deadline
  passes, which is how algorithms avoid hanging on a dead peer.
- :class:`LinkModel` (off by default) delays completions as a network of given latency and bandwidth
  would, so that one machine shows the communication/computation trade-offs of a cluster.

Flattening (one contiguous buffer per message) belongs to it too: :class:`FlatParams` makes a
model's parameters and gradients views into one persistent buffer, so exchanging them copies
nothing.

Import everything from here. This module holds the :class:`Communicator`; the parts it is built
from live in modules of one job each, whose names it re-exports:

- :mod:`mpidist.buffers`: ``aligned_empty``, ``flatten``, ``unflatten``, ``trainable_tensors``,
  ``FlatParams``, ``Block``, ``BufferPool`` (memory, no MPI);
- :mod:`mpidist.cuda_aware`: ``cuda_aware_mpi``;
- :mod:`mpidist.link`: ``LinkModel``;
- :mod:`mpidist.handles`: ``Handle``, ``waitall``, ``CommError``, ``CommTimeout``;
- :mod:`mpidist.persistent`: ``Persistent`` (``send_init``/``recv_init``).
"""
from __future__ import annotations

import ctypes
import pickle
import struct

import numpy as np
import torch
from mpi4py import MPI

from .buffers import (Block, BufferPool, FlatParams, _bytes, aligned_empty, aligned_zeros,
                      flatten, trainable_tensors, unflatten)
from .cuda_aware import cuda_aware_mpi
from .handles import CommError, CommTimeout, Handle, posted, waitall
from .link import LinkModel
from .persistent import Persistent

__all__ = ["Communicator", "Persistent", "Handle", "waitall", "CommError", "CommTimeout",
           "LinkModel", "cuda_aware_mpi", "aligned_empty", "aligned_zeros", "flatten", "unflatten",
           "trainable_tensors", "FlatParams", "Block", "BufferPool"]

# --------------------------------------------------------------------------------- MPI plumbing

_MPI_TYPES = {torch.float32: MPI.FLOAT, torch.float64: MPI.DOUBLE, torch.int32: MPI.INT32_T,
              torch.int64: MPI.INT64_T, torch.uint8: MPI.UINT8_T, torch.int8: MPI.INT8_T}
_OPS = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
_TRAILER = struct.Struct("<d")

_EMPTY = MPI.buffer(bytearray())  # writable: a 0-element tensor may also be received into


def _mpi_buffer(t: torch.Tensor):
    """A zero-copy MPI view of a contiguous tensor's bytes (host or CUDA-aware device memory)."""
    if t.is_cuda:
        return t  # mpi4py takes device tensors through __dlpack__/__cuda_array_interface__
    nbytes = t.nbytes
    return MPI.buffer.fromaddress(t.data_ptr(), nbytes) if nbytes else _EMPTY


# --------------------------------------------------------------------------------- communicator

class Communicator:
    """Traced nonblocking operations of one rank on an MPI communicator.

    ``trace``: a TraceWriter or None; ``clock``: seconds since the run's t = 0; ``link``: a
    LinkModel or None; ``timeout``: the default deadline of every wait in seconds. Set ``step``
    to the algorithm's step so that trace rows carry it.
    """

    def __init__(self, mpi_comm=None, trace=None, clock=None, link: LinkModel | None = None,
                 timeout: float = 300.0, cuda_aware: bool | None = None):
        self.mpi = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.trace = trace
        if clock is None:
            t0 = MPI.Wtime()
            clock = lambda: MPI.Wtime() - t0  # noqa: E731
        self.clock = clock
        self.link = link if link is not None and link.enabled else None
        self.timeout = timeout
        self.cuda_aware = cuda_aware_mpi() if cuda_aware is None else cuda_aware
        self.pool = BufferPool()
        self.step = 0
        self._names: dict[str, bytes] = {}
        self._views: dict[tuple, object] = {}  # (address, nbytes) -> MPI view, see _view

    # ------------------------------------------------------------------ helpers
    def _name(self, channel: str) -> bytes:
        try:
            return self._names[channel]
        except KeyError:
            b = self._names[channel] = channel.encode()[:24]
            return b

    @staticmethod
    def _check(t: torch.Tensor, what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise CommError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_contiguous():
            raise CommError(f"{what}: tensor of shape {tuple(t.shape)} is not contiguous; "
                            "flatten it (mpidist.comm.flatten) or call .contiguous() first")

    def _staged(self, t: torch.Tensor) -> bool:
        return t.device.type == "cuda" and (not self.cuda_aware or self.link is not None)

    @staticmethod
    def _sync(t: torch.Tensor) -> None:
        if t.device.type == "cuda":
            torch.cuda.current_stream(t.device).synchronize()

    # ------------------------------------------------------------------ point to point
    def _view(self, t: torch.Tensor, nbytes: int):
        """MPI's view of a contiguous CPU tensor's bytes, remembered by (address, size): a view is
        only an address and a length, so the same pair always gives the same view."""
        key = (t.data_ptr(), nbytes)
        buf = self._views.get(key)
        if buf is None:
            if len(self._views) >= 4096:
                self._views.clear()
            buf = self._views[key] = MPI.buffer.fromaddress(key[0], nbytes) if nbytes else _EMPTY
        return buf

    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0, channel: str = "data",
              snapshot: bool = True) -> Handle:
        """Post a send of ``tensor`` to ``dest``. With ``snapshot`` (default) the bytes are copied
        first, so the caller may change ``tensor`` at once; otherwise it must not until ``wait()``."""
        if not isinstance(tensor, torch.Tensor) or not tensor.is_contiguous():
            self._check(tensor, f"isend to {dest} on '{channel}'")
        t_post = self.clock()
        nbytes = tensor.nbytes
        if self.link is None and not tensor.is_cuda:  # the CPU path, kept short (small messages)
            if snapshot and nbytes:  # one memcpy into a pooled block, no torch op
                free = self.pool._free.get((nbytes, "cpu", False))
                block = free.pop() if free else self.pool.get(nbytes)
                ctypes.memmove(block.ptr, tensor.data_ptr(), nbytes)
                buf = block.view
                if buf is None:
                    buf = block.view = MPI.buffer.fromaddress(block.ptr, nbytes)
                req = self.mpi.Isend(buf, dest, tag)
                h = posted(self, req, (self.step, b"send", dest, tag, self._names.get(channel)
                                       or self._name(channel), nbytes, t_post), tensor)
                h.buf = block
                return h
            # the message leaves first; the handle and its row are made after (off its path)
            req = self.mpi.Isend(self._views.get((tensor.data_ptr(), nbytes))
                                 or self._view(tensor, nbytes), dest, tag)
            return posted(self, req, (self.step, b"send", dest, tag, self._names.get(channel)
                                      or self._name(channel), nbytes, t_post), tensor)
        name = self._name(channel)
        t_ready, block, trailer = 0.0, None, 0
        if self.link is not None:
            t_ready, arrive = self.link.send(t_post, nbytes)
            trailer = _TRAILER.size
        if tensor.is_cuda:
            if self._staged(tensor):  # through pinned host memory
                block = self.pool.get(nbytes + trailer, "cpu", True)
                block.tensor[:nbytes].copy_(_bytes(tensor), non_blocking=True)
            elif snapshot:
                block = self.pool.get(nbytes, str(tensor.device))
                block.tensor.copy_(_bytes(tensor))
            self._sync(tensor)
        elif snapshot or trailer:  # one memcpy, no torch op on the hot path
            block = self.pool.get(nbytes + trailer)
            ctypes.memmove(block.ptr, tensor.data_ptr(), nbytes)
        if trailer:  # arrival on the run's clock, rank 0's on every rank (mpidist.clock)
            _TRAILER.pack_into(block.tensor.numpy(), nbytes, arrive)
        if block is None:
            buf = _mpi_buffer(tensor)
        elif block.tensor.is_cuda:
            buf = block.tensor
        else:
            buf = MPI.buffer.fromaddress(block.ptr, block.nbytes) if block.nbytes else _EMPTY
        req = self.mpi.Isend(buf, dest, tag)
        return Handle(self, req, b"send", dest, tag, name, nbytes, t_post, tensor, block, None,
                      t_ready, self.step)

    def irecv(self, out: torch.Tensor, source: int, tag: int = 0, channel: str = "data") -> Handle:
        """Post a receive into ``out`` (contiguous; its size is the expected message size)."""
        if not isinstance(out, torch.Tensor) or not out.is_contiguous():
            self._check(out, f"irecv from {source} on '{channel}'")
        t_post = self.clock()
        nbytes = out.nbytes
        if self.link is None and not out.is_cuda:  # the CPU path, kept short (small messages)
            req = self.mpi.Irecv(self._views.get((out.data_ptr(), nbytes))
                                 or self._view(out, nbytes), source, tag)
            return posted(self, req, (self.step, b"recv", source, tag, self._names.get(channel)
                                      or self._name(channel), nbytes, t_post), out)
        name = self._name(channel)
        trailer = _TRAILER.size if self.link is not None else 0
        staged = out.is_cuda and self._staged(out)
        if staged or trailer:
            block = self.pool.get(nbytes + trailer, "cpu", staged)
            finish = _finish_staged_recv(out, block, nbytes, trailer)
            buf = MPI.buffer.fromaddress(block.ptr, block.nbytes)
        else:
            block, finish, buf = None, None, _mpi_buffer(out)
        req = self.mpi.Irecv(buf, source, tag)
        return Handle(self, req, b"recv", source, tag, name, nbytes, t_post, out, block, finish,
                      0.0, self.step)

    def send_init(self, tensor: torch.Tensor, dest: int, tag: int = 0,
                  channel: str = "data") -> "Persistent":
        """A send of ``tensor`` to ``dest`` made once and started again and again (MPI's persistent
        requests): see :class:`Persistent`. Sends the tensor's memory itself (no snapshot): leave
        it alone from ``start()`` to ``wait()``."""
        self._check(tensor, f"send_init to {dest} on '{channel}'")
        return Persistent(self, tensor, dest, tag, channel, True)

    def recv_init(self, out: torch.Tensor, source: int, tag: int = 0,
                  channel: str = "data") -> "Persistent":
        """A receive into ``out`` from ``source`` made once and started again and again: see
        :class:`Persistent`."""
        self._check(out, f"recv_init from {source} on '{channel}'")
        return Persistent(self, out, source, tag, channel, False)

    # ------------------------------------------------------------------ collectives
    def iallreduce(self, tensor: torch.Tensor, op: str = "sum", channel: str = "allreduce") -> Handle:
        """Reduce ``tensor`` in place over all ranks with MPI's own nonblocking allreduce.
        ``op``: sum, avg (sum then divide by the world size), max, min. ``tensor`` belongs to the
        handle until ``wait()``."""
        self._check(tensor, f"iallreduce on '{channel}'")
        if op not in _OPS:
            raise CommError(f"iallreduce: unknown op '{op}' (known: {', '.join(_OPS)})")
        mpitype = _MPI_TYPES.get(tensor.dtype)
        if mpitype is None:
            raise CommError(f"iallreduce: dtype {tensor.dtype} has no MPI type here "
                            f"(supported: {', '.join(str(d) for d in _MPI_TYPES)})")
        t_post = self.clock()
        nbytes = tensor.nbytes
        work, block = self._stage_in(tensor, True)
        n, link = self.size, self.link
        finish = None
        if block is not None or op == "avg" or link is not None:
            def finish(h):
                if block is not None:
                    _bytes(tensor).copy_(block.tensor)
                if op == "avg":
                    tensor.div_(n)
                if link is not None:
                    h.t_ready = self.clock() + link.allreduce(nbytes, n)
        req = self.mpi.Iallreduce(MPI.IN_PLACE, [work, tensor.numel(), mpitype], _OPS[op])
        return Handle(self, req, b"allreduce", -1, -1, self._name(channel), nbytes, t_post,
                      tensor, block, finish)

    def ibcast(self, tensor: torch.Tensor, root: int = 0, channel: str = "bcast") -> Handle:
        """Broadcast ``tensor`` from ``root`` in place; the handle owns it until ``wait()``."""
        self._check(tensor, f"ibcast on '{channel}'")
        t_post = self.clock()
        nbytes = tensor.nbytes
        work, block = self._stage_in(tensor, self.rank == root)
        n, link, is_root = self.size, self.link, self.rank == root
        finish = None
        if block is not None or link is not None:
            def finish(h):
                if block is not None and not is_root:
                    _bytes(tensor).copy_(block.tensor)
                if link is not None:
                    h.t_ready = self.clock() + link.bcast(nbytes, n)
        req = self.mpi.Ibcast(work, root)
        return Handle(self, req, b"bcast", -1 if is_root else root, -1, self._name(channel),
                      nbytes, t_post, tensor, block, finish)

    def _stage_in(self, tensor: torch.Tensor, copy: bool):
        """(MPI buffer, pooled block or None) for a collective on ``tensor``: the tensor itself, or
        a pinned host copy when a CUDA tensor must be staged."""
        if tensor.is_cuda and self._staged(tensor):
            block = self.pool.get(tensor.nbytes, "cpu", True)
            if copy:
                block.tensor.copy_(_bytes(tensor), non_blocking=True)
            self._sync(tensor)
            return MPI.buffer.fromaddress(block.ptr, block.nbytes), block
        self._sync(tensor)
        return _mpi_buffer(tensor), None

    def barrier(self, timeout: float | None = None) -> None:
        """A traced nonblocking barrier with a deadline (zero bytes)."""
        h = Handle(self, self.mpi.Ibarrier(), b"barrier", -1, -1, self._name("barrier"), 0,
                   self.clock(), None)
        h.wait(timeout)

    # ------------------------------------------------------------------ small control values
    def bcast_object(self, obj, root: int = 0):
        """Broadcast a small picklable object (start-up settings, run directory names). Pickled,
        so never for tensors; bounded by the communicator's deadline."""
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else None
        n = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
        self.ibcast(n, root, "control").wait()
        if data is not None:
            buf = torch.from_numpy(data.copy())
        else:
            buf = torch.empty(int(n[0]), dtype=torch.uint8)
        self.ibcast(buf, root, "control").wait()
        return pickle.loads(buf.numpy().tobytes())

    def allgather_object(self, obj) -> list:
        """Gather a small picklable object from every rank (start-up checks); not for tensors.
        Nonblocking (sizes, then the bytes) so that it is bounded by the deadline like every wait."""
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        sizes = np.zeros(self.size, np.int64)
        req = self.mpi.Iallgather(np.array([data.size], np.int64), sizes)
        Handle(self, req, b"allgather", -1, -1, self._name("control"), 8, self.clock(),
               None).wait()
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = np.empty(int(sizes.sum()), np.uint8)
        req = self.mpi.Iallgatherv(data, [out, sizes, displs, MPI.BYTE])
        Handle(self, req, b"allgather", -1, -1, self._name("control"), data.size, self.clock(),
               None).wait()
        return [pickle.loads(out[d:d + n].tobytes()) for d, n in zip(displs, sizes)]

    def allreduce_scalar(self, value: float, op: str = "sum", channel: str = "control") -> float:
        """Blocking (deadline-bounded) allreduce of one float64, traced; for losses, flags, votes."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        return float(self.iallreduce(t, op, channel).wait()[0])


def _finish_staged_recv(out: torch.Tensor, block: Block, nbytes: int, trailer: int):
    def finish(h):
        if trailer:
            (arrive,) = _TRAILER.unpack_from(block.tensor.numpy(), nbytes)
            h.t_ready = arrive
        if not nbytes:
            return
        if out.is_cuda:
            _bytes(out).copy_(block.tensor[:nbytes])
        else:
            ctypes.memmove(out.data_ptr(), block.ptr, nbytes)
    return finish
