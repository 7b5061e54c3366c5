"""DADA: distributed asynchronous domain adaptation (Gan, Mathur et al., "Distributed Asynchronous
Domain Adaptation", Algorithms 1 and 2, Table 1), where only discriminator gradients cross the
network.

Rank 0 is the labelled source domain, every other rank an unlabelled target domain. The source
pre-trains its extractor E_s and classifier C on its data, then sends E_s, C and a freshly
initialised discriminator D to the targets ONCE (Algorithm 2, line 1; channels ``init_extractor``,
``init_classifier``, ``init_disc``). After that, for N steps, each node computes its own adversarial
loss on its own data (Eq. 3, split by domain):

    source (Alg. 1, line 4)   L_adv^s = L(D_s(E_s(xi_s)), 0)     E_s stays fixed, as in ADDA
    target (Alg. 2, line 4)   L_adv^t = L(D_t(E_t(xi_t)), 1)

with L the binary cross-entropy on D's one logit. The target extractor E_t is updated at EVERY step
to fool the discriminator with ADDA's inverted-label loss L(D_t(E_t(xi_t)), 0) (the GAN form of
"max_E L_adv" in Eq. 4), from the same forward pass. The discriminators are kept in step by one of
Table 1's strategies with sync-up period p (``--strategy``, ``--sync-period``):

    sync    exchange and average D's gradients every step (p = 1): equal to centralized ADDA
    ga      Gradient Accumulation, DADA itself: accumulate G_acc for p steps, then exchange, average
            and apply it (Alg. 1 lines 6-7, Alg. 2 lines 7-8); D_s and D_t stay bitwise identical
    naive   apply local gradients; every p steps average the weights of D_s and D_t
    ma      Moving Average: apply local gradients, then average with D_sync, the last synchronised
            D; every p steps average the weights and store the average as D_sync
    dpsgd   the D-PSGD baseline (Lian et al. 2017) on the discriminators: every step average the
            weights, then apply the local gradient computed at the local weights

Only discriminator gradients (sync, ga) or weights (naive, ma, dpsgd) cross ranks after the initial
transfer, on channel ``disc_grads`` / ``disc_params``, one D-sized message to every other rank per
sync-up step: no images, features or labels. After training each target sends its two accuracies
(three float64) on channel ``report`` for rank 0's summary; every 10 sync-up steps one 8-byte
allreduce on channel ``control`` agrees on a stop signal (SIGUSR1/SIGTERM: checkpoint and stop, see
:func:`adapt_distributed`). With more than one target, all of them join the same discriminator
averaging (the mean over all ranks, taken in rank order so that every rank computes the same bits)
and each reports its own accuracy.

``--centralized`` runs the ADDA baseline (Tzeng et al. 2017) in one process: the source and the
target(s) feed ONE discriminator with the mean of the per-domain losses, which is what ``sync``
computes in a distributed way.

    mpirun -n 2 python -m mpidist.dada                     # digits, 0 -> 30 degrees, ga, p = 2
    mpirun -n 2 python -m mpidist.dada --strategy naive --sync-period 4
    mpirun -n 4 python -m mpidist.dada --rotation 30 45 60  # three targets, one D averaging
    python -m mpidist.dada --centralized                   # the ADDA baseline in one process
    mpirun -n 2 python -m mpidist.dada --task mnist-usps --data-root ~/data
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, data, metrics, models, runtime
from .comm import FlatParams, flatten, unflatten, waitall
from .errors import UsageError

ALGORITHM = "dada"
TAG_DISC, TAG_REPORT = 31, 32
INIT_CHANNELS = ("init_extractor", "init_classifier", "init_disc")


# ======================================================================================= tasks

@dataclass(frozen=True)
class Task:
    """One adaptation task of the paper: datasets (names of :func:`mpidist.data.load`), the image
    size and channels both domains are brought to, and the ADDA network."""
    source: str
    target: str
    size: int
    channels: int
    model: str
    rotated: bool = False   # the target is the source dataset rotated by --rotation degrees
    about: str = ""
    rotation: float = 0.0   # the default --rotation of a rotated task


TASKS = {
    "digits-rot": Task("digits", "digits", 16, 1, "adda-lenet", True,
                       "embedded UCI digits, upright -> rotated (Rotated MNIST in miniature)",
                       30.0),
    "mnist-rot": Task("mnist", "mnist", 28, 1, "adda-lenet", True,
                      "Rotated MNIST, 0 degrees -> 60..300 (Table 2)", 60.0),
    "mnist-usps": Task("mnist", "usps", 28, 1, "adda-lenet", False, "MNIST -> USPS (Table 3)"),
    "usps-mnist": Task("usps", "mnist", 28, 1, "adda-lenet", False, "USPS -> MNIST (Table 3)"),
    "svhn-mnist": Task("svhn", "mnist", 32, 1, "adda-lenet", False,
                       "SVHN -> MNIST, both grey 32x32 (Table 3)"),
    "office-a-w": Task("office31-amazon", "office31-webcam", 224, 3, "adda-resnet50", False,
                       "Office-31 Amazon -> Webcam (Table 3)"),
    "office-w-d": Task("office31-webcam", "office31-dslr", 224, 3, "adda-resnet50", False,
                       "Office-31 Webcam -> DSLR (Table 3)"),
    "office-d-w": Task("office31-dslr", "office31-webcam", 224, 3, "adda-resnet50", False,
                       "Office-31 DSLR -> Webcam (Table 3)"),
}
_SPLIT_SEED = 20190  # the fixed split of a rotated task's images into source and target parts


@dataclass
class Domain:
    """One node's data: ``index`` 0 is the source, 1..k the targets."""
    index: int
    label: str
    rotation: float
    train: data.Dataset
    test: data.Dataset


