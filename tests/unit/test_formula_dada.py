"""DADA's bytes per step in mpidist.analysis.formulas, on small synthetic traces written by hand:
one allreduce of D's size per sync-up step (n % p == 0), whatever the number of ranks."""
from __future__ import annotations

import os

import pytest

from mpidist import analysis
from mpidist.trace import TraceWriter


def write_run(run_dir, world, algorithm, rows, metrics, args):
    """rows: {rank: [(step, op, peer, tag, channel, nbytes, t_post, t_done)]};
    metrics: [(rank, step, t, name, value)] (the writer's clock set to t for each)."""
    os.makedirs(run_dir, exist_ok=True)
    for r in range(world):
        now = [0.0]
        a = {"algorithm": algorithm, "rank": r, "world_size": world, "run_id": "d" * 32,
             "args": args}
        w = TraceWriter(os.path.join(run_dir, f"rank{r}.h5"), a, lambda: now[0])
        for step, op, peer, tag, ch, n, t0, t1 in rows.get(r, []):
            w.comm(step, op.encode(), peer, tag, ch.encode(), n, t0, t1)
        for rk, step, t, name, value in metrics:
            if rk == r:
                now[0] = t
                w.metric(step, name, value)
        w.close()
    return str(run_dir)


def dada_rows(world, steps, p, m, channel="disc_grads", drop=None):
    """Every rank: the three step-0 broadcasts, then one allreduce of m bytes at each sync-up."""
    rows = {}
    for r in range(world):
        out = [(0, "bcast", 0, -1, ch, 1000, 0.0, 0.1)
               for ch in ("init_extractor", "init_classifier", "init_disc")]
        out += [(n, "allreduce", -1, -1, channel, m, n + 0.1, n + 0.2)
                for n in range(1, steps + 1) if n % p == 0]
        rows[r] = out if drop != r else out[:-1]
    return rows


@pytest.mark.parametrize("world,p,strategy", [(2, 2, "ga"), (4, 3, "ga"), (3, 1, "sync"),
                                              (5, 2, "naive")])
def test_dada_bytes_are_one_allreduce_per_sync_up(tmp_path, world, p, strategy):
    S, M = 11, 4 * 1501
    ch = "disc_grads" if strategy in ("ga", "sync") else "disc_params"
    metrics = [(r, n, n + 0.05, "d_loss", 0.7) for r in range(world) for n in range(1, S + 1)]
    args = {"strategy": strategy, "sync_period": None if strategy == "sync" else p, "steps": S}
    run = analysis.load(write_run(tmp_path / f"{strategy}{world}", world, "dada",
                                  dada_rows(world, S, p, M, ch), metrics, args))
    f = analysis.bytes_vs_formula(run)
    assert len(f) == world
    for row in f:
        assert row["model_bytes"] == M and row["steps"] == S and row["channels"] == ch
        assert row["formula_per_step"] == M / p
        assert row["expected_averagings"] == row["averagings"] == S // p
        assert row["expected_bytes"] == row["measured_bytes"] == M * (S // p)
        assert row["ratio"] == 1.0
        assert row["ring_wire_per_step"] == pytest.approx(2 * (world - 1) / world * M * (S // p)
                                                          / S)


def test_dada_missing_allreduce_shows_in_the_ratio(tmp_path):
    S, p, M = 8, 2, 400
    metrics = [(r, n, n + 0.05, "d_loss", 0.7) for r in range(3) for n in range(1, S + 1)]
    run = analysis.load(write_run(tmp_path / "miss", 3, "dada", dada_rows(3, S, p, M, drop=2),
                                  metrics, {"strategy": "ga", "sync_period": p}))
    f = {r["rank"]: r for r in analysis.bytes_vs_formula(run)}
    assert f[0]["ratio"] == 1.0 and f[2]["ratio"] == pytest.approx(3 / 4)
