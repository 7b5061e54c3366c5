"""DADA's discriminator exchange as one allreduce (mpidist.dada.DiscExchange) against the reference
it replaced: every rank sends its D-sized payload to every other rank (traced isend/irecv) and
averages all of them in rank order (mpidist.dada.rank_order_mean).

    timeout 300 mpiexec -n 4 python tests/programs/dada_allreduce_checks.py

Payloads of D's size (ADDA's discriminator, 501,501 float32) and of 1, 2 and 1001 elements, with
values spread over seven orders of magnitude so that the order of the additions shows in the bits.
Checks, printed by rank 0 as PASS/FAIL lines (exit 1 on any FAIL):

- ``same_bits_on_every_rank``: the allreduce's mean has one hash on every rank;
- ``equals_all_to_all_reference``: bitwise with two ranks (a + b = b + a), to float tolerance
  (n ulps of the largest |part|) with more, and so is the float64 mean;
- ``counters``: syncs and bytes as the exchange reports them (D's size per exchange); the payload
  is overwritten right after each post (the exchange copies it), which the reference check sees;
- ``trace_one_allreduce_per_exchange``: the trace holds exactly one ``allreduce`` row of the
  payload's size per exchange on the channel, stamped with the step, and no point-to-point row.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np
import torch
from mpi4py import MPI

from mpidist import dada
from mpidist.comm import Communicator, aligned_empty
from mpidist.trace import TraceWriter, read_rank

import checks

world = MPI.COMM_WORLD
r, n = world.Get_rank(), world.Get_size()
tmp = world.bcast(tempfile.mkdtemp(prefix="mpidist-dada-allreduce-") if r == 0 else None)
t0 = world.bcast(MPI.Wtime())
clock = lambda: MPI.Wtime() - t0  # noqa: E731
path = os.path.join(tmp, f"rank{r}.h5")
trace = TraceWriter(path, {"rank": r}, clock)
comm = Communicator(world, trace, clock, timeout=60)

D_PARAMS = (500 * 500 + 500) + (500 * 500 + 500) + (500 + 1)  # ADDA's 500-500 discriminator
SIZES = [1, 2, 1001, D_PARAMS]
REPEATS = 3


def payload(numel: int, k: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7919 * k + 101 * rank + numel)
    scale = 10.0 ** torch.randint(-3, 4, (numel,), generator=g).float()
    return torch.randn(numel, generator=g) * scale


def reference(parts_own: torch.Tensor, numel: int) -> torch.Tensor:
    """The former exchange: D-sized messages with every other rank, then the rank-order mean
    (sent around the trace, on comm.mpi: this is the test's own traffic)."""
    peers = [q for q in range(n) if q != r]
    got = {q: torch.empty(numel) for q in peers}
    reqs = [world.Irecv(got[q].numpy(), q, 77) for q in peers]
    reqs += [world.Isend(parts_own.numpy(), q, 77) for q in peers]
    MPI.Request.Waitall(reqs)
    parts = [parts_own if q == r else got[q] for q in range(n)]
    return dada.rank_order_mean(parts, torch.empty(numel))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()


def main():
    problems = {"same": [], "ref": [], "untouched": []}
    posted = []   # (step, numel) of every exchange
    step = 0
    for numel in SIZES:
        ex = dada.DiscExchange(comm, numel, torch.float32, torch.device("cpu"), "disc_grads")
        for k in range(REPEATS):
            step += 1
            comm.step = step
            own = payload(numel, k, r)
            buf = aligned_empty(numel, torch.float32, torch.device("cpu"))
            buf.copy_(own)
            ex.post(buf)
            buf.fill_(-1.0)          # the caller may reuse its payload at once
            mean = ex.wait().clone()
            posted.append((step, numel))
            ref = reference(own, numel)
            hashes = world.allgather(digest(mean))
            if len(set(hashes)) != 1:
                problems["same"].append(f"{numel} elements, exchange {k}: {len(set(hashes))} "
                                        "different results")
            if n == 2:
                if not torch.equal(mean, ref):
                    problems["ref"].append(f"{numel} elements: not bitwise equal to the rank-order "
                                           f"mean (max diff {float((mean - ref).abs().max()):.3g})")
            # float32 sums of n parts in any order: within n ulps of the largest |part|
            bound = n * 2.0 ** -23 * float(max(payload(numel, k, q).abs().max()
                                                for q in range(n)))
            err = float((mean - ref).abs().max())
            if err > bound:
                problems["ref"].append(f"{numel} elements: max diff {err:.3g} from the reference "
                                       f"> {bound:.3g}")
            exact = sum(payload(numel, k, q).double() for q in range(n)) / n
            err = float((mean.double() - exact).abs().max())
            if err > bound:
                problems["ref"].append(f"{numel} elements: max diff {err:.3g} from the float64 "
                                       f"mean > {bound:.3g}")
        if ex.counters() != (REPEATS, 4 * numel * REPEATS, 4 * numel * REPEATS):
            problems["untouched"].append(f"counters {ex.counters()}")
    trace.close()
    world.Barrier()
    rows = read_rank(path).comm
    tp = []
    disc = rows[rows["channel"] == b"disc_grads"]
    if set(disc["op"]) != {b"allreduce"}:
        tp.append(f"ops {set(disc['op'])}")
    got = sorted((int(s), int(b) // 4) for s, b in zip(disc["step"], disc["nbytes"]))
    if got != sorted(posted):
        tp.append(f"rows (step, elements) {got[:6]}... != posted {posted[:6]}...")
    if np.isin(rows["op"], [b"send", b"recv"]).any():
        tp.append("point-to-point rows in the trace")
    for name, key, detail in (("same_bits_on_every_rank", "same", problems["same"]),
                              ("equals_all_to_all_reference", "ref", problems["ref"]),
                              ("counters", "untouched", problems["untouched"]),
                              ("trace_one_allreduce_per_exchange", "trace", tp)):
        bad = [d for d in world.allgather("; ".join(detail)) if d]
        if r == 0:
            checks.report(f"{name} ({n} ranks)", not bad, " | ".join(bad)[:2000])


if __name__ == "__main__":
    main()
    checks.finish()
