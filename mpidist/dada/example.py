"""DADA in your own script: ``mpirun -n 2 python -m mpidist.dada.example`` (rank 0 the source, the
others targets). DiscriminatorSync keeps the discriminators in step (GA, p = 2) through run.comm."""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpidist
from mpidist.dada import DiscriminatorSync, report_accuracies
from mpidist.loop import Loop


def blobs(n, degrees, seed):  # three Gaussian blobs in 2-D, turned by `degrees`
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.tensor([[2, 0], [-1, 1.7], [-1, -1.7]])[y] + 0.6 * torch.randn(n, 2, generator=g)
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return x @ torch.tensor([[c, s], [-s, c]]), y


with mpidist.init("dada", seed=0, quiet=True) as run:
    target = run.rank > 0                                    # rank 0: labelled source data
    x, y = blobs(600, 50.0 * target, seed=run.rank)          # targets: the blobs turned 50 degrees
    x_test, y_test = blobs(300, 50.0 * target, seed=100 + run.rank)
    with torch.random.fork_rng():                            # the same initial networks everywhere
        torch.manual_seed(0)
        E = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())  # features
        C = nn.Linear(16, 3)                                                           # classes
        D = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))              # domain
    opt = torch.optim.Adam([*E.parameters(), *C.parameters()], lr=1e-2)
    for _ in range(0 if target else 200):                    # the source learns its labels
        opt.zero_grad()
        F.cross_entropy(C(E(x)), y).backward()
        opt.step()
    sync = DiscriminatorSync(run, D, torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999)),
                             strategy="ga", period=2)
    sync.share_initial_models(E, C)                          # E_s, C_s and D to every target
    optE = torch.optim.Adam(E.parameters(), 1e-3, betas=(0.5, 0.999))
    accuracy = lambda: (C(E(x_test)).argmax(1) == y_test).float().mean().item()  # noqa: E731
    before, label = accuracy(), torch.full((64, 1), float(target))  # D: 0 source, 1 target
    loop = Loop(run, total=400, first_step=1, meet_every=sync.meet_every, state=lambda n: {
        "sync": sync.state_dict(), "E": E.state_dict(), "optE": optE.state_dict()})
    for n in loop:
        logits = D(E(x[torch.randint(len(x), (64,))]))
        F.binary_cross_entropy_with_logits(logits, label).backward(
            inputs=list(D.parameters()), retain_graph=target)  # D's gradient: the sync's
        if target:                                           # E_t fools D (ADDA's inverted label)
            optE.zero_grad()
            F.binary_cross_entropy_with_logits(logits, 1 - label).backward(
                inputs=list(E.parameters()))
        sync.step()                                          # accumulate; every p steps exchange
        if target:
            optE.step()
        if loop.end_step(n):
            break                                            # a stop signal: checkpoint saved
    else:
        got = report_accuracies(run.comm, run.world_size - 1, 0.0, before, accuracy())
        run.save_model(nn.ModuleDict({"extractor": E, "classifier": C}))
        for rank, _, b, a in got or []:
            print(f"target rank {rank}: source-only {100 * b:.1f}% -> adapted {100 * a:.1f}%")
