"""Single-process tests of the short per-message path of mpidist.comm: persistent requests
(``send_init``/``recv_init``), the handle's fields, the cached MPI views, and the trace rows they
write (self-messages on MPI.COMM_SELF)."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpidist.comm import CommError, Communicator, LinkModel, Persistent, aligned_empty, waitall


class Rows:
    """A trace writer that keeps the rows it is given."""

    def __init__(self):
        self.rows = []

    def comm(self, *row):
        self.rows.append(row)

    def comm_row(self, row):  # what the handles call: the nine values as one tuple
        self.rows.append(row)


@pytest.fixture
def traced():
    rows = Rows()
    ticks = iter(range(1, 1 << 30))
    return Communicator(MPI.COMM_SELF, rows, clock=lambda: float(next(ticks)), timeout=5), rows


def test_persistent_exchange_many_steps(traced):
    comm, rows = traced
    src, dst = torch.zeros(300), torch.zeros(300)
    recv = comm.recv_init(dst, 0, 7, "params")
    send = comm.send_init(src, 0, 7, "params")
    assert isinstance(recv, Persistent) and recv.req is not None  # a real persistent request
    for step in range(5):
        comm.step = step
        src.copy_(torch.arange(300.0) * (step + 1))
        hr, hs = recv.start(), send.start()
        assert waitall([hs, hr])[1] is dst
        assert torch.equal(dst, torch.arange(300.0) * (step + 1))
    assert len(rows.rows) == 10
    # rows in completion order: send then receive of each step; clock ticks once per post/done
    for k, (s, r) in enumerate(zip(rows.rows[0::2], rows.rows[1::2])):
        assert s[:6] == (k, b"send", 0, 7, b"params", 1200) and r[:6] == (k, b"recv", 0, 7,
                                                                          b"params", 1200)
        assert s[6] < s[7] and r[6] < r[7]
    recv.free()
    send.free()
    assert recv.req is None


def test_persistent_start_twice_refused_and_cancel(traced):
    comm, rows = traced
    out = torch.zeros(4)
    recv = comm.recv_init(out, 0, 9, "x")
    h = recv.start()
    with pytest.raises(CommError, match="started again before its previous message completed"):
        recv.start()
    assert h.cancel() is True and h.done and not rows.rows  # nothing arrived, no row
    hs = comm.isend(torch.ones(4), 0, 9, "x")
    h2 = recv.start()
    assert torch.equal(h2.wait(), torch.ones(4)) and hs.wait() is not None
    recv.free()


def test_persistent_falls_back_with_the_link_model():
    comm = Communicator(MPI.COMM_SELF, timeout=5, link=LinkModel(latency=1e-3))
    a, b = torch.full((8,), 3.0), torch.zeros(8)
    recv, send = comm.recv_init(b, 0, 1), comm.send_init(a, 0, 1)
    assert recv.req is None and send.req is None
    hr, hs = recv.start(), send.start()
    waitall([hs, hr])
    assert torch.equal(b, a) and hr.t_done - hs.t_post >= 1e-3 - 1e-6


def test_persistent_refuses_non_contiguous(traced):
    comm, _ = traced
    with pytest.raises(CommError, match="not contiguous"):
        comm.send_init(torch.zeros(4, 4).t(), 0)


def test_handle_fields_come_from_its_row(traced):
    comm, rows = traced
    comm.step = 42
    x = torch.arange(6, dtype=torch.int32)
    out = torch.zeros(6, dtype=torch.int32)
    hr = comm.irecv(out, 0, 3, "ctl")
    hs = comm.isend(x, 0, 3, "ctl")
    assert (hs.step, hs.op, hs.peer, hs.tag, hs.channel, hs.nbytes) == (42, b"send", 0, 3, b"ctl", 24)
    assert not hr.done or hr.mpi_done
    waitall([hs, hr])
    assert hs.done and hr.done and hr.mpi_done and torch.equal(out, x)
    assert rows.rows[-1][:8] == (42, b"recv", 0, 3, b"ctl", 24, hr.t_post, hr.t_done)
    assert rows.rows[-1][8] is hr.t_wait  # NaN, or when the rank began to wait for it
    assert "recv with peer 0 (tag 3, channel 'ctl', step 42)" in hr.describe()
    h = comm.irecv(out, 0, 3, "ctl")
    h.step = 50  # restamped before completion: the row carries the new step
    waitall([comm.isend(x, 0, 3, "ctl"), h])
    assert rows.rows[-1][:2] == (50, b"recv") and h.step == 50


def test_views_follow_reused_and_new_memory(traced):
    """The MPI views are remembered by (address, size): new tensors at a freed address, and
    tensors of another size at the same address, still move their own bytes."""
    comm, _ = traced
    for n in (1, 5, 5, 1000, 5, 300000):
        for _ in range(3):
            a = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32))
            b = torch.empty(n)
            waitall([comm.irecv(b, 0, 2), comm.isend(a, 0, 2, snapshot=False)])
            assert torch.equal(a, b)
            del a, b
    big = aligned_empty(1 << 20)
    first = big[: 1 << 10]
    whole = torch.empty(1 << 20)
    big.copy_(torch.arange(1 << 20, dtype=torch.float32))
    waitall([comm.irecv(whole, 0, 4), comm.isend(big, 0, 4, snapshot=False)])
    part = torch.empty(1 << 10)
    waitall([comm.irecv(part, 0, 4), comm.isend(first, 0, 4, snapshot=False)])  # same address
    assert torch.equal(whole, big) and torch.equal(part, big[: 1 << 10])


def test_snapshot_send_reuses_pooled_blocks(traced):
    comm, _ = traced
    a, b = torch.full((256,), 1.0), torch.zeros(256)
    for k in range(4):
        hr = comm.irecv(b, 0, 5)
        hs = comm.isend(a, 0, 5)  # snapshot: a may change at once
        a.fill_(-1.0)
        waitall([hs, hr])
        assert torch.all(b == (1.0 if k == 0 else float(k + 1)))
        a.fill_(float(k + 2))
    assert len(comm.pool._free[(1024, "cpu", False)]) == 1  # one block, reused


def test_empty_tensors_are_sent_received_and_reduced():
    """A 0-element tensor travels like any other (it once met a read-only MPI buffer)."""
    import torch
    from mpi4py import MPI
    from mpidist.comm import Communicator
    c = Communicator(MPI.COMM_WORLD, None, None, None, 10.0, False)
    got = torch.empty(0)
    r = c.irecv(got, 0, 77, "x")
    c.isend(torch.empty(0), 0, 77, "x").wait()
    r.wait()
    assert got.numel() == 0
    assert c.iallreduce(torch.empty(0), "sum", "x").wait().numel() == 0


def test_an_emulated_delay_past_the_deadline_times_out():
    """--link-latency longer than the wait's deadline: CommTimeout after the deadline, not a
    sleep for the whole emulated delay (issue 16)."""
    import time
    import pytest
    import torch
    from mpi4py import MPI
    from mpidist.comm import CommTimeout, Communicator, LinkModel
    t0 = time.monotonic()
    c = Communicator(MPI.COMM_WORLD, None, lambda: time.monotonic() - t0, LinkModel(30.0, 0.0),
                     0.3, False)
    got = torch.zeros(4)
    r = c.irecv(got, 0, 78, "x")
    c.isend(torch.ones(4), 0, 78, "x").wait()
    start = time.monotonic()
    with pytest.raises(CommTimeout, match="timed out after 0.3 s .*emulated link delivers it"):
        r.wait()
    assert time.monotonic() - start < 25      # not the 30 s of the emulated latency
    fast = Communicator(MPI.COMM_WORLD, None, lambda: time.monotonic() - t0, LinkModel(0.05, 0.0),
                        5.0, False)
    r = fast.irecv(got, 0, 79, "x")
    fast.isend(torch.ones(4), 0, 79, "x").wait()
    r.wait()                                   # within the deadline: delivered after the latency
    assert torch.equal(got, torch.ones(4))


def test_an_mpi_error_in_a_wait_names_the_peer():
    """A peer killed with -9 makes MPI raise ("Other MPI error ... process_vm_readv failed"); the
    wait says which rank is gone (issue 16)."""
    import pytest
    import torch
    from mpi4py import MPI
    from mpidist.comm import CommError, Communicator
    from mpidist.handles import Handle

    class Broken:                                   # a request whose peer vanished
        def Test(self):
            raise MPI.Exception(MPI.ERR_OTHER)

    c = Communicator(MPI.COMM_WORLD, None, None, None, 5.0, False)
    h = Handle(c, Broken(), b"recv", 3, 11, b"params", 16, 0.0, torch.zeros(4))
    with pytest.raises(CommError, match=r"rank 0: recv with peer 3 \(tag 11, channel 'params', "
                                        r"step 0\) failed: rank 3 is gone or unreachable \(MPI: "):
        h.wait()


def test_posted_handle_is_the_class_made_one(traced):
    """The CPU path's handles (``posted``) have every field ``Handle(...)`` gives, and behave
    alike: the same row, result and (NaN) t_wait."""
    from mpidist.handles import Handle, posted
    comm, rows = traced
    out = torch.zeros(3)
    row = (7, b"recv", 0, 9, b"p", 12, 0.25)
    a = Handle(comm, MPI.REQUEST_NULL, *row[1:], out, step=7)
    b = posted(comm, MPI.REQUEST_NULL, row, out)
    for f in Handle.__slots__:
        va, vb = getattr(a, f), getattr(b, f)
        assert va is vb or va == vb or (va != va and vb != vb), f  # (t_wait: NaN in both)
    assert a.wait() is out and b.wait() is out
    assert rows.rows[0][:7] == rows.rows[1][:7] == row
    assert rows.rows[0][8] != rows.rows[0][8] and rows.rows[1][8] != rows.rows[1][8]


def test_rows_recorded_between_flushes_are_packed_at_the_flush(tmp_path):
    """The writer keeps the handles' rows as they are and packs them at the flush: values and
    order as recorded, a row that does not fit dropped and counted, a full buffer flushed."""
    import math

    from mpidist.trace import TraceWriter, read_rank
    p = str(tmp_path / "rank0.h5")
    w = TraceWriter(p, {"rank": 0}, clock=lambda: 0.0, capacity=8)
    want = [(s, b"send" if s % 2 else b"recv", s % 3, 40 + s, b"params", 100 * s, s / 8,
             s / 8 + 0.01, math.nan if s % 2 else s / 8 + 0.005) for s in range(20)]
    for r in want[:10]:
        w.comm_row(r)
    assert len(read_rank(p).comm) == 8  # the eighth row filled the buffer: flushed
    w.comm_row((10, b"send", 1))  # does not fit the row type
    for r in want[10:]:
        w.comm_row(r)
    w.close()
    t = read_rank(p)
    assert t.attrs["dropped_comm_rows"] == 1
    got = [tuple(x.item() if hasattr(x, "item") else x for x in r) for r in t.comm.tolist()]
    assert len(got) == 20
    for g, r in zip(got, want):
        assert g[:8] == r[:8] and (g[8] == r[8] or (math.isnan(g[8]) and math.isnan(r[8])))
