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

from .. import data, metrics, models, user
from ..comm import FlatParams
from ..errors import UsageError
from ..models.adda import ADDANet
from .rules import adam
from .tasks import TASKS, Domain, user_domains


@torch.no_grad()
def _features(extractor, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    was = extractor.training
    extractor.eval()
    out = torch.cat([extractor(x[i:i + batch]) for i in range(0, len(x), batch)])
    extractor.train(was)
    return out


class Node:
    """One step n of a node (Alg. 1 lines 3-7, Alg. 2 lines 3-8) on the public API: D's gradient
    g^(n) added into G_acc, then the :class:`~mpidist.dada.sync.DiscriminatorSync` posts the
    strategy's exchange as soon as its payload is ready and waits for it last, so that it flies
    while the node computes. Returns the step's metrics."""

    def step(self, n: int, sync) -> dict:
        if sync.steps != n - 1:
            raise RuntimeError(f"step {n}: the discriminator sync has done {sync.steps} steps")
        sync.begin()                            # D-PSGD: weights fly while the gradient is made
        vals = self.disc_backward()             # g^(n) added into G_acc = fp.grads
        self.before_local_update(sync.rule, vals)
        sync.post()
        self.while_exchanging(vals)
        sync.wait()
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
    SourceNode or TargetNode; the list of TargetNodes when centralized), ``exchange``, ``sync``
    (the DiscriminatorSync; None when centralized)."""

    def __init__(self, fp, rule=None, node=None, exchange=None, sync=None):
        self.fp, self.rule, self.node, self.exchange, self.sync = fp, rule, node, exchange, sync


# ======================================================================================= networks

def user_networks(args) -> bool:
    """Whether any network is the user's own (``--extractor``, ``--classifier``,
    ``--discriminator``)."""
    return any(getattr(args, k, None) for k in ("extractor", "classifier", "discriminator"))


def uses_user_parts(args) -> bool:
    """Whether the run uses any of the user's own domains or networks."""
    return user_domains(args) or user_networks(args)


def build_source(args, domain: Domain, device, cache: dict | None = None):
    """The source's ADDA network, pre-trained on its labelled data (Alg. 1 line 1: E_s, C_s), and
    its accuracy on the source test set. Seeded by ``--seed`` alone, so deterministic: ``cache``
    (a dict kept by the caller, e.g. an experiment running many adaptations in one process)
    memoises it."""
    key = (args.task, args.seed, args.pretrain_steps, args.pretrain_lr, args.batch_size,
           args.image_size, args.extractor_weights, str(device),
           *(getattr(args, k, None) for k in ("source_data", "extractor", "classifier")))
    net = build_network(args, domain.train.num_classes, device, seed=args.seed,
                        in_shape=domain.train.shape)
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


def _user_module(spec: str, flag: str, signature: str, *call_args) -> torch.nn.Module:
    """``FUNCTION(*call_args)`` of ``flag MODULE:FUNCTION``, checked to be a trainable module."""
    return user.build_module(spec, flag, lambda fn: fn(*call_args), signature=signature)


@torch.no_grad()
def _probe(module, x: torch.Tensor, flag: str, spec: str, what: str) -> torch.Tensor:
    """``module(x)`` in eval mode, no gradient, the RNG untouched; an exception is one line."""
    was = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            return module(x)
    except Exception as e:  # noqa: BLE001  (a shape or dtype mismatch: name the shapes)
        first = str(e).splitlines()[0] if str(e) else ""
        raise UsageError(f"{flag} {spec} does not fit its input: {what} {tuple(x.shape)} "
                         f"({type(e).__name__}: {first})") from None
    finally:
        module.train(was)


def feature_dim(extractor, in_shape, spec: str) -> int:
    """F, the width of the features ``[batch, F]`` a user's extractor gives for ``in_shape``."""
    x = torch.zeros(2, *in_shape, device=next(extractor.parameters()).device)
    f = _probe(extractor, x, "--extractor", spec, "inputs")
    if not (isinstance(f, torch.Tensor) and f.dim() == 2 and f.shape[0] == 2):
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise UsageError(f"--extractor {spec}: gives {shape} for inputs {tuple(x.shape)}; "
                         "expected features [batch, F] (end it with torch.nn.Flatten())")
    return int(f.shape[1])


