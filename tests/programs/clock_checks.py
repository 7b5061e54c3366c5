"""Multi-rank checks of mpidist.clock (clock alignment) and of the link model on skewed clocks, run
under mpiexec by tests/mpi/test_clock.py with ``MPIDIST_TEST_CLOCK_SKEW`` set.

On one node MPI_Wtime is one clock for all ranks, so each rank knows the true injected error of its
clock at any instant (``skew(W) = offset + rate * (W - ref)``) and the expected offset to rank 0 in
closed form; the estimate must recover it within its own uncertainty. Rank 0 prints the lines.
"""
import os
import sys

import numpy as np
import torch
from mpi4py import MPI

from mpidist import clock as clk
from mpidist.comm import Communicator, LinkModel

import checks

world = MPI.COMM_WORLD
r, n = world.Get_rank(), world.Get_size()
skews = clk.parse_skew(os.environ.get(clk.SKEW_ENV, ""))
rc = clk.RunClock(world, r, timeout=60)
off, ppm = skews.get(r, (0.0, 0.0))
rate = ppm * 1e-6
ref = getattr(rc.raw, "skew", (0.0, 0.0, 0.0))[2]   # the Wtime this rank's clock drifts from
params = world.allgather((off, rate, ref))


def true_skew(rank, w):
    o, a, ref_ = params[rank]
    return o + a * (w - ref_)


def true_w(raw_value):
    """The MPI_Wtime at which this rank's raw clock read ``raw_value``."""
    return (raw_value - off + rate * ref) / (1 + rate)


def say(name, ok, why=""):
    oks = world.gather((ok, why), root=0)
    if r == 0:
        bad = [f"rank {i}: {w}" for i, (o, w) in enumerate(oks) if not o]
        checks.report(name, not bad, "; ".join(bad))


# 1. estimates against the closed form, three times (each a fresh collective)
results = []
for k in range(3):
    o, u, mid = clk.estimate(rc.comm, rc.raw, rc.how, timeout=60)
    w = true_w(mid)
    want = true_skew(r, w) - true_skew(0, w)
    slack = 1e-9 + 2 * (abs(rate) + abs(params[0][1])) * max(u, 1e-6)  # drift during the trip
    ok = abs(o - want) <= u + slack and u >= 0 and np.isfinite(o)
    results.append((ok, f"estimate {k}: offset {o:.9f} s, want {want:.9f} s, uncertainty {u:.2e} s"))
ok = all(x[0] for x in results)
say("offset recovered within its uncertainty", ok, "; ".join(x[1] for x in results if not x[0]))
if r == 0:
    print(f"method {rc.how}")
rows = world.gather(results[-1][1], root=0)
if r == 0:
    for i, row in enumerate(rows):
        print(f"rank {i}: {row}")
say("method is ping-pong with an injected skew", rc.how == "ping-pong", rc.how)

# 2. the run's clock: t = 0 agreed, every rank on rank 0's clock at the start
clock = rc.start(lambda t: (world.bcast(t), 0.0))
u0 = rc.start_estimate["uncertainty"]
w_start = true_w(rc.start_estimate["t"] + rc.t0)
max_rate = max(abs(p[1]) for p in params)


def drift_slack():
    """How far two ranks' clocks can have drifted apart since the start estimate."""
    return 2 * max_rate * (MPI.Wtime() - w_start) + 1e-6


world.Barrier()
# bracket the clock read by two Wtime reads: a rank descheduled between reads (a busy machine) then
# widens its bracket instead of failing the check
w1 = MPI.Wtime()
here = clock()
w2 = MPI.Wtime()
times = world.allgather((here, w1, w2))
# rank 0's clock read h0 at an instant in [a0, b0]; this rank read ``here`` at an instant in
# [w1, w2]; what rank 0's clock read at this rank's instant lies in h0 + (1 + rate0) * [w1 - b0,
# w2 - a0] (one Wtime for all ranks on one node)
h0, a0, b0 = times[0]
lo = h0 + (1 + params[0][1]) * (w1 - b0)
hi = h0 + (1 + params[0][1]) * (w2 - a0)
tol = u0 + drift_slack()
say("trace clock on rank 0's clock at the start (within the estimate)",
    lo - tol <= here <= hi + tol,
    f"{here:.9f} vs rank 0's [{lo:.9f}, {hi:.9f}], uncertainty {u0:.2e}")

# 3. the link model on skewed clocks: a message of latency L arrives L after it was sent, on the
#    aligned clock, in both directions between rank 0 and every other rank
L = 0.25
comm = Communicator(world, None, clock, LinkModel(L, 0.0), timeout=30)
x = torch.zeros(16)
bad = []
for peer in range(1, n):
    for src, dst in ((0, peer), (peer, 0)):
        world.Barrier()
        if r == src:
            t_post = clock()
            comm.isend(x, dst, 7).wait()
            world.send(t_post, dst, 8)
        elif r == dst:
            start_raw = rc.raw()
            comm.irecv(x, src, 7).wait()
            t_done, waited = clock(), rc.raw() - start_raw
            t_post = world.recv(source=src, tag=8)
            delay = t_done - t_post
            # lower bound: the link's latency, less the two ranks' start uncertainties; upper
            # bound: generous (a loaded machine), far below the injected offsets of seconds
            if not (L - 2 * u0 - drift_slack() <= delay <= L + 1.0):
                bad.append(f"{src}->{dst}: delay {delay:.6f} s on the aligned clock, link {L} s")
            if not (waited >= L - 2 * u0 - drift_slack() - 0.05):
                bad.append(f"{src}->{dst}: the receiver waited {waited:.6f} s")
say("link model: arrival = post + latency on the aligned clock", not bad, "; ".join(bad))

# 4. the end estimate and the drift it gives
rc.finish(None)
o_e, u_e, mid_e = clk.estimate(rc.comm, rc.raw, rc.how, timeout=60)
attrs = {"clock_start": rc.start_estimate, "clock_end": clk.record(o_e, u_e, mid_e - rc.t0)}
d = clk.drift(attrs)
span = attrs["clock_end"]["t"] - attrs["clock_start"]["t"]
want = (rate - params[0][1]) / (1 + rate)
tol = (u0 + u_e) / span + 1e-9
say("drift between the estimates = the injected drift difference", abs(d - want) <= tol,
    f"{d * 1e6:.3f} ppm vs {want * 1e6:.3f} ppm, tolerance {tol * 1e6:.3f} ppm")
sys.stdout.flush()
world.Barrier()
checks.finish()
