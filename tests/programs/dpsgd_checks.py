"""Multi-rank checks of mpidist.dpsgd's real exchange (mpidist.comm over MPI), one launch:

    timeout 300 mpiexec -n 6 python tests/programs/dpsgd_checks.py --trace-dir DIR

Every rank is one worker on the quadratic f_i(x) = 0.5 ||x - c_i||^2 (gradient x - c_i) with
rank-valued c_i and x_{0,i}, in float64. It runs mpidist.dpsgd.Worker (nonblocking neighbour
exchange on channel "params", gradient computed while the models fly, then the mix) and compares
its own model after every iteration with the closed form X_{k+1} = W X_k - eta G(X_k), which every
rank computes for all workers from topology's W. Then pure mixing (eta = 0) from W's slowest mode:
the consensus distance, measured through the exchange's allreduce (channel "eval"), must shrink by
exactly W's second largest eigenvalue modulus every iteration. Rank 0 prints one line per check,
``PASS <name>`` or ``FAIL <name>: <why>``, which tests/*/test_dpsgd.py parses.
"""
from __future__ import annotations

import numpy as np
import torch

from mpidist import cli, runtime, topology
from mpidist.dpsgd import Worker, consensus, mix_step, mixing_rate, slowest_mode

import checks

DIM, STEPS, ETA = 6, 4, 0.3
CASES = [(g, m) for g in ("ring", "full", "exponential") for m in ("metropolis", "lazy")]


def centres(n: int) -> np.ndarray:
    """c_i: rank-valued, distinct in every coordinate."""
    return np.array([[(i + 1) * (k + 1) + 0.25 * k for k in range(DIM)] for i in range(n)],
                    dtype=np.float64)


def start_points(n: int) -> np.ndarray:
    """x_{0,i}: rank-valued and different per worker (the closed form holds for any X_0)."""
    return np.array([[i - 2.0 * k + 0.5 ** (i + 1) for k in range(DIM)] for i in range(n)],
                    dtype=np.float64)


class Checks:
    def __init__(self, run):
        self.run, self.k = run, 0

    def step_done(self) -> None:
        self.run.step_done(self.k)    # the trace's step: one per iteration over all checks
        self.k += 1

    def report(self, name: str, ok: bool, why: str = "") -> None:
        """A check passes only if it passed on every rank."""
        c = self.run.comm
        bad = c.allreduce_scalar(0.0 if ok else 1.0, "max")
        whys = c.allgather_object("" if ok else why)
        if self.run.rank == 0:
            checks.report(name, bad == 0.0, next((w for w in whys if w), ""))

    def trajectory(self, topo, X0: np.ndarray, eta: float, grad) -> list[np.ndarray]:
        """This worker's x_0 .. x_STEPS under the real exchange."""
        i, comm = self.run.rank, self.run.comm
        w = Worker(comm, topo, i, DIM, torch.float64)
        x = torch.tensor(X0[i])
        traj = [x.numpy().copy()]
        for _ in range(STEPS):
            w.step(x, lambda: (torch.tensor(grad(i, x.numpy())), None), eta)
            traj.append(x.numpy().copy())
            self.step_done()
        return traj


def main() -> None:
    p = cli.parser("dpsgd-checks", __doc__)
    with runtime.start("dpsgd-checks", p) as run:
        n, i = run.world_size, run.rank
        C = Checks(run)
        c = centres(n)
        grad = lambda j, x: x - c[j]  # noqa: E731

        # 1. one step and STEPS steps of the real exchange = W X - eta G, per graph and mixing
        for graph, mixing in CASES:
            topo = topology.build(n, (n,), graph, 0, mixing)
            X = start_points(n)
            traj = C.trajectory(topo, X, ETA, grad)
            errs = []
            for k in range(STEPS):
                X = mix_step(X, topo.W, X - c, ETA)
                errs.append(float(np.abs(traj[k + 1] - X[i]).max() / max(1.0, np.abs(X[i]).max())))
            C.report(f"one_step_{graph}_{mixing}", errs[0] < 1e-14,
                     f"rank {i}: relative error {errs[0]:.3g} after one step")
            C.report(f"{STEPS}_steps_{graph}_{mixing}", max(errs) < 1e-13,
                     f"rank {i}: relative errors {errs}")

        # 2. pure mixing (eta = 0) from the slowest mode: the consensus distance shrinks by rho
        u = np.linspace(1.0, 2.0, DIM)
        for graph, mixing in (("ring", "metropolis"), ("ring", "lazy"),
                              ("exponential", "lazy"), ("exponential", "metropolis")):
            topo = topology.build(n, (n,), graph, 0, mixing)
            rho = mixing_rate(topo.W)
            X0 = np.outer(slowest_mode(topo.W), u) + 3.0    # + a common offset: x_bar = 3 u^0
            w = Worker(run.comm, topo, i, DIM, torch.float64)
            x = torch.tensor(X0[i])
            zero = torch.zeros(DIM, dtype=torch.float64)
            dists = []
            for k in range(STEPS + 1):
                d, _ = consensus(run.comm, x)
                dists.append(np.sqrt(run.comm.allreduce_scalar(d * d, "sum")))
                if k < STEPS:
                    w.step(x, lambda: (zero, None), 0.0)
                    C.step_done()
            ratios = [dists[k + 1] / dists[k] for k in range(STEPS)]
            C.report(f"contracts_by_rho_{graph}_{mixing}",
                     rho < 1 and all(abs(r - rho) < 1e-9 for r in ratios),
                     f"rho {rho:.12f}, ratios {ratios}")


if __name__ == "__main__":
    main()
    checks.finish()
