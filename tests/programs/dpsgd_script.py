"""A user's D-PSGD training script on the Python API, the "API run" of tests/*/test_dpsgd_user.py.

It does what the command line

    mpirun -n N python -m mpidist.dpsgd --model blobs:mlp --model-arg hidden=H --data blobs:blobs \\
        --batch-size B --lr LR --steps T --seed S

does, written as a user would with ``mpidist.init``, :class:`mpidist.dpsgd.DPSGD` and
``mpidist.loop.Loop``, with the command line's batches (``mpidist.data.Shard`` of the same seed):
the final models must be the command line's bits. ``Loop(..., state=...)`` checkpoints it and
``run.resumed_state`` resumes it (``opt.state_dict()`` / ``opt.load_state_dict()``).
"""
import torch
import torch.nn.functional as F

import blobs as mine
import mpidist
from mpidist import data
from mpidist.dpsgd import DPSGD
from mpidist.loop import Loop


def tensors(ds):
    """A torch Dataset of (input, label) as (inputs, labels) tensors."""
    return (torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in ds]),
            torch.stack([torch.as_tensor(y) for _, y in ds]).long())


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).double().mean().item()
    model.train()
    return acc


def main(trace_dir, steps, seed=0, batch=16, lr=0.1, hidden=24, graph="ring", **run_flags):
    with mpidist.init("dpsgd", trace_dir=trace_dir, seed=seed, quiet=True, **run_flags) as run:
        (x, y), (x_test, y_test) = (tensors(d) for d in mine.blobs(None))
        model = mine.mlp(tuple(x.shape[1:]), 3, hidden=hidden).to(run.device)
        opt = DPSGD(run, model, lr=lr, graph=graph)         # x_0: rank 0's model everywhere
        shard = data.Shard(data.Dataset(x, y, "blobs", 3), run.rank, run.world_size, batch, seed,
                           run.device)
        saved = run.resumed_state
        if saved is not None:
            model.load_state_dict(saved["model"])
            shard.load_state_dict(saved["shard"])
            opt.load_state_dict(saved["dpsgd"])
        loop = Loop(run, total=steps, meet_every=10, state=lambda t: {
            "model": model.state_dict(), "shard": shard.state_dict(), "dpsgd": opt.state_dict()})
        for t in loop:
            xb, yb = shard.next()
            opt.begin()                                     # x_k flies during forward/backward
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()                                      # x <- sum_j W_ij x_j - lr g
            run.metric(t, "loss", loss.item())
            if loop.end_step(t, loss=loss.item()):
                return                                      # stopped: checkpoint saved
        own = accuracy(model, x_test, y_test)
        _, mean = opt.consensus()
        with opt.averaged(mean):
            bar = accuracy(model, x_test, y_test)
        if run.rank == 0:
            print(f"API rank 0 test accuracy {100 * own:.2f} %, averaged model x_bar "
                  f"{100 * bar:.2f} %", flush=True)
        run.save_model(model)
