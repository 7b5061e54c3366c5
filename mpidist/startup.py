"""What :func:`mpidist.runtime.start` does, in order: parse and check the arguments, verify and
load a checkpoint to resume, choose and own the run directory, align the clocks
(:mod:`mpidist.clock`), open the trace, build the Communicator, seed, and hand a :class:`mpidist.runtime.Run` to the algorithm (see
:mod:`mpidist.runtime` for what it guarantees)."""
from __future__ import annotations

import json
import os
import random
import socket
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

from . import checkpoint, lastwords, rundir, signals
from .checkpoint import resume_mismatch
from .clock import RunClock
from .cli import ArgumentParser
from .comm import Communicator, LinkModel, cuda_aware_mpi
from .errors import UsageError
from .placement import choose_device, local_rank, make_logger, set_threads, versions
from .runtime import Run, _usage_exit, abort
from .trace import TraceError, TraceWriter, new_run_id, rank_path

MIN_COMM_TIMEOUT_S = 1.0  # a shorter --comm-timeout is refused: start-up agreements take longer


def start(algorithm: str, p: ArgumentParser, argv=None, check=None,
          may_change: frozenset | None = frozenset()) -> Run:
    """Parse arguments, check them against the world size, open the trace, seed, pick the device.

    ``check(args, world_size)`` may return an error string (or raise UsageError) for a configuration
    that does not fit; every rank evaluates it alike. ``may_change``: the algorithm's flags (dest
    names) that a ``--resume`` may give other values than the checkpointed run had (its stopping
    rule, its evaluation); any other flag but the run flags (RUN_FLAGS) is refused with one line
    (:func:`resume_mismatch`). None: the algorithm compares the settings itself.
    """
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    try:
        args = p.parse_args(argv)
        if args.link_bandwidth and args.link_bandwidth < 1:
            raise UsageError("--link-bandwidth is in bytes per second (e.g. 1.25e8 for 1 Gbit/s)")
        if args.comm_timeout < MIN_COMM_TIMEOUT_S:
            raise UsageError(f"--comm-timeout {args.comm_timeout:g}: no wait for a peer can be "
                             f"that short (starting up alone takes longer); give "
                             f"{MIN_COMM_TIMEOUT_S:g} s or more")
        if args.link_latency >= args.comm_timeout:
            raise UsageError(f"--link-latency {args.link_latency:g} s can never meet --comm-timeout "
                             f"{args.comm_timeout:g} s: every message would time out")
        if args.fail_at is not None and not 0 <= args.fail_at[1] < size:
            raise UsageError(f"--fail-at: rank {args.fail_at[1]} is not in a world of {size}")
        if check is not None:
            msg = check(args, size)
            if msg:
                raise UsageError(msg)
    except UsageError as e:
        _usage_exit(algorithm, rank, str(e))
    except SystemExit:  # --help
        sys.stdout.flush()
        raise
    log = make_logger(rank)
    sys.excepthook = lambda t, e, tb: abort(rank, e)
    local, node_size = local_rank(world)
    threads, warn = set_threads(world)   # torch's threads: the rank's share of its node's CPUs
    if warn and rank == 0:
        sys.stderr.write(f"mpidist.{algorithm}: warning: {warn}\n")
    try:
        device = choose_device(args.device, local)
    except UsageError as e:
        _usage_exit(algorithm, rank, str(e))  # every rank sees the same CUDA absence

    # start-up agreements (resume, run directory, clock) go through an untraced communicator
    # without the emulated link; the run's Communicator is made complete once the trace exists
    setup = Communicator(world, None, None, None, args.comm_timeout, False)
    try:  # the run's clock (mpidist.clock), on a communicator of its own
        run_clock = RunClock(world, rank, args.comm_timeout)
    except ValueError as e:  # a bad MPIDIST_TEST_CLOCK_SKEW (tests only)
        _usage_exit(algorithm, rank, str(e))

    # --resume: the checkpoint every rank continues from (each reads its own file). Every rank
    # first verifies its file against the manifest's size and SHA-256; only when all agree does
    # any rank load (weights-only, or a full unpickle with --trust-checkpoint)
    resumed, err = None, ""
    if args.resume:
        trust = bool(getattr(args, "trust_checkpoint", False))
        data = None
        try:
            ckpt_dir, manifest = checkpoint.find(args.resume, algorithm, size)
            data = checkpoint.read_rank(ckpt_dir, manifest, rank, trust)
        except checkpoint.CheckpointError as e:
            err = str(e)
        errors = [e for e in setup.allgather_object(err) if e]
        if errors:
            _usage_exit(algorithm, rank, errors[0])
        try:
            resumed = checkpoint.load_rank(ckpt_dir, rank, device, trust, data=data)
            del data
            if may_change is not None and "args" in resumed:
                err = resume_mismatch(resumed["args"], vars(args), may_change)
                err = f"--resume {ckpt_dir}: {err}" if err else ""
        except checkpoint.CheckpointError as e:
            err = str(e)
        errors = [e for e in setup.allgather_object(err) if e]
        if errors:
            _usage_exit(algorithm, rank, errors[0])
        resume_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))

    # the run directory: chosen and created on rank 0, agreed by all
    run_dir, err, created, run_id = None, None, False, None
    if rank == 0:
        run_dir, err, created = rundir.choose(args.trace_dir, algorithm,
                                              resume_dir if resumed is not None else None)
        run_id = new_run_id()  # in every rank's trace: the tools refuse a directory mixing runs
    run_dir, err, run_id = setup.bcast_object((run_dir, err, run_id))
    if err:
        _usage_exit(algorithm, rank, err)
    lastwords.watch(rank, run_id)   # a line that names this rank if it dies without a word

    # t = 0 of every rank's clock: rank 0's clock just after a barrier, moved onto each rank's own
    # clock by the estimate of its offset to rank 0 (mpidist.clock: ping-pongs, or none when
    # MPI_WTIME_IS_GLOBAL), so that every trace is on rank 0's clock, on one node or many; a
    # resumed run continues rank 0's saved clock
    saved = resumed["t"] if resumed is not None else 0.0
    setup.barrier()
    clock = run_clock.start(lambda t: setup.bcast_object((t, saved)))
    t0_wall = time.time()
    cuda_aware = cuda_aware_mpi() if device.type == "cuda" else False
    path = "cpu" if device.type == "cpu" else ("cuda-aware" if cuda_aware else "staged")
    attrs = {"algorithm": algorithm, "run_id": run_id, "rank": rank, "world_size": size,
             "local_rank": local,
             "args": vars(args), "versions": versions(), "cuda_aware": bool(cuda_aware),
             "comm_path": path, "device": str(device), "start_time": t0_wall,
             "hostname": socket.gethostname(), "threads": threads, "status": "running",
             "node_size": node_size, **run_clock.attrs()}
    if os.environ.get("SLURMD_NODENAME"):  # SLURM's name of the node (several may share a host)
        attrs["slurm_node"] = os.environ["SLURMD_NODENAME"]
    try:
        trace = TraceWriter(rank_path(run_dir, rank), json.loads(json.dumps(attrs, default=str)),
                            clock, args.flush_seconds,
                            resume_step=resumed["step"] if resumed is not None else None)
        err = ""
    except (TraceError, OSError) as e:
        trace, err = None, f"cannot write the trace file on rank {rank}: {e}"
    errors = [e for e in setup.allgather_object(err) if e]
    if errors:
        if trace is not None:
            trace.abandon("start-up error")
        setup.barrier()
        rundir.remove_if_empty(run_dir, rank == 0 and created)
        _usage_exit(algorithm, rank, errors[0])
    link = LinkModel(args.link_latency, args.link_bandwidth)
    comm = Communicator(world, None if getattr(args, "no_trace", False) else trace, clock, link,
                        args.comm_timeout, cuda_aware)

    seed = args.seed * 1000 + rank
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    run = Run(algorithm, args, comm, trace, run_dir, device, local, log, t0_wall)
    run.created_dir = rank == 0 and created
    run.quiet = setup
    run.run_clock = run_clock  # its end estimate: Run.__exit__
    if resumed is not None:
        run.set_rng_state(resumed["rng"])
        run.start_step = resumed["step"] + 1
        run.resumed_state = resumed["algorithm"]
        comm.step = run.start_step  # the trace's step: from here on set by Run.step_done only
        run.say(f"resuming from step {resumed['step']} ({ckpt_dir})")
    # SIGUSR1 (what `sbatch --signal=USR1@...` sends before a time limit) and SIGTERM (the time
    # limit itself, preemption): checkpoint and stop at the next step all ranks agree on. MPI_Abort
    # and a killed rank end the others with SIGKILL (MPICH's hydra, srun), SIGTERM at worst (srun
    # --kill-on-bad-exit: then --term-grace bounds the wait for the dead rank).
    signals.install(run)
    return run
