"""Blocked time (issue 14): each trace row's ``t_wait`` (when the rank began to wait; NaN if it
never blocked), format version 3 with older files still read, the interval arithmetic of
compute / blocked / overlap (mpidist.analysis.blocking), and the cheaper trace row.

The handle tests run in one process on MPI_COMM_SELF; the emulated link delays a message by a known
latency L, so a wait X seconds after posting blocks max(0, L - X) seconds (closed form). The two-rank
version with a real late sender is tests/mpi/test_blocked_time.py.
"""
import math
import os
import time

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpidist import analysis, trace
from mpidist.analysis import blocking
from mpidist.comm import Communicator, waitall
from mpidist.link import LinkModel
from mpidist.trace import TraceWriter, read_rank


class Rows:
    """A trace writer that keeps the rows it is given."""

    def __init__(self):
        self.rows = []

    def comm_row(self, row):
        self.rows.append(row)


def link_comm(latency):
    t0 = time.monotonic()
    rows = Rows()
    comm = Communicator(MPI.COMM_SELF, rows, clock=lambda: time.monotonic() - t0,
                        link=LinkModel(latency=latency), timeout=10)
    return comm, rows


def blocked(row):
    return row[7] - row[8]


# ------------------------------------------------------------------------------- t_wait rule

@pytest.mark.parametrize("x", [0.0, 0.1])
def test_a_wait_blocks_until_the_link_delivers(x):
    """Posted at t, delivered at t + L: a wait X s after posting blocks L - X s, from the wait."""
    L = 0.3
    comm, rows = link_comm(L)
    a, out = torch.arange(4.0), torch.zeros(4)
    hr = comm.irecv(out, 0, 1, "c")
    hs = comm.isend(a, 0, 1, "c")
    time.sleep(x)
    comm_t = comm.clock()
    hr.wait()
    after = comm.clock()
    (row,) = [r for r in rows.rows if r[1] == b"recv"]
    t_post, t_done, t_wait = row[6], row[7], row[8]
    # events, not durations (a busy machine may stretch any of them): the wait began after
    # comm_t (so X s or more after posting) and before it returned; it ended once the link had
    # delivered (posting + L) and before it returned; blocked is the wait's own span
    assert math.isfinite(t_wait) and comm_t <= t_wait <= after
    assert comm_t >= t_post + x
    assert t_post + L - 1e-6 <= t_done <= after, row
    assert blocked(row) == t_done - t_wait
    assert row[8] == hr.t_wait and row[7] == hr.t_done
    hs.wait()


def test_a_message_already_delivered_at_the_wait_has_no_t_wait():
    comm, rows = link_comm(0.05)
    hr = comm.irecv(torch.zeros(4), 0, 1, "c")
    hs = comm.isend(torch.ones(4), 0, 1, "c")
    time.sleep(0.2)  # past the delivery
    hr.wait()
    hs.wait()
    for r in rows.rows:
        assert math.isnan(r[8]) or blocked(r) < 0.01, r  # found complete: not blocked


def test_a_row_completed_by_test_has_nan_and_waiting_sets_it():
    ticks = iter(range(1, 1 << 30))
    rows = Rows()
    comm = Communicator(MPI.COMM_SELF, rows, clock=lambda: float(next(ticks)), timeout=5)
    hr = comm.irecv(torch.zeros(8), 0, 3, "polled")
    hs = comm.isend(torch.ones(8), 0, 3, "polled")
    while not hr.test():
        pass
    while not hs.test():
        pass
    assert all(math.isnan(r[8]) for r in rows.rows)
    # polling declared as waiting (MD-GAN's server): t_wait is the time given, kept on later calls
    hr = comm.irecv(torch.zeros(8), 0, 4, "polled")
    hr.waiting(1000.0)
    hr.waiting(2000.0)
    hs = comm.isend(torch.ones(8), 0, 4, "polled")
    while not hr.test():
        pass
    hs.wait()
    (row,) = [r for r in rows.rows if r[1] == b"recv" and r[3] == 4]
    assert row[8] == hr.t_wait == 1000.0
    hr.waiting(3000.0)  # completed: nothing changes
    assert hr.t_wait == 1000.0


