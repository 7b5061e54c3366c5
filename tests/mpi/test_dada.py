"""The multi-rank launches of the DADA tests. tests/unit/test_dada.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations
import os
import re
import pytest

from mpidist import trace
from mpirun import PROGRAMS, check, check_program, run_mpi



# ===================================================================================== MPI

def _parse(out: str) -> dict:
    res = {}
    for line in out.splitlines():
        m = re.match(r"(PASS|FAIL) (\S+)(?::\s*(.*))?$", line)
        if m:
            res[m.group(2)] = (m.group(1), m.group(3) or "")
    return res


EXPECTED_CHECKS = {
    "ga_identical_every_step", "ga_d_changes_only_at_syncs", "ga_p1_equals_sync",
    "ga_p1_same_adapted_accuracy", "sync_equals_centralized_adda",
    "naive_equal_after_sync_different_between", "ma_dsync_identical_and_updated_at_syncs",
    "ma_equal_after_sync_different_between", "dpsgd_differs_every_step",
    "trace_bytes_per_sync_equal_d_size", "trace_cost_falls_as_1_over_p",
    "trace_nothing_but_d_after_initial_transfer", "trace_initial_transfer_once",
    "every_target_reports", "usage_missing_data_root", "usage_centralized_needs_one_rank",
    "usage_sync_with_period", "resume_continues_bitwise", "resume_continues_the_trace",
    "stop_signal_checkpoints_and_stops"}


QUICK_CHECKS = {
    "ga_identical_every_step", "ga_d_changes_only_at_syncs", "sync_equals_centralized_adda",
    "naive_equal_after_sync_different_between", "trace_bytes_per_sync_equal_d_size",
    "trace_nothing_but_d_after_initial_transfer", "trace_initial_transfer_once",
    "every_target_reports"}


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """tests/programs/dada_checks.py under mpiexec, once per world size (2: every check and the entry
    point; 3: two targets, the core checks)."""
    done = {}

    def get(n):
        if n not in done:
            out = tmp_path_factory.mktemp(f"dada{n}")
            quick = ["--quick"] if n == 3 else []
            proc = run_mpi(n, [os.path.join(PROGRAMS, "dada_checks.py"), "--out", str(out), *quick],
                           timeout=360)
            done[n] = (proc, out)
        return done[n]
    return get


@pytest.mark.parametrize("n", [2, 3])
def test_multirank_checks(n, checks):
    proc, _ = checks(n)
    out = check_program(proc)
    res = _parse(out)
    want = EXPECTED_CHECKS if n == 2 else QUICK_CHECKS
    assert set(res) == want, f"missing: {want - set(res)}\n{out[-3000:]}"
    failed = {k: v[1] for k, v in res.items() if v[0] == "FAIL"}
    assert not failed, failed
    if n == 2:  # the usage errors printed one line on rank 0
        assert "mpidist.dada: error: --task mnist-usps needs --data-root" in proc.stderr


def test_entry_point_two_ranks(checks):
    """dada.main as `mpirun -n 2 python -m mpidist.dada` runs it: summary, trace, metrics."""
    proc, out_dir = checks(2)
    out = check(proc)
    tdir = os.path.join(str(out_dir), "cli")
    header = "DADA ga (p = 2), 40 steps, task digits-rot"
    assert out.count(header) == 2 and out.index(header) < out.index("[0] step 1/40 ")  # as others
    tail = out[out.rindex(header):]                                                    # summary
    assert re.search(r"target rank 1 \(30 deg\): source-only [\d.]+% -> adapted [\d.]+%", tail)
    assert "20 sync-ups x 2.006 MB" in tail
    assert f"trace: {tdir}" in tail
    run = trace.read_run(tdir)
    assert [r.attrs["status"] for r in run.ranks] == ["ok", "ok"]
    steps, _, acc = run.ranks[1].metric("target_acc")
    assert list(steps) == [0, 20, 40] and all(0 <= a <= 1 for a in acc)
    assert len(run.ranks[0].metric("d_loss")[0]) == 40


def test_centralized_one_process(tmp_path):
    tdir = tmp_path / "central"
    proc = run_mpi(1, ["-m", "mpidist.dada", "--centralized", "--steps", "20",
                       "--pretrain-steps", "30", "--trace-dir", str(tdir)], timeout=180)
    out = check(proc)
    assert "ADDA centralized" in out and "bytes exchanged: 0" in out
    assert re.search(r"target 1 \(30 deg\): source-only", out)
    run = trace.read_run(str(tdir))
    chans = {c.decode() for c in run.comm["channel"]}
    assert not any(c.startswith("disc_") or c.startswith("init_") for c in chans)
