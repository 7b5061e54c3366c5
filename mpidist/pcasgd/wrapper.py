"""PC-ASGD in a user's own training script: :class:`PCASGD` wraps the user's model (STYLE.md 3 and
17, like Horovod's ``DistributedOptimizer`` or BlueFog's neighbour-averaging optimizers) and, from
the gradient the user's backward pass left in it, does one step of Algorithm 1: the exchange with
the reliable and delayed neighbours and the update of lines 6-8 (Eq. 2, Eq. 12). Every message goes
through ``run.comm``, so it is in the run's trace. ``python -m mpidist.pcasgd`` drives the same
object (:mod:`mpidist.pcasgd.train`).

Every rank runs the script under ``mpirun``; each rank is one agent::

    with mpidist.init("pcasgd", seed=0) as run:
        model = build_my_model().to(run.device)
        agent = PCASGD(run, model, steps=T, delay=20, clusters=(3, 5), lr=0.1, variant="pc")
        loop = Loop(run, total=T, meet_every=agent.meet_every,
                    state=lambda t: {"agent": agent.state_dict(), "model": model.state_dict()})
        if run.resumed_state:                    # mpidist.init(..., resume=DIR)
            model.load_state_dict(run.resumed_state["model"])
            agent.load_state_dict(run.resumed_state["agent"])
        for t in loop:
            agent.zero_grad()
            my_loss(model(x), y).backward()
            agent.step(t)                        # x_t -> x_{t+1}: exchange and update
            if loop.end_step(t):
                break                            # a stop signal: checkpoint saved
        agent.finish()                           # nothing left in flight

Rules of use: the model's trainable parameters become views into one flat buffer
(:class:`mpidist.comm.FlatParams`): x of Algorithm 1; the agent writes x_{t+1} there. PCASGD is the
optimizer: do not step another one on the same parameters. Zero the gradients before each backward
(:meth:`PCASGD.zero_grad`, or ``model.zero_grad()``: a gradient set to None is taken in as well).
Every agent takes the same steps 0, 1, ... in order. Construction is collective: in a fresh run it
broadcasts rank 0's parameters (line 1: all agents start from the same x_0) and posts the exchange;
in a resumed run (``run.resumed_state`` set) it waits for :meth:`PCASGD.load_state_dict`.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import topology as topo_mod
from ..comm import FlatParams, unflatten
from ..errors import UsageError
from .agent import Agent, StepInfo
from .exchange import max_steps
from .rules import get_variant

MEET_EVERY = 10  # where a Loop's ranks meet: an allreduce over ALL agents every step would couple
#                  the clusters that the delay keeps apart


def _number(name: str, value, ok, rule: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"PCASGD: {name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and ok(v)):
        raise UsageError(f"PCASGD: {name} must be {rule}, got {value!r}")
    return v


class PCASGD:
    """Agent ``run.rank`` of Algorithm 1 around ``model``; the ranks of ``run`` are the agents.

    ``run``: the :class:`mpidist.runtime.Run` of ``mpidist.init`` (or a Communicator); ``model``:
    the user's ``torch.nn.Module`` on ``run.device``, one dtype. ``steps``: T, the run's length,
    known to every agent so that no message is sent that nobody consumes (the command line's
    plan); None: open-ended, then the last tau steps send messages that :meth:`finish` receives and
    drops. ``delay``: tau, the delay of neighbours in other clusters, in steps (0: every neighbour
    reliable); ``clusters``: sizes of the reliable clusters of consecutive ranks, e.g. ``(3, 5)``
    or ``"3,5"`` (None: the paper's network for 5, 8 or 20 agents, else two halves,
    :func:`mpidist.topology.default_clusters`); ``graph``: full, ring or
    exponential; ``mixing``: lazy or metropolis (:mod:`mpidist.topology`). ``variant``: pc
    (Eq. 12 chooses theta_t), p, c or dasgd; ``theta``: a fixed theta_t in [0, 1] (with pc);
    ``criterion``: descent or printed (Eq. 12's reading); ``lam``: lambda of Eq. 2 in (0, 1];
    ``lr``: eta (the attribute :attr:`lr` may be changed between steps: a schedule);
    ``momentum``: heavy ball on the local gradient term, ``weight_decay``: L2 added to g (both 0
    in the paper). A setting that does not fit (clusters that do not sum to the world size, ...)
    raises :class:`mpidist.errors.UsageError`: one line on rank 0 and exit 2 inside ``with run``.
    """

    meet_every = MEET_EVERY

    def __init__(self, run, model: torch.nn.Module, *, steps: int | None = None, delay: int = 20,
                 clusters=None, lr: float = 0.1, variant: str = "pc", theta: float | None = None,
                 criterion: str = "descent", lam: float = 0.5, graph: str = "full",
                 mixing: str = "lazy", momentum: float = 0.0, weight_decay: float = 0.0):
        self.comm = getattr(run, "comm", run)
        self._metric = getattr(run, "metric", None)
        if isinstance(clusters, str):
            clusters = topo_mod.parse_clusters(clusters)
        if isinstance(delay, bool) or not isinstance(delay, numbers.Integral) or delay < 0:
            raise UsageError(f"PCASGD: delay (tau) must be an integer >= 0, got {delay!r}")
        if steps is not None and (isinstance(steps, bool)
                                  or not isinstance(steps, numbers.Integral) or steps <= 0):
            raise UsageError(f"PCASGD: steps must be a positive integer or None, got {steps!r}")
        self.topology = topo_mod.build(self.comm.size, clusters, graph, int(delay), mixing)
        self.variant = get_variant(variant, theta, criterion)
        self.lr = _number("lr", lr, lambda v: v > 0, "> 0")
        self.lam = _number("lam", lam, lambda v: 0 < v <= 1, "in (0, 1]")
        self.momentum = _number("momentum", momentum, lambda v: v >= 0, ">= 0")
        self.weight_decay = _number("weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
        self.model = model
        try:
            self.fp = FlatParams(model)
        except ValueError as e:  # no trainable parameters, or several dtypes
            raise UsageError(f"PCASGD: {e}") from None
        self._views = unflatten(self.fp.grads, self.fp.tensors)
        self.steps = None if steps is None else int(steps)
        limit = max_steps(self.fp.params.dtype)
        if self.steps is not None and self.steps > limit:
            raise UsageError(f"PCASGD: {steps} steps do not fit the step stamps of "
                             f"{self.fp.params.dtype} messages (at most {limit})")
        self._plan = self.steps if self.steps is not None else limit  # T of the message plan
        self.next_step = 0          # the step the next step() call takes
        self._predicting = [0.0, 0]  # sum and count of theta_t after the first tau steps
        self.agent: Agent | None = None
        self.finished = False
        if getattr(run, "resumed_state", None) is None:
            self.comm.ibcast(self.fp.params, 0, "init").wait()  # line 1: one x_0 for all agents
            self.agent = self._agent(None)
            self.agent.start(self.fp.params)      # x_0 to the reliable neighbours

    def _agent(self, resume) -> Agent:
        p = self.fp.params
        return Agent(self.comm, self.topology, self.comm.rank, self.variant, self.lam, self._plan,
                     self.fp.numel, p.dtype, p.device, self.momentum, self._metric, resume=resume)

    # ------------------------------------------------------------------ what a user reads
    @property
    def reliable(self) -> list[int]:
        """This agent's reliable neighbours (R without itself, Def. 1)."""
        return self.topology.reliable_neighbours(self.comm.rank)

    @property
    def unreliable(self) -> list[int]:
        """This agent's delayed neighbours (R^c, Def. 2)."""
        return self.topology.unreliable_neighbours(self.comm.rank)

    @property
    def predicting_share(self) -> float:
        """The share of this agent's steps after the first tau on which theta_t was 1 (the
        predicting step; the mean theta_t for a fixed theta), NaN before any."""
        s, k = self._predicting
        return s / k if k else float("nan")

    # ------------------------------------------------------------------ the step
    def zero_grad(self) -> None:
        """Zero the model's gradients in the flat buffer (keeps them views of it)."""
        self.fp.zero_grad()

    def _take_gradient(self) -> torch.Tensor:
        """The flat g of this step: a ``.grad`` that someone set to None (``model.zero_grad()``)
        and autograd then replaced is copied into the flat buffer and the view re-attached; a
        parameter without a gradient contributes zeros."""
        for p, view in zip(self.fp.tensors, self._views):
            g = p.grad
            if g is None:
                view.zero_()
                p.grad = view
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g)
                p.grad = view
        return self.fp.grads

    def step(self, t: int | None = None) -> StepInfo:
        """Step t of Algorithm 1 (t: the next step, 0, 1, ...; None: the next one) from the
        gradient of the user's backward pass: x_t and g_t to the delayed neighbours, the messages
        due consumed, x_{t+1} into the model's parameters (lines 6-8), x_{t+1} to the reliable
        neighbours. Returns what the agent did (theta_t, Eq. 12's cosines, staleness used)."""
        if self.agent is None:
            raise RuntimeError("PCASGD.step: this run was resumed (run.resumed_state is set): "
                               "call load_state_dict() with the saved state before the first step")
        if self.finished:
            raise RuntimeError("PCASGD.step: finish() was called; the exchange is closed")
        t = self.next_step if t is None else int(t)
        if t != self.next_step:
            raise RuntimeError(f"PCASGD.step({t}): the next step is {self.next_step} (every "
                               "agent takes the steps in order, one call each)")
        if t >= self._plan:
            raise RuntimeError(f"PCASGD.step({t}): the run was planned for {self._plan} steps")
        g = self._take_gradient()
        if self.weight_decay:
            g.add_(self.fp.params, alpha=self.weight_decay)
        info = self.agent.step(t, self.fp.params, g, self.lr)
        if t >= self.topology.tau:
            self._predicting[0] += info.theta
            self._predicting[1] += 1
        self.next_step = t + 1
        return info

    def finish(self) -> None:
        """After the last step (or a stop before it, every agent after the same step): complete
        every send and receive the messages still due, so that nothing is left in flight.
        Collective; call it once on every rank."""
        if self.agent is None or self.finished:
            return
        c = self.next_step - 1
        if c == self._plan - 1:
            self.agent.finish()      # the plan ran to its end: every receive was consumed
        else:
            self.agent.settle(c)     # stopped early, or open-ended: drain and withdraw
        self.finished = True

    # ------------------------------------------------------------------ checkpoints
    def settings(self) -> dict:
        """What a checkpoint must be continued with: the topology, the variant and the update's
        constants (``steps`` and ``lr`` may change, see :meth:`load_state_dict`)."""
        t = self.topology
        return {"world": t.n, "clusters": tuple(int(s) for s in t.clusters), "graph": t.graph,
                "delay": t.tau, "mixing": t.mixing, "variant": self.variant.name,
                "theta": self.variant.theta, "criterion": self.variant.criterion,
                "lam": self.lam, "momentum": self.momentum, "numel": self.fp.numel}

    def _sent_through(self, plan: int, c: int) -> tuple[int, int | None]:
        """The last stamps sent to reliable and to delayed neighbours up to step c under a plan
        of ``plan`` steps (see :mod:`mpidist.pcasgd.exchange`); the same on every agent."""
        t = self.topology
        delayed = t.tau > 0 and len(t.clusters) > 1 and self.variant.uses_unreliable
        return min(c, plan - 2), (min(c, plan - 1 - t.tau) if delayed else None)

    def state_dict(self) -> dict:
        """Everything needed to continue after the last step taken (a checkpoint): the messages
        that arrived but are consumed later, Eq. 2's history of own iterates, the momentum buffer,
        eta, the predicting-step counts and the settings. The model's weights are not in it (save
        ``model.state_dict()`` beside it). Waits for this agent's sends to complete."""
        if self.agent is None:
            raise RuntimeError("PCASGD.state_dict: nothing to save before load_state_dict() of a "
                               "resumed run")
        c = self.next_step - 1
        return {"step": c, "steps": self.steps, "settings": self.settings(), "lr": self.lr,
                "predicting": tuple(self._predicting), "agent": self.agent.state_dict(c)}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the step saved in ``state`` (:meth:`state_dict`), in a resumed run
        (``run.resumed_state`` set, so construction sent nothing). Posts the exchange; the next
        step is the saved one + 1. Settings other than ``steps`` and ``lr`` must be the saved
        ones; another ``steps`` only where the messages sent up to the saved step are the same."""
        if self.agent is not None:
            raise RuntimeError("PCASGD.load_state_dict: this agent started a fresh exchange at "
                               "construction (x_0 was sent); load a checkpoint in a resumed run "
                               "(mpidist.init(..., resume=DIR), where run.resumed_state is set)")
        c = int(state["step"])
        saved, mine = state["settings"], self.settings()
        diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in mine.items() if saved.get(k) != v]
        if diff:
            raise UsageError("PCASGD.load_state_dict: the checkpoint was saved with other "
                             f"settings ({', '.join(diff)})")
        old = state["steps"] if state["steps"] is not None else max_steps(self.fp.params.dtype)
        if self._sent_through(old, c) != self._sent_through(self._plan, c):
            raise UsageError(f"PCASGD.load_state_dict: the checkpoint after step {c} of a {old}-"
                             f"step run cannot continue as a {self._plan}-step run (the messages "
                             "of its last steps were not sent); keep its steps or resume from an "
                             "earlier checkpoint")
        self.agent = self._agent((c, state["agent"]))
        self.lr = float(state["lr"])
        self._predicting = list(state["predicting"])
        self.next_step = c + 1