def test_waitall_gives_the_handles_it_blocked_on_one_t_wait():
    """Two messages delivered L after posting: waitall blocks on the first; the second, delivered
    while it waited, gets the same t_wait (the rank waited for both from then on)."""
    L = 0.2
    comm, rows = link_comm(L)
    outs = [torch.zeros(4), torch.zeros(4)]
    hrs = [comm.irecv(outs[k], 0, 10 + k, "w") for k in range(2)]
    hss = [comm.isend(torch.full((4,), float(k)), 0, 10 + k, "w") for k in range(2)]
    before = comm.clock()
    waitall(hrs)
    after = comm.clock()
    waitall(hss)
    assert math.isfinite(hrs[0].t_wait) and hrs[1].t_wait == hrs[0].t_wait
    recv = [r for r in rows.rows if r[1] == b"recv"]
    assert [r[8] for r in recv] == [hrs[0].t_wait] * 2
    # events, not durations: the wait began at waitall, each ended once the link delivered it
    # (posting + L) and before waitall returned
    assert before <= hrs[0].t_wait <= after
    assert all(r[6] + L - 1e-6 <= r[7] <= after for r in recv), recv


# ------------------------------------------------------------------------ the format's versions

def _writer(path, **kw):
    return TraceWriter(str(path), {"algorithm": "t", "rank": 0, "world_size": 1, "run_id": "r"},
                       lambda: 1.0, **kw)


def test_version_3_rows_round_trip_with_t_wait(tmp_path):
    w = _writer(tmp_path / "rank0.h5")
    w.comm(0, b"recv", 1, 2, b"c", 8, 0.5, 2.0, 1.25)
    w.comm(1, b"recv", 1, 2, b"c", 8, 3.0, 4.0)  # default: never blocked
    w.close()
    t = read_rank(str(tmp_path / "rank0.h5"))
    assert t.attrs["format_version"] == 3 and t.records_wait
    assert t.comm["t_wait"][0] == 1.25 and math.isnan(t.comm["t_wait"][1])
    with h5py.File(tmp_path / "rank0.h5", "r") as f:
        assert f["comm"].dtype == trace.COMM_DTYPE and f["comm"].dtype.names[-1] == "t_wait"


def write_v2(path, rank=0, rows=None, world=1):
    """A file in format version 2's layout (no t_wait), as mpidist wrote it before."""
    with h5py.File(path, "w", libver=trace.LIBVER) as f:
        f.attrs["format"] = np.array(b"mpidist-trace", dtype=h5py.string_dtype("utf-8", 13))
        f.attrs["format_version"] = 2
        f.attrs["rank"], f.attrs["world_size"] = rank, world
        f.attrs["run_id"] = np.array(b"old", dtype=h5py.string_dtype("utf-8", 3))
        f.attrs["status"] = np.array(b"ok", dtype=h5py.string_dtype("utf-8", 2))
        f.create_dataset("comm", data=rows, maxshape=(None,), chunks=(4096,), fletcher32=True)
        f.create_dataset("metrics", shape=(0,), maxshape=(None,), chunks=(1024,),
                         dtype=trace.METRIC_DTYPE, fletcher32=True)


def v2_rows():
    r = np.zeros(3, trace.COMM_DTYPE_V2)
    r["step"], r["op"], r["peer"], r["channel"], r["nbytes"] = [0, 1, 2], b"recv", 1, b"p", 64
    r["t_post"], r["t_done"] = [0.0, 1.0, 2.0], [0.5, 1.5, 2.5]
    return r


def test_version_2_files_read_with_nan_t_wait_and_summary_says_not_recorded(tmp_path, capsys):
    d = tmp_path / "old"
    d.mkdir()
    write_v2(d / "rank0.h5", rows=v2_rows())
    t = read_rank(str(d / "rank0.h5"))
    assert not t.records_wait and t.comm.dtype == trace.COMM_DTYPE
    assert np.isnan(t.comm["t_wait"]).all()
    for name in trace.COMM_DTYPE_V2.names:
        assert (t.comm[name] == v2_rows()[name]).all()
    run = analysis.load(str(d))
    text = analysis.summary_text(run)
    assert blocking.NOT_RECORDED in text and "blocked time not recorded (trace format < 3)" in text
    (ch, whole) = blocking.time_table(run)
    assert math.isnan(whole["blocked_s"]) and math.isnan(whole["compute_s"])
    assert whole["in_flight_s"] == pytest.approx(1.5)  # three 0.5 s receives, disjoint
    assert math.isnan(analysis.run_totals(run)["blocked_s"])


