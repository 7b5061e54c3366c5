"""D-PSGD, decentralized parallel SGD: workers on a graph average their neighbours' models and
apply their own stochastic gradient, x_i <- sum_j W_ij x_j - eta g_i(x_i).

Paper: "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
Decentralized Parallel Stochastic Gradient Descent", X. Lian, C. Zhang, H. Zhang, C.-J. Hsieh,
W. Zhang, J. Liu (Algorithm 1). Theory, flags, trace channels, tests, results: README.md here.

In your own script (``mpirun -n N python my_script.py``; ``example.py`` here is one)::

    with mpidist.init("dpsgd", seed=0) as run:
        opt = mpidist.dpsgd.DPSGD(run, model, lr=0.1, graph="ring")
        ... opt.zero_grad(); loss.backward(); opt.step() ...

Modules: ``rules`` (the update and the consensus distance, pure), ``exchange`` (what moves
through :mod:`mpidist.comm`), ``worker`` (one iteration), ``optimizer`` (:class:`DPSGD`, the
Python API), ``train`` (the run on :class:`mpidist.loop.Loop`), ``cli`` (flags, ``main``).
"""
from .cli import RESUME_MAY_CHANGE, build_parser, check, main
from .exchange import TAG_PARAMS, NeighbourExchange, broadcast_init, consensus, mean_model
from .optimizer import DPSGD
from .rules import consensus_distance, mix_into, mix_step, mixing_rate, slowest_mode
from .train import DEFAULT_STEPS, train
from .worker import Worker

__all__ = ["DPSGD", "RESUME_MAY_CHANGE", "build_parser", "check", "main", "TAG_PARAMS",
           "NeighbourExchange", "broadcast_init", "consensus", "mean_model", "consensus_distance",
           "mix_into", "mix_step", "mixing_rate", "slowest_mode", "DEFAULT_STEPS", "train",
           "Worker"]
