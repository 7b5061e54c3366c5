"""DADA in a user's own training script: :class:`DiscriminatorSync` wraps the discriminator and its
optimizer (STYLE.md 3, like torch's ``PostLocalSGDOptimizer(optimizer, averager)``) and keeps the
discriminators of all ranks in step by a strategy of Table 1, exchanging through ``run.comm`` only
(so every byte is in the run's trace). The command line (``python -m mpidist.dada``) drives the
same object (:mod:`mpidist.dada.nodes`).

Every rank runs the script under ``mpirun``; rank 0 is the source, the others targets::

    sync = DiscriminatorSync(run, D, torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)),
                             strategy="ga", period=2)
    sync.share_initial_models(E, C)          # once: E_s, C_s and D from rank 0 (Alg. 2 line 1)
    for n in Loop(run, total=N, first_step=1, meet_every=sync.meet_every, state=...):
        logits = D(features)                 # source: E_s(x_s), fixed; target: E_t(x_t)
        F.binary_cross_entropy_with_logits(logits, domain_label).backward(
            inputs=list(D.parameters()), retain_graph=True)
        ...                                  # target: E_t's inverted-label loss, backward into E_t
        sync.step()                          # Table 1's rule, the exchange, D's optimizer step
        ...                                  # target: E_t's optimizer step

Rules of use: D's gradient belongs to the sync (it is G_acc, the accumulated gradient of Algorithm
1 line 6): never call D's optimizer or its ``zero_grad`` yourself (``zero_grad(set_to_none=True)``
is tolerated: the sync takes the fresh gradient in); backpropagate into D only D's own loss
(``inputs=`` on every other backward through D); finish every backward through D before
:meth:`DiscriminatorSync.step` (Naive and MA change D's weights there).
"""
from __future__ import annotations

import torch

from ..comm import FlatParams, unflatten
from .exchange import INIT_CHANNELS, DiscExchange, broadcast_initial
from .rules import DiscriminatorRule, Strategy, make_strategy