def test_a_resumed_version_2_file_is_continued_in_its_own_layout(tmp_path):
    p = tmp_path / "rank0.h5"
    write_v2(p, rows=v2_rows())
    w = _writer(p, resume_step=1)
    w.comm(2, b"send", 1, 0, b"p", 64, 5.0, 6.0, 5.5)
    w.close()
    t = read_rank(str(p))
    assert t.attrs["format_version"] == 2 and not t.records_wait
    assert list(t.comm["step"]) == [0, 1, 2] and np.isnan(t.comm["t_wait"]).all()
    assert t.comm["t_post"][-1] == 5.0


def test_an_infinite_t_wait_is_damage(tmp_path):
    p = tmp_path / "rank0.h5"
    w = _writer(p)
    w.comm(0, b"recv", 1, 2, b"c", 8, 0.5, 2.0, 1.0)
    w.close()
    with h5py.File(p, "a") as f:
        r = f["comm"][()]
        r["t_wait"] = np.inf
        f["comm"][:] = r
    with pytest.raises(trace.TraceError, match="t_wait = inf"):
        read_rank(str(p))


# ------------------------------------------------------------------------- interval arithmetic

def ref_union(iv):
    """|union| by merging sorted intervals (the reference, independent of the sweep)."""
    total, cur = 0.0, None
    for a, b in sorted(iv):
        if cur is None or a > cur[1]:
            if cur:
                total += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (cur[1] - cur[0] if cur else 0.0)


def ref_minus(a_iv, b_iv):
    """|U A \\ U B| = |U (A and B)| - |U B| (B's union taken with A's)."""
    return ref_union(a_iv + b_iv) - ref_union(b_iv)


def test_covered_on_hand_made_intervals():
    a = ([0.0, 1.0, 5.0], [2.0, 3.0, 6.0])  # [0,2] U [1,3] U [5,6] = 4
    assert blocking.covered(a) == pytest.approx(4.0)
    b = ([0.5, 5.5], [1.5, 7.0])            # removes [0.5,1.5] and [5.5,6]
    assert blocking.covered(a, b) == pytest.approx(4.0 - 1.0 - 0.5)
    assert blocking.covered(([], [])) == 0.0
    assert blocking.covered(([1.0], [1.0])) == 0.0  # an instant
    assert blocking.covered(a, a) == 0.0


def test_covered_matches_the_merge_reference_on_random_intervals():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, m = rng.integers(0, 30, 2)
        a0 = rng.uniform(0, 10, n)
        a1 = a0 + rng.exponential(1.0, n) * (rng.random(n) > 0.1)
        b0 = rng.uniform(0, 10, m)
        b1 = b0 + rng.exponential(0.5, m)
        A, B = list(zip(a0, a1)), list(zip(b0, b1))
        assert blocking.covered((a0, a1)) == pytest.approx(ref_union(A), abs=1e-9)
        assert blocking.covered((a0, a1), (b0, b1)) == pytest.approx(
            ref_minus(A, B) if A else 0.0, abs=1e-9)


def hand_run(tmp_path):
    """Two ranks, hand-made rows (t_post, t_done, t_wait), one run directory."""
    spec = {0: [  # rank 0: two sends on "p", one allreduce on "g"
        (0, b"send", 1, b"p", 0.0, 1.0, 0.8),       # blocked [0.8, 1.0]
        (1, b"send", 1, b"p", 2.0, 3.0, math.nan),   # never blocked
        (1, b"allreduce", -1, b"g", 2.5, 4.0, 3.5),  # blocked [3.5, 4.0]
    ], 1: [  # rank 1: receives posted ahead (overlapping in flight), one waitall over both
        (0, b"recv", 0, b"p", 0.0, 1.5, 1.0),        # blocked [1.0, 1.5]
        (1, b"recv", 0, b"p", 0.1, 3.2, 1.0),        # blocked [1.0, 3.2] (same waitall)
        (1, b"allreduce", -1, b"g", 3.4, 4.0, math.nan),
    ]}
    d = tmp_path / "hand"
    d.mkdir()
    for rk, rows in spec.items():
        w = TraceWriter(str(d / f"rank{rk}.h5"), {"algorithm": "hand", "rank": rk,
                                                  "world_size": 2, "run_id": "h"},
                        lambda: 0.0)
        for s, op, peer, ch, tp, td, tw in rows:
            w.comm(s, op, peer, 0, ch, 100, tp, td, tw)
        w.metric(1, "loss", 1.0)  # logged at t = 0.0 (the clock)
        w.close()
    return analysis.load(str(d)), spec


