"""Message buffers on transparent huge pages (mpidist.buffers): private 2 MiB-aligned memory that
the kernel backs with huge pages (``AnonHugePages`` grows), the fallback where the mapping is
refused, and the buffers mpidist allocates for messages (FlatParams, the buffer pool)."""
import gc
import mmap

import pytest
import torch

from mpidist import buffers
from mpidist.buffers import (BufferPool, FlatParams, aligned_empty, aligned_zeros,
                             anon_huge_pages, huge_page_bytes, thp_mode)

MiB = 1 << 20


def _mapping_of(address: int) -> tuple[str, int]:
    """(permissions, AnonHugePages bytes) of the /proc/self/smaps entry holding ``address``,
    read here independently of mpidist.buffers."""
    perms, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if inside:
                    break
                inside = lo <= address < hi
                perms = parts[1] if inside else None
            elif inside and parts[0] == "AnonHugePages:":
                return perms, int(parts[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def _need_thp():
    mode = thp_mode()
    if mode in ("never", "unavailable"):
        pytest.skip(f"transparent huge pages are '{mode}' on this machine "
                    "(/sys/kernel/mm/transparent_hugepage/enabled): nothing to verify")


def test_large_buffers_are_private_aligned_and_on_huge_pages():
    _need_thp()
    before = anon_huge_pages()
    t = aligned_empty(8 * MiB // 4)  # 8 MiB of float32
    assert t.data_ptr() % (2 * MiB) == 0 and t.numel() == 2 * MiB and t.dtype == torch.float32
    t.fill_(1.5)  # touch: the pages come now
    perms, huge = _mapping_of(t.data_ptr())
    assert perms.endswith("p"), f"mapping {perms}: not private"
    assert huge_page_bytes(t) == 8 * MiB and huge >= 8 * MiB, huge  # every byte of it
    assert anon_huge_pages() - before >= 8 * MiB
    assert t.sum().item() == 1.5 * 2 * MiB


def test_a_shared_mapping_gets_no_huge_pages():
    """Why the buffers are private: the old shared anonymous mapping, advised alike, stays on
    small pages (shared memory follows transparent_hugepage/shmem_enabled, 'never' by default)."""
    _need_thp()
    with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
        if "[never]" not in f.read():
            pytest.skip("shmem_enabled is not 'never' here: shared memory may get huge pages")
    m = mmap.mmap(-1, 8 * MiB)
    m.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(m, dtype=torch.uint8)
    raw.fill_(1)
    assert _mapping_of(raw.data_ptr())[1] == 0
    del raw
    gc.collect()
    m.close()


def test_no_advice_no_huge_pages(monkeypatch):
    if thp_mode() != "madvise":
        pytest.skip(f"THP mode is '{thp_mode()}', not 'madvise': the advice is not what decides")
    monkeypatch.setenv("MPIDIST_HUGE_PAGES", "0")
    t = aligned_zeros(4 * MiB, torch.uint8)
    assert t.data_ptr() % (2 * MiB) == 0 and huge_page_bytes(t) == 0


def test_huge_page_bytes_counts_every_mapping_a_tensor_spans():
    """Advice on part of a private mapping splits it (numpy advises its large arrays so): a
    tensor whose first bytes lie in the unadvised head still has its huge pages counted."""
    if thp_mode() != "madvise":
        pytest.skip(f"THP mode is '{thp_mode()}', not 'madvise': the advice is not what decides")
    m = mmap.mmap(-1, 12 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(m, dtype=torch.uint8)
    head = (-raw.data_ptr()) % (2 * MiB)                  # the advised range starts 2 MiB-aligned,
    if head < 4096:                                       # after an unadvised head of >= 1 page
        head += 2 * MiB
    m.madvise(mmap.MADV_HUGEPAGE, head, 8 * MiB)
    raw.fill_(1)
    first = _mapping_of(raw.data_ptr())[1]
    assert first == 0                                     # the head mapping alone: no huge pages
    assert huge_page_bytes(raw) >= 2 * MiB, huge_page_bytes(raw)
    assert huge_page_bytes(raw[:4096]) == 0               # only the head's mapping
    del raw
    gc.collect()
    m.close()


def test_fallback_when_the_mapping_is_refused(monkeypatch):
    def refuse(*a, **k):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(buffers.mmap, "mmap", refuse)
    t = aligned_empty(3 * MiB // 8, torch.float64)
    assert t.numel() == 3 * MiB // 8 and t.dtype == torch.float64
    t.copy_(torch.arange(t.numel(), dtype=torch.float64))
    assert t.sum().item() == t.numel() * (t.numel() - 1) / 2


def test_small_buffers_come_from_torch_and_sizes_are_exact():
    for numel, dtype in ((0, torch.float32), (1, torch.uint8), (1000, torch.float64),
                         (MiB // 4 - 1, torch.float32), (MiB // 4 + 1, torch.float32),
                         (5 * MiB + 3, torch.uint8)):
        t = aligned_empty(numel, dtype)
        assert t.numel() == numel and t.dtype == dtype and t.is_contiguous()
        if t.nbytes >= MiB:
            assert t.data_ptr() % (2 * MiB) == 0
    z = aligned_zeros(MiB, torch.int32)
    assert int(z.abs().sum()) == 0


def test_the_mapping_lives_as_long_as_a_view_of_it():
    t = aligned_empty(2 * MiB, torch.uint8)
    view = t[MiB:].view(torch.int32)
    del t
    gc.collect()
    view.fill_(7)
    assert int(view.sum()) == 7 * MiB // 4


def test_flat_params_and_pool_use_huge_pages():
    _need_thp()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 10))
    want = [p.detach().clone() for p in model.parameters()]
    fp = FlatParams(model)  # 535,562 floats: 2.04 MiB each for params and grads
    assert fp.params.data_ptr() % (2 * MiB) == 0 and fp.grads.data_ptr() % (2 * MiB) == 0
    assert huge_page_bytes(fp.params) >= 2 * MiB and huge_page_bytes(fp.grads) >= 2 * MiB
    for p, w in zip(model.parameters(), want):
        assert torch.equal(p, w)
    block = BufferPool().get(3 * MiB)
    assert block.ptr % (2 * MiB) == 0 and block.nbytes == 3 * MiB
    block.tensor.fill_(1)
    assert huge_page_bytes(block.tensor) >= 2 * MiB
