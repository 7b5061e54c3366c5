"""mpidist: published distributed deep-learning algorithms on MPI, every message traced to HDF5.

``python -m mpidist`` lists the algorithms (one package each: ``pcasgd``, ``adacomm``, ``dada``,
``mdgan``, ``dpsgd``); the core modules are ``comm`` (how bytes move), ``trace`` (the per-rank
HDF5 log), ``runtime`` and ``loop`` (start-up and the shared run loop), ``cli`` (the flags),
``topology``, ``data``, ``models``. See mpidist/README.md.

In your own training script (launched with ``mpirun``), one call opens the run::

    import mpidist
    with mpidist.init("adacomm", trace_dir="runs/mine", seed=0) as run:
        ...   # run.comm (traced messages), run.device, run.rank, run.world_size, run.metric()
"""
__version__ = "0.1.0"


def init(algorithm: str = "custom", **settings):
    """Open a run from Python: MPI, seeds (``seed*1000 + rank``), one device per node-local rank,
    the run directory and this rank's trace, failure handling (an exception on any rank inside
    ``with`` ends the whole job with its traceback; a usage error is one line and exit 2). The
    keywords are the shared run flags without dashes (``trace_dir``, ``seed``, ``device``,
    ``link_latency``, ``comm_timeout``, ``checkpoint_every``, ``resume``, ``quiet`` ...). Returns
    the :class:`mpidist.runtime.Run`; use it as a context manager."""
    from . import cli, runtime
    p = cli.parser(algorithm, f"mpidist.init({algorithm!r})")
    return runtime.start(algorithm, p, cli.settings_argv(settings), may_change=frozenset())
