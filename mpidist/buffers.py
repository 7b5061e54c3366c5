"""Flat buffers: one contiguous block of memory per message, allocated once.

What :mod:`mpidist.comm` sends and receives lives here (DESIGN.md, "Performance"):
:func:`aligned_empty` allocates 2 MiB-aligned CPU buffers advised onto huge pages;
:func:`flatten`/:func:`unflatten` pack tensors into one buffer and view them back out;
:class:`FlatParams` makes a model's parameters and gradients views into one persistent buffer each,
so that exchanging them copies nothing; :class:`BufferPool` recycles the byte buffers (snapshots,
staging) that handles own while a message is in flight. No MPI here.
"""
from __future__ import annotations

import mmap

import torch

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