def target_rotations(args, k: int) -> list[float]:
    """The rotation of each of the k targets of a rotated task: ``--rotation`` holds one angle
    (every target) or one per target."""
    rot = args.rotation if args.rotation else [TASKS[args.task].rotation]
    if len(rot) not in (1, k):
        raise UsageError(f"--rotation gives {len(rot)} angles for {k} target(s): give one angle "
                         f"(every target) or one per target")
    return [float(r) for r in (rot * k if len(rot) == 1 else rot)]


def num_targets(args, world_size: int) -> int:
    """k: every rank but the source in a distributed run; in --centralized, one target per
    --rotation angle (rotated tasks) or one."""
    if args.centralized:
        return len(args.rotation) if (TASKS[args.task].rotated and args.rotation) else 1
    return world_size - 1


def load_domain(args, index: int, k: int) -> Domain:
    """Domain ``index`` of a task with k targets, as the node that owns it loads it.

    Rotated tasks: the training images are split once (fixed seed) into a source half and a target
    half, the target half into k disjoint parts, so that no image is on two nodes; the target's
    test set is the test set rotated by its angle. Other tasks: the source uses its whole training
    set, target i the i-th of k disjoint parts of the target's, tested on the target's test set.
    """
    task = TASKS[args.task]
    size = args.image_size or task.size

    def get(name, train, rot=0.0):
        return data.load(name, root=args.data_root, download=args.download, train=train,
                         size=size, channels=task.channels, rotate_deg=rot)
    if task.rotated:
        rot = 0.0 if index == 0 else target_rotations(args, k)[index - 1]
        train = get(task.source, True, rot)
        halves = np.array_split(np.random.default_rng(_SPLIT_SEED).permutation(len(train)), 2)
        part = halves[0] if index == 0 else np.array_split(halves[1], k)[index - 1]
        label = f"{task.source} {rot:g} deg"
        return Domain(index, label, rot, train.subset(part), get(task.source, False, rot))
    name = task.source if index == 0 else task.target
    train = get(name, True)
    if index > 0:
        perm = np.random.default_rng(_SPLIT_SEED).permutation(len(train))
        train = train.subset(np.array_split(perm, k)[index - 1])
    return Domain(index, name, 0.0, train, get(name, False))


# ======================================================================================= strategies

STRATEGIES = {
    "sync": "exchange and average D's gradients every step (p = 1; equals centralized ADDA)",
    "ga": "Gradient Accumulation (DADA): accumulate p steps, exchange, average, apply",
    "naive": "apply local gradients, average D's weights every p steps",
    "ma": "Moving Average: local step, then average with D_sync; every p steps average weights "
          "and store D_sync",
    "dpsgd": "D-PSGD baseline: average D's weights every step, then apply the local gradient",
}


@dataclass(frozen=True)
class Strategy:
    """What the discriminators exchange and when (Table 1): a pure schedule."""
    name: str
    period: int = 1

    @property
    def payload(self) -> str:
        """"grads" (sync, ga: the accumulated gradient G_acc) or "params" (the weights of D)."""
        return "grads" if self.name in ("sync", "ga") else "params"

    @property
    def channel(self) -> str:
        return "disc_grads" if self.payload == "grads" else "disc_params"

    def is_sync_step(self, n: int) -> bool:
        """Algorithm 1 line 7 / Algorithm 2 line 8: ``n % p == 0`` for the 1-based step n."""
        return n % self.period == 0

    def syncs(self, steps: int) -> int:
        """Sync-up steps among steps 1..N: floor(N / p)."""
        return steps // self.period


