"""The multi-rank launches of the AdaComm tests. tests/unit/test_adacomm.py describes what each
launch checks and holds the checks that need no launch."""
from __future__ import annotations
import re

import numpy as np

from mpidist import adacomm as A
from mpidist.trace import read_run
from mpirun import check, check_program, run_mpi


# ----------------------------------------------------------------------------- under mpiexec

def _lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(("PASS ", "FAIL "))]


def test_multirank_checks():
    """Identical parameters after averaging and distinct between (closed form), PASGD tau=1 ==
    synchronous SGD, block momentum == Eqs. (7)-(8), agreement under skewed clocks and on a stop
    signal, the sync / pasgd / grid-search runs of main() read back from their traces, and a
    checkpointed run resumed bit for bit. 3 ranks: odd and not a power of two."""
    out = check_program(run_mpi(3, ["tests/programs/adacomm_checks.py"], timeout=240))
    lines = _lines(out)
    names = {"identical_after_averaging_and_closed_form", "pasgd_tau1_equals_sync",
             "block_momentum_matches_eqs_7_8", "ranks_agree_although_clocks_differ",
             "sync_run_averages_gradients_every_step", "pasgd_run_averages_every_tau",
             "tau0_grid_search_agrees", "stop_signal_is_agreed", "resume_continues_bit_for_bit"}
    assert {ln.split()[1].rstrip(":") for ln in lines} == names, out
    assert all(ln.startswith("PASS") for ln in lines), "\n".join(lines)


def test_command_line_run_and_trace(tmp_path):
    """``python -m mpidist.adacomm`` with the link model on: the summary, and a trace in which every
    rank logged the same intervals, taus and learning rates, tau never grew, every averaging is
    one allreduce of the whole flat buffer, and it took at least the link model's time."""
    d = str(tmp_path / "run")
    lat, bw = 50e-6, 1.25e8
    out = check(run_mpi(4, ["-m", "mpidist.adacomm", "--time-budget", "5", "--interval", "1",
                            "--trace-dir", d, "--link-latency", str(lat),
                            "--link-bandwidth", str(bw)], timeout=180))
    for what in ("final training loss", "test accuracy", "tau schedule", f"trace: {d}"):
        assert what in out, out
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    # how far 5 s of training gets depends on the machine's load: not asserted (the loss below
    # must fall, whatever the load)
    assert 0.0 <= acc <= 1.0, out
    run = read_run(d)
    rows = {nm: [tuple(rt.metric(nm)[2].tolist()) for rt in run.ranks]
            for nm in ("interval", "F", "tau", "lr", "train_loss", "train_time")}
    for nm, per_rank in rows.items():
        assert all(v == per_rank[0] for v in per_rank), f"ranks disagree on {nm}"
    taus = rows["tau"][0]
    assert taus[0] == 8 and len(taus) >= 3, taus
    assert all(b <= a for a, b in zip(taus, taus[1:])), taus
    assert len(rows["F"][0]) == len(taus) - 1  # one F per interval after the first
    loss = rows["train_loss"][0]
    F0 = run.ranks[0].metric("F0")[2][0]
    assert run.ranks[0].metric("final_train_loss")[2][0] < F0 and loss[-1] < F0, (F0, loss)
    n = sum(p.numel() for p in A.models.build("cnn", (1, 16, 16), 10).parameters())
    p = run.ranks[0].comm[run.ranks[0].comm["channel"] == b"params"]
    assert len(p) == len(loss)
    assert set(p["op"]) == {b"allreduce"} and set(p["nbytes"]) == {4 * (n + 4)}
    cost = 2 * 3 * lat + 2 * 3 / 4 * 4 * (n + 4) / bw
    assert np.all(p["t_done"] - p["t_post"] >= cost * 0.999), "link model not applied"


def test_usage_error_one_line():
    proc = run_mpi(2, ["-m", "mpidist.adacomm", "--method", "sync", "--tau0", "auto"], timeout=90)
    check(proc, 2)
    err = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "grid search" in err[0], proc.stderr
