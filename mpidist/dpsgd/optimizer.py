"""D-PSGD in a user's own training script: :class:`DPSGD`, an optimizer over the user's model whose
``step()`` after ``loss.backward()`` is Algorithm 1 (Lian et al. 2017) for this worker:

    x_{k+1,i} = sum_j W_ij x_{k,j} - eta g_i(x_{k,i})

with the neighbours' models moved through ``run.comm`` (channel ``params``, so into the run's
trace). Like BlueFog's neighbour-averaging optimizers it may also wrap the user's own torch
optimizer (STYLE.md 3 and 17): the step then mixes the models and lets that optimizer apply the
gradient taken at x_k (momentum, weight decay, Adam: the user's choice; ``torch.optim.SGD(lr)``
alone is Algorithm 1 again). Every rank runs the script under ``mpirun``::

    with mpidist.init("dpsgd", seed=0) as run:
        model = MyNet().to(run.device)
        opt = DPSGD(run, model, lr=0.1, graph="ring")      # x_0 := rank 0's model, on every rank
        for t in Loop(run, total=T, state=lambda t: {"model": model.state_dict(),
                                                     "dpsgd": opt.state_dict()}):
            opt.begin()                      # optional: x_k flies during forward/backward
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()                                   # wait for the neighbours, mix, step
            ...

The command line (``python -m mpidist.dpsgd``) drives the same object (:mod:`mpidist.dpsgd.train`).
"""
from __future__ import annotations

import contextlib

import torch

from .. import topology
from ..buffers import attach_grads
from ..comm import FlatParams, unflatten
from . import rules
from .exchange import broadcast_init, consensus
from .worker import Worker