def make_strategy(name: str, period: int | None = None) -> Strategy:
    """A Strategy by name; ``period`` None takes 1 for sync/dpsgd and 2 for naive/ma/ga."""
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    if period is None:
        period = 1 if name in ("sync", "dpsgd") else 2
    if period < 1:
        raise UsageError(f"--sync-period must be >= 1, got {period}")
    if name in ("sync", "dpsgd") and period != 1:
        raise UsageError(f"--strategy {name} exchanges every step (p = 1); for p = {period} use "
                         f"--strategy ga, naive or ma")
    return Strategy(name, period)


def exchange_bytes(strategy: Strategy, steps: int, disc_bytes: int, world_size: int) -> int:
    """Bytes one rank sends (and receives) on the discriminator channel in ``steps`` steps: one
    D-sized message to each of the other ranks per sync-up step (Figure 3's cost, per node)."""
    return strategy.syncs(steps) * disc_bytes * (world_size - 1)


def rank_order_mean(parts, out: torch.Tensor) -> torch.Tensor:
    """``out = (((parts[0] + parts[1]) + ...) + parts[n-1]) / n``: the average of the ranks'
    payloads summed in rank order, so that every rank computes it with the same bits."""
    out.copy_(parts[0])
    for p in parts[1:]:
        out.add_(p)
    return out.div_(len(parts))


class DiscriminatorRule:
    """One node's discriminator under a strategy of Table 1, without communication.

    Per step n (1-based) the caller: exchanges what :meth:`before_grad` returns (D-PSGD's weights),
    lets backward ADD this step's gradient g^(n) into ``fp.grads`` (which is G_acc, Alg. 1 line 6),
    exchanges what :meth:`after_grad` returns, and hands the rank-average of the exchanged tensor
    to :meth:`combine`. A returned tensor must stay unchanged until ``combine``.
    ``fp``: the discriminator's FlatParams; ``opt``: its optimizer.
    """

    def __init__(self, strategy: Strategy, fp: FlatParams, opt: torch.optim.Optimizer):
        self.strategy, self.fp, self.opt = strategy, fp, opt
        self.d_sync = fp.params.clone() if strategy.name == "ma" else None  # D_sync (Table 1, MA)

    @property
    def updates_locally(self) -> bool:
        """Whether :meth:`after_grad` changes D's weights (naive, ma: the local step)."""
        return self.strategy.name in ("naive", "ma")

    def before_grad(self, n: int):
        """dpsgd: the weights the local gradient is computed at (averaged while it is computed)."""
        return self.fp.params if self.strategy.name == "dpsgd" else None

    def after_grad(self, n: int):
        """What to exchange once g^(n) is in ``fp.grads`` (None on a local step)."""
        s, fp = self.strategy, self.fp
        if s.payload == "grads":            # sync, ga: keep accumulating G_acc until n % p == 0
            return fp.grads if s.is_sync_step(n) else None
        if s.name == "dpsgd":
            return None
        self._apply(fp.grads)               # naive, ma: "apply local gradients" (local step)
        if s.is_sync_step(n):
            return fp.params                # "average weights of D_s and D_t"
        if s.name == "ma":                  # "then do average with D_sync"
            fp.params.add_(self.d_sync).mul_(0.5)
        return None

    def combine(self, n: int, mean: torch.Tensor) -> None:
        """Finish step n with ``mean``, the average over all ranks of the exchanged tensor."""
        s, fp = self.strategy, self.fp
        if s.payload == "grads":            # "average the accumulated gradients, then update D
            self._apply(mean)               #  and clear buffer G_acc"
        elif s.name == "dpsgd":             # x_i <- sum_j W_ij x_j - lr g_i(x_i)
            fp.params.copy_(mean)
            self._apply(fp.grads)
        else:
            fp.params.copy_(mean)
            if self.d_sync is not None:     # MA: "store the averaged model D_sync"
                self.d_sync.copy_(mean)

    def _apply(self, grad: torch.Tensor) -> None:
        """One optimizer step of D with ``grad`` as its gradient, then G_acc := 0."""
        if grad.data_ptr() != self.fp.grads.data_ptr():
            self.fp.grads.copy_(grad)
        self.opt.step()
        self.fp.zero_grad()


# ======================================================================================= exchange