def test_time_table_of_hand_made_rows_in_closed_form(tmp_path):
    run, _ = hand_run(tmp_path)
    tt = {(r["rank"], r["channel"]): r for r in blocking.time_table(run)}
    # rank 0: span [0, 4]; blocked [0.8,1] U [3.5,4] = 0.7; in flight [0,1] U [2,4] = 3
    r0 = tt[(0, "all")]
    assert r0["span_s"] == pytest.approx(4.0) and r0["blocked_s"] == pytest.approx(0.7)
    assert r0["compute_s"] == pytest.approx(3.3) and r0["in_flight_s"] == pytest.approx(3.0)
    assert r0["overlap_pct"] == pytest.approx(100 * (3.0 - 0.7) / 3.0)
    # channel p of rank 0: in flight 2, blocked 0.2, not blocked on anything 1.8 (its [2,3]
    # does not meet the allreduce's wait [3.5,4])
    assert tt[(0, "p")]["in_flight_s"] == pytest.approx(2.0)
    assert tt[(0, "p")]["blocked_s"] == pytest.approx(0.2)
    assert tt[(0, "p")]["overlap_pct"] == pytest.approx(90.0)
    # rank 1: posted-ahead receives count once: in flight [0,3.2] U [3.4,4] = 3.8, not 1.5+3.1+0.6
    r1 = tt[(1, "all")]
    assert r1["in_flight_s"] == pytest.approx(3.8) and r1["blocked_s"] == pytest.approx(2.2)
    assert r1["compute_s"] == pytest.approx(4.0 - 2.2)
    assert r1["overlap_pct"] == pytest.approx(100 * 1.6 / 3.8)
    # channel g of rank 1: in flight [3.4,4], the rank not blocked then: 100 % hidden
    assert tt[(1, "g")]["overlap_pct"] == pytest.approx(100.0)
    assert tt[(1, "g")]["blocked_s"] == 0.0
    tot = analysis.run_totals(run)
    assert tot["blocked_s"] == pytest.approx(0.7 + 2.2)
    assert tot["compute_s"] == pytest.approx(8.0 - 2.9)
    assert tot["overlap_pct"] == pytest.approx(100 * (2.3 + 1.6) / (3.0 + 3.8))
    # the per-group table: rank 1's receives from 0 on p
    g = [r for r in analysis.comm_table(run) if r["rank"] == 1 and r["op"] == "recv"][0]
    assert g["in_flight_s"] == pytest.approx(3.2) and g["blocked_s"] == pytest.approx(2.2)
    assert g["overlap_pct"] == pytest.approx(100 * 1.0 / 3.2)
    text = analysis.summary_text(run)
    assert "time per rank and channel" in text and "not recorded" not in text
    assert "compute 5.100 s, blocked 2.900 s" in text


def test_time_csv_and_tool(tmp_path):
    run, _ = hand_run(tmp_path)
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(analysis.time_csv(run))))
    whole = {r["rank"]: r for r in rows if r["channel"] == "all"}
    assert float(whole["1"]["blocked_s"]) == pytest.approx(2.2)
    assert float(whole["0"]["compute_s"]) == pytest.approx(3.3)
    assert [r["span_s"] for r in rows if r["channel"] != "all"] == ["", "", "", ""]


# ------------------------------------------------------------------------------- the row path

def test_rows_recorded_as_tuples_reach_the_file_exactly(tmp_path):
    """The list-of-tuples buffer: flushes at capacity, converts at flush, keeps every value."""
    p = tmp_path / "rank0.h5"
    w = _writer(p, capacity=100)
    want = np.zeros(250, trace.COMM_DTYPE)
    for i in range(250):
        tw = math.nan if i % 3 else 0.001 * i + 0.25
        want[i] = (i, b"send", i % 4, 7, b"params", 8 * i, 0.001 * i, 0.001 * i + 0.5, tw)
        w.comm(*want[i].tolist())
        if i == 150:  # a capacity flush has happened: 100 rows are in the file already
            assert len(read_rank(str(p)).comm) == 100
    w.metric(3, "loss", 0.5)
    w.close()
    t = read_rank(str(p))
    assert t.comm.tobytes() == want.tobytes()
    assert list(t.metrics["value"]) == [0.5]


def test_a_bad_row_is_dropped_and_counted_not_raised(tmp_path):
    p = tmp_path / "rank0.h5"
    w = _writer(p, warn=lambda line: None)
    w.comm(0, b"send", 1, 7, b"params", 8, 0.0, 1.0)
    w.comm_row((1, b"send", 1, 7))  # too short: no row type holds it
    w.comm(2, b"send", 1, 7, b"params", 8, 2.0, 3.0)
    w.close()
    t = read_rank(str(p))
    assert list(t.comm["step"]) == [0, 2] and t.attrs["dropped_comm_rows"] == 1


