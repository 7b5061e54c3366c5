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
