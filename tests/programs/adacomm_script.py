"""A user's AdaComm training script on the Python API, the "API run" of tests/*/test_adacomm_user.py.

It does what the command line

    mpirun -n N python -m mpidist.adacomm --model blobs:mlp --model-arg hidden=H \\
        --data blobs:blobs --method pasgd --tau TAU --batch-size B --lr LR --steps T \\
        --time-budget 0 --seed S

does (local momentum 0.9, weight decay 5e-4, block momentum 0.3: the command line's defaults),
written as a user would with ``mpidist.init``, the user's own ``torch.optim.SGD`` wrapped in
:class:`mpidist.adacomm.AdaComm` and ``mpidist.loop.Loop``, with the command line's batches
(``mpidist.data.Shard`` of the same seed): the final models must be the command line's bits.
``Loop(..., state=...)`` checkpoints it and ``run.resumed_state`` resumes it
(``opt.state_dict()`` / ``opt.load_state_dict()``).
"""
import torch
import torch.nn.functional as F

import blobs as mine
import mpidist
from mpidist import data
from mpidist.adacomm import AdaComm
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


def main(trace_dir, steps, seed=0, batch=16, lr=0.1, hidden=24, tau=4, **run_flags):
    with mpidist.init("adacomm", trace_dir=trace_dir, seed=seed, quiet=True, **run_flags) as run:
        (x, y), (x_test, y_test) = (tensors(d) for d in mine.blobs(None))
        model = mine.mlp(tuple(x.shape[1:]), 3, hidden=hidden).to(run.device)
        sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        opt = AdaComm(run, model, sgd, method="pasgd", tau=tau, global_momentum=0.3)
        shard = data.Shard(data.Dataset(x, y, "blobs", 3), run.rank, run.world_size, batch, seed,
                           run.device)
        saved = run.resumed_state
        if saved is not None:
            opt.load_state_dict(saved["adacomm"])        # the model is in it
            shard.load_state_dict(saved["shard"])
        loop = Loop(run, total=steps, meet_every=0, state=lambda t: {
            "adacomm": opt.state_dict(), "shard": shard.state_dict()})
        for t in loop:
            xb, yb = shard.next()
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            report = opt.step(loss)                       # local step, averaging every tau
            if loop.end_step(t) or (report and loop.agree(t, code=report.code)):
                return                                    # stopped: checkpoint saved
        opt.finish()                                      # the last model is the average
        acc = accuracy(model, x_test, y_test)
        if run.rank == 0:
            print(f"API test accuracy {100 * acc:.2f} % after {opt.averagings} averagings",
                  flush=True)
        run.save_model(model)
