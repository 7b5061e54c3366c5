"""mpidist.analysis on small synthetic traces written with mpidist.trace's writer, every expected
value computed by hand: the traffic matrix, the message-size histogram, per-step load imbalance,
bytes against each paper's formula (PC-ASGD, D-PSGD, PASGD), the Perfetto export's step window
and flow direction, compare's defaults, and the OTF2 export read back with otf2.reader."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mpidist import analysis
from mpidist.trace import TraceWriter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "mpidist_trace.py")


class Clock:
    """The writer's clock, set by the test (metric rows take their time from it)."""
    t = 0.0

    def __call__(self):
        return self.t


def write_run(run_dir, world, algorithm, rows, metrics=(), args=None, attrs=None):
    """rows: {rank: [(step, op, peer, tag, channel, nbytes, t_post, t_done)]};
    metrics: [(rank, step, t, name, value)]."""
    os.makedirs(run_dir, exist_ok=True)
    for r in range(world):
        clock = Clock()
        a = {"algorithm": algorithm, "rank": r, "world_size": world, "run_id": "c" * 32,
             "args": args or {}, **(attrs or {})}
        w = TraceWriter(os.path.join(run_dir, f"rank{r}.h5"), a, clock)
        for step, op, peer, tag, ch, n, t0, t1 in rows.get(r, []):
            w.comm(step, op.encode(), peer, tag, ch.encode(), n, t0, t1)
        for rk, step, t, name, value in metrics:
            if rk == r:
                clock.t = t
                w.metric(step, name, value)
        w.close()
    return str(run_dir)


