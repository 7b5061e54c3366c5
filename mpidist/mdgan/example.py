"""MD-GAN in your own script: ``mpirun -n 4 python -m mpidist.mdgan.example``. Rank 0 (the server)
holds a small conditional generator, ranks 1..3 (the workers) a discriminator each and a third of
the data; every iteration the server sends generated batches and gets back the workers' error
feedback through run.comm (traced), and the workers swap discriminators every epoch."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpidist
from mpidist.loop import Loop
from mpidist.mdgan import MDGAN

CENTRES = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])


class Generator(nn.Module):                        # your networks: G(z, labels) and D(x)
    def __init__(self, latent=8, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent + classes, 32), nn.ReLU(),
                                 nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, z, labels):
        return self.net(torch.cat([z, F.one_hot(labels, 3).float()], 1))


def discriminator():                               # logits: real/fake, then the 3 classes
    return nn.Sequential(nn.Linear(4, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32),
                         nn.LeakyReLU(0.2), nn.Linear(32, 1 + 3))


g = torch.Generator().manual_seed(1)               # your tensors: three Gaussian blobs in 4-D
y = torch.arange(600) % 3
x = CENTRES[y] + 0.7 * torch.randn(600, 4, generator=g)

with mpidist.init("mdgan", seed=0, quiet=True) as run:
    G, D = Generator().to(run.device), discriminator().to(run.device)
    md = MDGAN(run, G, D, (x, y), latent_size=8, k=1, batch=32)   # G on rank 0, D on 1..N
    if run.resumed_state is not None:              # init(..., resume=DIR): continue bitwise
        md.load_state_dict(run.resumed_state["mdgan"])
    loop = Loop(run, total=300, first_step=1, meet_every=10,
                state=lambda i: {"mdgan": md.state_dict()})
    for i in loop:                                 # iterations 1..I as Algorithm 1 counts them
        md.step(i)                                 # server: update G; workers: D_n, feedback, swap
        if loop.end_step(i):
            break                                  # stopped by a signal: checkpointed
    md.finish()
    if not loop.stopped and run.rank == 0:
        run.save_model(G, "generator")             # <run dir>/generator/rank0.pt
    elif not loop.stopped:
        run.save_model(md.discriminator, "discriminator")   # the D_n held after the swaps
    if run.rank == 0 and not loop.stopped:
        labels = torch.arange(900) % 3             # 300 samples of each class
        samples = md.sample(900, labels, torch.Generator().manual_seed(5)).cpu()
        nearest = torch.cdist(samples, CENTRES).argmin(1)
        acc = (nearest == labels).float().mean().item()
        print(f"MD-GAN on {run.world_size - 1} workers: {100 * acc:.1f} % of the generated "
              "samples lie nearest their class's centre")