class DiscriminatorSync:
    """One rank's discriminator D under a strategy of Table 1 (Algorithm 1 lines 6-7, Algorithm 2
    lines 7-8), with its exchange through ``run.comm``.

    ``run``: the :class:`mpidist.runtime.Run` of ``mpidist.init`` (or a Communicator);
    ``discriminator``: D (its parameters become views of one flat buffer, :class:`FlatParams`);
    ``optimizer``: D's optimizer, stepped by the sync only; ``strategy``: ``sync``, ``ga`` (DADA),
    ``naive``, ``ma`` or ``dpsgd``, or a :class:`Strategy`; ``period``: p (default 2 for
    ga/naive/ma, 1 for sync/dpsgd).

    Per step: optionally :meth:`begin` before D's forward pass (D-PSGD's weights then fly while the
    gradient is computed), then :meth:`step` after D's backward, or :meth:`post` and :meth:`wait`
    around work that does not touch D (the exchange flies meanwhile). The step counter is the
    sync's own (1, 2, ...; a sync-up step is ``n % p == 0``); :meth:`state_dict` keeps it with D's
    weights, G_acc, D's optimizer, MA's D_sync and the byte counters, so that a user's
    ``Loop(..., state=...)`` checkpoints and resumes it bitwise.
    """

    def __init__(self, run, discriminator: torch.nn.Module, optimizer, strategy="ga",
                 period: int | None = None):
        self.comm = getattr(run, "comm", run)
        self.strategy = strategy if isinstance(strategy, Strategy) else \
            make_strategy(strategy, period)
        self.discriminator, self.optimizer = discriminator, optimizer
        self.fp = FlatParams(discriminator)
        self.rule = DiscriminatorRule(self.strategy, self.fp, optimizer)
        p = self.fp.params
        self.exchange = DiscExchange(self.comm, self.fp.numel, p.dtype, p.device,
                                     self.strategy.channel)
        self._views = unflatten(self.fp.grads, self.fp.tensors)
        self.steps = 0           # steps completed
        self._n = None           # the step in progress (begun or posted)
        self._posted = False

    # ------------------------------------------------------------------ what a user reads
    @property
    def meet_every(self) -> int:
        """Steps between two meetings of a ``Loop`` that add no coupling: 10 sync-up steps."""
        return self.strategy.meet_every

    @property
    def updates_locally(self) -> bool:
        """Whether :meth:`post` changes D's weights (naive, ma: the local step): every backward
        through D must come before it."""
        return self.rule.updates_locally

    @property
    def bytes_sent(self) -> int:
        return self.exchange.bytes_sent

    def share_initial_models(self, *modules: torch.nn.Module) -> int:
        """Algorithm 2 line 1, once before the first step, on every rank: the source's (rank 0's)
        extractor and classifier (``modules``, at most two) and D overwrite every target's. MA's
        D_sync starts from the shared D. Returns the bytes broadcast."""
        if len(modules) > 2:
            raise ValueError("share_initial_models: at most an extractor and a classifier")
        channels = INIT_CHANNELS[:len(modules)] + INIT_CHANNELS[2:]
        nbytes = broadcast_initial(self.comm, modules, self.fp, channels)
        if self.rule.d_sync is not None:
            self.rule.d_sync.copy_(self.fp.params)
        return nbytes

    # ------------------------------------------------------------------ the step
    def _start(self) -> int:
        if self._n is None:
            self._n = self.steps + 1
        return self._n

    def begin(self) -> None:
        """Optional, before D's forward pass: D-PSGD posts D's weights now, so that they fly while
        the gradient is computed (the same bits as posting them in :meth:`post`)."""
        early = self.rule.before_grad(self._start())
        if early is not None and not self.exchange.pending:
            self.exchange.post(early)

    def _take_gradient(self) -> None:
        """Make sure this step's gradient is in G_acc: a ``.grad`` that someone set to None (then
        replaced by autograd) is added into the flat buffer and the view re-attached."""
        for p, view in zip(self.fp.tensors, self._views):
            g = p.grad
            if g is None:
                p.grad = view
            elif g.data_ptr() != view.data_ptr():
                view.add_(g)
                p.grad = view

    def post(self) -> None:
        """After D's backward (g^(n) added into G_acc) and every other backward through D: the
        strategy's local work (naive, ma: a step of D's optimizer) and the exchange of what the
        strategy sends on a sync-up step (G_acc or D's weights), which then flies."""
        if self._posted:
            raise RuntimeError("DiscriminatorSync.post: this step was posted already; call wait()")
        n = self._start()
        self._take_gradient()
        if self.rule.before_grad(n) is not None and not self.exchange.pending:
            self.exchange.post(self.fp.params)       # D-PSGD without begin(): the same bits
        payload = self.rule.after_grad(n)
        if payload is not None:
            self.exchange.post(payload)
        self._posted = True

    def wait(self) -> None:
        """Finish the step: wait for the exchange and combine (average, apply D's optimizer, clear
        G_acc; as the strategy says). D must not be used between :meth:`post` and here."""
        if not self._posted:
            self.post()
        if self.exchange.pending:
            self.rule.combine(self._n, self.exchange.wait())
        self.steps, self._n, self._posted = self._n, None, False

    def step(self) -> None:
        """:meth:`post` then :meth:`wait`: one step of D under the strategy."""
        self.post()
        self.wait()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs (between steps): the step counter, D's weights, G_acc,
        D's optimizer state, MA's D_sync, the exchange's counters."""
        if self._n is not None:
            raise RuntimeError("DiscriminatorSync.state_dict: a step is in progress")
        return {"strategy": (self.strategy.name, self.strategy.period), "steps": self.steps,
                "disc": self.fp.params.clone(), "disc_grads": self.fp.grads.clone(),
                "opt_disc": self.optimizer.state_dict(),
                "d_sync": None if self.rule.d_sync is None else self.rule.d_sync.clone(),
                "exchange": self.exchange.counters()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (ValueError for another strategy or D)."""
        saved = state.get("strategy")
        if saved is not None and tuple(saved) != (self.strategy.name, self.strategy.period):
            raise ValueError(f"the saved discriminator ran strategy {saved[0]} with p = "
                             f"{saved[1]}, not {self.strategy.name} with p = "
                             f"{self.strategy.period}")
        if state["disc"].numel() != self.fp.numel:
            raise ValueError(f"the saved discriminator has {state['disc'].numel()} parameters, "
                             f"this one {self.fp.numel}")
        self.fp.params.copy_(state["disc"])
        self.fp.grads.copy_(state["disc_grads"])
        self.optimizer.load_state_dict(state["opt_disc"])
        if self.rule.d_sync is not None:
            self.rule.d_sync.copy_(state["d_sync"])
        self.exchange.set_counters(state["exchange"])
        self.steps = int(state.get("steps", state.get("n", 0)))
        self._n, self._posted = None, False