def tool(*argv, cwd=None):
    p = subprocess.run([sys.executable, TOOL, *map(str, argv)], capture_output=True, text=True,
                       timeout=120, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


# ---------------------------------------------------------------- a 3-rank ring, by hand

def ring(tmp_path):
    """Rank r sends 100 (r + 1) bytes to r + 1 at each of steps 0..3 (posted at s + 0.1, done at
    s + 0.3); the receive is posted BEFORE the send (s + 0.05) and completes at s + 0.35; an
    allreduce of 64 bytes at step 4, a bcast of 32 bytes from rank 0 at step 4, a barrier."""
    rows = {}
    for r in range(3):
        left = (r - 1) % 3
        rows[r] = [x for s in range(4) for x in (
            (s, "send", (r + 1) % 3, 7, "params", 100 * (r + 1), s + 0.1, s + 0.3),
            (s, "recv", left, 7, "params", 100 * (left + 1), s + 0.05, s + 0.35))]
        rows[r] += [(4, "allreduce", -1, -1, "eval", 64, 4.1, 4.2),
                    (4, "bcast", -1 if r == 0 else 0, -1, "init", 32, 4.2, 4.3),
                    (4, "barrier", -1, -1, "barrier", 0, 4.3, 4.4)]
    metrics = [(r, s, s + 0.5, "loss", 1.0 + r + s) for r in range(3) for s in range(5)]
    return write_run(tmp_path / "ring", 3, "demo", rows, metrics)


def test_traffic_matrix_and_sizes(tmp_path):
    run = analysis.load(ring(tmp_path))
    rows = analysis.matrix_rows(run)
    assert rows == [
        {"from": 0, "to 0": 0, "to 1": 400, "to 2": 0, "collective": 96, "total": 496},
        {"from": 1, "to 0": 0, "to 1": 0, "to 2": 800, "collective": 96, "total": 896},
        {"from": 2, "to 0": 1200, "to 1": 0, "to 2": 0, "collective": 96, "total": 1296}]
    h = analysis.size_histogram(run)
    # sizes: 0 (3 barriers), 32 (3 bcasts), 64 (3 allreduces), 100 (4), 200 (4), 300 (4)
    assert [(x["lo"], x["hi"], x["messages"], x["bytes"]) for x in h] == [
        (0, 0, 3, 0), (32, 64, 3, 96), (64, 128, 7, 192 + 400), (128, 256, 4, 800),
        (256, 512, 4, 1200)]
    assert h[2]["channels"] == "eval,params"
    assert sum(x["byte_share"] for x in h) == pytest.approx(1.0)
    assert h[4]["byte_share"] == pytest.approx(1200 / 2688)


def test_size_bins_at_powers_of_two(tmp_path):
    sizes = [1, 2, 3, 4, 1023, 1024, 1025, 2 ** 40 - 1, 2 ** 40]
    rows = {0: [(0, "send", 1, 0, "x", n, 0.0, 1.0) for n in sizes]}
    run = analysis.load(write_run(tmp_path / "p2", 2, "demo", rows))
    got = {x["lo"]: x["messages"] for x in analysis.size_histogram(run)}
    assert got == {1: 1, 2: 2, 4: 1, 512: 1, 1024: 2, 2 ** 39: 1, 2 ** 40: 1}


def test_load_imbalance(tmp_path):
    # rank 0's steps end at 0, 1, 2, 3 (times 1, 1, 1); rank 1's at 0, 1.5, 2, 3.5 (1.5, 0.5, 1.5)
    ends = {0: [0, 1, 2, 3], 1: [0, 1.5, 2, 3.5]}
    metrics = [(r, s, t, "loss", 1.0) for r, ts in ends.items() for s, t in enumerate(ts)]
    # a message posted at step 1 and done much later moves nothing (t_post counts, not t_done);
    # a message of step 2 posted at 2.5 on rank 0 ends its step 2 there
    rows = {0: [(1, "send", 1, 0, "x", 8, 0.9, 9.0), (2, "send", 1, 0, "x", 8, 2.5, 2.6)]}
    run = analysis.load(write_run(tmp_path / "imb", 2, "demo", rows, metrics))
    # rank 0 step times: 1, 1.5, 0.5; rank 1: 1.5, 0.5, 1.5
    steps, times, ranks = analysis.step_times(run)
    assert steps.tolist() == [1, 2, 3] and ranks == [0, 1]
    np.testing.assert_allclose(times, [[1, 1.5, 0.5], [1.5, 0.5, 1.5]])
    imb = analysis.load_imbalance(run)
    np.testing.assert_allclose(imb["imbalance"], [1.5 / 1.25, 1.5 / 1.0, 1.5 / 1.0])
    assert imb["max"] == pytest.approx(1.5) and imb["max_step"] == 2
    assert imb["mean"] == pytest.approx((1.2 + 1.5 + 1.5) / 3)
    assert imb["time_weighted"] == pytest.approx(4.5 / 3.25)
    assert imb["slowest_rank"] == 1


# ---------------------------------------------------------------- formulas

def pcasgd_rows(world, reliable, unreliable, steps, tau, k, m, drop=None):
    """What PC-ASGD sends: x_0 (step -1) and x_1..x_{S-1} to reliable neighbours; x_s and, for
    k = 2, g_s to unreliable ones at s = 0 .. S-1-tau."""
    rows = {}
    for r in range(world):
        out = [(s, "send", j, 301, "params", m, s + 0.1, s + 0.2)
               for s in range(-1, steps - 1) for j in reliable[r]]
        for s in range(max(0, steps - tau)):
            for j in unreliable[r]:
                out += [(s, "send", j, 302, "params", m, s + 0.3, s + tau)] if k >= 1 else []
                out += [(s, "send", j, 303, "grads", m, s + 0.3, s + tau)] if k >= 2 else []
        rows[r] = out if drop != r else out[1:]
    return rows


@pytest.mark.parametrize("variant,k", [("pc", 2), ("dasgd", 1), ("c", 0)])
def test_pcasgd_bytes_match_the_formula(tmp_path, variant, k):
    # 4 agents, clusters 2,2, full graph: R = {the other agent of the cluster}, U = the other two
    rel = {0: [1], 1: [0], 2: [3], 3: [2]}
    unr = {0: [2, 3], 1: [2, 3], 2: [0, 1], 3: [0, 1]}
    S, tau, M = 7, 3, 4 * (10 + 1)
    metrics = [(r, s, s + 0.05, "loss", 1.0) for r in range(4) for s in range(S)]
    args = {"clusters": "2,2", "graph": "full", "delay": tau, "variant": variant, "mixing": "lazy"}
    run = analysis.load(write_run(tmp_path / variant, 4, "pcasgd",
                                  pcasgd_rows(4, rel, unr, S, tau, k, M), metrics, args,
                                  {"parameters": 10}))
    f = analysis.bytes_vs_formula(run)
    assert len(f) == 4
    for row in f:
        assert row["model_bytes"] == M and row["steps"] == S and row["parameters"] == 10
        assert row["formula_per_step"] == M * (1 + k * 2)
        assert row["expected_bytes"] == M * (1 * 7 + k * 2 * 4)  # |R| S + k |U| (S - tau)
        assert row["measured_bytes"] == row["expected_bytes"] and row["ratio"] == 1.0


def test_a_missing_message_shows_in_the_ratio(tmp_path):
    rel, unr = {0: [1], 1: [0]}, {0: [], 1: []}
    metrics = [(r, s, s + 0.05, "loss", 1.0) for r in range(2) for s in range(4)]
    args = {"clusters": "2", "graph": "full", "delay": 0, "variant": "pc"}
    run = analysis.load(write_run(tmp_path / "miss", 2, "pcasgd",
                                  pcasgd_rows(2, rel, unr, 4, 0, 2, 100, drop=1), metrics, args))
    f = {r["rank"]: r for r in analysis.bytes_vs_formula(run)}
    assert f[0]["ratio"] == 1.0 and f[1]["ratio"] == pytest.approx(3 / 4)


def test_dpsgd_and_pasgd_formulas(tmp_path):
    # D-PSGD on a ring of 5: 2 neighbours each, S = 6 iterations of M = 24 bytes
    S, M = 6, 24
    rows = {r: [(s, "send", (r + d) % 5, 0, "params", M, s, s + 0.1)
                for s in range(S) for d in (1, -1)] for r in range(5)}
    metrics = [(r, s, s + 0.05, "loss", 1.0) for r in range(5) for s in range(S)]
    run = analysis.load(write_run(tmp_path / "dpsgd", 5, "dpsgd", rows, metrics,
                                  {"graph": "ring"}))
    for row in analysis.bytes_vs_formula(run):
        assert (row["formula_per_step"], row["expected_bytes"], row["ratio"]) == (48, 48 * S, 1.0)
    # PASGD: 3 workers, tau 4, S = 14 steps: floor(14 / 4) = 3 averagings of M = 400 bytes
    rows = {r: [(s, "allreduce", -1, -1, "params", 400, s, s + 0.1) for s in (3, 7, 11)]
            + [(-1, "bcast", -1, -1, "init", 400, -0.5, -0.4)] for r in range(3)}
    run = analysis.load(write_run(tmp_path / "pasgd", 3, "adacomm", rows, (),
                                  {"method": "pasgd", "tau": 4, "steps": 14}))
    for row in analysis.bytes_vs_formula(run):
        assert row["averagings"] == row["expected_averagings"] == 3
        assert row["expected_bytes"] == row["measured_bytes"] == 1200 and row["ratio"] == 1.0
        assert row["ring_wire_per_step"] == pytest.approx(2 * 2 / 3 * 400 * 3 / 14)
    assert analysis.bytes_vs_formula(analysis.load(ring(tmp_path))) == []  # no formula: demo


# ---------------------------------------------------------------- Perfetto / Chrome export

def test_flows_go_from_send_to_the_receives_completion(tmp_path):
    run = analysis.load(ring(tmp_path))
    obj = analysis.chrome_trace(run)
    assert analysis.check_chrome_trace(obj) == []
    flows = {}
    for e in obj["traceEvents"]:
        if e["ph"] in "sf":
            flows.setdefault(e["id"], {})[e["ph"]] = e
    assert len(flows) == 12 and obj["otherData"]["flows_backwards"] == 0
    for d in flows.values():
        src = d["s"]["pid"]
        assert d["f"]["pid"] == (src + 1) % 3
        s = d["s"]["ts"] / 1e6 % 1
        assert s == pytest.approx(0.1)  # the send's posting
        # the receive's completion at s + 0.35 (one nanosecond inside its slice)
        assert (d["f"]["ts"] + 0.001) / 1e6 % 1 == pytest.approx(0.35)
        assert d["f"]["ts"] > d["s"]["ts"]  # although the receive was posted first


def test_a_receive_done_before_its_send_was_posted_gets_no_arrow(tmp_path):
    rows = {0: [(0, "send", 1, 0, "x", 8, 2.0, 2.1)], 1: [(0, "recv", 0, 0, "x", 8, 0.5, 1.0)]}
    run = analysis.load(write_run(tmp_path / "skew", 2, "demo", rows))
    obj = analysis.chrome_trace(run)
    assert obj["otherData"]["flows"] == 0 and obj["otherData"]["flows_backwards"] == 1
    bad = json.loads(json.dumps(obj))
    bad["traceEvents"] += [
        {"ph": "s", "id": 1, "ts": 2000000.0, "pid": 0, "tid": 1, "name": "x"},
        {"ph": "f", "bp": "e", "id": 1, "ts": 1000000.0, "pid": 1, "tid": 1, "name": "x"}]
    assert any("backwards" in p for p in analysis.check_chrome_trace(bad))


def test_step_window(tmp_path):
    run = analysis.load(ring(tmp_path))
    # events per step: steps 0-3: 6 rows x 3 + 3 sends' posting slices + 3 flows x 2 + 3
    # metrics = 30; step 4: 9 x 3 + 3
    per = {s: 30 for s in range(4)} | {4: 30}
    assert analysis.choose_steps(run) == (0, 4)
    assert analysis.choose_steps(run, max_events=sum(per.values())) == (0, 4)
    assert analysis.choose_steps(run, max_events=sum(per.values()) - 1) == (1, 4)
    assert analysis.choose_steps(run, max_events=30 * 3) == (1, 3)  # around the middle (2)
    assert analysis.choose_steps(run, max_events=30 * 2) == (2, 3)  # right first
    assert analysis.choose_steps(run, max_events=1) == (2, 2)       # at least one step
    assert analysis.choose_steps(run, (3, 10), max_events=0) == (3, 4)
    obj = analysis.chrome_trace(run, (1, 2))
    xs = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    # 12 rows' slices, and the 6 sends' posting slices (where their flows start)
    assert len(xs) == 18 and {e["args"]["step"] for e in xs} == {1, 2}
    assert sum(e["cat"] == "post" for e in xs) == 6
    assert obj["otherData"]["steps"] == [1, 2] and obj["otherData"]["flows"] == 6
    counters = [e for e in obj["traceEvents"] if e["ph"] == "C" and e["name"] == "loss"]
    assert len(counters) == 6
    assert analysis.check_chrome_trace(obj) == []


def test_export_command_steps_and_max_events(tmp_path):
    run = ring(tmp_path)
    code, out, err = tool("export", run, "-o", tmp_path / "a.json", "--steps", "1:2")
    assert code == 0, err
    assert json.loads((tmp_path / "a.json").read_text())["otherData"]["steps"] == [1, 2]
    code, out, err = tool("export", run, "-o", tmp_path / "b.json", "--max-events", "60")
    assert code == 0 and "at most --max-events 60" in out, (out, err)
    for bad in (["--steps", "5"], ["--steps", "3:1"], ["--max-events", "-1"]):
        code, out, err = tool("export", run, "-o", tmp_path / "c.json", *bad)
        assert code == 2 and len(err.strip().splitlines()) == 1, (bad, err)


# ---------------------------------------------------------------- compare's defaults

def test_compare_defaults(tmp_path):
    m = [(r, s, s + 0.5, n, 1.0 / (s + 1)) for r in range(2) for s in range(3)
         for n in ("train_loss", "tau", "lr")] + [(r, 3, 4.0, "test_acc", 0.5 + r) for r in range(2)]
    a = write_run(tmp_path / "runs" / "a", 2, "adacomm", {}, m, {"tau": 2})
    b = write_run(tmp_path / "runs" / "b", 2, "adacomm", {}, m, {"tau": 4})
    runs = [analysis.load(a), analysis.load(b)]
    assert analysis.default_metrics(runs) == ["train_loss", "test_acc"]
    assert analysis.single_valued(runs, ["train_loss", "test_acc"]) == ["test_acc"]
    assert analysis.default_out(runs) == str(tmp_path / "runs")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    code, out, err = tool("compare", a, b, cwd=cwd)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "runs")) == ["a", "b", "compare.csv", "compare.png"]
    assert os.listdir(cwd) == []
    header = (tmp_path / "runs" / "compare.csv").read_text().splitlines()[0].split(",")
    assert "last_train_loss" in header and "last_test_acc" in header and "last_tau" not in header


