"""DADA's discriminator exchange as one allreduce against the all-to-all exchange it replaced
(tests/programs/dada_allreduce_checks.py: the same bits on every rank, bitwise equal to the
rank-order mean with two ranks and to float tolerance with four, one allreduce row per exchange in
the trace)."""
from __future__ import annotations

import os

import pytest

from mpirun import PROGRAMS, check_program, run_mpi

CHECKS = ("same_bits_on_every_rank", "equals_all_to_all_reference", "counters",
          "trace_one_allreduce_per_exchange")


@pytest.mark.parametrize("n", [2, 4])
def test_allreduce_exchange_equals_the_all_to_all_reference(n):
    proc = run_mpi(n, [os.path.join(PROGRAMS, "dada_allreduce_checks.py")], timeout=300)
    out = check_program(proc)
    for name in CHECKS:
        assert f"PASS {name} ({n} ranks)" in out, out[-3000:]
