"""Single-process tests of mpidist.comm: flattening, FlatParams, handles on self-messages, deadlines,
the link model's arithmetic. (Multi-rank behaviour: test_comm_mpi.py.)"""
import time

import pytest
import torch
from mpi4py import MPI

from mpidist.comm import (BufferPool, CommError, CommTimeout, Communicator, FlatParams, LinkModel,
                          aligned_empty, flatten, unflatten, waitall)


@pytest.fixture
def comm():
    return Communicator(MPI.COMM_SELF, timeout=5)


def test_flatten_unflatten_roundtrip_and_views():
    ts = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    flat = flatten(ts)
    assert flat.shape == (12 + 5 + 8,)
    assert torch.equal(flat[:12], ts[0].reshape(-1)) and torch.equal(flat[17:], ts[2].reshape(-1))
    views = unflatten(flat, ts)
    for v, t in zip(views, ts):
        assert torch.equal(v, t) and v.shape == t.shape
    views[1].fill_(7.0)  # views share the buffer
    assert torch.all(flat[12:17] == 7.0)
    with pytest.raises(ValueError):
        unflatten(flat[:-1], ts)


def test_aligned_empty_is_2mib_aligned_for_large_buffers():
    t = aligned_empty(1 << 20)
    assert t.data_ptr() % (2 << 20) == 0 and t.numel() == 1 << 20 and t.dtype == torch.float32
    t.fill_(3.0)
    assert t.sum().item() == 3.0 * (1 << 20)


def test_flat_params_are_the_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    before = [p.detach().clone() for p in model.parameters()]
    fp = FlatParams(model)
    assert fp.numel == 4 * 3 + 3 + 3 * 2 + 2 and fp.nbytes == fp.numel * 4
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)  # same values after moving into the buffer
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    model(x).pow(2).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(fp.grads, grads)  # backward wrote into the flat gradient buffer
    flat_before = fp.params.clone()
    opt.step()
    assert torch.allclose(fp.params, flat_before - 0.1 * grads)  # the step moved the flat buffer
    fp.params.fill_(0.5)  # and writing the buffer changes the model
    assert all(torch.all(p == 0.5) for p in model.parameters())
    opt.zero_grad(set_to_none=True)
    fp.zero_grad()  # re-attaches the views
    model(x).sum().backward()
    assert fp.grads.abs().sum() > 0


def test_self_exchange_and_snapshot(comm):
    x = torch.arange(10.0)
    out = torch.empty(10)
    hr = comm.irecv(out, 0, 3, "self")
    hs = comm.isend(x, 0, 3, "self")
    x.fill_(-1)  # after posting: the snapshot protects the message
    assert waitall([hr, hs])[0] is out
    assert torch.equal(out, torch.arange(10.0))
    assert hr.test() and hs.test()


def test_non_contiguous_and_bad_dtype_refused(comm):
    with pytest.raises(CommError, match="not contiguous"):
        comm.isend(torch.randn(4, 4).t(), 0, 1, "params")
    with pytest.raises(CommError, match="dtype"):
        comm.iallreduce(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(CommError, match="unknown op"):
        comm.iallreduce(torch.zeros(3), "prod")
    with pytest.raises(CommError, match="torch.Tensor"):
        comm.isend([1, 2], 0)


def test_deadline_names_peer_tag_channel(comm):
    h = comm.irecv(torch.empty(4), 0, 42, "feedback")
    t = time.monotonic()
    with pytest.raises(CommTimeout) as e:
        h.wait(timeout=0.3)
    assert 0.3 <= time.monotonic() - t < 60  # not before the deadline; ends (bound for a busy machine)
    msg = str(e.value)
    assert "peer 0" in msg and "tag 42" in msg and "'feedback'" in msg and "rank 0" in msg
    comm.isend(torch.zeros(4), 0, 42, "feedback").wait()  # let the posted receive finish
    h.wait()


def test_allreduce_on_one_rank_and_avg(comm):
    y = torch.full((5,), 3.0)
    assert torch.equal(comm.iallreduce(y, "avg").wait(), torch.full((5,), 3.0))


def test_link_model_closed_form():
    link = LinkModel(latency=0.001, bandwidth=1e6)
    assert link.enabled and not LinkModel().enabled
    # two messages posted together share the link: the second starts when the first has left
    assert link.send(0.0, 1000) == pytest.approx((0.001, 0.002))
    assert link.send(0.0, 1000) == pytest.approx((0.002, 0.003))
    assert link.send(1.0, 0) == pytest.approx((1.0, 1.001))  # an idle link starts at t_post
    assert link.allreduce(4000, 4) == pytest.approx(2 * 3 * 0.001 + 2 * 3 / 4 * 0.004)
    assert link.allreduce(4000, 1) == 0
    assert link.bcast(1000, 8) == pytest.approx(3 * (0.001 + 0.001))
    with pytest.raises(ValueError):
        LinkModel(-1.0)


def test_link_model_delays_self_message():
    c = Communicator(MPI.COMM_SELF, link=LinkModel(0.05, 1e7), timeout=5)
    out = torch.empty(25000)  # 100 kB: 10 ms on the wire + 50 ms latency
    hr = c.irecv(out, 0, 1, "x")
    hs = c.isend(torch.ones(25000), 0, 1, "x")
    hs.wait()
    assert hs.t_done - hs.t_post >= 0.010 - 1e-4
    assert not hr.test() or hr.t_done - hs.t_post >= 0.06 - 1e-3
    hr.wait()
    assert hr.t_done - hs.t_post >= 0.06 - 1e-3 and torch.all(out == 1)


def test_buffer_pool_reuses():
    pool = BufferPool()
    a = pool.get(1000)
    pool.put(a)
    assert pool.get(1000) is a
    assert pool.get(1000) is not a
