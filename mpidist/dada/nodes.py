"""The two roles of DADA: the source node (Algorithm 1, rank 0) and a target node (Algorithm 2,
ranks 1..k), each with its networks, its own data and its step; plus how the networks are built.

Each node computes its own part of the adversarial loss (Eq. 3, split by domain), with L the binary
cross-entropy on D's one logit:

    source (Alg. 1, line 4)   L_adv^s = L(D_s(E_s(xi_s)), 0)     E_s stays fixed, as in ADDA
    target (Alg. 2, line 4)   L_adv^t = L(D_t(E_t(xi_t)), 1)

and a target updates E_t at EVERY step with ADDA's inverted-label loss L(D_t(E_t(xi_t)), 0) (the GAN
form of "max_E L_adv" in Eq. 4), from the same forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import data, metrics, models
from ..comm import FlatParams
from .rules import adam
from .tasks import TASKS, Domain


@torch.no_grad()
def _features(extractor, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    was = extractor.training
    extractor.eval()
    out = torch.cat([extractor(x[i:i + batch]) for i in range(0, len(x), batch)])
    extractor.train(was)
    return out


class Node:
    """One step n of a node (Alg. 1 lines 3-7, Alg. 2 lines 3-8): D's gradient g^(n) added into
    G_acc, the strategy's exchange (``rule``: a DiscriminatorRule, ``ex``: a DiscExchange) posted
    as soon as its payload is ready and waited for last, so that it flies while the node computes.
    Returns the step's metrics."""

    def step(self, n: int, rule, ex) -> dict:
        early = rule.before_grad(n)
        if early is not None:
            ex.post(early)                      # D-PSGD: weights fly while the gradient is made
        vals = self.disc_backward()             # g^(n) added into G_acc = fp.grads
        self.before_local_update(rule, vals)
        payload = rule.after_grad(n)
        if payload is not None:
            ex.post(payload)
        self.while_exchanging(vals)
        if ex.pending:
            rule.combine(n, ex.wait())
        return vals

    def before_local_update(self, rule, vals: dict) -> None:
        """Work that needs D as it was in the forward pass, before a local step may change it."""

    def while_exchanging(self, vals: dict) -> None:
        """Work done while D's exchange flies."""


class SourceNode(Node):
    """Algorithm 1, lines 3-5: a batch xi_s, L_adv^s = L(D_s(E_s(xi_s)), 0), its gradient over D_s
    added into D's grads. E_s is fixed, so its features are computed once."""

    def __init__(self, net, domain: Domain, disc, args, device):
        self.net = net
        feats = _features(net.extractor, domain.train.x.to(device))
        ds = data.Dataset(feats, domain.train.y, domain.label, domain.train.num_classes)
        self.batches = data.Shard(ds, 0, 1, args.batch_size, seed=args.seed * 7919, device=device)
        self.disc = disc
        self.label = torch.zeros(args.batch_size, 1, device=device)

    def features(self) -> torch.Tensor:
        return self.batches.next()[0]

    def disc_backward(self) -> dict:
        logits = self.disc(self.features())
        loss = F.binary_cross_entropy_with_logits(logits, self.label)
        loss.backward()
        return {"d_loss": loss.item(), "d_acc": (logits < 0).float().mean().item()}


