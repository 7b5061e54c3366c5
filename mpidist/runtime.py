"""Start-up shared by every entry point: arguments, run directory, trace, seeds, device, failure.

An algorithm's ``main`` is::

    p = mpidist.<name>.cli.build_parser()             # mpidist.cli: the shared flag vocabulary
    with runtime.start("<name>", p, argv, check=check_world, may_change=...) as run:
        loop = Loop(run, total=steps, ...)             # mpidist.loop: the shared run loop
        ... run.comm, run.device, run.rank, run.metric(), run.log ...

What ``start`` guarantees:

- Argument errors (unknown flag, impossible value, a world size that does not fit) print ONE line
  on rank 0 (``mpidist.<algo>: error: ...``) and every rank exits with status 2 within seconds;
  ``--help`` (``--help-all``) prints on rank 0 and every rank exits 0.
- An exception on ANY rank inside the ``with`` block prints ``[rank k] failed: ...`` with its
  traceback, closes that rank's trace (status "failed") and calls ``MPI_Abort``, which ends the
  whole job promptly with a non-zero status: never a hang. The other ranks' trace files hold every
  row up to their last flush (they are closed between flushes).
- Seeds: ``torch``/``numpy``/``random`` get ``seed * 1000 + rank`` (different per rank, same run for
  the same seed); ``run.shared_rng`` is seeded with ``seed`` alone and so agrees on every rank.
- Device: ``--device auto`` takes ``cuda:<node-local rank mod GPUs>`` when CUDA is present, chosen
  from MPI's shared-memory split (falling back to SLURM_LOCALID / OMPI_COMM_WORLD_LOCAL_RANK /
  MPI_LOCALRANKID), and sets it before any CUDA allocation.
"""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
import traceback

import numpy as np
import torch
from mpi4py import MPI

from . import checkpoint, lastwords, rundir, signals
from .checkpoint import RUN_FLAGS, resume_mismatch  # noqa: F401
from .placement import choose_device, local_rank, make_logger, set_threads, versions  # noqa: F401
from .cli import (ArgumentParser, checkpoint_period, fail_spec, nonneg_float,  # noqa: F401
                  nonneg_int, parser, positive_float, positive_int, unit_float)
from .loop import DIVERGED, Progress, decode_stop, signal_name, stop_from_mean, stop_term  # noqa: F401
from .comm import Communicator  # noqa: F401
from .errors import AgreedEnd, CheckpointFailed, Diverged, UsageError
from .trace import TraceWriter


class InjectedFailure(RuntimeError):
    """The failure asked for by --fail-at."""


