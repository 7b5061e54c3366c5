"""mpidist.pcasgd with a user's own model, data and loss: the command line (``--model blobs:mlp
--data blobs:blobs``), the Python API (:class:`mpidist.pcasgd.PCASGD` around the user's model), and
the bad input of both.

Pure tests (no MPI) drive PCASGD around a float64 model for all 8 agents in one process through
the in-process transport of tests/programs/pcasgd_reference.py and compare it with the blocking reference
there (Eq. 2 as the paper's literal sum); they check checkpoint/resume through state_dict /
load_state_dict, the open-ended plan (no ``steps``) and the API's refusals.

Launches (6): the command line on 4 ranks; the API script (tests/programs/pcasgd_script.py)
on 4 ranks with a checkpoint, then resumed from it in a second job; the open-ended API on 4 ranks;
the example (``python -m mpidist.pcasgd.example``) on 2 ranks; the bad-input cases on 2 ranks in
one launch (tests/programs/pcasgd_bad_input.py), plus one real refused launch on 1 process.

This file holds the checks that need no multi-rank launch; tests/mpi/test_pcasgd_user.py holds the launches."""
from __future__ import annotations
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from mpirun import PROGRAMS, REPO
from pcasgd_reference import LocalComm, LocalNet, Quadratic, _Handle, reference  # noqa: E402

from mpidist import topology
from mpidist.errors import UsageError  # noqa: E402
from mpidist.pcasgd import PCASGD, get_variant  # noqa: E402

USER_MODULES = PROGRAMS
ENV = {"PYTHONPATH": os.pathsep.join([USER_MODULES, REPO])}


# ------------------------------------------------------------------------------ pure: the API

class _CancellableHandle(_Handle):
    def __init__(self, result, queue):
        super().__init__(result)
        self.queue = queue

    def cancel(self):
        if self.done:
            return False
        self.queue.remove(next(e for e in self.queue if e[1] is self))
        self.done = True
        return True


class Comm(LocalComm):
    """The in-process transport with what PCASGD needs besides: the world size, the x_0 broadcast
    (every agent's model is built alike here) and cancellable receives."""

    def __init__(self, net, rank, size):
        super().__init__(net, rank)
        self.size = size

    def ibcast(self, tensor, root=0, channel="bcast"):
        h = _Handle(tensor)
        h.done = True
        return h

    def irecv(self, out, source, tag=0, channel="data"):
        key = (source, self.rank, tag)
        h = _CancellableHandle(out, self.net.recvs[key])
        self.net.recvs[key].append((out, h))
        self.net.log.append(("recv", source, self.rank, tag, channel, self.step))
        self.net._match(key)
        return h


class StubRun:
    def __init__(self, comm, resumed_state=None):
        self.comm, self.resumed_state = comm, resumed_state
        self.metrics = []

    def metric(self, step, name, value):
        self.metrics.append((step, name, value))


class Point(torch.nn.Module):
    """The user's 'model': x itself, float64; the loss below makes its gradient the quadratic's."""

    def __init__(self, x0):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))

    def forward(self):
        return self.x


def quadratic_loss(q: Quadratic, i: int, x: torch.Tensor) -> torch.Tensor:
    """f_i(x) = 1/2 sum a_i (x - c_i)^2: autograd's gradient is a_i (x - c_i)."""
    return 0.5 * (torch.from_numpy(q.a[i]) * (x - torch.from_numpy(q.c[i])) ** 2).sum()


def make_agents(net, topo, q, steps, resumed=None, **kw):
    n = topo.n
    models = [Point(q.x0) for _ in range(n)]
    runs = [StubRun(Comm(net, i, n), resumed) for i in range(n)]
    agents = [PCASGD(runs[i], models[i], steps=steps, delay=topo.tau, clusters=topo.clusters,
                     graph=topo.graph, mixing=topo.mixing, **kw) for i in range(n)]
    return models, agents, runs


def run_steps(models, agents, q, ts, set_to_none=()):
    """Lockstep: every agent's backward then step t. Agents in ``set_to_none`` zero with
    model.zero_grad() (gradients set to None: the agent takes the fresh .grad in)."""
    traj = []
    for t in ts:
        for i, (m, ag) in enumerate(zip(models, agents)):
            ag.comm.step = t
            if i in set_to_none:
                m.zero_grad()
            else:
                ag.zero_grad()
            quadratic_loss(q, i, m()).backward()
            ag.step(t)
        traj.append(np.stack([m.x.detach().numpy().copy() for m in models]))
    return traj


@pytest.mark.parametrize("name,theta,momentum", [("pc", None, 0.0), ("p", None, 0.0),
                                                 ("c", None, 0.0), ("dasgd", None, 0.0),
                                                 ("pc", 0.4, 0.0), ("pc", None, 0.3)])
def test_api_matches_blocking_reference(name, theta, momentum):
    """PCASGD around the user's model (gradients from autograd, half the agents zeroing with
    model.zero_grad()) against the blocking reference, every step, every agent; tau = 3."""
    topo = topology.build(8, (3, 5), "full", 3, "lazy")
    q = Quadratic(8, 5, seed=7)
    T = 16
    net = LocalNet()
    models, agents, runs = make_agents(net, topo, q, T, variant=name, theta=theta, lam=0.5,
                                       lr=0.05, momentum=momentum)
    X = run_steps(models, agents, q, range(T), set_to_none={1, 3, 4, 6})
    for ag in agents:
        ag.finish()
    v = get_variant(name, theta)
    Xr, thr = reference(topo, v.theta, v.compensate, 0.5, 0.05, q, T, momentum)
    assert np.abs(np.stack(X) - Xr[1:]).max() < 1e-12
    th = np.array([[v_ for t, n_, v_ in r.metrics if n_ == "theta"] for r in runs]).T
    assert np.array_equal(th, thr)
    # every model parameter is still a view of the agent's flat buffer
    for m, ag in zip(models, agents):
        assert m.x.data_ptr() == ag.fp.params.data_ptr()
    if name == "c":
        assert all(ag.predicting_share == 0 for ag in agents)


