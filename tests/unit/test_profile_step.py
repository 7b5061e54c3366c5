"""tools/profile_step.py's classification of a sampled stack (innermost frame first) and its
overhead fraction, on stacks written by hand."""
from __future__ import annotations

import os
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
sys.path.insert(0, TOOLS)
import profile_step as ps  # noqa: E402

V = "/venv/lib/python3.11/site-packages"
M = "/repo/mpidist"


@pytest.mark.parametrize("stack,want", [
    # a wait inside D-PSGD's optimizer step: the wait, not the update
    ([(f"{M}/handles.py", "_poll"), (f"{M}/handles.py", "wait"), (f"{M}/handles.py", "waitall"),
      (f"{M}/dpsgd/optimizer.py", "step"), (f"{M}/dpsgd/train.py", "train")], "wait"),
    # posting a send from the optimizer: the per-message path
    ([(f"{M}/comm.py", "isend"), (f"{M}/persistent.py", "start"),
      (f"{M}/dpsgd/optimizer.py", "step")], "comm path"),
    ([(f"{M}/handles.py", "test"), (f"{M}/pcasgd/exchange.py", "_recycle")], "comm path"),
    # the same frames at the line that calls the MPI library: its time, not mpidist's
    ([(f"{M}/handles.py", "test", "            if not self.req.Test():\n"),
      (f"{M}/pcasgd/exchange.py", "_recycle", "")], "mpi"),
    ([(f"{M}/comm.py", "isend", "        req = self.mpi.Isend(buf, dest, tag)\n")], "mpi"),
    ([(f"{M}/comm.py", "isend", "        t_post = self.clock()\n")], "comm path"),
    ([(f"{M}/buffers.py", "zero_grad"), (f"{M}/pcasgd/train.py", "train")], "update"),
    ([(f"{M}/trace_writer.py", "comm"), (f"{M}/handles.py", "_record")], "comm path"),
    ([(f"{V}/torch/autograd/__init__.py", "backward"), (f"{V}/torch/_tensor.py", "backward"),
      (f"{M}/dada/nodes.py", "disc_backward")], "backward"),
    ([(f"{V}/torch/nn/modules/linear.py", "forward"),
      (f"{V}/torch/nn/modules/module.py", "_call_impl"), (f"{M}/dada/nodes.py", "features")],
     "forward"),
    ([(f"{V}/torch/nn/functional.py", "cross_entropy"), (f"{M}/pcasgd/train.py", "train")],
     "forward"),
    ([(f"{V}/torch/optim/adam.py", "step"), (f"{M}/dada/rules.py", "_apply")], "update"),
    ([(f"{M}/pcasgd/rules.py", "predict"), (f"{M}/pcasgd/agent.py", "step")], "update"),
    ([(f"{M}/mdgan/exchange.py", "collect"), (f"{M}/mdgan/server.py", "iteration")], "wait"),
    ([(f"{M}/data.py", "next"), (f"{M}/dpsgd/train.py", "train")], "data"),
    ([(f"{M}/loop.py", "__call__"), (f"{M}/dpsgd/train.py", "train")], "other"),
    ([(f"{M}/pcasgd/wrapper.py", "_take_gradient")], "other"),
    ([(f"{M}/analysis/report.py", "text")], "other"),  # analysis is not the comm path
])
def test_classify_stack(stack, want):
    assert ps.classify_stack(stack) == want


def test_overhead_fraction():
    t = {"forward": 4.0, "backward": 3.0, "update": 1.0, "wait": 0.5, "mpi": 0.5,
         "comm path": 0.5, "data": 0.25, "other": 0.25}
    assert ps.overhead(t) == pytest.approx(1.0 / 10.0)   # the MPI library's time is not in it
    assert ps.overhead({"forward": 1.0}) == 0.0