class DiscExchange:
    """Algorithm 1 line 7 / Algorithm 2 line 8, "exchange with the other node, average": the
    rank's D-sized payload goes to every other rank (isend) while theirs come in (irecv, into
    buffers allocated once); :meth:`wait` returns the rank-order mean (:func:`rank_order_mean`).
    With two ranks that is one message of D's size each way per sync-up step."""

    def __init__(self, comm, numel: int, dtype, device, channel: str):
        self.comm, self.channel = comm, channel
        self.peers = [r for r in range(comm.size) if r != comm.rank]
        self.recv = {r: torch.empty(numel, dtype=dtype, device=device) for r in self.peers}
        self.mean = torch.empty(numel, dtype=dtype, device=device)
        self.handles, self.own = [], None
        self.syncs = self.bytes_sent = self.bytes_received = 0

    @property
    def pending(self) -> bool:
        return self.own is not None

    def post(self, payload: torch.Tensor) -> None:
        """Post the exchange of ``payload``, which must not change until :meth:`wait`."""
        if self.pending:
            raise RuntimeError("DiscExchange: an exchange is already in flight")
        c, nbytes = self.comm, payload.numel() * payload.element_size()
        self.handles = [c.irecv(self.recv[r], r, TAG_DISC, self.channel) for r in self.peers]
        self.handles += [c.isend(payload, r, TAG_DISC, self.channel, snapshot=False)
                         for r in self.peers]
        self.own = payload
        self.syncs += 1
        self.bytes_sent += nbytes * len(self.peers)
        self.bytes_received += nbytes * len(self.peers)

    def wait(self) -> torch.Tensor:
        waitall(self.handles)
        parts = [self.own if r == self.comm.rank else self.recv[r] for r in range(self.comm.size)]
        self.handles, self.own = [], None
        return rank_order_mean(parts, self.mean)


# ======================================================================================= nodes

def _adam(params, lr: float):
    """ADDA's optimizer: Adam, beta1 = 0.5."""
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


