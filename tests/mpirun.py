"""The launcher of multi-rank tests lives in conftest.py; test files import it from here."""
from conftest import BIN, PROGRAMS, REPO, check, mpiexec, run_mpi  # noqa: F401