def _user_network(args, in_shape, num_classes: int):
    """E and C when any of them, or the data, is the user's: ``--extractor`` FUNCTION(in_shape)
    (default ADDA's LeNet on images), ``--classifier`` FUNCTION(feature_dim, num_classes) (default
    a linear layer on a user's extractor, the LeNet's own on the LeNet)."""
    if args.extractor:
        extractor = _user_module(args.extractor, "--extractor", "FUNCTION(in_shape)",
                                 tuple(in_shape))
        fdim = feature_dim(extractor, in_shape, args.extractor)
        classifier = None if args.classifier else torch.nn.Linear(fdim, num_classes)
    else:
        model = "adda-lenet" if user_domains(args) else TASKS[args.task].model
        if len(in_shape) != 3:
            raise UsageError(f"the built-in extractor ({model}) takes images [C, H, W]; the "
                             f"inputs are {tuple(in_shape)}: give --extractor MODULE:FUNCTION")
        net = models.build(model, tuple(in_shape), num_classes)
        extractor, classifier, fdim = net.extractor, net.classifier, net.feature_dim
    if args.classifier:
        classifier = _user_module(args.classifier, "--classifier",
                                  "FUNCTION(feature_dim, num_classes)", fdim, num_classes)
    return ADDANet(extractor, classifier, fdim)


def build_network(args, num_classes: int, device, seed: int | None = None, in_shape=None):
    """The task's ADDA network (E and C), initialised from ``seed`` when given (the rank's own
    random stream is left as it was); the user's own parts where given (``in_shape``: the
    domain's input shape)."""
    task = TASKS[args.task]
    size = args.image_size or task.size
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if not uses_user_parts(args):
            return models.build(task.model, (task.channels, size, size), num_classes).to(device)
        if in_shape is None:
            in_shape = (task.channels, size, size)
        return _user_network(args, in_shape, num_classes).to(device)


def build_discriminator(args, feature_dim: int, device):
    """D, initialised from ``--seed`` (Alg. 1 line 1: "randomly initialized D_s"): ADDA's, or
    ``--discriminator`` FUNCTION(feature_dim)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        spec = getattr(args, "discriminator", None)
        if spec:
            return _user_module(spec, "--discriminator", "FUNCTION(feature_dim)",
                                feature_dim).to(device)
        return models.build("adda-discriminator", (feature_dim,), 1).to(device)


def check_networks(args, domain: Domain, device) -> None:
    """Before any training, on every rank with its own domain: E, C and D built as the run will
    build them and run once on two training samples (eval mode, no gradient, nothing changed): C's
    output must be [batch, classes] for the labels and D's one domain logit [batch, 1]. A mistake
    is one line (UsageError)."""
    k = domain.train.num_classes
    net = build_network(args, k, device, seed=args.seed, in_shape=domain.train.shape)
    disc = build_discriminator(args, net.feature_dim, device)
    x, y = domain.train.x[:2].to(device), domain.train.y[:2].to(device)
    e_name = args.extractor or "(built-in)"
    f = _probe(net.extractor, x, "--extractor", e_name, "inputs")
    if not (isinstance(f, torch.Tensor) and tuple(f.shape) == (len(x), net.feature_dim)):
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise UsageError(f"--extractor {e_name}: gives {shape} for inputs {tuple(x.shape)}; "
                         f"expected features [batch, {net.feature_dim}]")
    c_name = args.classifier or "(built-in)"
    out = _probe(net.classifier, f, "--classifier", c_name, "features")
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (len(x), k)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"--classifier {c_name} does not fit the labels: features "
                         f"{tuple(f.shape)}, output {shape}, labels {tuple(y.shape)} of {k} "
                         f"classes; expected [batch, {k}] (one logit per class)")
    d_name = getattr(args, "discriminator", None) or "(built-in)"
    logit = _probe(disc, f, "--discriminator", d_name, "features")
    if not (isinstance(logit, torch.Tensor) and tuple(logit.shape) == (len(x), 1)):
        shape = tuple(logit.shape) if isinstance(logit, torch.Tensor) else type(logit).__name__
        raise UsageError(f"--discriminator {d_name}: gives {shape} for features "
                         f"{tuple(f.shape)}; expected one domain logit per sample [batch, 1]")


def describe_networks(args, net, disc) -> str:
    """``extractor m:f (1234 parameters), classifier (built-in, 51), discriminator ...``."""
    def one(role, spec, module):
        return f"{role} {spec or '(built-in)'} ({models.count_parameters(module)} parameters)"
    return ", ".join([one("extractor", args.extractor, net.extractor),
                      one("classifier", args.classifier, net.classifier),
                      one("discriminator", getattr(args, "discriminator", None), disc)])
