"""THE run loop every algorithm uses: step -> metrics -> progress -> trace flush -> one stop and
checkpoint agreement -> (after the last step) the final report.

An algorithm's training function reads::

    loop = Loop(run, total=steps, meet_every=10, state=lambda t: {...})
    for t in loop:
        ...                                   # the algorithm's step t (its messages, its update)
        run.metric(t, "loss", loss)
        if loop.end_step(t, loss=loss):       # progress, trace step + flush, agreement
            break                             # stopped by SIGUSR1/SIGTERM after a checkpoint

Where ranks meet differs by algorithm and is the one parameter of the mechanism: ``meet_every``
steps (PC-ASGD meets every 10 steps so as not to couple its clusters every step; DADA every 10
sync-up steps), or ``meet_every=0`` with :meth:`Loop.agree` called by the algorithm itself at its own
synchronisation points, with the stop code already agreed through its own collective (AdaComm's
averaged control slots, see :func:`stop_term`).

The one "checkpoint due" rule (:func:`checkpoint_due`): ``--checkpoint-every N`` saves at the first
meeting point at or after every N completed steps; ``--checkpoint-every 15m`` and a stop signal
are agreed as a *stop code* (``Run.stop_code``) by a max-allreduce (channel ``control``), so
every rank saves the same step.
"""
from __future__ import annotations

import itertools
import signal
import time

def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


DIVERGED = 4096.0   # added to a rank's stop code once its loss was not finite (above any 2 x signal)


def decode_stop(code: float) -> tuple[bool, bool]:
    """(save a checkpoint now, stop now) from the maximum over the ranks of
    :meth:`mpidist.runtime.Run.stop_code`: stop when any rank got a stop signal, save then too, or when the
    --checkpoint-every duration has passed on any rank. (A diverged run, :func:`diverged`, saves
    nothing: see :meth:`Loop.agree`.)"""
    c = int(code) % int(DIVERGED)
    return c >= 2 or c % 2 == 1, c >= 2


def diverged(code: float) -> bool:
    """Whether the agreed stop code says that some rank's loss was not finite."""
    return code >= DIVERGED


def stop_term(code: float, n: int) -> float:
    """A stop code as one rank's term of a SUM (or mean) over ``n`` ranks, for agreements that can
    only add, like AdaComm's averaged control slots (float32): a mean of codes would mix them (a
    SIGTERM on one of two ranks would read as signal 7). Three base-(n+1) digits, so that counts of
    n ranks never carry (exact in float32 up to 255 ranks): a timed checkpoint due, SIGUSR1,
    SIGTERM or SIGINT (both: stop now). :func:`stop_from_mean` recovers the code the maximum would
    have given. Divergence does not travel here: the averaged loss itself is then not finite."""
    c = int(code) % int(DIVERGED)
    sig, due = c // 2, c % 2
    b = n + 1
    return float(b * b * (sig in (signal.SIGTERM, signal.SIGINT))
                 + b * (sig == signal.SIGUSR1) + due)


def stop_from_mean(mean: float, n: int) -> float:
    """The agreed stop code from the mean over ``n`` ranks of :func:`stop_term` (see there)."""
    b = n + 1
    total = int(round(mean * n))
    term, usr1, due = total // (b * b), (total // b) % b, total % b
    sig = signal.SIGTERM if term else signal.SIGUSR1 if usr1 else 0
    return 2.0 * int(sig) + (1.0 if due else 0.0)


def checkpoint_due(every: int, done: int, last_done: int) -> bool:
    """THE rule of ``--checkpoint-every N`` (steps): due at the first meeting point at or after
    each multiple of N completed steps, counted from the last checkpoint (``last_done`` steps were
    complete then)."""
    return bool(every) and done // every > last_done // every


#: a time-left estimate needs this many steps and seconds measured in this process (the first
#: steps carry warm-up, a source's pre-training, a resumed run's start: not the pace of the rest)
ESTIMATE_STEPS = 3
ESTIMATE_SECONDS = 1.0


def time_left(now: float, done: int, total: int, since: tuple[float, int]) -> float | None:
    """Seconds until ``total`` steps, at the pace measured from ``since = (time, steps done)`` to
    ``(now, done)``; None while fewer than ESTIMATE_STEPS steps or ESTIMATE_SECONDS seconds were
    measured (an estimate from one step can be off by hours)."""
    t0, done0 = since
    if done - done0 < ESTIMATE_STEPS or now - t0 < ESTIMATE_SECONDS:
        return None
    return (now - t0) / (done - done0) * max(total - done, 0)