@torch.no_grad()
def _features(extractor, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    was = extractor.training
    extractor.eval()
    out = torch.cat([extractor(x[i:i + batch]) for i in range(0, len(x), batch)])
    extractor.train(was)
    return out


class SourceNode:
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


class TargetNode:
    """Algorithm 2, lines 3-7: a batch xi_t, L_adv^t = L(D_t(E_t(xi_t)), 1) and its gradient over
    D_t (:meth:`disc_backward`); then E_t's update from the same forward pass with ADDA's inverted
    label, L(D_t(E_t(xi_t)), 0) (:meth:`extractor_step`), at every step."""

    def __init__(self, net, domain: Domain, disc, args, device):
        self.net, self.disc, self.domain = net, disc, domain
        self.fpE = FlatParams(net.extractor)
        self.optE = _adam(net.extractor.parameters(), args.lr_target)
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

    def accuracy(self) -> float:
        t = self.domain.test
        return metrics.evaluate(self.net, t.x, t.y, device=self.ones.device)[0]


# ======================================================================================= start

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
    raises ValueError, which ends the whole job (:func:`check` has already made sure it exists)."""
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


def transfer_initial_models(comm, net, disc_fp: FlatParams) -> int:
    """Algorithm 2 line 1: E_t, C_t and D_t are initialised by the source node: three broadcasts
    from rank 0 (E's and C's floating state, D's flat weights). Returns the bytes broadcast."""
    handles, copies = [], []
    for channel, module in zip(INIT_CHANNELS[:2], (net.extractor, net.classifier)):
        state = [t for t in module.state_dict().values() if t.is_floating_point()]
        flat = flatten(state)
        handles.append(comm.ibcast(flat, 0, channel))
        copies.append((state, flat))
    handles.append(comm.ibcast(disc_fp.params, 0, INIT_CHANNELS[2]))
    # the targets wait out the source's pre-training: no practical deadline (a failing source
    # aborts the job), and a polling wait that naps rather than MPI's spinning Wait
    waitall(handles, timeout=1e9)
    nbytes = sum(h.nbytes for h in handles)
    if comm.rank != 0:
        with torch.no_grad():
            for state, flat in copies:
                for t, v in zip(state, unflatten(flat, state)):
                    t.copy_(v)
    return nbytes


def _load_all(comm, args, k: int) -> Domain:
    """Each rank loads its own domain; a failure anywhere ends every rank with the same message."""
    dom, err = None, ""
    try:
        dom = load_domain(args, comm.rank, k)
    except UsageError as e:
        err = str(e)
    got = comm.allgather_object((err, dom.train.num_classes if dom else 0))
    errors = [e for e, _ in got if e]
    if errors:
        raise UsageError(errors[0])
    classes = {c for _, c in got}
    if len(classes) != 1:
        raise UsageError(f"the domains have different numbers of classes {sorted(classes)}")
    return dom


# ======================================================================================= training

class StepContext:
    """What a per-step hook ``on_step(n, ctx)`` sees (tests, experiments): ``fp`` (D's
    FlatParams), ``rule`` (the DiscriminatorRule; None when centralized), ``node`` (this rank's
    SourceNode or TargetNode; the list of TargetNodes when centralized), ``exchange``."""

    def __init__(self, fp, rule=None, node=None, exchange=None):
        self.fp, self.rule, self.node, self.exchange = fp, rule, node, exchange


STOP_AGREEMENT_SYNCS = 10  # a stop signal is agreed on every this many sync-up steps


def checkpoint_state(n, fpD, rule, node, ex, fixed) -> dict:
    """Everything a rank needs to continue after step n: D (weights, G_acc, optimizer, D_sync),
    its network (E_s and C on the source, E_t and C on a target) and E_t's optimizer, the data
    position, the exchange counters and the fixed figures of the run (``fixed``)."""
    state = {"n": n, "disc": fpD.params.clone(), "disc_grads": fpD.grads.clone(),
             "opt_disc": rule.opt.state_dict(), "d_sync": rule.d_sync,
             "net": node.net.state_dict(), "batches": node.batches.state_dict(),
             "exchange": (ex.syncs, ex.bytes_sent, ex.bytes_received), **fixed}
    if isinstance(node, TargetNode):
        state["opt_target"] = node.optE.state_dict()
    return state


def save_checkpoint(run, n: int, state: dict) -> None:
    """Every rank saves its state of step n in the runtime's layout (``--resume`` reads it)."""
    run.save_checkpoint(n, state)


def adapt_distributed(run, on_step=None, cache: dict | None = None, summary: bool = True) -> dict:
    """Algorithms 1 (rank 0) and 2 (ranks 1..k) under ``run`` (mpidist.runtime.Run).

    Returns on every rank a dict with this rank's figures; on rank 0 also ``targets`` (a list of
    (rank, rotation, source-only accuracy, adapted accuracy)). Prints the summary on rank 0
    (unless ``summary`` is False). ``on_step(n, StepContext)`` is called after every step;
    ``cache`` memoises the source's pre-training (:func:`build_source`).

    Checkpoints (``--checkpoint-every``, ``--resume``, SIGUSR1/SIGTERM): every rank saves its state
    after the steps n with ``n % checkpoint_every == 0``; a stop signal and a due timed checkpoint
    (``--checkpoint-every 15m``) are agreed on (one 8-byte allreduce on channel ``control``) every
    STOP_AGREEMENT_SYNCS sync-up steps, and then every rank saves (and stops). A resumed run skips
    the pre-training and the initial transfer.
    """
    args, comm, dev, rank = run.args, run.comm, run.device, run.rank
    t_start = time.perf_counter()
    k = run.world_size - 1
    strategy = make_strategy(args.strategy or "ga", args.sync_period)
    domain = _load_all(comm, args, k)
    classes = domain.train.num_classes
    saved = run.resumed_state
    if saved is None:
        if rank == 0:
            net, source_acc = build_source(args, domain, dev, cache)
            run.metric(0, "source_acc", source_acc)
        else:
            net, source_acc = build_network(args, classes, dev), float("nan")
        disc = build_discriminator(args, net.feature_dim, dev)
        fpD = FlatParams(disc)
        init_bytes = transfer_initial_models(comm, net, fpD)
        run.step_done(0)  # rows of step n carry n from here on; step 0 is the initial transfer
        first = 1
    else:                 # --resume: the networks as they were after step saved["n"]
        net = build_network(args, classes, dev)
        disc = build_discriminator(args, net.feature_dim, dev)
        fpD = FlatParams(disc)

        def restore():  # a checkpoint of another --task/--image-size: one line, no traceback
            net.load_state_dict(saved["net"])
            fpD.params.copy_(saved["disc"])
            fpD.grads.copy_(saved["disc_grads"])
        checkpoint.restore(comm, restore)
        source_acc, init_bytes, first = saved["source_acc"], saved["init_bytes"], saved["n"] + 1

    if rank == 0:
        node = SourceNode(net, domain, disc, args, dev)
        before = float("nan")
    else:
        node = TargetNode(net, domain, disc, args, dev)
        if saved is None:
            before = node.accuracy()    # source-only: E_t = E_s, C_t = C_s
            run.metric(0, "target_acc", before)
        else:
            before = saved["before"]
            node.optE.load_state_dict(saved["opt_target"])
    rule = DiscriminatorRule(strategy, fpD, _adam(disc.parameters(), args.lr_disc))
    ex = DiscExchange(comm, fpD.numel, fpD.params.dtype, fpD.params.device, strategy.channel)
    if saved is not None:
        rule.opt.load_state_dict(saved["opt_disc"])
        if rule.d_sync is not None:
            rule.d_sync.copy_(saved["d_sync"])
        node.batches.load_state_dict(saved["batches"])
        ex.syncs, ex.bytes_sent, ex.bytes_received = saved["exchange"]
    fixed = {"source_acc": source_acc, "init_bytes": init_bytes, "before": before}
    ctx = StepContext(fpD, rule, node, ex)
    every, agree = args.checkpoint_every, STOP_AGREEMENT_SYNCS * strategy.period
    stopped, last = False, first - 1
    t_adapt = time.perf_counter()
    for n in range(first, args.steps + 1):
        last = n
        early = rule.before_grad(n)
        if early is not None:
            ex.post(early)                      # D-PSGD: weights fly while the gradient is made
        vals = node.disc_backward()             # g^(n) added into G_acc = fpD.grads
        if rank > 0 and rule.updates_locally:   # E_t's gradient must see D before its local step
            vals["e_loss"] = node.extractor_backward()
        payload = rule.after_grad(n)
        if payload is not None:
            ex.post(payload)
        if rank > 0:                            # E_t every step, while D's exchange flies
            if "e_loss" not in vals:
                vals["e_loss"] = node.extractor_backward()
            node.extractor_apply()
        if ex.pending:
            rule.combine(n, ex.wait())
        for name, v in vals.items():
            run.metric(n, name, v)
        if rank > 0 and (n % args.eval_every == 0 or n == args.steps):
            run.metric(n, "target_acc", node.accuracy())
        if on_step is not None:
            on_step(n, ctx)
        run.progress(n, args.steps, d_loss=vals["d_loss"], d_acc=vals["d_acc"])
        run.step_done(n)
        timed = False
        if n % agree == 0:
            code = comm.allreduce_scalar(run.stop_code(), "max", "control")
            timed, stopped = runtime.decode_stop(code)
        if timed or (every and n % every == 0):
            save_checkpoint(run, n, checkpoint_state(n, fpD, rule, node, ex, fixed))
        if stopped:
            run.announce_stop(n, code)
            break
    t_adapt = time.perf_counter() - t_adapt
    after = node.accuracy() if rank > 0 else float("nan")
    res = {"rank": rank, "strategy": strategy, "source_acc": source_acc, "before": before,
           "after": after, "syncs": ex.syncs, "bytes_sent": ex.bytes_sent,
           "bytes_received": ex.bytes_received, "disc_bytes": fpD.nbytes,
           "init_bytes": init_bytes, "adapt_seconds": t_adapt, "steps_run": last - first + 1,
           "rotation": domain.rotation, "label": domain.label, "stopped": stopped}
    if stopped:
        return res
    # reporting only (never used in training): each target's accuracies to rank 0
    mine = torch.tensor([domain.rotation, before, after], dtype=torch.float64)
    if rank == 0:
        got = {r: torch.empty(3, dtype=torch.float64) for r in range(1, k + 1)}
        waitall([comm.irecv(got[r], r, TAG_REPORT, "report") for r in got])
        res["targets"] = [(r, *got[r].tolist()) for r in got]
    else:
        comm.isend(mine, 0, TAG_REPORT, "report").wait()
    res["seconds"] = time.perf_counter() - t_start
    if rank == 0 and summary:
        _summary(run, args, strategy, res, k)
    return res


def _mb(b: float) -> str:
    return f"{b / 1e6:.3f} MB"


def _accuracy_lines(task, res, who: str) -> list[str]:
    """The source's accuracy, then each target's before and after adaptation."""
    lines = [f"source accuracy on its own test set: {100 * res['source_acc']:.2f}%"]
    for i, rot, before, after in res["targets"]:
        where = f"{rot:g} deg" if task.rotated else task.target
        lines.append(f"{who} {i} ({where}): source-only {100 * before:.2f}% -> adapted "
                     f"{100 * after:.2f}% ({100 * (after - before):+.2f} points)")
    return lines


def _summary(run, args, strategy, res, k):
    task = TASKS[args.task]
    lines = [f"DADA {strategy.name} (p = {strategy.period}), {args.steps} steps, task "
             f"{args.task} ({task.about}), 1 source + {k} target(s)",
             *_accuracy_lines(task, res, "target rank")]
    lines.append(
        f"bytes exchanged after the initial transfer: {res['syncs']} sync-ups x "
        f"{_mb(res['disc_bytes'])} (D's size) per direction per peer on '{strategy.channel}'; "
        f"rank 0 sent {_mb(res['bytes_sent'])} and received {_mb(res['bytes_received'])}; "
        f"initial transfer (E, C, D) {_mb(res['init_bytes'])}")
    lines.append(f"time: {res['seconds']:.1f} s ({res['adapt_seconds']:.1f} s adapting, "
                 f"{1e3 * res['adapt_seconds'] / max(res['steps_run'], 1):.1f} ms per step)")
    run.say(*lines)


def adapt_centralized(args, device, run=None, on_step=None, cache: dict | None = None) -> dict:
    """The ADDA baseline in one process: source and k targets feed ONE discriminator, whose loss is
    the mean of the per-domain losses of Eq. 3; each E_t is updated from the same forward pass
    with the inverted label. The blocking reference of ``--strategy sync``."""
    k = num_targets(args, 1)
    t_start = time.perf_counter()
    domains = [load_domain(args, i, k) for i in range(k + 1)]
    classes = {d.train.num_classes for d in domains}
    if len(classes) != 1:
        raise UsageError(f"the domains have different numbers of classes {sorted(classes)}")
    net, source_acc = build_source(args, domains[0], device, cache)
    disc = build_discriminator(args, net.feature_dim, device)
    fpD = FlatParams(disc)
    source = SourceNode(net, domains[0], disc, args, device)
    targets = [TargetNode(copy.deepcopy(net), d, disc, args, device) for d in domains[1:]]
    before = [t.accuracy() for t in targets]
    optD = _adam(disc.parameters(), args.lr_disc)
    B = args.batch_size
    labels = torch.cat([torch.zeros(B, 1, device=device), torch.ones(k * B, 1, device=device)])
    weights = torch.full(((k + 1) * B, 1), 1.0 / ((k + 1) * B), device=device)
    disc_params = list(disc.parameters())
    e_params = [p for t in targets for p in t.fpE.tensors]
    ctx = StepContext(fpD, None, targets)
    t_adapt = time.perf_counter()
    for n in range(1, args.steps + 1):
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
        if run is not None:
            run.metric(n, "d_loss", loss.item())
            run.metric(n, "e_loss", float(np.mean(e_losses)))
            if n % args.eval_every == 0 or n == args.steps:
                for i, t in enumerate(targets):
                    run.metric(n, f"target_acc_{i + 1}" if k > 1 else "target_acc", t.accuracy())
            run.progress(n, args.steps, d_loss=loss.item())
            run.step_done(n)
        if on_step is not None:
            on_step(n, ctx)
    t_adapt = time.perf_counter() - t_adapt
    after = [t.accuracy() for t in targets]
    return {"source_acc": source_acc, "targets": [(i + 1, d.rotation, b, a) for i, (d, b, a) in
                                                  enumerate(zip(domains[1:], before, after))],
            "disc": fpD.params.clone(), "extractors": [t.fpE.params.clone() for t in targets],
            "syncs": 0, "bytes_sent": 0, "bytes_received": 0, "disc_bytes": fpD.nbytes,
            "init_bytes": 0, "adapt_seconds": t_adapt, "seconds": time.perf_counter() - t_start}


# ======================================================================================= CLI

def make_parser():
    p = runtime.parser(ALGORITHM, __doc__)
    g = p.add_argument_group("DADA (Algorithms 1 and 2, Table 1)")
    g.add_argument("--strategy", choices=list(STRATEGIES), default=None,
                   help="how D_s and D_t are kept in step (Table 1): "
                        + "; ".join(f"{k}: {v}" for k, v in STRATEGIES.items())
                        + " (default ga)")
    g.add_argument("--sync-period", type=runtime.positive_int, default=None, metavar="P",
                   help="p, the sync-up step: exchange when n %% p == 0 (Alg. 1 line 7); "
                        "default 2 for ga/naive/ma, sync and dpsgd are p = 1")
    g.add_argument("--centralized", action="store_true",
                   help="the ADDA baseline: one process (mpirun -n 1) with every domain and ONE "
                        "discriminator")
    g.add_argument("--steps", type=runtime.positive_int, default=1500,
                   help="N, the number of adaptation steps (Alg. 1 line 2; default 1500)")
    g.add_argument("--batch-size", type=runtime.positive_int, default=64,
                   help="size of the batches xi_s, xi_t (Alg. 1 line 3; default 64)")
    g.add_argument("--lr-disc", type=runtime.positive_float, default=2e-4,
                   help="Adam learning rate of D (ADDA's 2e-4, beta1 0.5)")
    g.add_argument("--lr-target", type=runtime.positive_float, default=2e-4,
                   help="Adam learning rate of the target extractor E_t (ADDA's 2e-4, beta1 0.5)")
    g.add_argument("--pretrain-steps", type=runtime.nonneg_int, default=300,
                   help="steps of the source's supervised pre-training of E_s and C_s "
                        "(default 300)")
    g.add_argument("--pretrain-lr", type=runtime.positive_float, default=1e-3,
                   help="Adam learning rate of the pre-training (default 1e-3)")
    g.add_argument("--eval-every", type=runtime.positive_int, default=100,
                   help="log each target's accuracy every this many steps (metric target_acc)")
    t = p.add_argument_group("task and data")
    t.add_argument("--task", choices=list(TASKS), default="digits-rot",
                   help="; ".join(f"{k}: {v.about}" for k, v in TASKS.items())
                        + " (default digits-rot: embedded data, no network)")
    t.add_argument("--rotation", type=float, nargs="+", default=None, metavar="DEG",
                   help="rotated tasks: the target's rotation in degrees, one for every target or "
                        "one per target rank (default 30 for digits-rot, 60 for mnist-rot)")
    t.add_argument("--data-root", default=None,
                   help="folder holding MNIST/USPS/SVHN in torchvision's layout, or Office-31 as "
                        "<root>/<domain>/images/<class>/*.jpg")
    t.add_argument("--download", action="store_true",
                   help="let torchvision download MNIST/USPS/SVHN into --data-root (needs a "
                        "network)")
    t.add_argument("--extractor-weights", default=None, metavar="PATH",
                   help="a state dict to start the source extractor E_s from before its "
                        "pre-training (e.g. torchvision's ImageNet ResNet-50 for the Office-31 "
                        "tasks; its fc.* entries are ignored); the targets receive E_s as usual")
    t.add_argument("--image-size", type=runtime.positive_int, default=None,
                   help="pixels a side for both domains (default: the task's, 16 for digits-rot)")
    return p


def check(args, world_size: int) -> str | None:
    """Configuration errors that every rank sees alike (runtime.start prints them on rank 0)."""
    task = TASKS[args.task]
    external = sorted({task.source, task.target} - {"digits"})
    if external and args.data_root is None:
        return (f"--task {args.task} needs --data-root, the folder holding "
                f"{' and '.join(external)} "
                f"(torchvision's layout; Office-31 as <root>/<domain>/images/<class>/); "
                f"the default task digits-rot needs none")
    if args.extractor_weights and not os.path.isfile(args.extractor_weights):
        return f"--extractor-weights {args.extractor_weights}: no such file"
    if args.rotation and not task.rotated:
        return f"--rotation applies to the rotated tasks (digits-rot, mnist-rot), not {args.task}"
    if args.centralized:
        if world_size != 1:
            return ("--centralized runs ADDA in ONE process with every domain: launch it with "
                    "mpirun -n 1 (or plain python)")
        if args.strategy or args.sync_period:
            return "--centralized has one discriminator: --strategy/--sync-period do not apply"
        if args.resume or args.checkpoint_every or args.checkpoint_seconds:
            return "--centralized (a short one-process baseline) does not checkpoint or resume"
        return None
    if world_size < 2:
        return ("DADA needs 2 or more ranks (rank 0 the source, the others targets): mpirun -n 2 "
                "python -m mpidist.dada; or --centralized for the one-process ADDA baseline")
    try:
        make_strategy(args.strategy or "ga", args.sync_period)
        if task.rotated:
            target_rotations(args, world_size - 1)
    except UsageError as e:
        return str(e)
    return None


# what a --resume may change besides the run flags: when to stop and how often to evaluate
RESUME_MAY_CHANGE = frozenset({"steps", "eval_every"})


def main(argv=None) -> dict:
    p = make_parser()
    with runtime.start(ALGORITHM, p, argv, check=check,
                       may_change=RESUME_MAY_CHANGE) as run:
        if run.args.centralized:
            res = adapt_centralized(run.args, run.device, run=run)
            _summary_centralized(run, res)
        else:
            res = adapt_distributed(run)
    return res


def _summary_centralized(run, res):
    args, task = run.args, TASKS[run.args.task]
    lines = [f"ADDA centralized (one process, one discriminator), {args.steps} steps, task "
             f"{args.task} ({task.about})", *_accuracy_lines(task, res, "target")]
    lines.append("bytes exchanged: 0 (one process)")
    lines.append(f"time: {res['seconds']:.1f} s ({res['adapt_seconds']:.1f} s adapting)")
    run.say(*lines)


if __name__ == "__main__":
    main()
