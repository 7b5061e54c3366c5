"""A user's script on MD-GAN's Python API (:class:`mpidist.mdgan.MDGAN`): the blobs of
tests/programs/blobs.py with the tiny networks of mdgan_blobs.py, run on the shared loop with
checkpoints and resume, the same settings as the command line of mdgan_user_checks.py:

    mpiexec -n 4 python tests/programs/mdgan_script.py DIR [ITERATIONS]
"""
import sys

import torch

import blobs
import mdgan_blobs
import mpidist
from mpidist.loop import Loop
from mpidist.mdgan import MDGAN


def main(out, iterations, seed=0, batch=32, latent=8, k=1, **run_flags):
    with mpidist.init("mdgan", trace_dir=out, seed=seed, quiet=True, **run_flags) as run:
        train, _ = blobs.blobs(None)               # the whole training set, on every rank
        G = mdgan_blobs.generator(latent, (4,), 3).to(run.device)
        D = mdgan_blobs.discriminator((4,), 3).to(run.device)
        md = MDGAN(run, G, D, train, latent_size=latent, k=k, batch=batch)
        if run.resumed_state is not None:
            md.load_state_dict(run.resumed_state["mdgan"])
        loop = Loop(run, total=iterations, first_step=1, meet_every=10,
                    state=lambda i: {"mdgan": md.state_dict()})
        for i in loop:
            out_i = md.step(i)
            if run.rank != 0:
                run.metric(i, "api_loss_d", out_i["loss_d"])
            if loop.end_step(i):
                break
        md.finish()
        if loop.stopped:
            return
        if run.rank == 0:
            run.save_model(G, "generator")
            labels = torch.arange(900) % 3
            x = md.sample(900, labels, torch.Generator().manual_seed(5)).cpu()
            near = (torch.cdist(x, blobs.CENTRES).argmin(1) == labels).float().mean().item()
            print(f"API: {100 * near:.1f} % of the generated samples lie nearest their class's "
                  "centre", flush=True)
        else:
            run.save_model(md.discriminator, "discriminator")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300)
