"""MD-GAN's runs on the shared loop (:class:`mpidist.loop.Loop`), one function per mode and role:
the server and the workers of Algorithm 1, FL-GAN's server and workers, the standalone GAN.

Iterations are counted from 1, as Algorithm 1 does; the trace's step of every row is the
iteration (step 0: the set-up, rank 0's ``score_real``/``fid_real``). The ranks meet every
MEET_EVERY iterations (FL-GAN: at the end of every round, the only points where its ranks exchange
anything): one 8-byte max-allreduce on channel ``control`` agrees on a stop signal (SIGUSR1,
SIGTERM) or a due ``--checkpoint-every`` duration; ``--checkpoint-every C`` saves at the first
meeting point at or after every C iterations. Every rank saves at the end of the same iteration,
where no message is in flight (after the swap). A worker that stopped (emulated crash) still
joins these agreements and checkpoints: they are the job's messages, not the algorithm's.
"""
from __future__ import annotations

import os
import time

from .. import checkpoint
from ..errors import UsageError
from ..loop import Loop
from .asynchronous import AsyncServer, AsyncWorker, run_server, run_worker
from .context import Setup, params_sha256
from .exchange import NO_DEADLINE, share_initial_theta
from .scoring import Scoring
from .server import FLGANServer
from .worker import FLGANWorker, LocalGAN
from .wrapper import MDGAN

MEET_EVERY = 10  # the ranks agree on a stop signal every this many iterations


class RoundLoop(Loop):
    """The loop of FL-GAN, whose ranks meet only at the end of a round (``ends``): after every
    round, and a checkpoint due by ``--checkpoint-every`` waits for the first round end at or
    after it (a checkpoint inside a round would have the round's messages in flight)."""

    def __init__(self, run, ends, **kw):
        super().__init__(run, meet_every=1, **kw)
        self.ends = set(ends)

    def meets(self, step: int) -> bool:
        return step in self.ends and super().meets(step)


def _loop(run, setup: Setup, state, cls=Loop, **kw) -> Loop:
    """The loop over iterations 1..I; a checkpoint holds ``state()`` and the RNG states (see
    :func:`_restore`)."""
    return cls(run, total=setup.steps, first_step=1, unit="iteration",
               state=lambda i: {"rng": run.rng_state(), **state()}, **kw)


def _restore(run, load) -> bool:
    """On a resumed run (collective): ``load(state)`` puts this rank's checkpointed state into the
    objects just built, then the RNG states of the checkpoint come back: building G and D drew
    from the RNGs the runtime had restored at the start, and the next iteration must draw what it
    drew in the uninterrupted run. False on a fresh run."""
    saved = run.resumed_state
    if saved is None:
        return False

    def put():
        load(saved)
        run.set_rng_state(saved["rng"])
    checkpoint.restore(run.comm, put)
    return True


def _history(scoring: Scoring, saved: dict) -> None:
    scoring.history[:] = [tuple(h) for h in saved["history"]]


def _shown(s: dict) -> dict:
    """What the progress line shows of a scoring (nothing when the run has no scores)."""
    return {k: s[k] for k in ("score", "fid", "acc") if k in s}


def mdgan_server(setup: Setup, run, G, scoring: Scoring, D=None) -> dict:
    """Algorithm 1's server, on the Python API's :class:`MDGAN`: built from the flags' values as
    a user's script builds it when the networks are the user's (``D``: the one this rank built,
    only counted), else around the built-in G. Returns the modules of its result (G)."""
    a, k, b = setup.args, setup.k, setup.b
    if setup.user_nets:
        md = MDGAN(run, G, D, setup.gan_train(), **setup.api_keywords())
        nets = setup.describe(G, D)
    else:
        md = MDGAN.from_config(run, setup, generator=G)
        nets = setup.describe(G, setup.models()[1])
    run.say(f"MD-GAN: server + N = {setup.N} workers, k = {k}, b = {b}, L = {a.L}, E = {a.E}, "
            f"I = {setup.steps}, {a.gan} on {setup.train.name} {setup.shape} "
            f"({setup.m} samples per worker, swap every {setup.per_swap} iterations)",
            nets, f"scores: {scoring.what}")
    if setup.crashes:
        run.say("crash schedule (iteration: worker rank): "
                + ", ".join(f"{t}: {w}" for t, w in setup.crashes))
    _restore(run, lambda s: (md.load_state_dict(s), _history(scoring, s)))
    loop = _loop(run, setup, lambda: {**md.state_dict(), "history": list(scoring.history)},
                 meet_every=MEET_EVERY)
    for i in loop:
        live = md.step(i)["live"]
        shown = {"live": live}
        if setup.scored(i):
            shown = {**_shown(scoring(i, live)), **shown}
        if loop.end_step(i, force=setup.scored(i) and scoring.enabled, **shown):
            break
    md.finish()
    return {"generator": G}