class DPSGD:
    """Worker ``run.rank`` of D-PSGD on the user's ``model``.

    ``run``: the :class:`mpidist.runtime.Run` of ``mpidist.init`` (or a Communicator);
    ``lr``: eta, Algorithm 1's plain step (change :attr:`lr` between steps for a schedule), or
    ``optimizer``: the user's torch optimizer over ``model``'s parameters, stepped after the mix
    (give one of the two); ``graph``: ring, exponential or full; ``mixing``: metropolis or lazy
    (:func:`mpidist.topology.build`). The model's parameters become views of one flat buffer
    (:class:`mpidist.comm.FlatParams`): build the model and move it to its device first. Every
    worker starts from rank 0's model (broadcast here, channel ``init``), except in a run resumed
    from a checkpoint (``run.resumed_state``), whose model and this object's
    :meth:`load_state_dict` come from that checkpoint.
    """

    def __init__(self, run, model: torch.nn.Module, lr: float | None = None, graph: str = "ring",
                 mixing: str = "metropolis", optimizer: torch.optim.Optimizer | None = None):
        if (lr is None) == (optimizer is None):
            raise ValueError("DPSGD: give lr (Algorithm 1's step x <- sum_j W_ij x_j - lr g) or "
                             "optimizer (your optimizer's step after the mix), one of the two")
        self.comm = getattr(run, "comm", run)
        n, i = self.comm.size, self.comm.rank
        self.topology = topology.build(n, (n,), graph, 0, mixing)   # TopologyError: one line
        self.graph, self.mixing = graph, mixing
        self.model, self.optimizer = model, optimizer
        self.lr = None if lr is None else float(lr)
        self.fp = FlatParams(model)
        x = self.fp.params
        self.worker = Worker(self.comm, self.topology, i, self.fp.numel, x.dtype, x.device)
        self._views = unflatten(self.fp.grads, self.fp.tensors)
        self.steps = 0              # iterations completed
        self._posted = False
        if getattr(run, "resumed_state", None) is None:
            broadcast_init(self.comm, x)

    # ------------------------------------------------------------------ what a user reads
    @property
    def neighbours(self) -> list[int]:
        """This worker's neighbours on the graph, in rank order."""
        return list(self.worker.peers)

    @property
    def mixing_rate(self) -> float:
        """rho, W's second largest eigenvalue modulus: pure mixing shrinks the consensus distance
        at least by this factor per iteration."""
        return rules.mixing_rate(self.topology.W)

    @property
    def params(self) -> torch.Tensor:
        """This worker's x_k, flat (views: the model's parameters are slices of it)."""
        return self.fp.params

    # ------------------------------------------------------------------ the step
    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear the gradients (in the flat buffer; ``set_to_none`` is accepted and ignored: the
        gradients stay views of that buffer)."""
        self.fp.zero_grad()

    def begin(self) -> None:
        """Optional, before the forward pass: send x_k to the neighbours now, so that the models
        fly while the gradient is computed (Algorithm 1's overlap; the same bits as sending them
        in :meth:`step`). The model must not change until :meth:`step`."""
        if not self._posted:
            self.worker.post(self.fp.params)
            self._posted = True

    def _take_gradient(self) -> None:
        """Make sure the flat gradient buffer holds this step's gradient: a ``.grad`` that the
        user's ``zero_grad(set_to_none=True)`` detached (autograd then made a new one) is copied
        in and the view re-attached; a parameter without a gradient counts as zero."""
        attach_grads(self.fp.tensors, self._views)

    def step(self, closure=None):
        """One iteration, after the gradient g_i(x_k) is in the model's ``.grad`` (or computed by
        ``closure()``, which then runs while the models fly and whose value is returned): wait for
        the neighbours' x_k, then ``x <- W_ii x + sum_j W_ij x_j - lr g`` (with ``optimizer``:
        the mix, then that optimizer's step on the gradient)."""
        out = None
        if closure is not None:
            self.begin()
            with torch.enable_grad():
                out = closure()
        self._take_gradient()
        self.begin()                     # without begin() nor closure: the exchange starts here
        received = self.worker.wait()
        self._posted = False
        x = self.fp.params
        if self.optimizer is None:
            self.worker.mix(x, received, self.fp.grads, self.lr)
        else:
            self.worker.mix(x, received, None, 0.0)
            self.optimizer.step()
        self.steps += 1
        return out

    # ------------------------------------------------------------------ the averaged model
    def consensus(self) -> tuple[float, torch.Tensor]:
        """Collective (every worker calls it; channel ``eval``): (||x_i - x_bar|| of this worker,
        x_bar), x_bar the mean of the workers' models, the algorithm's output."""
        return consensus(self.comm, self.fp.params)

    @contextlib.contextmanager
    def averaged(self, mean: torch.Tensor | None = None):
        """``with opt.averaged(): evaluate(model)``: the model holds x_bar inside the block
        (``mean``, e.g. from :meth:`consensus`, or else computed here: then every worker must
        enter the block) and this worker's own x_k again after it."""
        if mean is None:
            _, mean = self.consensus()
        own = self.fp.params.clone()
        self.fp.params.copy_(mean)
        try:
            yield self.model
        finally:
            self.fp.params.copy_(own)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Between iterations (nothing in flight then): the iteration count, eta, the graph and
        the wrapped optimizer's state. The model's weights are the model's: checkpoint
        ``model.state_dict()`` beside this."""
        if self._posted:
            raise RuntimeError("DPSGD.state_dict: an exchange is in flight (begin() without "
                               "step())")
        return {"graph": self.graph, "mixing": self.mixing, "world_size": self.comm.size,
                "steps": self.steps, "lr": self.lr,
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (ValueError for another graph, mixing or world)."""
        saved = (state["graph"], state["mixing"], int(state["world_size"]))
        if saved != (self.graph, self.mixing, self.comm.size):
            raise ValueError(f"the saved D-PSGD ran a {saved[0]} graph with {saved[1]} weights on "
                             f"{saved[2]} workers, not a {self.graph} graph with {self.mixing} "
                             f"weights on {self.comm.size}")
        if (state["optimizer"] is None) != (self.optimizer is None):
            raise ValueError("the saved D-PSGD " + ("wrapped an optimizer, this one does not"
                                                   if self.optimizer is None else
                                                   "had no optimizer, this one wraps one"))
        self.steps = int(state["steps"])
        if state["lr"] is not None:
            self.lr = float(state["lr"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self._posted = False
