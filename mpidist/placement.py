"""Where a rank sits: its node-local index, its device, the software it runs, its log prefix."""
from __future__ import annotations

import logging
import os
import sys

import torch
from mpi4py import MPI

from . import __version__
from .errors import UsageError


def local_rank(comm=MPI.COMM_WORLD) -> tuple[int, int]:
    """(this rank's index among the ranks on its node, how many ranks its node runs)."""
    try:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        r, n = node.Get_rank(), node.Get_size()
        node.Free()
        return r, n
    except MPI.Exception:
        for var, nvar in (("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
                          ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
                          ("MPI_LOCALRANKID", "MPI_LOCALNRANKS")):
            if var in os.environ:
                return int(os.environ[var]), int(os.environ.get(nvar, "0") or 0)
        return 0, 0


def set_threads(comm=MPI.COMM_WORLD) -> tuple[int, str | None]:
    """torch's intra-op threads for this rank: the CPUs it may run on, shared among the node-local
    ranks that may run on the same ones (``mpirun`` without binding gives every rank all of the
    node's CPUs; ``srun --cpus-per-task`` gives each its own). ``OMP_NUM_THREADS`` set by the user
    wins; then a warning (one line, for rank 0 to print) says when it oversubscribes the CPUs.
    Collective over ``comm``. Returns (threads, warning or None)."""
    mine = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        frozenset(range(os.cpu_count() or 1))
    try:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        sets = node.allgather(mine)
        node.Free()
    except MPI.Exception:
        sets = [mine]
    sharing = sum(1 for s in sets if s == mine)
    fair = max(1, len(mine) // sharing)
    user = os.environ.get("OMP_NUM_THREADS", "").strip()
    if user.isdigit() and int(user) > 0:
        n = int(user)
        torch.set_num_threads(n)
        warn = None
        if n > fair:
            warn = (f"OMP_NUM_THREADS={n} with {sharing} ranks on {len(mine)} CPUs oversubscribes "
                    f"this node ({n * sharing} threads); {fair} per rank would not")
        return n, warn
    torch.set_num_threads(fair)
    return fair, None


def choose_device(kind: str, local: int) -> torch.device:
    """``cuda:<local mod GPUs>`` for auto/cuda when CUDA is present, else CPU (cuda without CUDA is
    a UsageError). Sets the current CUDA device before anything is allocated on it."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this node")
    dev = torch.device("cuda", local % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    return dev


def versions() -> dict:
    import mpi4py
    return {"mpidist": __version__, "torch": torch.__version__, "mpi4py": mpi4py.__version__,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(), "python": sys.version.split()[0]}


class _RankFilter(logging.Filter):
    def __init__(self, rank):
        super().__init__()
        self.rank = rank

    def filter(self, record):
        record.rank = self.rank
        return True


def make_logger(rank: int) -> logging.Logger:
    """A logger whose every line starts with ``[rank]`` (stderr)."""
    log = logging.getLogger("mpidist")
    log.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.addFilter(_RankFilter(rank))
    h.setFormatter(logging.Formatter("[%(rank)d] %(levelname)s %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
