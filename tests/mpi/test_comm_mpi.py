"""Multi-rank tests of mpidist.comm: one mpiexec launch per world size runs every check of
tests/programs/comm_checks.py (oversubscribed on 2 cores), each reported as its own test."""
import re

import pytest

from mpirun import check_program, run_mpi

CHECKS = ["ring_exchange", "snapshot_protects_send", "matches_blocking_reference",
          "allreduce_sum_avg_max", "overlapping_collectives", "bcast_from_last",
          "link_model_delays", "trace_rows_are_exact"]
_results = {}


def results(n):
    if n not in _results:
        proc = run_mpi(n, ["tests/programs/comm_checks.py"], timeout=240)
        _results[n] = proc
    return _results[n]


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", CHECKS)
def test_check(n, name):
    proc = results(n)
    check_program(proc)  # exit 1 exactly when a check FAILed on some rank
    passed = set(int(r) for r in re.findall(rf"^PASS {name} rank (\d+)$", proc.stdout, re.M))
    failed = re.findall(rf"^FAIL {name} rank \d+: .*$", proc.stdout, re.M)
    assert not failed and passed == set(range(n)), (
        f"{name} at {n} ranks: {failed or 'missing ranks ' + str(set(range(n)) - passed)}\n"
        f"--- stderr\n{proc.stderr[-3000:]}")
