"""Two ranks whose blocked times are known in closed form (tests/mpi/test_blocked_time.py).

Rank 0 sends, rank 1 receives, through mpidist.comm with a real TraceWriter per rank (trace
directory: argv[1]). Before each scenario both ranks meet at a (traced) barrier; times below are
seconds after it. The step of each row names its scenario:

- step 0, LATE: rank 1 posts a receive, computes X = COMPUTE s, then waits; rank 0 sends after
  Y = LATE_SEND s. Rank 1 is blocked max(0, Y - X) s on that receive.
- step 1, EARLY: rank 0 sends at once; rank 1 posts, computes X s, waits: the message is there,
  the wait does not block (t_wait NaN, or a blocked time near 0).
- step 2, POLLED: rank 0 sends after POLL_SEND s; rank 1 polls ``test()`` with short sleeps:
  polling is not waiting, t_wait is NaN.
- step 3, WAITALL: rank 0 sends A after WAITALL_A s and B after WAITALL_B s; rank 1 posts both and
  calls ``waitall([A, B])`` at once: both rows carry the same t_wait; A blocks about WAITALL_A s,
  B about WAITALL_B s.
- step 4, WAITING: as POLLED, but rank 1 declares its polling a wait (``Handle.waiting()``):
  t_wait is set, blocked about POLL_SEND s.

    mpiexec -n 2 python tests/programs/blocked_time.py DIR
"""
from __future__ import annotations

import sys
import time

import torch
from mpi4py import MPI

from mpidist.comm import Communicator, waitall
from mpidist.trace import TraceWriter, new_run_id, rank_path

COMPUTE, LATE_SEND = 0.1, 0.4
POLL_SEND = 0.25
WAITALL_A, WAITALL_B = 0.1, 0.3
NUMEL = 256  # 1 KiB messages


def main() -> None:
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    run_id = world.bcast(new_run_id() if rank == 0 else None)
    world.Barrier()
    t0 = MPI.Wtime()

    def clock():
        return MPI.Wtime() - t0

    tw = TraceWriter(rank_path(sys.argv[1], rank), {"algorithm": "blocked_demo", "rank": rank,
                                                    "world_size": 2, "run_id": run_id}, clock)
    comm = Communicator(world, tw, clock=clock, timeout=30)
    x = torch.arange(float(NUMEL))
    a, b = torch.zeros(NUMEL), torch.zeros(NUMEL)

    def sleep_then_send(delay, tag):
        time.sleep(delay)
        comm.isend(x, 1, tag, "data").wait()

    comm.step = 0  # LATE
    comm.barrier()
    if rank == 0:
        sleep_then_send(LATE_SEND, 0)
    else:
        h = comm.irecv(a, 0, 0, "data")
        time.sleep(COMPUTE)
        h.wait()
    comm.step = 1  # EARLY
    comm.barrier()
    if rank == 0:
        sleep_then_send(0.0, 1)
    else:
        h = comm.irecv(a, 0, 1, "data")
        time.sleep(COMPUTE)
        h.wait()
    comm.step = 2  # POLLED
    comm.barrier()
    if rank == 0:
        sleep_then_send(POLL_SEND, 2)
    else:
        h = comm.irecv(a, 0, 2, "data")
        while not h.test():
            time.sleep(0.002)
    comm.step = 3  # WAITALL
    comm.barrier()
    if rank == 0:
        sleep_then_send(WAITALL_A, 3)
        sleep_then_send(WAITALL_B - WAITALL_A, 4)
    else:
        waitall([comm.irecv(a, 0, 3, "data"), comm.irecv(b, 0, 4, "data")])
    comm.step = 4  # WAITING
    comm.barrier()
    if rank == 0:
        sleep_then_send(POLL_SEND, 5)
    else:
        h = comm.irecv(a, 0, 5, "data")
        h.waiting()
        while not h.test():
            time.sleep(0.002)
    comm.step = 5
    comm.barrier()
    tw.close()


if __name__ == "__main__":
    main()
