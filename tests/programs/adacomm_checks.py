"""Multi-rank checks of mpidist.adacomm, run under mpiexec by tests/*/test_adacomm.py.

Each check prints ``PASS <name>`` or ``FAIL <name>: <why>`` on rank 0 (a check fails when it fails
on any rank). Expected values are in closed form or come from a short single-process reference of
the paper's equations. Works at any world size >= 2.
"""
import os
import shutil
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F
from mpi4py import MPI

from mpidist import adacomm as A
from mpidist import data, models
from mpidist.comm import Communicator
from mpidist.trace import read_run

import checks

torch.set_num_threads(1)
world = MPI.COMM_WORLD
r, m = world.Get_rank(), world.Get_size()
tmp = world.bcast(tempfile.mkdtemp(prefix="mpidist-adacomm-") if r == 0 else None)
t0 = MPI.Wtime()
comm = Communicator(world, None, lambda: MPI.Wtime() - t0, timeout=60)
CHECKS = []


def check(f):
    CHECKS.append(f)
    return f


class Quadratic(torch.nn.Module):
    """f_i(x) = 0.5 ||x - c_i||^2 with c_i = (i + 1) * (1, 2, ..., d): rank-dependent, noise-free."""

    def __init__(self, d=6, x0=0.5):
        super().__init__()
        self.x = torch.nn.Parameter(torch.full((d,), x0))

    @staticmethod
    def target(i, d=6):
        return (i + 1) * torch.arange(1, d + 1, dtype=torch.float32)

    def loss(self, i):
        return 0.5 * ((self.x - self.target(i, self.x.numel())) ** 2).sum()


def gather(t: torch.Tensor) -> np.ndarray:
    return np.stack(world.allgather(t.detach().numpy().copy()))


def quadratic_wrapper(method, tau, lr, momentum=0.0, beta=0.0, clock=None, interval=1e9,
                      window=4, torch_sgd=False):
    model = Quadratic()
    state = A.FlatState(model)
    sched = A.CommSchedule(method, tau, interval, lr)
    if torch_sgd:  # the wrapper takes any torch optimizer too
        base = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        base = A.FlatSGD(state, lr, momentum)
    ex = A.GradientAverager(comm, state) if method == "sync" else A.ModelAverager(comm, state, beta)
    opt = A.PeriodicAveragingSGD(base, state, ex, sched, clock or comm.clock, window,
                                 restart_momentum=method != "sync")
    return model, state, opt


def local_step(model, state, opt, step):
    state.zero_grad()
    loss = model.loss(r)
    loss.backward()
    return opt.step(loss, step)


# --------------------------------------------------------------------------------- checks

@check
def identical_after_averaging_and_closed_form():
    """PASGD (Eq. 1), plain local SGD, tau = 3: after k local steps from the common x,
    x_i = c_i + (1-eta)^k (x - c_i) (ranks differ); at an averaging step every rank holds
    c_bar + (1-eta)^tau (x - c_bar), bit for bit the same."""
    tau, eta = 3, 0.1
    model, state, opt = quadratic_wrapper("pasgd", tau, eta)
    c = [Quadratic.target(i) for i in range(m)]
    c_bar = sum(c) / m
    x_common = model.x.detach().clone()
    for k in range(1, 4 * tau + 1):
        rep = local_step(model, state, opt, k)
        xs = gather(model.x)
        j = (k - 1) % tau + 1  # local steps since the last averaging
        if k % tau == 0:
            assert rep is not None, f"no averaging at step {k}"
            assert all(np.array_equal(xs[0], xi) for xi in xs), f"ranks differ after averaging {k}"
            want = c_bar + (1 - eta) ** tau * (x_common - c_bar)
            assert np.allclose(xs[0], want.numpy(), rtol=1e-5, atol=1e-5), (k, xs[0], want)
            x_common = torch.from_numpy(xs[0].copy())
        else:
            assert rep is None, f"averaged at step {k}"
            assert not np.array_equal(xs[0], xs[1]), f"ranks identical between averagings ({k})"
            for i in range(m):
                want = c[i] + (1 - eta) ** j * (x_common - c[i])
                assert np.allclose(xs[i], want.numpy(), rtol=1e-5, atol=1e-5), (k, i, xs[i], want)


def _digits_setup(seed=0):
    ds = data.load("digits")
    shard = data.Shard(ds, r, m, 16, seed)
    torch.manual_seed(123)  # the same initial model on every rank
    model = models.build("cnn", ds.shape, 10)
    return model, shard


def _run_real(method, momentum, beta, wd, steps):
    model, shard = _digits_setup()
    state = A.FlatState(model)
    sched = A.CommSchedule(method, 1, 1e9, 0.05)
    base = A.FlatSGD(state, 0.05, momentum, wd)
    ex = A.GradientAverager(comm, state) if method == "sync" else A.ModelAverager(comm, state, beta)
    opt = A.PeriodicAveragingSGD(base, state, ex, sched, comm.clock, 5,
                                 restart_momentum=method != "sync")
    out = []
    for k in range(steps):
        x, y = shard.next()
        state.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        rep = opt.step(loss, k + 1)
        assert rep is not None
        out.append(state.params.clone())
    return out


