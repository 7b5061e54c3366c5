"""PC-ASGD in your own script: ``mpirun -n 4 python -m mpidist.pcasgd.example`` (any number of
ranks; each is an agent, the first half one reliable cluster, the rest another, 5 steps apart).
Your model, your tensors, your loop; PCASGD does the exchange and update of each step from your
gradients, through run.comm, so every message is in the run's trace."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpidist
from mpidist.loop import Loop
from mpidist.pcasgd import PCASGD

STEPS = 300


def blobs(n, seed):  # three Gaussian blobs in 4-D: inputs [n, 4], labels [n]
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return 2.0 * torch.eye(3, 4)[y] + 0.7 * torch.randn(n, 4, generator=g), y


with mpidist.init("pcasgd", seed=0, quiet=True) as run:
    n, rank = run.world_size, run.rank
    x, y = blobs(600, seed=1)
    x, y = x[rank::n].to(run.device), y[rank::n].to(run.device)     # this agent's share
    x_test, y_test = (t.to(run.device) for t in blobs(300, seed=2))
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).to(run.device)
    clusters = (n // 2, n - n // 2) if n > 1 else (1,)
    agent = PCASGD(run, model, steps=STEPS, delay=5, clusters=clusters, lr=0.1, variant="pc")
    gen = torch.Generator().manual_seed(rank)                        # this agent's batches
    loop = Loop(run, total=STEPS, meet_every=agent.meet_every,       # checkpoints, resume:
                state=lambda t: {"agent": agent.state_dict(), "model": model.state_dict(),
                                 "batches": gen.get_state()})
    if run.resumed_state:                                            # mpidist.init(resume=DIR)
        model.load_state_dict(run.resumed_state["model"])
        agent.load_state_dict(run.resumed_state["agent"])
        gen.set_state(run.resumed_state["batches"])
    for t in loop:
        batch = torch.randint(len(x), (16,), generator=gen).to(run.device)
        agent.zero_grad()
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        agent.step(t)                      # exchange with the neighbours, x_t -> x_{t+1}
        run.metric(t, "loss", loss.item())
        if loop.end_step(t, loss=loss.item()):
            break                          # a stop signal: the checkpoint is saved
    agent.finish()                         # nothing left in flight
    if not loop.stopped:
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        accs = run.comm.allgather_object(acc)
        run.save_model(model)
        run.say(f"test accuracy of the {n} agents: mean {100 * sum(accs) / n:.1f} %, per agent "
                + " ".join(f"{100 * a:.1f}" for a in accs)
                + f"; predicting step on {100 * agent.predicting_share:.0f}% of rank 0's steps")