class Progress:
    """The one progress printer: a line on rank 0 at most every ``--progress-seconds`` (always with
    ``force``), never with ``--quiet`` unless forced. A run of known length shows the time ``left``
    (:func:`time_left`, measured from this printer's first call); the papers' eta is the learning
    rate, which the headers show."""

    def __init__(self, run):
        self.run, self._next, self._since = run, 0.0, None

    def __call__(self, done: int, total: int | None, force: bool = False, unit: str = "step",
                 **values) -> None:
        run = self.run
        if run.rank != 0 or (run.args.quiet and not force):
            return
        now = time.monotonic()
        if self._since is None:
            self._since = (now, done)
        if not force and now < self._next:
            return
        self._next = now + run.args.progress_seconds
        elapsed = run.comm.clock()
        vals = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in values.items())
        if total:
            left = time_left(now, done, total, self._since)
            print(f"[0] {unit} {done}/{total} ({100 * done / total:3.0f}%) {vals} | "
                  f"{elapsed:.1f} s" + (f", left {left:.0f} s" if left is not None else ""),
                  flush=True)
        else:
            print(f"[0] {unit} {done} {vals} | {elapsed:.1f} s", flush=True)


class Loop:
    """The steps of one run and the agreement at its meeting points.

    ``total``: how many steps the run has (None: open-ended, the algorithm ends it, e.g. by a time
    budget); ``first_step``: the index of its first step (0, or 1 where the paper counts from 1);
    a resumed run starts after its checkpoint's step (``run.start_step``). ``meet_every``: the
    ranks meet after every this many steps (0: only where the algorithm calls :meth:`agree`; a
    ``--checkpoint-every`` checkpoint that came due is then saved at the next such agreement).
    ``state(step)`` returns the algorithm's state to checkpoint. ``save_last=False``: no
    checkpoint after the last step (where the run could not be continued from it). ``unit``: what a
    step is called in the progress line.
    """

    def __init__(self, run, total: int | None, first_step: int = 0, meet_every: int = 1,
                 state=None, unit: str = "step", save_last: bool = True):
        self.run, self.total, self.base = run, total, first_step
        self.meet_every, self.state, self.unit = meet_every, state, unit
        self.save_last = save_last
        self.first = max(first_step, run.start_step)
        self.last_saved = self.done(self.first - 1)   # completed steps at the last checkpoint
        self.stopped = False

    def __iter__(self):
        if self.total is None:
            return itertools.count(self.first)
        return iter(range(self.first, self.base + self.total))

    def done(self, step: int) -> int:
        """Completed steps after ``step``."""
        return step - self.base + 1

    def is_last(self, step: int) -> bool:
        return self.total is not None and self.done(step) >= self.total

    def _due(self, step: int) -> bool:
        return ((self.save_last or not self.is_last(step))
                and checkpoint_due(self.run.args.checkpoint_every, self.done(step), self.last_saved))

    def meets(self, step: int) -> bool:
        """Whether the ranks meet after ``step`` (a meeting point, or a checkpoint due)."""
        if not self.meet_every:
            return False
        return ((self.done(step) % self.meet_every == 0 and not self.is_last(step))
                or self._due(step))

    def end_step(self, step: int, force: bool = False, **shown) -> bool:
        """After the algorithm's ``step``: progress on rank 0, the trace's step and flush
        (``Run.step_done``), then the agreement when the ranks meet. True = stop now."""
        self.run.progress(self.done(step), self.total, force=force, unit=self.unit, **shown)
        self.run.step_done(step)
        if self.meets(step):
            return self.agree(step)
        return False

    # ------------------------------------------------------------------ the agreement
    def agree(self, step: int, code: float | None = None, state: dict | None = None) -> bool:
        """THE agreement, on every rank at the same step: saves every rank's state when a
        checkpoint is due (``--checkpoint-every`` steps or duration) or a stop signal arrived on
        any rank, and returns True when the job must stop now. ``code``: the stop code already
        agreed by the algorithm's own collective (else a max-allreduce on channel ``control``);
        ``state``: the state to save (else ``self.state(step)``). A signal during the last step
        just lets the run finish. A loss that was not finite on any rank ends the run here, on
        every rank, without a checkpoint (``Run.diverged_everywhere``)."""
        run = self.run
        if code is None:
            code = run.comm.allreduce_scalar(run.stop_code(), "max", "control")
        if diverged(code):
            run.diverged_everywhere()          # raises: no checkpoint of a diverged state
        timed, stop = decode_stop(code)
        stop = stop and not self.is_last(step)
        if timed or stop or self._due(step):
            run.save_checkpoint(step, state if state is not None else self.state(step))
            self.last_saved = self.done(step)
        if stop:
            self.stopped = True
            run.announce_stop(step, code)
        return stop
