"""The registry of algorithms: name -> package, its variants, how many ranks its default run takes.

One lookup shared by the command line (``python -m mpidist``), the job templates (``jobs/common.sh``
asks ``python -m mpidist --module NAME``), the tests and the tools. A new algorithm is one new
package ``mpidist/<name>/`` plus one entry here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Algorithm:
    name: str          # python -m mpidist.<name>
    title: str         # the paper's name for it
    summary: str       # one line: what the ranks are and what they exchange
    paper: str         # title and authors
    ranks: int         # ranks of the default run (mpirun -n <ranks> python -m mpidist.<name>)
    variants: tuple = ()  # the paper's variants and baselines (--variant / --method / --mode ...)
    variant_flag: str = "--variant"

    @property
    def module(self) -> str:
        return f"mpidist.{self.name}"

    def load(self):
        """The algorithm's package (imports torch)."""
        return importlib.import_module(self.module)

    def command(self, n: int | None = None) -> str:
        return f"mpirun -n {n or self.ranks} python -m {self.module}"


ALGORITHMS = {a.name: a for a in (
    Algorithm("pcasgd", "PC-ASGD",
              "agents of a graph with reliable clusters and delayed neighbours; predicting or "
              "clipping step",
              "Asynchronous Training Schemes in Distributed Learning with Time Delay (an anonymous "
              "submission)", 8,
              ("pc", "p", "c", "dasgd")),
    Algorithm("adacomm", "AdaComm",
              "data-parallel workers: local SGD with periodic averaging, adaptive period tau",
              "Adaptive Communication Strategies to Achieve the Best Error-Runtime Trade-off in "
              "Local-Update SGD, J. Wang, G. Joshi", 4,
              ("sync", "pasgd", "adacomm"), "--method"),
    Algorithm("dada", "DADA",
              "a source domain and target domains exchanging only discriminator gradients",
              "Distributed Asynchronous Domain Adaptation: Towards Making Domain Adaptation More "
              "Practical in Real-World Systems, S. Gan, A. Mathur, A. Isopoussu, N. Berthouze, "
              "N. D. Lane, F. Kawsar", 2,
              ("sync", "ga", "naive", "ma", "dpsgd"), "--strategy"),
    Algorithm("mdgan", "MD-GAN",
              "a generator on a server, discriminators on workers that swap peer to peer",
              "MD-GAN: Multi-Discriminator Generative Adversarial Networks for Distributed "
              "Datasets, C. Hardy, E. Le Merrer, B. Sericola", 5,
              ("mdgan", "flgan", "standalone"), "--mode"),
    Algorithm("dpsgd", "D-PSGD",
              "workers on a graph: each averages its neighbours' models while it computes its "
              "own gradient",
              "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for "
              "Decentralized Parallel Stochastic Gradient Descent, X. Lian, C. Zhang, H. Zhang, "
              "C.-J. Hsieh, W. Zhang, J. Liu", 8),
)}


def get(name: str) -> Algorithm:
    """The algorithm by name; an unknown name lists the known ones."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UsageError(f"unknown algorithm '{name}' (known: {', '.join(ALGORITHMS)})") from None