def _usage_exit(algorithm: str, rank: int, message: str) -> None:
    if rank == 0:
        print(f"mpidist.{algorithm}: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    raise SystemExit(2)


USAGE_AGREE_S = 10.0  # how long a rank with a usage error waits for the others to find it too


class Run:
    """Everything an algorithm needs about its place in the job; made by :func:`start`."""

    def __init__(self, algorithm, args, comm: Communicator, trace: TraceWriter, run_dir,
                 device, local, log, t0_wall):
        self.algorithm, self.args, self.comm, self.trace = algorithm, args, comm, trace
        self.run_dir, self.device, self.local_rank, self.log = run_dir, device, local, log
        self.rank, self.world_size = comm.rank, comm.size
        self.shared_rng = np.random.default_rng(args.seed)
        self.t0_wall = t0_wall
        self._progress = Progress(self)
        self.start_step = 0          # the first step to run (after --resume: the checkpoint's + 1)
        self.resumed_state = None    # the algorithm's state from the checkpoint, or None
        self.stop_signal = 0         # set by SIGUSR1/SIGTERM/SIGINT; agreed in loop.Loop.agree
        self.diverged = None         # (step, metric, value, last finite value, its step) or None
        self._finite: dict[str, tuple[int, float]] = {}   # metric -> (step, last finite value)
        self.quiet = None            # an untraced Communicator (deadline-bounded) for agreements
                                     # that are not the algorithm's: start-up, divergence at the end
        self._previous_handlers = {}
        self._usage_comm = comm.mpi.Dup()  # for usage_error's agreement only
        self.created_dir = False            # rank 0 made run_dir for this run
        self._next_timed_checkpoint = comm.clock() + args.checkpoint_seconds
        self.stopped = False
        self.agreed_signal = 0       # the stop signal the ranks agreed on (loop.Loop.agree)
        self.ckpt_root = os.path.join(run_dir, "checkpoints")
        self.run_clock = None        # mpidist.clock.RunClock: its end estimate goes in the trace

    # ------------------------------------------------------------------ reporting
    def metric(self, step: int, name: str, value: float) -> None:
        """One row of /metrics (step, time since start, name, value). A loss that is not finite
        marks the run diverged: the ranks stop at their next agreement (:meth:`diverged_everywhere`)."""
        self.trace.metric(step, name, value)
        if "loss" in name:
            if math.isfinite(value):
                self._finite[name] = (step, value)
            elif self.diverged is None:
                self.diverged = (step, name, value) + self._finite.get(name, (None, None))[::-1]

    def step_done(self, step: int) -> None:
        """Call after every training step: stamps the comm step, flushes the trace when due, and
        injects the failure of --fail-at."""
        self.comm.step = step + 1
        self.trace.maybe_flush()
        fail = self.args.fail_at
        if fail is not None and fail[0] == step and fail[1] == self.rank:
            if fail[2] == "kill":
                self.trace.flush()
                sys.stderr.write(f"[rank {self.rank}] --fail-at: killing myself after step {step}\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFailure(f"--fail-at: injected failure after step {step}")

    def progress(self, done: int, total: int | None, force: bool = False, unit: str = "step",
                 **values) -> None:
        """A progress line on rank 0, at most every --progress-seconds (``loop.Progress``)."""
        self._progress(done, total, force, unit, **values)

    def say(self, *lines: str) -> None:
        """Print on rank 0 only (summaries)."""
        if self.rank == 0:
            print("\n".join(lines), flush=True)

    def save_model(self, module: torch.nn.Module, name: str = "model") -> str:
        """This rank's trained ``module`` (its state_dict, tensors only: ``torch.load(...,
        weights_only=True)`` reads it) as ``<run dir>/<name>/rank<k>.pt``, written atomically."""
        folder = os.path.join(self.run_dir, name)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"rank{self.rank}.pt")
        # clone: a parameter that is a view into a flat buffer would otherwise save the buffer
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        return path

    def usage_error(self, message: str) -> None:
        """Bad input found after start: one line on rank 0, exit 2 everywhere. Usually every rank
        finds it alike; when some rank has not arrived here within USAGE_AGREE_S seconds (it found
        nothing wrong and waits for this one), this rank prints the line itself, naming itself,
        and ends the job with MPI_Abort: never a hang."""
        alike = self._all_arrive(USAGE_AGREE_S)
        if alike:
            # a refused run leaves nothing: its new files go (unless rows were already written),
            # a resumed trace stays as the interrupted run left it
            self.trace.abandon("usage-error")
            self._all_arrive(USAGE_AGREE_S)
            rundir.remove_if_empty(self.run_dir, self.created_dir)
            self._usage_comm.Free()
            _usage_exit(self.algorithm, self.rank, message)
        self.trace.close(status="usage-error")
        sys.stderr.write(f"mpidist.{self.algorithm}: error: [rank {self.rank}] {message}\n")
        sys.stderr.flush()
        end_job(2)

    def _all_arrive(self, timeout: float) -> bool:
        """True when every rank reaches this point within ``timeout`` s (a barrier on a
        communicator of its own, so that it never matches an algorithm's barrier)."""
        req = self._usage_comm.Ibarrier()
        deadline = time.monotonic() + timeout
        while not req.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    # ------------------------------------------------------------------ checkpoints
    def rng_state(self) -> dict:
        """Every RNG's state as plain values (what a safe checkpoint holds): torch's and CUDA's as
        byte tensors, numpy's global MT19937 as a dict with its key as a list of 624 ints,
        ``random``'s as its tuple of ints, the shared PCG64's as its dict of ints."""
        npst = np.random.get_state(legacy=False)
        npst = {**npst, "state": {"key": npst["state"]["key"].tolist(),
                                  "pos": int(npst["state"]["pos"])},
                "has_gauss": int(npst["has_gauss"]), "gauss": float(npst["gauss"])}
        return {"torch": torch.get_rng_state(), "numpy": npst,
                "random": random.getstate(), "shared": self.shared_rng.bit_generator.state,
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def set_rng_state(self, s: dict) -> None:
        """Back to the states of :meth:`rng_state` (or of a checkpoint of before it, where numpy's
        state is the tuple of ``np.random.get_state()``)."""
        torch.set_rng_state(s["torch"].cpu())
        npst = s["numpy"]
        if isinstance(npst, dict):
            npst = {**npst, "state": {"key": np.asarray(npst["state"]["key"], dtype=np.uint32),
                                      "pos": int(npst["state"]["pos"])}}
        np.random.set_state(npst)
        random.setstate(s["random"])
        self.shared_rng.bit_generator.state = s["shared"]
        if s.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])

    def stop_code(self) -> float:
        """What this rank asks of the next agreement of :mod:`mpidist.loop` (a max over all
        ranks, see :func:`mpidist.loop.decode_stop`): 2 x the stop signal's number (0 without
        one), plus 1 when the ``--checkpoint-every`` duration has passed since this rank's last
        checkpoint."""
        due = self.args.checkpoint_seconds and self.comm.clock() >= self._next_timed_checkpoint
        return (2.0 * self.stop_signal + (1.0 if due else 0.0)
                + (DIVERGED if self.diverged is not None else 0.0))

    def diverged_everywhere(self) -> None:
        """Collective, where the ranks agreed that some rank diverged: every rank learns which rank
        first and raises :class:`Diverged` (no checkpoint of a diverged state; trace status
        ``diverged``, one line on rank 0, exit 3)."""
        seen = self.quiet.allgather_object(self.diverged)
        r = next(i for i, d in enumerate(seen) if d is not None) if any(seen) else 0
        d = seen[r] or (None, "loss", float("nan"), None, None)
        step, name, value, last, last_step = d
        before = (f"; the last finite {name} was {last:.6g} at step {last_step}"
                  if last is not None else f"; no finite {name} before it")
        raise Diverged(f"diverged: rank {r} logged {name} {value} at step {step}{before} "
                       "(a smaller --lr may help)")

    def announce_stop(self, step: int, code: float) -> None:
        """After the agreed stop's checkpoint of ``step``: mark the run stopped, say so on rank 0."""
        self.stopped = True
        self.agreed_signal = int(code) // 2
        self.say(f"{signal_name(self.stop_signal or int(code) // 2)}: checkpoint of step {step} saved in "
                 f"{self.ckpt_root}; resume with --resume {self.run_dir}")

    def save_checkpoint(self, step: int, state: dict) -> None:
        """Collective: every rank saves ``state`` of ``step`` (with the RNG states and the clock);
        rank 0 marks the checkpoint complete once all have. Called by :meth:`mpidist.loop.Loop.agree`
        (where all ranks agreed to save this step)."""
        self.trace.flush()  # the trace holds every row up to the checkpoint it resumes from
        try:
            entry = checkpoint.write_rank(self.ckpt_root, step, self.rank,
                                          {"algorithm": state, "step": step,
                                           "t": self.comm.clock(), "rng": self.rng_state(),
                                           "args": vars(self.args)})
        except OSError as e:   # a full disk, an I/O error: agreed below, never a hang or a crash
            entry = f"rank {self.rank}: {e.strerror or e}"
        files = self.comm.allgather_object(entry)  # every rank saved: sizes and SHA-256s
        failed = next((f for f in files if isinstance(f, str)), "")
        if not failed and self.rank == 0:
            try:
                checkpoint.complete(self.ckpt_root, step, self.algorithm, self.world_size,
                                    files=files)
            except OSError as e:
                failed = f"rank 0, writing its manifest: {e.strerror or e}"
        failed = self.quiet.bcast_object(failed)   # (untraced: the trace shows the barrier)
        if failed:
            self._checkpoint_failed(step, failed)
        self.comm.barrier()
        self.metric(step, "checkpoint", step)
        self.trace.flush()  # the checkpoint's row too: a kill right after keeps it
        self._next_timed_checkpoint = self.comm.clock() + self.args.checkpoint_seconds

    def _checkpoint_failed(self, step: int, why: str) -> None:
        """Every rank alike, after a rank could not write checkpoint ``step``: remove this rank's
        part of it and end the run with one line (the earlier checkpoints stay as they were)."""
        checkpoint.discard(self.ckpt_root, step, self.rank)
        self.quiet.barrier()
        done = checkpoint.list_complete(self.ckpt_root)
        kept = (f"the previous checkpoint {os.path.basename(done[-1][0])} is intact; free space "
                f"and resume with --resume {self.run_dir}" if done else
                "no earlier checkpoint exists")
        raise CheckpointFailed(f"cannot write checkpoint step-{step:09d} ({why}); {kept}")

    def _on_signal(self, signum, frame) -> None:
        """The Python handler of SIGUSR1 and SIGTERM: ask for the agreed stop. It runs in the main
        thread between two bytecodes, so it only sets a flag (the watcher thread keeps the
        deadline of SIGTERM, see :mod:`mpidist.signals`)."""
        if not self.stop_signal:
            self.stop_signal = signum

    def _terminate(self, why: str) -> None:
        """End this rank at once (from the watcher thread): the trace keeps every flushed row and its
        status says why. SIGKILL, not an exit: a launcher ends the whole job when a rank dies by a
        signal (MPICH's hydra, srun --kill-on-bad-exit), but may wait for the others after an exit."""
        try:
            sys.stderr.write(f"[rank {self.rank}] SIGTERM: {why}; ending this rank now\n")
            sys.stderr.flush()
            self.trace.mark(f"terminated: SIGTERM, {why}", timeout=5.0)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ ending
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        signals.uninstall(self)
        if exc_type is None and any(self.quiet.allgather_object(self.diverged is not None)):
            try:
                self.diverged_everywhere()     # a non-finite loss after the last agreement
            except Diverged as e:
                exc_type, exc = Diverged, e
        if self.run_clock is not None and (exc_type is None or issubclass(exc_type, AgreedEnd)):
            self.run_clock.finish(self.trace)   # collective: every rank ends here alike
        if exc_type is not None and issubclass(exc_type, AgreedEnd):
            self._usage_comm.Free()
            self.trace.close(status=str(exc)[:200])
            if self.rank == 0:
                sys.stderr.write(f"mpidist.{self.algorithm}: {exc}\n")
                sys.stderr.flush()
            self.quiet.barrier()
            raise SystemExit(exc.exit_code)
        if exc_type is None:
            self._usage_comm.Free()
            self.trace.close(status="stopped by signal" if self.stopped else "ok")
            self.comm.barrier()
            self.say(f"trace: {self.run_dir}")
            if self.stopped and signal.SIGINT in (self.stop_signal, self.agreed_signal):
                raise SystemExit(130)       # Ctrl-C: stopped cleanly, and the shell knows why
            return False
        if issubclass(exc_type, UsageError):
            self.usage_error(str(exc))
        if exc_type is SystemExit and not exc.code:
            self.trace.close(status="ok")
            return False
        abort(self.rank, exc, self.trace)
        return False