def test_api_resume_and_open_ended_are_exact():
    """state_dict after step c, then fresh agents in a 'resumed run' on a fresh transport continue
    bit for bit; an open-ended plan (steps=None, finish() drains) gives the same parameters."""
    topo = topology.build(8, (3, 5), "full", 4, "lazy")
    q = Quadratic(8, 5, seed=11)
    T, c = 20, 8
    kw = dict(variant="pc", lam=0.5, lr=0.05, momentum=0.3)
    models, agents, _ = make_agents(LocalNet(), topo, q, T, **kw)
    straight = run_steps(models, agents, q, range(T))[-1]
    for ag in agents:
        ag.finish()

    net = LocalNet()
    models, agents, _ = make_agents(net, topo, q, T, **kw)
    run_steps(models, agents, q, range(c + 1))
    states = [ag.state_dict() for ag in agents]
    weights = [m.state_dict() for m in models]
    assert {s["step"] for s in states} == {c}
    for ag in agents:
        ag.finish()                      # stopped early: drained, nothing left posted
    assert not any(net.recvs[k] for k in net.recvs) and not any(net.sends[k] for k in net.sends)

    models, agents, _ = make_agents(LocalNet(), topo, q, T, resumed={"x": 1}, **kw)
    for m, w, ag, s in zip(models, weights, agents, states):
        m.load_state_dict(w)
        ag.load_state_dict(s)
        assert ag.next_step == c + 1
    resumed = run_steps(models, agents, q, range(c + 1, T))[-1]
    for ag in agents:
        ag.finish()
    assert np.array_equal(resumed, straight)

    net = LocalNet()
    models, agents, _ = make_agents(net, topo, q, None, **kw)
    open_ended = run_steps(models, agents, q, range(T))[-1]
    for ag in agents:
        ag.finish()
    assert np.array_equal(open_ended, straight)
    assert not any(net.recvs[k] for k in net.recvs) and not any(net.sends[k] for k in net.sends)


def test_api_refusals():
    topo = topology.build(8, (3, 5), "full", 4, "lazy")
    q = Quadratic(8, 3, seed=1)
    with pytest.raises(UsageError, match="describes 8 agents but the job has 4 ranks"):
        PCASGD(StubRun(Comm(LocalNet(), 0, 4)), Point(q.x0), clusters=(3, 5))
    for bad, words in ((dict(lam=0), "lam must be in"), (dict(lr=-1), "lr must be > 0"),
                       (dict(delay=-2), "delay"), (dict(steps=0), "steps must be"),
                       (dict(variant="xyz"), "known: pc, p, c, dasgd")):
        with pytest.raises(UsageError, match=re.escape(words)):
            PCASGD(StubRun(Comm(LocalNet(), 0, 2)), Point(q.x0), clusters="1,1", **bad)
    with pytest.raises(UsageError, match="no trainable parameters"):
        PCASGD(StubRun(Comm(LocalNet(), 0, 2)), torch.nn.ReLU(), clusters="1,1")
    net = LocalNet()
    models, agents, _ = make_agents(net, topo, q, 20, lr=0.05)
    with pytest.raises(RuntimeError, match="the next step is 0"):
        agents[0].step(3)
    run_steps(models, agents, q, range(11))
    state = agents[0].state_dict()
    with pytest.raises(RuntimeError, match="started a fresh exchange"):
        agents[0].load_state_dict(state)
    fresh = lambda steps, **kw: PCASGD(StubRun(Comm(LocalNet(), 0, 8), {"x": 1}),  # noqa: E731
                                       Point(q.x0), steps=steps, delay=4, clusters=(3, 5), **kw)
    with pytest.raises(RuntimeError, match="call load_state_dict"):
        fresh(20).step(0)
    with pytest.raises(UsageError, match="other settings .*variant 'pc' -> 'c'"):
        fresh(20, variant="c").load_state_dict(state)
    # step 10 of 20 with tau 4: a 14-step plan would not have sent step 10's messages to delayed
    # neighbours (consumed at step 14); a longer plan sent the same ones so far
    with pytest.raises(UsageError, match="after step 10 of a 20-step run cannot continue as a "
                                         "14-step run"):
        fresh(14).load_state_dict(state)
    agent = fresh(30)
    agent.load_state_dict(state)
    assert agent.next_step == 11


def test_bad_input_real_process(tmp_path):
    """One refused launch as a user types it (a plain process, world 1): exit status 2, one line."""
    proc = subprocess.run([sys.executable, "-m", "mpidist.pcasgd", "--clusters", "1", "--model",
                           "blobs:mlp", "--data", "blobs:nope", "--trace-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, **ENV, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mpidist.pcasgd: error: --data blobs:nope: module 'blobs' has no function 'nope'"]
    assert not os.path.exists(tmp_path / "run")
