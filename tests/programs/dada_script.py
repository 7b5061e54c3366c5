"""A user's DADA training script on the Python API, the "API run" of tests/*/test_dada_user.py.

It does step for step what the command line

    mpirun -n 2 python -m mpidist.dada --source-data dada_blobs:source \\
        --target-data dada_blobs:target --extractor dada_blobs:extractor \\
        --classifier dada_blobs:classifier --discriminator dada_blobs:discriminator \\
        --batch-size 32 --pretrain-steps P --lr-disc LR --lr-target LR --steps N --seed S

does, written as a user would with ``mpidist.init``, :class:`mpidist.dada.DiscriminatorSync` and
``mpidist.loop.Loop``, with the command line's seeds and batches (its fixed split of the target
domain, ``mpidist.data.Shard`` for the batches): the final discriminator and target network must be
the command line's bits. ``Loop(..., state=...)`` checkpoints it and ``run.resumed_state`` resumes
it (``sync.state_dict()`` / ``sync.load_state_dict()``).

    mpiexec -n 2 python tests/programs/dada_script.py OUT_DIR STEPS
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

import dada_blobs as mine
import mpidist
from mpidist import data
from mpidist.dada import DiscriminatorSync, report_accuracies
from mpidist.loop import Loop
from mpidist.models.adda import ADDANet

SPLIT_SEED = 20190   # the command line's fixed split of a target domain among the targets


def tensors(ds):
    """A torch Dataset of (input, label) as (inputs, labels) tensors."""
    return (torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in ds]),
            torch.stack([torch.as_tensor(y) for _, y in ds]).long())


@torch.no_grad()
def features(E, x):
    """E_s's features of every source sample, once (E_s stays fixed), in eval mode."""
    E.eval()
    out = torch.cat([E(x[i:i + 512]) for i in range(0, len(x), 512)])
    E.train()
    return out


def accuracy(net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    net.train()
    return acc


def main(trace_dir, steps, seed=0, B=32, pretrain=200, lr=1e-3, strategy="ga", period=2,
         **run_flags):
    with mpidist.init("dada", trace_dir=trace_dir, seed=seed, quiet=True, **run_flags) as run:
        k, rank, saved = run.world_size - 1, run.rank, run.resumed_state
        train, test = (mine.source if rank == 0 else mine.target)(None)
        (x, y), (xt, yt) = tensors(train), tensors(test)
        classes = int(y.max()) + 1
        if rank > 0:  # target i holds the i-th of k disjoint parts of the target domain
            part = np.array_split(np.random.default_rng(SPLIT_SEED).permutation(len(y)), k)
            x, y = x[torch.as_tensor(part[rank - 1])], y[torch.as_tensor(part[rank - 1])]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            E = mine.extractor(tuple(x.shape[1:]))
            C = mine.classifier(16, classes)
        net = ADDANet(E, C, 16)
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            D = mine.discriminator(16)
        sync = DiscriminatorSync(run, D, torch.optim.Adam(D.parameters(), lr, betas=(0.5, 0.999)),
                                 strategy=strategy, period=period)
        if saved is None:
            if rank == 0:  # Algorithm 1 line 1: E_s and C_s learn the labelled source
                opt = torch.optim.Adam(net.parameters(), lr=1e-3)
                batches = data.Shard(data.Dataset(x, y, "source", classes), 0, 1, B, seed=seed)
                for _ in range(pretrain):
                    xb, yb = batches.next()
                    opt.zero_grad()
                    F.cross_entropy(net(xb), yb).backward()
                    opt.step()
            sync.share_initial_models(E, C)  # Algorithm 2 line 1
        else:  # resumed: the networks and D as the checkpoint holds them
            net.load_state_dict(saved["net"])
            sync.load_state_dict(saved["sync"])
        before = accuracy(net, xt, yt) if saved is None else saved["before"]
        if rank == 0:
            batches = data.Shard(data.Dataset(features(E, x), y, "source", classes), 0, 1, B,
                                 seed=seed * 7919)
        else:
            batches = data.Shard(data.Dataset(x, y, "target", classes), 0, 1, B,
                                 seed=seed * 7919 + rank)
            optE = torch.optim.Adam(E.parameters(), lr, betas=(0.5, 0.999))
        label = torch.full((B, 1), float(rank > 0))   # D's domain label: 0 source, 1 target
        if saved is not None:
            batches.load_state_dict(saved["batches"])
            if rank > 0:
                optE.load_state_dict(saved["optE"])

        def state(n):
            s = {"sync": sync.state_dict(), "net": net.state_dict(), "before": before,
                 "batches": batches.state_dict()}
            if rank > 0:
                s["optE"] = optE.state_dict()
            return s
        loop = Loop(run, total=steps, first_step=1, meet_every=sync.meet_every, state=state)
        for n in loop:
            xb = batches.next()[0]
            logits = D(xb if rank == 0 else E(xb))
            d_loss = F.binary_cross_entropy_with_logits(logits, label)
            d_loss.backward(inputs=list(D.parameters()), retain_graph=rank > 0)
            if rank > 0:  # E_t: ADDA's inverted label, into E_t only
                optE.zero_grad()
                F.binary_cross_entropy_with_logits(logits, 1 - label).backward(
                    inputs=list(E.parameters()))
            sync.step()
            if rank > 0:
                optE.step()
            if loop.end_step(n, d_loss=d_loss.item()):
                return None
        after = accuracy(net, xt, yt) if rank > 0 else float("nan")
        got = report_accuracies(run.comm, k, 0.0, before, after)
        run.save_model(net)
        run.save_model(D, "discriminator")
        if rank == 0:
            for r, _, b, a in got:
                print(f"API target rank {r}: source-only {100 * b:.2f}% -> adapted "
                      f"{100 * a:.2f}%", flush=True)
        return got


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
