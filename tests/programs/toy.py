"""A minimal traced entry point for the runtime's failure tests: a ring exchange and an allreduce
each step, with ways to fail on purpose (--raise-at STEP:RANK, --silent-rank R)."""
import os
import time

import torch

from mpidist import runtime
from mpidist.loop import Loop
from mpidist.errors import UsageError


def check(args, n):
    if args.need_ranks and args.need_ranks != n:
        return f"this configuration needs {args.need_ranks} ranks, the world has {n}"


def main(argv=None):
    p = runtime.parser("toy", __doc__)
    p.add_argument("--steps", type=runtime.positive_int, default=20)
    p.add_argument("--size", type=runtime.positive_int, default=1000, help="floats per message")
    p.add_argument("--raise-at", default=None, metavar="STEP:RANK")
    p.add_argument("--silent-rank", type=int, default=-1,
                   help="this rank never sends on the ring (its successor times out)")
    p.add_argument("--need-ranks", type=int, default=0)
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--pid-file", default=None,
                   help="each rank writes its pid to PID_FILE.<rank> when it begins its first step "
                        "(a test that signals it then knows the rank is in the loop)")
    p.add_argument("--bad-rank", type=int, default=-1,
                   help="this rank alone finds a usage error at step 1 (the others go on)")
    with runtime.start("toy", p, argv, check, may_change=frozenset({"steps"})) as run:
        r, n = run.rank, run.world_size
        fail = tuple(int(v) for v in run.args.raise_at.split(":")) if run.args.raise_at else None
        x = torch.full((run.args.size,), float(r))
        out = torch.empty_like(x)
        acc = torch.zeros(1, dtype=torch.float64)  # a running state a resumed run must continue
        if run.resumed_state is not None:
            acc = run.resumed_state["acc"]
        # the shared loop, meeting after every step: the stop/checkpoint agreement is one 8-byte
        # max-allreduce on channel "control" per step (none after the last step)
        loop = Loop(run, total=run.args.steps, meet_every=1, state=lambda t: {"acc": acc})
        step = run.start_step
        for step in loop:
            if run.args.pid_file and step == run.start_step:
                tmp = f"{run.args.pid_file}.{r}.tmp"   # complete when it appears (rename)
                with open(tmp, "w") as f:
                    f.write(str(os.getpid()))
                os.replace(tmp, f"{run.args.pid_file}.{r}")
            if step == 1 and r == run.args.bad_rank:
                raise UsageError(f"--bad-rank {r}: a bad input only this rank sees")
            hs = [run.comm.irecv(out, (r - 1) % n, 1, "ring")]
            if r != run.args.silent_rank:
                hs.append(run.comm.isend(x, (r + 1) % n, 1, "ring"))
            for h in hs:
                h.wait()
            assert out[0].item() == (r - 1) % n
            y = torch.full((4,), float(r))
            run.comm.iallreduce(y, "sum", "sum").wait()
            run.metric(step, "sum", y[0].item())
            acc += torch.rand(1, dtype=torch.float64) + step * y[0].item()  # RNG and step dependent
            if fail and fail == (step, r):
                run.trace.flush()
                raise RuntimeError(f"injected failure at step {step}")
            time.sleep(run.args.step_seconds)
            if loop.end_step(step):
                break
        run.say(f"final acc {acc.item():.17g} step {step}")


if __name__ == "__main__":
    main()