class TargetNode(Node):
    """Algorithm 2, lines 3-7: a batch xi_t, L_adv^t = L(D_t(E_t(xi_t)), 1) and its gradient over
    D_t (:meth:`disc_backward`); then E_t's update from the same forward pass with ADDA's inverted
    label, L(D_t(E_t(xi_t)), 0) (:meth:`extractor_step`), at every step."""

    def __init__(self, net, domain: Domain, disc, args, device):
        self.net, self.disc, self.domain = net, disc, domain
        self.fpE = FlatParams(net.extractor)
        self.optE = adam(net.extractor.parameters(), args.lr_target)
        self.batches = data.Shard(domain.train, 0, 1, args.batch_size,
                                  seed=args.seed * 7919 + domain.index, device=device)
        self.disc_params = [p for p in disc.parameters()]
        self.ones = torch.ones(args.batch_size, 1, device=device)
        self.zeros = torch.zeros(args.batch_size, 1, device=device)
        self.logits = None

    def features(self) -> torch.Tensor:
        return self.net.extractor(self.batches.next()[0])

    def disc_backward(self) -> dict:
        self.logits = self.disc(self.features())
        loss = F.binary_cross_entropy_with_logits(self.logits, self.ones)
        loss.backward(inputs=self.disc_params, retain_graph=True)
        return {"d_loss": loss.item(), "d_acc": (self.logits > 0).float().mean().item()}

    def extractor_backward(self, logits=None) -> float:
        """E_t's gradient of ADDA's inverted-label loss L(D_t(E_t(xi_t)), 0), through D_t as it
        was in the forward pass (D must not have changed since), into E_t's grads only."""
        logits = self.logits if logits is None else logits
        self.fpE.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits, self.zeros)
        loss.backward(inputs=self.fpE.tensors)
        self.logits = None
        return loss.item()

    def extractor_apply(self) -> None:
        """Alg. 2 line 6: update E_t (every step, whatever the strategy)."""
        self.optE.step()

    def extractor_step(self, logits=None) -> float:
        loss = self.extractor_backward(logits)
        self.extractor_apply()
        return loss

    def before_local_update(self, rule, vals: dict) -> None:
        if rule.updates_locally:                # E_t's gradient must see D before its local step
            vals["e_loss"] = self.extractor_backward()

    def while_exchanging(self, vals: dict) -> None:
        if "e_loss" not in vals:                # E_t every step, while D's exchange flies
            vals["e_loss"] = self.extractor_backward()
        self.extractor_apply()

    def accuracy(self) -> float:
        t = self.domain.test
        return metrics.evaluate(self.net, t.x, t.y, device=self.ones.device)[0]


class StepContext:
    """What a per-step hook ``on_step(n, ctx)`` sees (tests, experiments): ``fp`` (D's
    FlatParams), ``rule`` (the DiscriminatorRule; None when centralized), ``node`` (this rank's
    SourceNode or TargetNode; the list of TargetNodes when centralized), ``exchange``."""

    def __init__(self, fp, rule=None, node=None, exchange=None):
        self.fp, self.rule, self.node, self.exchange = fp, rule, node, exchange


# ======================================================================================= networks

def build_source(args, domain: Domain, device, cache: dict | None = None):
    """The source's ADDA network, pre-trained on its labelled data (Alg. 1 line 1: E_s, C_s), and
    its accuracy on the source test set. Seeded by ``--seed`` alone, so deterministic: ``cache``
    (a dict kept by the caller, e.g. an experiment running many adaptations in one process)
    memoises it."""
    key = (args.task, args.seed, args.pretrain_steps, args.pretrain_lr, args.batch_size,
           args.image_size, args.extractor_weights, str(device))
    net = build_network(args, domain.train.num_classes, device, seed=args.seed)
    if cache is not None and key in cache:
        state, acc = cache[key]
        net.load_state_dict(state)
        return net, acc
    if args.extractor_weights:
        load_extractor_weights(net.extractor, args.extractor_weights, device)
    opt = torch.optim.Adam(net.parameters(), lr=args.pretrain_lr)
    batches = data.Shard(domain.train, 0, 1, args.batch_size, seed=args.seed, device=device)
    for _ in range(args.pretrain_steps):
        x, y = batches.next()
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    acc = metrics.evaluate(net, domain.test.x, domain.test.y, device=device)[0]
    if cache is not None:
        cache[key] = ({k: v.clone() for k, v in net.state_dict().items()}, acc)
    return net, acc


def load_extractor_weights(extractor, path: str, device) -> None:
    """Start E_s from a saved state dict (e.g. torchvision's ImageNet ResNet-50 for Office-31,
    whose ``fc.*`` entries are ignored). Only the source reads it, so a file that does not fit
    raises ValueError, which ends the whole job (the parser's check has made sure it exists)."""
    state = torch.load(path, map_location=device, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = extractor.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"--extractor-weights {path} does not fit the extractor: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")


def build_network(args, num_classes: int, device, seed: int | None = None):
    """The task's ADDA network (E and C), initialised from ``seed`` when given (the rank's own
    random stream is left as it was)."""
    task = TASKS[args.task]
    size = args.image_size or task.size
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return models.build(task.model, (task.channels, size, size), num_classes).to(device)


def build_discriminator(args, feature_dim: int, device):
    """D, initialised from ``--seed`` (Alg. 1 line 1: "randomly initialized D_s")."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        return models.build("adda-discriminator", (feature_dim,), 1).to(device)
