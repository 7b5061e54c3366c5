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
- ``wait(timeout)`` raises :class:`CommTimeout` naming rank, peer, tag and channel when the deadline
  passes, which is how algorithms avoid hanging on a dead peer.
- :class:`LinkModel` (off by default) delays completions as a network of given latency and bandwidth
  would, so that one machine shows the communication/computation trade-offs of a cluster.

Flattening (one contiguous buffer per message) lives here too: :class:`FlatParams` makes a model's
parameters and gradients views into one persistent buffer, so exchanging them copies nothing.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import struct
import time
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

# --------------------------------------------------------------------------------- buffers

_ALIGN = 2 << 20  # 2 MiB: one transparent huge page


def aligned_empty(numel: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An uninitialised 1-D tensor; on the CPU 2 MiB-aligned and advised to use huge pages.

    Huge pages halve the TLB misses of large copies (DESIGN.md: 25 vs 12.9 GB/s at 1 MiB).
    """
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    nbytes = max(numel * itemsize, 1)
    if nbytes < (256 << 10):
        return torch.empty(numel, dtype=dtype)
    m = mmap.mmap(-1, nbytes + _ALIGN)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    raw = torch.frombuffer(m, dtype=torch.uint8)  # keeps the mmap alive
    offset = (-raw.data_ptr()) % _ALIGN
    return raw[offset: offset + numel * itemsize].view(dtype)


def flatten(tensors, out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy ``tensors`` (one dtype) into one contiguous 1-D buffer, ``out`` if given."""
    tensors = list(tensors)
    n = sum(t.numel() for t in tensors)
    if out is None:
        out = aligned_empty(n, tensors[0].dtype, tensors[0].device)
    if out.numel() != n:
        raise ValueError(f"flatten: out has {out.numel()} elements, tensors have {n}")
    i = 0
    for t in tensors:
        out[i:i + t.numel()].copy_(t.reshape(-1))
        i += t.numel()
    return out


def unflatten(flat: torch.Tensor, like) -> list[torch.Tensor]:
    """Views into ``flat`` shaped like the tensors of ``like`` (no copy)."""
    need = sum(t.numel() for t in like)
    if need != flat.numel():
        raise ValueError(f"unflatten: flat has {flat.numel()} elements, shapes need {need}")
    out, i = [], 0
    for t in like:
        out.append(flat[i:i + t.numel()].view(t.shape))
        i += t.numel()
    return out


def trainable_tensors(module: torch.nn.Module, who: str) -> list[torch.Tensor]:
    """The module's trainable parameters, refusing none at all or several dtypes (one flat buffer
    holds one dtype)."""
    tensors = [p for p in module.parameters() if p.requires_grad]
    if not tensors:
        raise ValueError(f"{who}: the module has no trainable parameters")
    dtypes = {p.dtype for p in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"{who}: parameters of several dtypes {dtypes}; one buffer needs one")
    return tensors


class FlatParams:
    """A module's parameters (and their gradients) as views into ONE persistent flat buffer each.

    After ``fp = FlatParams(model)``, ``fp.params`` is a 1-D tensor whose slices *are* the model's
    parameters and ``fp.grads`` one whose slices are their ``.grad``: exchanging or averaging them
    needs no packing. Keep the grads as views: zero them with :meth:`zero_grad` (or an optimizer's
    ``zero_grad(set_to_none=False)``), since ``set_to_none=True`` would detach them from the buffer.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.tensors = trainable_tensors(module, "FlatParams")
        dtype, device = self.tensors[0].dtype, self.tensors[0].device
        self.numel = sum(p.numel() for p in self.tensors)
        self.params = flatten([p.detach() for p in self.tensors],
                              aligned_empty(self.numel, dtype, device))
        self.grads = aligned_empty(self.numel, dtype, device).zero_()
        for p, v, g in zip(self.tensors, unflatten(self.params, self.tensors),
                           unflatten(self.grads, self.tensors)):
            p.data = v
            p.grad = g

    @property
    def nbytes(self) -> int:
        return self.params.numel() * self.params.element_size()

    def zero_grad(self) -> None:
        self.grads.zero_()
        for p, g in zip(self.tensors, unflatten(self.grads, self.tensors)):
            if p.grad is None or p.grad.data_ptr() != g.data_ptr():
                p.grad = g  # re-attach a grad someone set to None or replaced

    def copy_(self, flat: torch.Tensor) -> None:
        self.params.copy_(flat)


class Block:
    """A pooled byte buffer: ``tensor`` (uint8), its address ``ptr`` and size ``nbytes``."""
    __slots__ = ("tensor", "ptr", "nbytes", "key")

    def __init__(self, tensor: torch.Tensor, key):
        self.tensor, self.ptr, self.nbytes, self.key = tensor, tensor.data_ptr(), tensor.numel(), key


class BufferPool:
    """Reusable byte buffers by (size, device, pinned): no allocation on the hot path once warm."""

    def __init__(self):
        self._free: dict[tuple, list[Block]] = {}

    def get(self, nbytes: int, device: str = "cpu", pinned: bool = False) -> Block:
        """A block of ``nbytes`` on ``device`` ("cpu" or "cuda:i"), pinned host memory if asked."""
        key = (nbytes, device, pinned)
        free = self._free.get(key)
        if free:
            return free.pop()
        if pinned:
            t = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        else:
            t = aligned_empty(nbytes, torch.uint8, device)
        return Block(t, key)

    def put(self, block: Block) -> None:
        self._free.setdefault(block.key, []).append(block)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's memory as a flat uint8 tensor (a view)."""
    return t.reshape(-1).view(torch.uint8)


# --------------------------------------------------------------------------------- CUDA

def cuda_aware_mpi() -> bool:
    """Whether the MPI library accepts CUDA device pointers.

    ``MPIDIST_CUDA_AWARE=0|1`` overrides. Otherwise: False without CUDA; else the library's own
    answer from ``MPIX_Query_cuda_support()`` (MPICH >= 4, Open MPI >= 4) looked up in the loaded
    MPI library; else Open MPI's ``OMPI_MCA_opal_cuda_support=true``.
    """
    env = os.environ.get("MPIDIST_CUDA_AWARE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    if not torch.cuda.is_available():
        return False
    import ctypes
    for lib in (None, "libmpi.so.12", "libmpi.so.40", "libmpi.so"):
        try:
            query = getattr(ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL), "MPIX_Query_cuda_support")
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return os.environ.get("OMPI_MCA_opal_cuda_support", "").lower() == "true"


# --------------------------------------------------------------------------------- link model

@dataclass
class LinkModel:
    """An emulated network: every message costs ``latency`` seconds plus bytes / ``bandwidth``.

    A rank's outgoing messages share one link: message i starts when the link is free,
    ``start_i = max(t_post_i, free)``, leaves at ``start_i + n_i / B`` and arrives at
    ``start_i + L + n_i / B``. A send completes when it has left, a receive when it has arrived (the
    sender's arrival time travels in an 8-byte trailer, on MPI_Wtime's clock, which the ranks of one
    node share: the model is for single-node emulation). An allreduce of n bytes over p ranks costs
    the ring algorithm's ``2 (p-1) L + 2 (p-1)/p n / B`` after MPI completes it, a broadcast
    ``ceil(log2 p) (L + n / B)``.
    """
    latency: float = 0.0     # seconds per message
    bandwidth: float = 0.0   # bytes per second; 0 = infinite

    def __post_init__(self):
        if self.latency < 0 or self.bandwidth < 0:
            raise ValueError("link model: latency and bandwidth must be >= 0")
        self._free = 0.0

    @property
    def enabled(self) -> bool:
        return self.latency > 0 or self.bandwidth > 0

    def wire(self, nbytes: int) -> float:
        return nbytes / self.bandwidth if self.bandwidth > 0 else 0.0

    def send(self, t_post: float, nbytes: int) -> tuple[float, float]:
        """(time the last byte leaves, time it arrives) for a message posted at ``t_post``."""
        start = max(t_post, self._free)
        left = start + self.wire(nbytes)
        self._free = left
        return left, left + self.latency

    def allreduce(self, nbytes: int, p: int) -> float:
        return 2 * (p - 1) * self.latency + 2 * (p - 1) / p * self.wire(nbytes) if p > 1 else 0.0

    def bcast(self, nbytes: int, p: int) -> float:
        return int(np.ceil(np.log2(p))) * (self.latency + self.wire(nbytes)) if p > 1 else 0.0


# --------------------------------------------------------------------------------- handles

class CommError(RuntimeError):
    """A communication that cannot be done as asked (bad tensor, wrong size, ...)."""


class CommTimeout(CommError):
    """A wait whose deadline passed; the message names rank, peer, tag and channel."""


_MPI_TYPES = {torch.float32: MPI.FLOAT, torch.float64: MPI.DOUBLE, torch.int32: MPI.INT32_T,
              torch.int64: MPI.INT64_T, torch.uint8: MPI.UINT8_T, torch.int8: MPI.INT8_T}
_OPS = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
_TRAILER = struct.Struct("<d")
_SPIN_SECONDS = 0.02  # poll without sleeping this long, then poll with short sleeps


_EMPTY = MPI.buffer(b"")


def _mpi_buffer(t: torch.Tensor):
    """A zero-copy MPI view of a contiguous tensor's bytes (host or CUDA-aware device memory)."""
    if t.is_cuda:
        return t  # mpi4py takes device tensors through __dlpack__/__cuda_array_interface__
    nbytes = t.nbytes
    return MPI.buffer.fromaddress(t.data_ptr(), nbytes) if nbytes else _EMPTY


class Handle:
    """One operation in flight. It owns its buffer(s) until it completes.

    ``wait(timeout)`` blocks until completion (and, with a link model, emulated arrival) and returns
    the result tensor (the received tensor for irecv, the reduced tensor for iallreduce, the sent
    tensor for isend); ``test()`` returns True once it has completed, without blocking.
    """
    __slots__ = ("comm", "req", "op", "peer", "tag", "channel", "nbytes", "step", "t_post",
                 "t_ready", "result", "buf", "finish", "mpi_done", "done", "t_done")

    def __init__(self, comm, req, op, peer, tag, channel, nbytes, t_post, result, buf=None,
                 finish=None, t_ready=0.0):
        self.comm, self.req, self.op, self.peer, self.tag = comm, req, op, peer, tag
        self.channel, self.nbytes, self.t_post, self.result = channel, nbytes, t_post, result
        self.buf, self.finish, self.t_ready = buf, finish, t_ready
        self.step = comm.step
        self.mpi_done = self.done = False
        self.t_done = 0.0

    def _mpi_complete(self) -> None:
        """MPI has finished with the buffers: unstage, reduce-average, set the emulated arrival."""
        self.mpi_done = True
        if self.finish is not None:
            self.finish(self)
        if self.buf is not None:
            self.comm.pool.put(self.buf)
            self.buf = None

    def _record(self, now: float) -> None:
        self.t_done = now
        self.done = True
        trace = self.comm.trace
        if trace is not None:
            trace.comm(self.step, self.op, self.peer, self.tag, self.channel, self.nbytes,
                       self.t_post, now)

    def test(self) -> bool:
        if self.done:
            return True
        if not self.mpi_done:
            if not self.req.Test():
                return False
            self._mpi_complete()
        now = self.comm.clock()
        if now < self.t_ready:  # the emulated network is still carrying it
            return False
        self._record(now)
        return True

    def wait(self, timeout: float | None = None):
        """Complete the operation; raise CommTimeout after ``timeout`` seconds (default: the
        communicator's ``timeout``; ``float('inf')`` waits for ever)."""
        if self.done:
            return self.result
        if not self.mpi_done:
            req = self.req
            if not req.Test():
                timeout = self.comm.timeout if timeout is None else timeout
                if timeout == float("inf"):
                    req.Wait()
                else:
                    _poll(req.Test, timeout, self)
            self._mpi_complete()
        now = self.comm.clock()
        if now < self.t_ready:
            time.sleep(self.t_ready - now)
            now = self.comm.clock()
        self._record(now)
        return self.result

    def cancel(self) -> bool:
        """Withdraw a posted receive that will never be matched (a peer that stopped for good, as
        in MD-GAN's fail-stop crashes) so that no request is left pending at the end. Returns True
        if it was cancelled before a message matched it (no trace row, the buffer keeps its old
        contents; a message not yet matched stays for a later receive), False if it had matched
        one (then it completes and is recorded as usual)."""
        if self.done:
            return False
        if self.op != b"recv":
            raise CommError(f"cancel: only receives can be cancelled, not {self.describe()}")
        if not self.mpi_done:
            self.req.Cancel()
            status = MPI.Status()
            self.req.Wait(status)
            if status.Is_cancelled():
                self.finish = None  # nothing arrived: no unstaging
                self._mpi_complete()  # gives any pooled buffer back
                self.done = True
                return True
            self._mpi_complete()
        self.wait()
        return False

    def describe(self) -> str:
        who = f"peer {self.peer}" if self.peer >= 0 else "the other ranks"
        return (f"{self.op.decode()} with {who} (tag {self.tag}, channel "
                f"'{self.channel.decode()}', step {self.step})")


def _poll(test, timeout: float, handle: Handle) -> None:
    """Poll ``test`` until true: spin first (latency), yielding the core between batches of polls
    so that a peer sharing this core (ranks oversubscribing the cores) runs instead of waiting for
    our time slice to end (as MPICH's own blocking wait does); after ``_SPIN_SECONDS`` sleep
    briefly between polls; raise CommTimeout past ``timeout``."""
    t0 = time.monotonic()
    spin_end, deadline = t0 + _SPIN_SECONDS, t0 + timeout
    nap = 20e-6
    yield_ = os.sched_yield
    while True:
        for _ in range(32):
            if test():
                return
        yield_()
        now = time.monotonic()
        if now >= deadline:
            c = handle.comm
            raise CommTimeout(f"rank {c.rank}: timed out after {timeout:g} s waiting for "
                              f"{handle.describe()}")
        if now >= spin_end:
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)