def mdgan_worker(setup: Setup, run, G=None, D=None) -> dict:
    """Algorithm 1's worker, on the Python API's :class:`MDGAN` (the user's ``D``; None: the
    built-in one, the same on every worker). Once stopped (emulated crash) it sends nothing more
    and idles: it waits for the job's agreements without a deadline. Returns its D_n."""
    if setup.user_nets:
        md = MDGAN(run, G, D, setup.gan_train(), **setup.api_keywords())
        md.role.slow = setup.slow.get(run.rank, 0.0)  # --slow-worker is not an API keyword
    else:
        md = MDGAN.from_config(run, setup)
    _restore(run, md.load_state_dict)
    loop = _loop(run, setup, md.state_dict, meet_every=MEET_EVERY)
    for i in loop:
        md.step(i)
        if loop.end_step(i):
            break
    return {"discriminator": md.discriminator}


def mdgan_async_server(setup: Setup, run, G, scoring: Scoring, D=None) -> dict:
    """The asynchronous server of Section VII (:mod:`mpidist.mdgan.asynchronous`): its loop over
    generator updates 1..I, meeting the workers every N E m / b updates. Returns G."""
    a = setup.args
    srv = AsyncServer(setup, run, G)
    run.say(f"MD-GAN asynchronous: server + N = {setup.N} workers, b = {setup.b}, L = {a.L}, "
            f"E = {a.E}, I = {setup.steps} generator updates (one per F_n), learning rate "
            f"rule {setup.async_lr}, {a.gan} on {setup.train.name} {setup.shape} "
            f"({setup.m} samples per worker; meetings and swaps every {srv.period} updates)",
            setup.describe(G, D if D is not None else setup.models()[1]),
            f"scores: {scoring.what}")
    if setup.crashes:
        run.say("crash schedule (step: worker rank): "
                + ", ".join(f"{t}: {w}" for t, w in setup.crashes))
    if setup.slow:
        run.say("slow worker (rank: seconds per iteration): "
                + ", ".join(f"{r}: {t:g}" for r, t in setup.slow.items()))
    _restore(run, lambda s: (srv.load_state_dict(s["server"]), _history(scoring, s)))
    loop = _loop(run, setup, lambda: {"server": srv.state_dict(),
                                      "history": list(scoring.history)}, meet_every=0)
    run_server(setup, run, srv, loop, scoring, _shown)
    srv.finish()
    return {"generator": G}


def mdgan_async_worker(setup: Setup, run, D=None) -> dict:
    """An asynchronous worker: its own loop of the server's commands until END. Returns the D_n
    it holds."""
    w = AsyncWorker(setup, run, D)
    if setup.user_nets and run.resumed_state is None:
        share_initial_theta(run.comm, w.fpD.params, setup.N)
    _restore(run, lambda s: w.load_state_dict(s["worker"]))
    loop = _loop(run, setup, lambda: {"worker": w.state_dict()}, meet_every=0)
    run_worker(run, w, loop)
    run.trace.set_attrs(iterations=w.iterations)
    return {"discriminator": w.D}


def flgan_server(setup: Setup, run, G, scoring: Scoring) -> dict:
    """FL-GAN's server: one averaging per round. Returns G and D."""
    a, ends = setup.args, setup.round_ends
    server = FLGANServer(setup, run, G)
    run.say(f"FL-GAN: server + N = {setup.N} workers, b = {setup.b}, L = {a.L}, E = {a.E} local "
            f"epochs per round ({ends[0]} iterations), {len(ends)} rounds, I = {setup.steps}, "
            f"{a.gan} on {setup.train.name} {setup.shape}",
            setup.describe(G, server.D), f"scores: {scoring.what}")
    _restore(run, lambda s: (server.load_state_dict(s), _history(scoring, s)))
    loop = _loop(run, setup, lambda: {**server.state_dict(), "history": list(scoring.history)},
                 cls=RoundLoop, ends=ends)
    prev = loop.first - 1
    for end in [e for e in ends if e >= loop.first]:   # the server acts at round ends only
        server.round(end)
        scored = end // setup.score_every > prev // setup.score_every or end == setup.steps
        shown = _shown(scoring(end, setup.N)) if scored else {}
        prev = end
        if loop.end_step(end, force=scored, **shown):
            break
    return {"generator": G, "discriminator": server.D}


def flgan_worker(setup: Setup, run) -> dict:
    """FL-GAN's worker: E local epochs per round. Returns its G and D (as last sent)."""
    worker = FLGANWorker(setup, run)
    _restore(run, worker.load_state_dict)
    loop = _loop(run, setup, worker.state_dict, cls=RoundLoop, ends=setup.round_ends)
    for i in loop:
        worker.step(i)
        if loop.end_step(i):
            break
    return {"generator": worker.G, "discriminator": worker.D}


