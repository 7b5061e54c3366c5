"""Whether the MPI library in this process can take CUDA device pointers.

:class:`mpidist.comm.Communicator` asks once, at construction: a CUDA-aware MPI gets device buffers
directly; otherwise CUDA tensors are staged through pinned host memory.
"""
from __future__ import annotations

import ctypes
import os

import torch


def cuda_aware_mpi() -> bool:
    """Whether the MPI library accepts CUDA device pointers.

    ``MPIDIST_CUDA_AWARE=0|1`` overrides. Otherwise: False without CUDA; else the library's own
    answer from ``MPIX_Query_cuda_support()`` (MPICH >= 4, Open MPI >= 4) looked up in the loaded
    MPI library; else Open MPI's ``OMPI_MCA_opal_cuda_support=true``.
    """
    env = os.environ.get("MPIDIST_CUDA_AWARE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    if not torch.cuda.is_available():
        return False
    said = library_cuda_support()
    if said is not None:
        return said
    return os.environ.get("OMPI_MCA_opal_cuda_support", "").lower() == "true"


def library_cuda_support() -> bool | None:
    """The loaded MPI library's own answer to ``MPIX_Query_cuda_support()`` (MPICH >= 4, Open MPI
    >= 4), or None where the library has no such function."""
    for lib in (None, "libmpi.so.12", "libmpi.so.40", "libmpi.so"):
        try:
            query = getattr(ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL), "MPIX_Query_cuda_support")
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return None