def abort(rank: int, exc: BaseException, trace: TraceWriter | None = None, code: int = 1) -> None:
    """Report ``exc`` with the rank, save what the trace holds, and end the whole job (MPI_Abort)."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"[rank {rank}] failed: {type(exc).__name__}: {exc}\n"
                         + "".join(f"[rank {rank}] {line}\n" for line in text.splitlines()))
        sys.stderr.flush()
        sys.stdout.flush()
        if trace is not None:
            trace.close(status=f"failed: {type(exc).__name__}: {exc}"[:200])
    finally:
        end_job(code)


ABORT_WAIT_S = 10.0  # how long a rank that called MPI_Abort waits for the launcher to end it


def end_job(code: int) -> None:
    """MPI_Abort(MPI_COMM_WORLD, code), and never return. MPICH 4's MPI_Abort under hydra (measured
    here) only sends the abort to the process manager (PMI_Abort) and returns; the manager kills
    every rank a moment later. Without this wait the aborting rank ran on meanwhile (seen once in CI: the
    code after a usage error's abort reported the same error again as a failure). It waits
    ABORT_WAIT_S for the launcher's kill, then exits with ``code`` itself."""
    sys.stdout.flush()
    sys.stderr.flush()
    lastwords.spoke()   # this rank said why: the ranks the launcher now kills stay silent
    try:
        MPI.COMM_WORLD.Abort(code)
        time.sleep(ABORT_WAIT_S)  # a handled signal does not cut it short (PEP 475)
    finally:
        os._exit(code)


def start(algorithm: str, p: ArgumentParser, argv=None, check=None,
          may_change: frozenset | None = frozenset()) -> Run:
    """Parse arguments, check them against the world size, open the trace, seed, pick the device,
    and return the :class:`Run` (use it as a context manager). ``check(args, world_size)`` may
    return an error string (or raise UsageError) for a configuration that does not fit; every rank
    evaluates it alike. ``may_change``: the algorithm's flags (dest names) that a ``--resume`` may
    give other values than the checkpointed run had; any other flag but the run flags (RUN_FLAGS)
    is refused with one line. None: the algorithm compares the settings itself. The steps are in
    :mod:`mpidist.startup`."""
    from .startup import start as _start
    return _start(algorithm, p, argv, check, may_change)