# ---------------------------------------------------------------- the analyze command

def test_analyze_command(tmp_path):
    code, out, err = tool("analyze", ring(tmp_path), "--csv-dir", tmp_path / "csv")
    assert code == 0, err
    assert "traffic matrix" in out and "1.17 KiB" in out and "no formula for demo" in out
    assert sorted(os.listdir(tmp_path / "csv")) == ["formula.csv", "imbalance.csv", "matrix.csv",
                                                    "sizes.csv"]
    lines = (tmp_path / "csv" / "matrix.csv").read_text().splitlines()
    assert lines[0] == "from,to 0,to 1,to 2,collective,total" and lines[3] == "2,1200,0,0,96,1296"


# ---------------------------------------------------------------- OTF2

def test_wait_start():
    rows = np.zeros(3, dtype=[("t_post", "f8"), ("t_done", "f8"), ("t_wait", "f8")])
    rows["t_post"], rows["t_done"], rows["t_wait"] = [0, 1, 2], [1, 3, 5], [0.5, np.nan, 9]
    np.testing.assert_array_equal(analysis.wait_start(rows), [0.5, 3, 5])
    np.testing.assert_array_equal(analysis.wait_start(rows[["t_post", "t_done"]]), [1, 3, 5])


def test_otf2_round_trip(tmp_path):
    pytest.importorskip("otf2")
    run_dir = ring(tmp_path)
    run = analysis.load(run_dir)
    code, out, err = tool("export", "--format", "otf2", run_dir, "-o", tmp_path / "otf2")
    assert code == 0, err
    back = analysis.read_otf2(str(tmp_path / "otf2" / "traces.otf2"))
    m, coll = analysis.traffic_matrix(run)
    np.testing.assert_array_equal(back["send"], m)
    np.testing.assert_array_equal(back["recv"], m)  # every send was received
    np.testing.assert_array_equal(back["collective_rows"], coll)
    np.testing.assert_array_equal(back["collective"], [64 + 32, 64, 64])  # bcast: only the root sends
    assert (back["sends"], back["recvs"], back["collectives"]) == (12, 12, 9)
    assert sorted(back["metrics"]["loss"]) == sorted(1.0 + r + s for r in range(3) for s in range(5))
    # the same directory again is refused (an archive is never written over)
    code, out, err = tool("export", "--format", "otf2", run_dir, "-o", tmp_path / "otf2")
    assert code == 2 and "not an empty directory" in err