def test_many_rows_recorded_in_bulk_all_arrive(tmp_path):
    """50,000 rows through the handles' path (comm_row), four capacity flushes and the close."""
    w = _writer(tmp_path / "rank0.h5")
    row = (3, b"send", 1, 7, b"params", 4096, 0.5, 0.6, math.nan)
    for _ in range(50_000):
        w.comm_row(row)
    w.close()
    assert len(read_rank(str(tmp_path / "rank0.h5")).comm) == 50_000
    assert os.path.getsize(tmp_path / "rank0.h5") > 50_000 * trace.COMM_DTYPE.itemsize


# ------------------------------------------------------------------------ timeline and exports

def test_chrome_export_draws_blocked_spans(tmp_path):
    run, spec = hand_run(tmp_path)
    obj = analysis.chrome_trace(run)
    assert analysis.check_chrome_trace(obj) == []
    assert obj["otherData"]["slices"].startswith("blocked")
    xs = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    for rk, rows in spec.items():
        for s, op, peer, ch, tp, td, tw in rows:
            (sl,) = [e for e in xs if e["pid"] == rk and e["cat"] == op.decode()
                     and e["args"]["step"] == s and e["name"] == ch.decode()]
            start = td if math.isnan(tw) else tw  # never blocked: an instant at completion
            assert sl["ts"] == pytest.approx(1e6 * start) and \
                sl["ts"] + sl["dur"] == pytest.approx(1e6 * td), (rk, op, s, sl)
            assert sl["args"]["t_post"] == pytest.approx(1e6 * tp)
    posts = [e for e in xs if e["cat"] == "post"]
    assert sorted(e["ts"] for e in posts) == [0.0, 2e6]  # rank 0's two sends, at posting
    # flows: from each send's posting to its receive's completion
    flows = {e["id"]: {} for e in obj["traceEvents"] if e["ph"] in "sf"}
    for e in obj["traceEvents"]:
        if e["ph"] in ("s", "f"):
            flows[e["id"]][e["ph"]] = e["ts"]
    assert sorted((d["s"], round(d["f"] + 0.001, 3)) for d in flows.values()) == \
        [(0.0, 1.5e6), (2e6, 3.2e6)]


def test_chrome_export_of_a_version_2_trace_keeps_posting_spans(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    write_v2(d / "rank0.h5", rows=v2_rows())
    obj = analysis.chrome_trace(analysis.load(str(d)))
    xs = sorted((e["ts"], e["dur"]) for e in obj["traceEvents"] if e["ph"] == "X")
    assert xs == [(0.0, 5e5), (1e6, 5e5), (2e6, 5e5)]
    assert "format < 3" in obj["otherData"]["slices"]


def test_timeline_png_in_both_modes(tmp_path):
    pytest.importorskip("matplotlib")
    run, _ = hand_run(tmp_path)
    p = analysis.plot_timeline(run, str(tmp_path / "t.png"))
    assert os.path.getsize(p) > 1000
    d = tmp_path / "old"
    d.mkdir()
    write_v2(d / "rank0.h5", rows=v2_rows())
    p = analysis.plot_timeline(analysis.load(str(d)), str(tmp_path / "old.png"))
    assert os.path.getsize(p) > 1000


def test_otf2_wait_regions_span_t_wait_to_t_done(tmp_path):
    otf2 = pytest.importorskip("otf2")
    run, _ = hand_run(tmp_path)
    analysis.export_otf2(run, str(tmp_path / "otf2"))
    enters = {}
    with otf2.reader.open(str(tmp_path / "otf2" / "traces.otf2")) as tr:
        for loc, e in tr.events:
            if isinstance(e, otf2.events.Enter) and e.region.name == "MPI_Wait":
                enters.setdefault(loc.name, []).append(e.time)
    # rank 1: the waitall from 1.0 (first receive, done 1.5), the second receive's wait from
    # 1.5 (after the first region; its t_wait 1.0 is inside it), the allreduce never waited (4.0)
    assert enters["Master thread 1"] == [10 ** 9, 15 * 10 ** 8, 4 * 10 ** 9]
    # rank 0: send 0 waited from 0.8, send 1 never (3.0), the allreduce from 3.5
    assert enters["Master thread 0"] == [8 * 10 ** 8, 3 * 10 ** 9, 35 * 10 ** 8]