def standalone(setup: Setup, run, G, scoring: Scoring) -> dict:
    """standalone-GAN: the same G and D trained in one process on all the data. Returns G and
    D."""
    a = setup.args
    _, D = setup.models()
    gan = LocalGAN(setup, G, D, 0, 1)
    run.say(f"standalone GAN: b = {setup.b}, L = {a.L}, I = {setup.steps}, {a.gan} on "
            f"{setup.train.name} {setup.shape} ({len(setup.train)} samples)",
            setup.describe(G, D), f"scores: {scoring.what}")
    _restore(run, lambda s: (gan.load_state_dict(s), _history(scoring, s)))
    loop = _loop(run, setup, lambda: {**gan.state_dict(), "history": list(scoring.history)},
                 meet_every=MEET_EVERY)
    for i in loop:
        loss_d, loss_g = gan.iteration()
        run.metric(i, "loss_d", loss_d)
        run.metric(i, "loss_g", loss_g)
        shown = _shown(scoring(i)) if setup.scored(i) else {}
        if loop.end_step(i, force=setup.scored(i) and scoring.enabled, **shown):
            break
    return {"generator": G, "discriminator": D}


def past_end(args, start_step: int) -> str | None:
    """A resumed run whose checkpoint lies past -I has nothing to continue: one line, or None."""
    if start_step - 1 > args.steps:
        return (f"--resume {args.resume}: the checkpoint is of iteration {start_step - 1}, past "
                f"-I {args.steps}")
    return None


def train(run) -> None:
    """One MD-GAN run of the mode and role of this rank, then the final report: every rank's
    trace gets ``params_sha256`` of its result and ``task`` (the networks and data, with the
    parameter counts), every rank of a completed run saves its networks
    (``<run dir>/generator/rank<k>.pt``, ``<run dir>/discriminator/rank<k>.pt``), rank 0 prints
    the scores and saves the samples."""
    a = run.args
    msg = past_end(a, run.start_step)
    if msg:
        raise UsageError(msg)
    run.trace.set_attrs(pid=os.getpid())
    setup = Setup(run)
    run.trace.set_attrs(task=setup.task())
    fresh = run.resumed_state is None
    user_mdgan = setup.user_nets and a.mode in ("mdgan", "mdgan-async")
    G = D = None
    if user_mdgan:  # every rank builds G then D, as a user's script on the API does
        G, D = setup.models()
    if run.rank == 0:  # G, and the scores (the scoring classifier may be trained first)
        if not user_mdgan:
            G, _ = setup.models()
        scoring = Scoring(setup, G)
        if fresh and scoring.enabled:  # a resumed trace has them already
            run.metric(0, "score_real", scoring.real["score"])
            run.metric(0, "fid_real", scoring.real["fid"])
    run.comm.barrier(timeout=NO_DEADLINE)
    if fresh:
        run.step_done(0)  # step 0 is the set-up: the rows of iteration i carry i from here on
    t0 = time.monotonic()
    if a.mode == "standalone":
        result = standalone(setup, run, G, scoring)
    elif run.rank == 0:
        if a.mode == "mdgan":
            result = mdgan_server(setup, run, G, scoring, D)
        elif a.mode == "mdgan-async":
            result = mdgan_async_server(setup, run, G, scoring, D)
        else:
            result = flgan_server(setup, run, G, scoring)
    elif a.mode == "mdgan":
        result = mdgan_worker(setup, run, G, D)
    elif a.mode == "mdgan-async":
        result = mdgan_async_worker(setup, run, D)
    else:
        result = flgan_worker(setup, run)
    digest = params_sha256(*result.values())
    run.trace.set_attrs(params_sha256=digest)
    if not run.stopped:  # a completed run: every rank's networks
        saved = [run.save_model(module, name) for name, module in result.items()]
    if run.rank == 0 and not run.stopped:
        md = a.mode in ("mdgan", "mdgan-async")
        samples = scoring.save_samples(run.run_dir)
        live = scoring.history[-1][3] if scoring.history else -1
        since = "" if fresh else "since the resume, "
        run.say(*scoring.summary(f"{a.mode}: scores of G over iterations "
                                 f"({since}wall {time.monotonic() - t0:.1f} s)"),
                *([f"live workers at the end: {live} of {setup.N}"]
                  if md else []),
                f"final parameters ({'w' if md else 'w and theta'}): "
                f"sha256 {digest[:16]}",
                f"networks: {', '.join(saved)}" + (" (and every worker's D_n under "
                                                     "discriminator/)" if md
                                                     else " (and every worker's)"
                                                     if a.mode == "flgan" else ""),
                f"samples: {samples}")