@check
def pasgd_tau1_equals_sync():
    """PASGD with tau = 1 (parameters averaged after every local step) gives the parameters of
    fully synchronous SGD (gradients averaged, then one step), step by step: plain SGD with weight
    decay, and local momentum + block momentum beta = 0.9 against synchronous momentum 0.9."""
    for mom_sync, mom_local, beta in ((0.0, 0.0, 0.0), (0.9, 0.9, 0.9)):
        a = _run_real("sync", mom_sync, 0.0, 5e-4, 8)
        b = _run_real("pasgd", mom_local, beta, 5e-4, 8)
        for k, (pa, pb) in enumerate(zip(a, b)):
            err = (pa - pb).abs().max().item()
            scale = pa.abs().max().item()
            assert err <= 1e-5 * max(1.0, scale), f"momentum {mom_sync}: step {k + 1} differs {err}"
        last = gather(b[-1])
        assert all(np.array_equal(last[0], xi) for xi in last), "ranks differ"


def block_momentum_reference(tau, eta, beta, mu, periods, d=6, x0=0.5):
    """Eqs. (7)-(8) for m workers in one process: local (momentum mu, restarted each period) SGD,
    G_j = (1/m) sum_i sum_k (the local step directions; with mu = 0 the gradients g(x^(i))),
    u_j = beta u_{j-1} + G_j, x_{(j+1)tau+1} = x_{j tau+1} - eta u_j."""
    x = np.full(d, x0, dtype=np.float64)
    u = np.zeros(d)
    c = [Quadratic.target(i, d).double().numpy() for i in range(m)]
    out = []
    for _ in range(periods):
        G = np.zeros(d)
        for i in range(m):
            xi, v = x.copy(), np.zeros(d)
            for k in range(tau):
                g = xi - c[i]
                v = mu * v + g if k > 0 else g
                G += v
                xi = xi - eta * v
        G /= m
        u = beta * u + G           # Eq. (7)
        x = x - eta * u            # Eq. (8)
        out.append(x.copy())
    return out


@check
def block_momentum_matches_eqs_7_8():
    """ModelAverager with beta_glob = 0.3 after tau = 4 local steps, 5 periods, against the
    single-process reference of Eqs. (7)-(8): plain local SGD, then local momentum 0.9 (with
    FlatSGD and with torch.optim.SGD as the wrapped local optimizer)."""
    tau, eta, beta, periods = 4, 0.05, 0.3, 5
    for mu, torch_sgd in ((0.0, False), (0.9, False), (0.9, True)):
        model, state, opt = quadratic_wrapper("pasgd", tau, eta, momentum=mu, beta=beta,
                                              torch_sgd=torch_sgd)
        ref = block_momentum_reference(tau, eta, beta, mu, periods)
        k = 0
        for j in range(periods):
            for _ in range(tau):
                k += 1
                rep = local_step(model, state, opt, k)
            assert rep is not None
            got = model.x.detach().double().numpy()
            assert np.allclose(got, ref[j], rtol=1e-5, atol=1e-4), (mu, torch_sgd, j, got, ref[j])
        xs = gather(model.x)
        assert all(np.array_equal(xs[0], xi) for xi in xs), "ranks differ"


@check
def ranks_agree_although_clocks_differ():
    """AdaComm with T0 = 30 ms while every rank's clock runs at its own rate and offset and ranks
    work at different speeds: the interval boundaries, taus and losses every rank decided are
    identical (they come from the averaged loss and time), and tau never grows."""
    skew = 1.0 + 0.6 * r
    world.Barrier()
    start = MPI.Wtime()

    def clock():
        return (MPI.Wtime() - start) * skew + 0.05 * r

    model, state, opt = quadratic_wrapper("adacomm", 16, 0.02, clock=clock, interval=0.08)
    for k in range(1, 400):
        local_step(model, state, opt, k)
        time.sleep(0.0002 * (r + 1))
    opt.average(400)
    hist = [repr((h.index, h.step, h.time, h.F, h.tau, h.lr)) for h in opt.schedule.history]
    alls = world.allgather(hist)
    for i, h in enumerate(alls):
        diff = [(a, b) for a, b in zip(h, alls[0]) if a != b]
        assert len(h) == len(alls[0]) and not diff, \
            f"rank {i} decided differently from rank 0: {len(h)} vs {len(alls[0])} intervals, " \
            f"first difference {diff[:1]}"
    taus = [h.tau for h in opt.schedule.history]
    assert len(hist) >= 3, f"only {len(hist)} intervals"
    assert all(b <= a for a, b in zip(taus, taus[1:])), taus
    assert taus[-1] < taus[0], taus


def _main_run(name, *args):
    d = os.path.join(tmp, name)
    A.main(["--trace-dir", d, "--quiet", *args])
    world.Barrier()
    return read_run(d)


