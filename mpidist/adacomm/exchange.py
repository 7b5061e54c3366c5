"""What AdaComm moves, to whom and when: one allreduce (op avg, every rank to every rank) of one
flat buffer, through ``mpidist.comm`` only.

- PASGD / AdaComm (Eq. (1)): after tau local steps the whole model is averaged, channel ``params``
  (:class:`ModelAverager`), with the block momentum of Eqs. (7)-(8) applied to the average.
- Fully synchronous SGD: the gradients are averaged at every step, channel ``grads``
  (:class:`GradientAverager`).

The few values every rank must agree on (:data:`CTRL`: the recent training loss, the elapsed
training time, the first loss F(x_0), the stop code) ride at the end of the same buffer, so an
averaging step is still ONE message and every rank reads the same averaged bits.
"""
from __future__ import annotations

import torch

from ..comm import FlatParams, aligned_empty, flatten, unflatten

# control slots appended to every averaged buffer: the worker's recent training loss, its elapsed
# training time, its first loss F(x_0), and its stop code (SIGUSR1/SIGTERM/timed checkpoint, as a
# term of a sum: mpidist.loop.stop_term)
CTRL = ("loss", "time", "loss0", "stop")
LOSS, TIME, LOSS0, STOP = range(len(CTRL))


class FlatState(FlatParams):
    """:class:`mpidist.comm.FlatParams` with both buffers extended for AdaComm's one-message
    averaging: ``x = [parameters | floating buffers (BatchNorm statistics) | control slots]`` and
    ``g = [gradients | control slots]``; ``params``/``grads`` are their leading slices and stay the
    model's tensors and gradients (views, no packing), ``model_state`` is ``x`` without the control
    slots, ``ctrl``/``gctrl`` the slots. Build it after the model is on its device.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__(module)
        dtype, device = self.params.dtype, self.params.device
        self.buffers = [(m, name, b) for m in module.modules() for name, b in m._buffers.items()
                        if b is not None and b.dtype == dtype]
        n, nb, c = self.numel, sum(b.numel() for _, _, b in self.buffers), len(CTRL)
        self.n_buffers = nb
        self.x = aligned_empty(n + nb + c, dtype, device)
        self.g = aligned_empty(n + c, dtype, device).zero_()
        self.x[:n].copy_(self.params)
        self.params, self.model_state, self.ctrl = self.x[:n], self.x[:n + nb], self.x[n + nb:]
        self.grads, self.gctrl = self.g[:n], self.g[n:]
        self.ctrl.zero_()
        for p, v in zip(self.tensors, unflatten(self.params, self.tensors)):
            p.data = v
        self.zero_grad()  # FlatParams re-attaches every .grad to its view in the new buffer
        if nb:
            bufs = [b for _, _, b in self.buffers]
            flatten(bufs, self.x[n:n + nb])
            for (m, name, _), v in zip(self.buffers, unflatten(self.x[n:n + nb], bufs)):
                m._buffers[name] = v

    @property
    def nbytes(self) -> int:
        """Bytes of one model averaging (the whole ``x``)."""
        return self.x.numel() * self.x.element_size()


class ModelAverager:
    """Eq. (1)'s averaging step, and the block momentum of Eqs. (7)-(8) when ``beta_glob > 0``.

    :meth:`average` allreduces the whole ``state.x`` (model, buffers, control slots) with MPI's
    nonblocking allreduce (op avg, channel ``params``). With block momentum the averaged model
    ``x_bar`` only measures the period's step: ``G_j = (x_{j tau+1} - x_bar) / eta_j`` (the workers'
    accumulated local updates over one period, averaged: with plain local SGD exactly Eq. (7)'s
    ``(1/m) sum_i sum_k g(x^(i))``), ``u_j = beta_glob u_{j-1} + G_j`` (Eq. 7) and
    ``x_{(j+1) tau+1} = x_{j tau+1} - eta_j u_j`` (Eq. 8). ``beta_glob = 0`` is plain averaging.
    """

    def __init__(self, comm, state: FlatState, beta_glob: float = 0.0, channel: str = "params"):
        self.comm, self.state, self.beta, self.channel = comm, state, float(beta_glob), channel
        self.anchor = self.u = None
        if self.beta > 0:
            self.anchor = state.params.clone()  # x_{j tau + 1}: the model the period started from
            self.u = torch.zeros_like(self.anchor)
        self.count = 0

    def average(self, lr: float) -> torch.Tensor:
        """Average now (blocking: the next local step needs the result); return the averaged
        control slots."""
        self.comm.iallreduce(self.state.x, "avg", self.channel).wait()
        self.count += 1
        if self.u is not None:
            x = self.state.params
            # u = beta u + (anchor - x_bar) / eta ; anchor = anchor - eta u ; x = anchor
            self.u.mul_(self.beta).add_(self.anchor, alpha=1.0 / lr).add_(x, alpha=-1.0 / lr)
            self.anchor.add_(self.u, alpha=-lr)
            x.copy_(self.anchor)
        return self.state.ctrl

    def reset(self) -> None:
        """Forget the momentum; the current (identical) model starts the next period."""
        if self.u is not None:
            self.anchor.copy_(self.state.params)
            self.u.zero_()

    def state_dict(self) -> dict:
        return {"count": self.count, "anchor": None if self.u is None else self.anchor.clone(),
                "u": None if self.u is None else self.u.clone()}

    def load_state_dict(self, d: dict) -> None:
        self.count = d["count"]
        if self.u is not None:
            self.anchor.copy_(d["anchor"])
            self.u.copy_(d["u"])


class GradientAverager:
    """Fully synchronous SGD: the gradients (and the control slots) averaged at every step,
    channel ``grads``; the optimizer then makes the same step on every rank."""

    def __init__(self, comm, state: FlatState, channel: str = "grads"):
        self.comm, self.state, self.channel = comm, state, channel
        self.count = 0

    def average(self) -> torch.Tensor:
        self.comm.iallreduce(self.state.g, "avg", self.channel).wait()
        self.count += 1
        return self.state.gctrl

    def reset(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, d: dict) -> None:
        self.count = d["count"]
