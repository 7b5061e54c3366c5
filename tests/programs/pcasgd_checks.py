"""Multi-rank checks of mpidist.pcasgd's real exchange (mpidist.comm over MPI), one launch:

    timeout 300 mpiexec -n 8 python tests/programs/pcasgd_checks.py --trace-dir DIR

Every rank is one agent on a quadratic objective (tests/programs/pcasgd_reference.py); it runs
mpidist.pcasgd.Agent over the real communicator (nonblocking sends, receives posted ahead, the
delay emulated by its mailboxes) and compares its own trajectory, step by step, with the blocking
single-process reference that every rank computes for all agents. Rank 0 prints one line per check,
``PASS <name>`` or ``FAIL <name>: <why>``, which tests/*/test_pcasgd.py parses.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pcasgd_reference import Quadratic, dsgd_closed_form, reference  # noqa: E402

from mpidist import runtime, topology  # noqa: E402
from mpidist.pcasgd import Agent, get_variant  # noqa: E402

import checks  # noqa: E402


def run_agent(run, topo, variant, lam, lr, q, steps, momentum=0.0):
    """This rank's trajectory [steps + 1, dim] under the real exchange, and its metrics."""
    i, comm = run.rank, run.comm
    recs = []
    ag = Agent(comm, topo, i, variant, lam, steps, q.x0.size, torch.float64, "cpu", momentum,
               metric=lambda t, name, v: recs.append((t, name, v)))
    x = torch.tensor(q.x0, dtype=torch.float64)
    traj = [x.numpy().copy()]
    ag.start(x)
    for t in range(steps):
        g = torch.tensor(q.grad(i, x.numpy()), dtype=torch.float64)
        ag.step(t, x, g, lr)
        traj.append(x.numpy().copy())
        run.step_done(t)
    ag.finish()
    comm.barrier()
    comm.step = 0
    return np.stack(traj), recs


def main() -> None:
    p = runtime.parser("pcasgd-checks", __doc__)
    with runtime.start("pcasgd-checks", p) as run:
        n, i = run.world_size, run.rank
        clusters = (3, n - 3) if n > 3 else (n,)
        results = []

        def report(name, ok, why=""):
            # a check passes only if it passed on every rank
            bad = run.comm.allreduce_scalar(0.0 if ok else 1.0, "max")
            results.append((name, bad == 0.0, why if not ok else ""))
            whys = run.comm.allgather_object(why if not ok else "")
            if run.rank == 0:
                checks.report(name, bad == 0.0, next((w for w in whys if w), ""))

        # 1. tau = 0: every variant is plain decentralized gradient descent (closed form)
        q = Quadratic(n, 6, seed=3, same_curvature=True)
        topo = topology.build(n, clusters, "full", 0, "lazy")
        for name in ("pc", "p", "c", "dasgd"):
            traj, _ = run_agent(run, topo, get_variant(name), 0.5, 0.1, q, 25)
            X = dsgd_closed_form(topo.W, q, 0.1, 25)
            err = float(np.abs(traj[-1] - X[i]).max())
            report(f"tau0_{name}_equals_dsgd_closed_form", err < 1e-10, f"rank {i} error {err:.3g}")

        # 2. delayed exchange against the blocking reference, step by step
        q = Quadratic(n, 6, seed=5)
        cases = [("full", 4, "lazy", "pc", None, 0.0, 20), ("full", 4, "lazy", "p", None, 0.0, 20),
                 ("full", 4, "lazy", "c", None, 0.0, 20),
                 ("full", 4, "lazy", "dasgd", None, 0.0, 20),
                 ("full", 4, "metropolis", "pc", 0.3, 0.0, 20),
                 ("full", 3, "lazy", "pc", None, 0.5, 16), ("ring", 2, "metropolis", "pc", None, 0.0, 14),
                 ("full", 20, "lazy", "pc", None, 0.0, 30), ("full", 20, "lazy", "p", None, 0.0, 30)]
        trajs = {}
        for graph, tau, mixing, name, theta, mom, steps in cases:
            topo = topology.build(n, clusters, graph, tau, mixing)
            v = get_variant(name, theta)
            traj, recs = run_agent(run, topo, v, 0.5, 0.05, q, steps, mom)
            trajs[(graph, tau, name, theta)] = traj
            Xr, thr = reference(topo, v.theta, v.compensate, 0.5, 0.05, q, steps, mom)
            err = float(np.abs(traj - Xr[:, i]).max())
            label = f"{graph}_tau{tau}_{mixing}_{name}" + (f"_theta{theta}" if theta is not None
                                                           else "") + (f"_mom{mom}" if mom else "")
            report(f"{label}_matches_reference", err < 1e-10, f"rank {i} max error {err:.3g}")
            th = [v_ for t, nm, v_ in recs if nm == "theta"]
            report(f"{label}_theta_logged", np.allclose(th, thr[:, i]),
                   f"rank {i} thetas {th} vs {list(thr[:, i])}")
            st_r = {v_ for t, nm, v_ in recs if nm == "staleness_reliable"}
            st_u = sorted({(t, v_) for t, nm, v_ in recs if nm == "staleness_unreliable"})
            has_unrel = bool(topo.unreliable_neighbours(i)) and v.uses_unreliable
            want_u = [(t, tau) for t in range(tau, steps)] if has_unrel else []
            want_r = {1} if topo.reliable_neighbours(i) else set()  # every step's stamp is 1
            ok = st_r == want_r and st_u == want_u
            report(f"{label}_staleness", ok, f"rank {i} reliable {st_r} unreliable {st_u[:3]}...")

        # 3. theta = 1 is P-ASGD and theta = 0 is C-ASGD, step by step, under MPI
        topo = topology.build(n, clusters, "full", 4, "lazy")
        for theta, other in ((1.0, "p"), (0.0, "c")):
            a, _ = run_agent(run, topo, get_variant("pc", theta), 0.5, 0.05, q, 20)
            b, _ = run_agent(run, topo, get_variant(other), 0.5, 0.05, q, 20)
            report(f"theta{theta:g}_equals_{other}_step_by_step", np.array_equal(a, b),
                   f"rank {i} differs by {np.abs(a - b).max():.3g}")
        failed = sum(not ok for _, ok, _ in results)
        run.say(f"{len(results) - failed} passed, {failed} failed")


if __name__ == "__main__":
    main()
    checks.finish()