@check
def sync_run_averages_gradients_every_step():
    """--method sync: one allreduce of the gradients (+4 control slots) per step, channel grads;
    every rank logs the same losses and times."""
    run = _main_run("sync", "--method", "sync", "--steps", "12", "--model", "mlp")
    n = sum(p.numel() for p in models.build("mlp", (1, 16, 16), 10).parameters())
    for rt in run.ranks:
        g = rt.comm[rt.comm["channel"] == b"grads"]
        assert len(g) == 12, f"rank {rt.rank}: {len(g)} gradient allreduces"
        assert set(g["nbytes"]) == {4 * (n + 4)}, set(g["nbytes"])
        assert not (rt.comm["channel"] == b"params").any()
    ref = run.ranks[0].metric("train_loss")[2]
    assert len(ref) == 12
    for rt in run.ranks[1:]:
        assert np.array_equal(rt.metric("train_loss")[2], ref)
        assert np.array_equal(rt.metric("train_time")[2], run.ranks[0].metric("train_time")[2])


@check
def pasgd_run_averages_every_tau():
    """--method pasgd --tau 5 for 23 steps: averagings after steps 5, 10, 15, 20 and a final one
    after 23, each one allreduce of parameters + 4 control slots; tau logged as 5."""
    run = _main_run("pasgd", "--method", "pasgd", "--tau", "5", "--steps", "23", "--model", "mlp")
    for rt in run.ranks:
        p = rt.comm[rt.comm["channel"] == b"params"]
        assert list(p["step"]) == [4, 9, 14, 19, 23], list(p["step"])  # 0-based step index
        steps, _, loss = rt.metric("train_loss")
        assert list(steps) == [4, 9, 14, 19, 23], list(steps)
        assert set(rt.metric("tau")[2]) == {5.0}


@check
def tau0_grid_search_agrees():
    """--tau0 auto: every candidate of the grid is tried, all ranks log the same trial results
    and pick the same tau0, which is the best loss decrease per second among them."""
    run = _main_run("auto", "--tau0", "auto", "--tau0-grid", "1,4,8", "--tau0-search-epochs", "1",
                    "--steps", "16", "--model", "mlp")
    rows = [tuple(rt.metric(nm)[2].tolist() for nm in ("search_tau", "search_F", "search_rate"))
            for rt in run.ranks]
    assert all(x == rows[0] for x in rows), rows
    taus, _, rates = rows[0]
    assert taus == [1.0, 4.0, 8.0], taus
    tau0 = run.ranks[0].metric("tau0")[2]
    assert len(tau0) == 1 and tau0[0] == taus[int(np.argmax(rates))], (tau0, rates)


@check
def stop_signal_is_agreed():
    """A stop signal on the last rank only, after local step 9: every rank learns it at the same
    averaging (step index 11 with tau = 4) from the control slots, not before."""
    model, state, opt = quadratic_wrapper("pasgd", 4, 0.05)
    opt.stop_flag = lambda: 2.0 * 10 * (r == m - 1 and k >= 9)  # Run.stop_code of SIGUSR1
    stops = []
    for k in range(16):
        rep = local_step(model, state, opt, k)
        if rep is not None:
            stops.append((k, rep.stop))
    assert stops == [(3, False), (7, False), (11, True), (15, True)], stops


@check
def resume_continues_bit_for_bit():
    """--checkpoint-every 8: a PASGD run (local momentum 0.9, block momentum 0.3) of 16 steps,
    resumed with --resume to 24 steps, logs the same losses and ends with the same model (same
    final training loss, bit for bit) as an uninterrupted 24-step run."""
    common = ["--method", "pasgd", "--tau", "4", "--model", "mlp", "--checkpoint-every", "8"]
    full = _main_run("full", *common, "--steps", "24")
    _main_run("part", *common, "--steps", "16")
    d = os.path.join(tmp, "part")
    A.main(["--trace-dir", d, "--quiet", "--resume", d, *common, "--steps", "24"])
    world.Barrier()
    resumed = read_run(d)
    for a, b in zip(full.ranks, resumed.ranks):
        sa, _, la = a.metric("train_loss")
        sb, _, lb = b.metric("train_loss")
        assert list(sa) == list(sb) == [3, 7, 11, 15, 19, 23], (list(sa), list(sb))
        assert np.array_equal(la, lb), (la, lb)
        fa, fb = a.metric("final_train_loss")[2], b.metric("final_train_loss")[2]
        assert len(fa) == len(fb) == 1 and fa[0] == fb[0], (fa, fb)
        assert list(b.metric("checkpoint")[2]) == [7, 15, 23], b.metric("checkpoint")[2]


# --------------------------------------------------------------------------------- driver

for f in CHECKS:
    err = ""
    try:
        f()
    except Exception as e:  # noqa: BLE001 - every failure becomes one FAIL line
        err = f"{type(e).__name__}: {e}"[:600]
        if os.environ.get("ADACOMM_CHECKS_TRACEBACK"):
            traceback.print_exc()
    errs = [e for e in world.allgather(err) if e]
    if r == 0:
        checks.report(f.__name__, not errs, errs[0] if errs else "")
    world.Barrier()
if r == 0:
    shutil.rmtree(tmp, ignore_errors=True)  # every rank is past its last check (the barrier)
checks.finish()
