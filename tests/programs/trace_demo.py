"""A small traced run that produces real trace files for the trace tools' tests.

Every step each rank does what the four algorithms do in miniature, through mpidist.runtime and
mpidist.comm (so every message is a real, traced MPI operation):

- a ring exchange on channel "params": isend to rank+1, irecv from rank-1, compute while the
  messages fly, then wait; the received values are checked (rank-1's step-stamped values);
- every ``--feedback-every`` steps a smaller message the other way round on channel "feedback";
- an average of a small gradient-like tensor on channel "grads" (iallreduce, op avg), checked
  against the closed form mean(range(world));
- every ``--bcast-every`` steps a broadcast from rank 0 on channel "swap";
- metrics "loss" (a decaying curve), "accuracy" and "tau" (the step's ring delay, rank 0 only).

``--die-at STEP`` makes the last rank kill itself with SIGKILL at that step (after a flush), which
leaves the files of a killed run: every rank's file readable, status still "running".

Where the runtime has checkpoints (``run.checkpoint``), the demo calls it after every step, so that
SIGUSR1/SIGTERM stop it with a checkpoint and ``--resume`` continues it (the job templates' test of
requeueing uses this); its state is only the step, since every message depends on the step alone.

    timeout 120 mpiexec -n 4 python tests/programs/trace_demo.py --trace-dir runs/demo --steps 30
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import torch

from mpidist import runtime
from mpidist.comm import waitall
from mpidist.loop import Loop

TAG_PARAMS, TAG_FEEDBACK = 11, 12


def main(argv=None) -> None:
    p = runtime.parser("demo", __doc__)
    p.add_argument("--steps", type=runtime.positive_int, default=30)
    p.add_argument("--numel", type=runtime.positive_int, default=16384,
                   help="float32 elements of a ring message (default 16384 = 64 KiB)")
    p.add_argument("--compute-seconds", type=runtime.nonneg_float, default=0.01,
                   help="emulated compute per step, overlapped with the ring messages")
    p.add_argument("--feedback-every", type=runtime.positive_int, default=3)
    p.add_argument("--bcast-every", type=runtime.positive_int, default=5)
    p.add_argument("--die-at", type=int, default=-1,
                   help="the last rank SIGKILLs itself at this step (a killed run); -1: never")
    with runtime.start("demo", p, argv) as run:
        a, comm, rank, n = run.args, run.comm, run.rank, run.world_size
        right, left = (rank + 1) % n, (rank - 1) % n
        x = torch.empty(a.numel)
        recv = torch.empty(a.numel)
        fb_out, fb_in = torch.empty(a.numel // 4), torch.empty(a.numel // 4)
        g = torch.empty(256)
        swap = torch.empty(1024)
        # the shared loop, meeting after every step (one 8-byte max-allreduce on channel
        # "control", none after the last step); resumes after run.start_step
        loop = Loop(run, total=a.steps, meet_every=1, state=lambda t: {"step": t})
        for step in loop:
            if step == a.die_at and rank == n - 1:
                run.trace.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            x.fill_(rank * 1000 + step)
            hs = [comm.irecv(recv, left, TAG_PARAMS, "params"),
                  comm.isend(x, right, TAG_PARAMS, "params")]
            if step % a.feedback_every == 0:
                fb_out.fill_(-rank)
                hs += [comm.irecv(fb_in, right, TAG_FEEDBACK, "feedback"),
                       comm.isend(fb_out, left, TAG_FEEDBACK, "feedback")]
            time.sleep(a.compute_seconds)  # compute while the messages are in flight
            waitall(hs)
            if recv[0].item() != left * 1000 + step:
                raise RuntimeError(f"step {step}: ring message from {left} holds {recv[0].item()}")
            if step % a.feedback_every == 0 and fb_in[0].item() != -right:
                raise RuntimeError(f"step {step}: feedback from {right} holds {fb_in[0].item()}")
            g.fill_(rank)
            comm.iallreduce(g, "avg", "grads").wait()
            if abs(g[0].item() - (n - 1) / 2) > 1e-6:
                raise RuntimeError(f"step {step}: allreduce avg gave {g[0].item()}")
            if step % a.bcast_every == 0:
                if rank == 0:
                    swap.fill_(step)
                comm.ibcast(swap, 0, "swap").wait()
                if swap[0].item() != step:
                    raise RuntimeError(f"step {step}: bcast gave {swap[0].item()}")
            loss = 2.0 * math.exp(-step / 10) + 0.05 * rank
            run.metric(step, "loss", loss)
            run.metric(step, "accuracy", 1.0 - loss / 2.5)
            if rank == 0:
                run.metric(step, "tau", step % 3)
            if loop.end_step(step, loss=loss):
                return  # stopped by a signal, checkpoint saved
        run.say(f"demo: {a.steps} steps on {n} ranks, ring/feedback/allreduce/bcast checked")


if __name__ == "__main__":
    sys.exit(main())
