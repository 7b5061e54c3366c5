"""A user's training script with mpidist.pcasgd.PCASGD around the blobs MLP (tests/programs/
blobs.py), with the command line's batches (mpidist.data.Shard, batch 16, seed 0), so that
tests/*/test_pcasgd_user.py can compare its final models with those of
``python -m mpidist.pcasgd --model blobs:mlp --data blobs:blobs --clusters 2,2 --delay 5``::

    mpiexec -n 4 python tests/programs/pcasgd_script.py RUN_DIR STEPS [checkpoint N] [resume DIR]
        [open 1]

It zeroes the gradients with ``model.zero_grad()`` (set to None: the agent takes the fresh .grad
in), checkpoints and resumes through its own Loop(state=...), and prints on rank 0
``API accuracy <mean %> per agent <...>``. ``open 1``: PCASGD without ``steps`` (open-ended: the
last tau steps send messages that finish() receives and drops; the same parameters).
"""
import sys

import torch
import torch.nn.functional as F

import blobs
import mpidist
from mpidist import data
from mpidist.loop import Loop
from mpidist.pcasgd import PCASGD

run_dir, steps = sys.argv[1], int(sys.argv[2])
opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))

with mpidist.init("pcasgd", trace_dir=run_dir, seed=0, quiet=True,
                  checkpoint_every=opts.get("checkpoint"), resume=opts.get("resume")) as run:
    train, test = data.load("blobs:blobs", train=True), data.load("blobs:blobs", train=False)
    shard = data.Shard(train, run.rank, run.world_size, 16, seed=0)
    model = blobs.mlp((4,), 3)
    agent = PCASGD(run, model, steps=None if opts.get("open") else steps, delay=5,
                   clusters=(2, 2), lr=0.1, variant="pc")
    loop = Loop(run, total=steps, meet_every=agent.meet_every,
                state=lambda t: {"model": model.state_dict(), "shard": shard.state_dict(),
                                 "agent": agent.state_dict()})
    if run.resumed_state:
        model.load_state_dict(run.resumed_state["model"])
        shard.load_state_dict(run.resumed_state["shard"])
        agent.load_state_dict(run.resumed_state["agent"])
    for t in loop:
        x, y = shard.next()
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        agent.step(t)
        run.metric(t, "loss", loss.item())
        if loop.end_step(t, loss=loss.item()):
            break
    agent.finish()
    if not loop.stopped:
        with torch.no_grad():
            acc = (model(test.x).argmax(1) == test.y).float().mean().item()
        accs = run.comm.allgather_object(acc)
        run.save_model(model)
        run.say(f"API accuracy {100 * sum(accs) / len(accs):.2f} per agent "
                + " ".join(f"{100 * a:.2f}" for a in accs))
