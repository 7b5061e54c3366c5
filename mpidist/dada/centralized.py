"""The centralized ADDA baseline (Tzeng et al. 2017) in one process (``--centralized``): the source
and the target(s) feed ONE discriminator with the mean of the per-domain losses of Eq. 3, which is
what DADA's ``sync`` strategy computes in a distributed way; the tests compare the two."""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..comm import FlatParams
from ..errors import UsageError
from ..loop import Loop
from .nodes import (SourceNode, StepContext, TargetNode, build_discriminator, build_source,
                    check_networks, describe_networks, uses_user_parts)
from .report import setup_centralized
from .rules import adam
from .tasks import load_domain, num_targets


def adapt_centralized(args, device, run=None, on_step=None, cache: dict | None = None) -> dict:
    """The ADDA baseline in one process: source and k targets feed ONE discriminator, whose loss is
    the mean of the per-domain losses of Eq. 3; each E_t is updated from the same forward pass
    with the inverted label. The blocking reference of ``--strategy sync``. With ``run`` (the
    command line) the steps are traced on the run loop and the networks saved (``model``: the
    source's E_s and C, ``discriminator``, ``target<i>``: target i's E_t and C, each
    ``<run dir>/<name>/rank0.pt``); without, nothing is recorded."""
    k = num_targets(args, 1)
    t_start = time.perf_counter()
    domains = [load_domain(args, i, k) for i in range(k + 1)]
    classes = {d.train.num_classes for d in domains}
    if len(classes) != 1:
        raise UsageError(f"the domains have different numbers of classes {sorted(classes)}")
    shapes = [d.train.shape for d in domains]
    if len(set(shapes)) != 1:
        raise UsageError(f"the domains' inputs differ in shape {shapes}: one extractor serves "
                         "every domain")
    if uses_user_parts(args):
        check_networks(args, domains[0], device)
    net, source_acc = build_source(args, domains[0], device, cache)
    disc = build_discriminator(args, net.feature_dim, device)
    fpD = FlatParams(disc)
    source = SourceNode(net, domains[0], disc, args, device)
    targets = [TargetNode(copy.deepcopy(net), d, disc, args, device) for d in domains[1:]]
    before = [t.accuracy() for t in targets]
    optD = adam(disc.parameters(), args.lr_disc)
    B = args.batch_size
    labels = torch.cat([torch.zeros(B, 1, device=device), torch.ones(k * B, 1, device=device)])
    weights = torch.full(((k + 1) * B, 1), 1.0 / ((k + 1) * B), device=device)
    disc_params = list(disc.parameters())
    e_params = [p for t in targets for p in t.fpE.tensors]
    ctx = StepContext(fpD, None, targets)
    # one process: the loop never meets (--centralized refuses checkpoints)
    loop = Loop(run, total=args.steps, first_step=1, meet_every=0) if run is not None else None
    if run is not None:
        run.say(setup_centralized(args))
    t_adapt = time.perf_counter()
    for n in loop if loop is not None else range(1, args.steps + 1):
        feats = torch.cat([source.features()] + [t.features() for t in targets])
        logits = disc(feats)
        # the mean over domains of each domain's mean BCE (all batches have B rows)
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
                * weights).sum()
        loss.backward(inputs=disc_params, retain_graph=True)
        # each E_t: the inverted-label loss on its own rows (one backward for all of them)
        e_losses = [F.binary_cross_entropy_with_logits(logits[(i + 1) * B:(i + 2) * B], t.zeros)
                    for i, t in enumerate(targets)]
        for t in targets:
            t.fpE.zero_grad()
        torch.stack(e_losses).sum().backward(inputs=e_params)
        for t in targets:
            t.extractor_apply()
        e_losses = [v.item() for v in e_losses]
        optD.step()
        fpD.zero_grad()
        if on_step is not None:
            on_step(n, ctx)
        if loop is not None:
            run.metric(n, "d_loss", loss.item())
            run.metric(n, "e_loss", float(np.mean(e_losses)))
            if n % args.eval_every == 0 or loop.is_last(n):
                for i, t in enumerate(targets):
                    run.metric(n, f"target_acc_{i + 1}" if k > 1 else "target_acc", t.accuracy())
            loop.end_step(n, d_loss=loss.item())
    t_adapt = time.perf_counter() - t_adapt
    after = [t.accuracy() for t in targets]
    if run is not None:  # the source's network, D, and each target's network
        run.save_model(net)  # copies of D and E_t: their parameters are views of flat buffers
        run.save_model(copy.deepcopy(disc), "discriminator")
        for i, t in enumerate(targets):
            run.save_model(copy.deepcopy(t.net), f"target{i + 1}")
    return {"source_acc": source_acc, "targets": [(i + 1, d.rotation, b, a) for i, (d, b, a) in
                                                  enumerate(zip(domains[1:], before, after))],
            "disc": fpD.params.clone(), "extractors": [t.fpE.params.clone() for t in targets],
            "syncs": 0, "bytes_sent": 0, "bytes_received": 0, "disc_bytes": fpD.nbytes,
            "init_bytes": 0, "adapt_seconds": t_adapt, "labels": [d.label for d in domains],
            "networks": describe_networks(args, net, disc) if uses_user_parts(args) else None,
            "seconds": time.perf_counter() - t_start}
