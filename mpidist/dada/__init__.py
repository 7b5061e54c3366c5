"""DADA: distributed asynchronous domain adaptation, where only discriminator gradients cross the
network; from "Distributed Asynchronous Domain Adaptation: Towards Making Domain Adaptation More
Practical in Real-World Systems" (S. Gan, A. Mathur, A. Isopoussu, N. Berthouze, N. D. Lane,
F. Kawsar). Theory, flags, trace channels, tests and results: mpidist/dada/README.md.

    rules.py        the strategies of Table 1 (sync, ga, naive, ma, dpsgd), pure
    tasks.py        the adaptation tasks and each node's domain (or the user's own domains)
    exchange.py     what moves: the initial transfer, D's exchange, the final report
    sync.py         the Python API: DiscriminatorSync, D under a strategy in a user's own script
    nodes.py        the source node (Algorithm 1) and a target node (Algorithm 2), the networks
    train.py        the distributed run on the shared loop
    centralized.py  the ADDA baseline in one process
    cli.py          the command line
"""
from ..errors import UsageError
from .centralized import adapt_centralized
from .cli import ALGORITHM, RESUME_MAY_CHANGE, build_parser, check, main, make_parser
from .exchange import (INIT_CHANNELS, TAG_DISC, TAG_REPORT, DiscExchange, agreed,
                       broadcast_initial, gather_domains, load_own_domain, report_accuracies,
                       transfer_initial_models)
from .nodes import (SourceNode, StepContext, TargetNode, build_discriminator, build_network,
                    build_source, check_networks, feature_dim, load_extractor_weights)
from .rules import (STOP_AGREEMENT_SYNCS, STRATEGIES, DiscriminatorRule, Strategy, adam,
                    exchange_bytes, make_strategy, rank_order_mean)
from .sync import DiscriminatorSync
from .tasks import (_SPLIT_SEED, TASKS, Domain, Task, load_domain, load_user_domain, num_targets,
                    target_rotations)
from .train import adapt_distributed, checkpoint_state

__all__ = [
    "ALGORITHM", "DiscExchange", "DiscriminatorRule", "DiscriminatorSync", "Domain",
    "INIT_CHANNELS", "adam", "agreed", "broadcast_initial", "check_networks", "feature_dim",
    "gather_domains", "load_user_domain",
    "RESUME_MAY_CHANGE", "STOP_AGREEMENT_SYNCS", "STRATEGIES", "SourceNode", "StepContext",
    "Strategy", "TAG_DISC", "TAG_REPORT", "TASKS", "TargetNode", "Task", "UsageError",
    "_SPLIT_SEED", "adapt_centralized", "adapt_distributed", "build_discriminator",
    "build_network", "build_parser", "build_source", "check", "checkpoint_state", "exchange_bytes",
    "load_domain", "load_extractor_weights", "load_own_domain", "main", "make_parser",
    "make_strategy", "num_targets", "rank_order_mean", "report_accuracies", "target_rotations",
    "transfer_initial_models",
]
