"""D-PSGD in your own script: ``mpirun -n 4 python -m mpidist.dpsgd.example``. Every rank trains
its own copy of a small network on its own part of the data; DPSGD averages the models with the
ring neighbours through run.comm (traced) and steps: x_i <- sum_j W_ij x_j - lr g_i(x_i)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpidist
from mpidist.dpsgd import DPSGD
from mpidist.loop import Loop

CENTRES = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])


def blobs(n, seed):                            # your tensors: three Gaussian blobs in 4-D
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return CENTRES[y] + 0.7 * torch.randn(n, 4, generator=g), y


with mpidist.init("dpsgd", seed=0, quiet=True) as run:
    x, y = (t.to(run.device) for t in blobs(150, seed=1 + run.rank))   # this worker's own data
    x_test, y_test = (t.to(run.device) for t in blobs(300, seed=1000))
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).to(run.device)
    opt = DPSGD(run, model, lr=0.1, graph="ring")           # every worker starts from rank 0's
    if run.resumed_state is not None:                       # after --resume: continue bitwise
        model.load_state_dict(run.resumed_state["model"])
        opt.load_state_dict(run.resumed_state["dpsgd"])
    loop = Loop(run, total=300, meet_every=10,
                state=lambda t: {"model": model.state_dict(), "dpsgd": opt.state_dict()})
    for t in loop:
        batch = torch.randint(len(x), (16,), device=run.device)
        opt.begin()                                         # x_k flies while we compute g(x_k)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        opt.step()                                          # wait, mix with neighbours, step
        run.metric(t, "loss", loss.item())
        if loop.end_step(t, loss=loss.item()):
            break                                           # stopped by a signal: checkpointed
    else:
        _, x_bar = opt.consensus()                          # every rank: the averaged model
        with torch.no_grad(), opt.averaged(x_bar):
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        run.save_model(model)                               # <run dir>/model/rank<k>.pt
        if run.rank == 0:
            print(f"D-PSGD on {run.world_size} workers: test accuracy of the averaged model "
                  f"{100 * acc:.1f} %")
