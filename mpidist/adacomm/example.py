"""AdaComm in your own script: ``mpirun -n 4 python -m mpidist.adacomm.example``. Every rank trains
its own copy of a small network on its own part of the data with its own torch optimizer; AdaComm
averages the models through run.comm (traced) after every tau local steps and re-chooses tau from
the training loss every `interval` seconds (Eq. 6)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpidist
from mpidist.adacomm import AdaComm
from mpidist.loop import Loop

CENTRES = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])


def blobs(n, seed):                            # your tensors: three Gaussian blobs in 4-D
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return CENTRES[y] + 0.7 * torch.randn(n, 4, generator=g), y


with mpidist.init("adacomm", seed=0, quiet=True) as run:
    x, y = (t.to(run.device) for t in blobs(150, seed=1 + run.rank))   # this worker's own data
    x_test, y_test = (t.to(run.device) for t in blobs(300, seed=1000))
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).to(run.device)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)    # your optimizer
    opt = AdaComm(run, model, sgd, method="adacomm", tau=8, interval=0.5, global_momentum=0.3)
    if run.resumed_state is not None:                       # after resume=DIR: continue bitwise
        opt.load_state_dict(run.resumed_state["adacomm"])
    loop = Loop(run, total=400, meet_every=0, state=lambda t: {"adacomm": opt.state_dict()})
    for t in loop:
        batch = torch.randint(len(x), (16,), device=run.device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        report = opt.step(loss)                             # local step; averaging when due
        if loop.end_step(t, loss=loss.item(), tau=opt.tau) or (
                report is not None and loop.agree(t, code=report.code)):
            break                                           # stopped by a signal: checkpointed
    else:
        opt.finish()                                        # the last model is the average
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        run.save_model(model)                               # <run dir>/model/rank<k>.pt
        if run.rank == 0:
            taus = " -> ".join(str(r.tau) for r in opt.schedule.history)
            print(f"AdaComm on {run.world_size} workers: tau {taus}, {opt.averagings} "
                  f"averagings; test accuracy of the averaged model {100 * acc:.1f} %")
