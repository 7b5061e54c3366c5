"""Flat buffers: one contiguous block of memory per message, allocated once.

What :mod:`mpidist.comm` sends and receives lives here (DESIGN.md, "Performance"):
:func:`aligned_empty` allocates 2 MiB-aligned private CPU memory advised onto transparent huge
pages (:func:`huge_page_bytes`/:func:`anon_huge_pages` say whether the kernel gave them);
:func:`flatten`/:func:`unflatten` pack tensors into one buffer and view them back out;
:class:`FlatParams` makes a model's parameters and gradients views into one persistent buffer each,
so that exchanging them copies nothing; :class:`BufferPool` recycles the byte buffers (snapshots,
staging) that handles own while a message is in flight. No MPI here.
"""
from __future__ import annotations

import mmap
import os

import torch

_ALIGN = 2 << 20      # 2 MiB: one transparent huge page (x86-64, and arm64 with 4 KiB pages)
_HUGE_MIN = 1 << 20   # buffers from 1 MiB up go on huge pages; smaller ones come from torch.empty
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode() -> str:
    """The kernel's transparent huge page setting: "always", "madvise", "never", or "unavailable"
    (no such file: another OS, or a kernel without THP)."""
    try:
        with open(_THP) as f:
            text = f.read()
    except OSError:
        return "unavailable"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def _huge_mapping(nbytes: int):
    """A PRIVATE anonymous mapping of ``nbytes`` rounded up to whole huge pages, plus one huge page
    of slack to align it, advised with MADV_HUGEPAGE; None where the OS refuses the mapping.

    Private, because the kernel gives transparent huge pages to private anonymous memory only
    (``transparent_hugepage/enabled``); a shared anonymous mapping (``mmap.mmap(-1, n)``'s
    default) is shared memory, governed by ``shmem_enabled``, which is ``never`` by default.
    """
    size = -(-nbytes // _ALIGN) * _ALIGN + _ALIGN
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    try:
        m = mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)
    except (OSError, ValueError, OverflowError):
        return None
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and os.environ.get("MPIDIST_HUGE_PAGES", "1") != "0":
        try:
            m.madvise(advice)
        except (OSError, ValueError):
            pass  # refused (THP "never", an old kernel): ordinary pages, still 2 MiB aligned
    return m


def aligned_empty(numel: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An uninitialised 1-D tensor; from 1 MiB up on the CPU, 2 MiB-aligned private memory advised
    onto transparent huge pages (:func:`_huge_mapping`), with ``torch.empty`` as the fallback.

    Huge pages cut the TLB misses of large copies: MPI's shared-memory transfer of a 1-64 MiB
    message between two ranks is 1.6-2.1x as fast from and into them as between naive
    ``torch.empty`` tensors (tools/README.md, "Benchmarks").
    ``MPIDIST_HUGE_PAGES=0`` leaves out the advice (for comparisons). The pages come when first
    touched; :func:`huge_page_bytes` says how many of a tensor's bytes the kernel put on them.
    """
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    nbytes = numel * itemsize
    if nbytes < _HUGE_MIN:
        return torch.empty(numel, dtype=dtype)
    m = _huge_mapping(nbytes)
    if m is None:
        return torch.empty(numel, dtype=dtype)
    raw = torch.frombuffer(m, dtype=torch.uint8)  # the tensor's storage keeps the mapping alive
    offset = (-raw.data_ptr()) % _ALIGN
    return raw[offset: offset + nbytes].view(dtype)


def aligned_zeros(numel: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """:func:`aligned_empty` filled with zeros (which also touches, so faults in, its pages)."""
    return aligned_empty(numel, dtype, device).zero_()


def _smaps_fields(path: str, fields: tuple, address: int | None = None, end: int | None = None
                  ) -> dict:
    """kB fields of ``/proc/self/smaps_rollup`` (the whole process) or, with ``address``, of the
    mappings of ``/proc/self/smaps`` that overlap ``[address, end)`` (``end``: address + 1), summed,
    in bytes; {} where the file is missing. (A range can span several mappings: madvise on part of
    a mapping splits it, as numpy's advice on its large arrays does.)"""
    out, inside = {}, address is None
    end = address + 1 if address is not None and end is None else end
    try:
        with open(path) as f:
            for line in f:
                head = line.split(None, 1)[0] if line.strip() else ""
                if address is not None and "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    if lo >= end:
                        break  # past the range (smaps lists the mappings in address order)
                    inside = lo < end and address < hi
                    continue
                if inside and head.rstrip(":") in fields:
                    key = head.rstrip(":")
                    out[key] = out.get(key, 0) + int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return {}
    return out


def anon_huge_pages() -> int:
    """Bytes of this process's anonymous memory on transparent huge pages (``AnonHugePages`` of
    /proc/self/smaps_rollup); -1 where the OS does not say."""
    return _smaps_fields("/proc/self/smaps_rollup", ("AnonHugePages",)).get("AnonHugePages", -1)


def huge_page_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` on transparent huge pages: ``AnonHugePages`` of every /proc/self/smaps entry
    that ``t``'s bytes overlap, summed, at most ``t``'s size (exact when all of ``t`` is on them;
    else an upper bound, since the kernel merges neighbouring mappings and smaps counts a
    mapping as a whole); -1 where the OS does not say."""
    start = t.data_ptr()
    huge = _smaps_fields("/proc/self/smaps", ("AnonHugePages",), start,
                         start + max(t.nbytes, 1)).get("AnonHugePages", -1)
    return min(huge, t.nbytes)


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
        self._grad_views = (self.grads, unflatten(self.grads, self.tensors))  # zero_grad's check
        for p, v, g in zip(self.tensors, unflatten(self.params, self.tensors), self._grad_views[1]):
            p.data = v
            p.grad = g

    @property
    def nbytes(self) -> int:
        return self.params.numel() * self.params.element_size()

    def zero_grad(self) -> None:
        self.grads.zero_()
        if self._grad_views[0] is not self.grads:   # a subclass put the gradients elsewhere
            self._grad_views = (self.grads, unflatten(self.grads, self.tensors))
        for p, g in zip(self.tensors, self._grad_views[1]):
            pg = p.grad
            if pg is None or pg.data_ptr() != g.data_ptr():
                p.grad = g  # re-attach a grad someone set to None or replaced

    def copy_(self, flat: torch.Tensor) -> None:
        self.params.copy_(flat)


class Block:
    """A pooled byte buffer: ``tensor`` (uint8), its address ``ptr`` and size ``nbytes``;
    ``view`` is free for the user's own view of it, made once (mpidist.comm keeps MPI's there)."""
    __slots__ = ("tensor", "ptr", "nbytes", "key", "view")

    def __init__(self, tensor: torch.Tensor, key):
        self.tensor, self.ptr, self.nbytes, self.key = tensor, tensor.data_ptr(), tensor.numel(), key
        self.view = None


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


def attach_grads(tensors, views) -> None:
    """Make each parameter's ``.grad`` its view of the flat gradient buffer again: a ``.grad`` that
    ``zero_grad(set_to_none=True)`` detached (autograd then made a new one) is copied in and the
    view re-attached; a parameter without a gradient counts as zero."""
    for p, view in zip(tensors, views):
        g = p.grad
        if g is None:
            view.zero_()
        elif g.data_ptr() != view.data_ptr():
            view.copy_(g)
        else:
            continue
        p.grad = view