def waitall(handles, timeout: float | None = None) -> list:
    """Wait for every handle (each with the same deadline counted from now); return their results."""
    t0 = time.monotonic()
    out = []
    for h in handles:
        left = None
        if timeout is not None:
            left = max(timeout - (time.monotonic() - t0), 0.0)
        out.append(h.wait(left))
    return out


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
    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0, channel: str = "data",
              snapshot: bool = True) -> Handle:
        """Post a send of ``tensor`` to ``dest``. With ``snapshot`` (default) the bytes are copied
        first, so the caller may change ``tensor`` at once; otherwise it must not until ``wait()``."""
        self._check(tensor, f"isend to {dest} on '{channel}'")
        t_post = self.clock()
        nbytes = tensor.nbytes
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
        if trailer:  # arrival on MPI's clock, which all ranks of a node share
            _TRAILER.pack_into(block.tensor.numpy(), nbytes, arrive + MPI.Wtime() - self.clock())
        if block is None:
            buf = _mpi_buffer(tensor)
        elif block.tensor.is_cuda:
            buf = block.tensor
        else:
            buf = MPI.buffer.fromaddress(block.ptr, block.nbytes) if block.nbytes else _EMPTY
        req = self.mpi.Isend(buf, dest, tag)
        return Handle(self, req, b"send", dest, tag, self._name(channel), nbytes, t_post, tensor,
                      block, None, t_ready)

    def irecv(self, out: torch.Tensor, source: int, tag: int = 0, channel: str = "data") -> Handle:
        """Post a receive into ``out`` (contiguous; its size is the expected message size)."""
        self._check(out, f"irecv from {source} on '{channel}'")
        t_post = self.clock()
        nbytes = out.nbytes
        trailer = _TRAILER.size if self.link is not None else 0
        staged = out.is_cuda and self._staged(out)
        if staged or trailer:
            block = self.pool.get(nbytes + trailer, "cpu", staged)
            finish = _finish_staged_recv(out, block, nbytes, trailer)
            buf = MPI.buffer.fromaddress(block.ptr, block.nbytes)
        else:
            block, finish, buf = None, None, _mpi_buffer(out)
        req = self.mpi.Irecv(buf, source, tag)
        return Handle(self, req, b"recv", source, tag, self._name(channel), nbytes, t_post, out,
                      block, finish)

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
            h.t_ready = arrive - MPI.Wtime() + h.comm.clock()
        if not nbytes:
            return
        if out.is_cuda:
            _bytes(out).copy_(block.tensor[:nbytes])
        else:
            ctypes.memmove(out.data_ptr(), block.ptr, nbytes)
    return finish
