"""The launcher of multi-rank tests lives in conftest.py; test files import it from here."""
from conftest import BIN, PROGRAMS, REPO, check, check_program, mpiexec, run_mpi  # noqa: F401
