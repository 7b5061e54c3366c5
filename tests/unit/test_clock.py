"""mpidist.clock without a multi-rank launch: the injected skew's syntax and values, the drift
correction in closed form, and the trace reader applying it (and refusing damaged clock
attributes). The estimates themselves: tests/mpi/test_clock.py."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpidist import clock
from mpidist.trace import TraceError, TraceWriter, read_rank


def test_skew_syntax():
    assert clock.parse_skew("") == {}
    assert clock.parse_skew("1:0.5:20, 3:-2:-7.5,") == {1: (0.5, 20.0), 3: (-2.0, -7.5)}
    for bad in ("1:0.5", "x:1:2", "1:nan:0", "-1:0:0", "1:0:1e6", "1:0:2:3"):
        with pytest.raises(ValueError, match=clock.SKEW_ENV):
            clock.parse_skew(bad)


def test_raw_clock_with_and_without_skew():
    assert clock.raw_clock(0, env={}) is MPI.Wtime
    raw = clock.raw_clock(2, env={clock.SKEW_ENV: "2:1.5:2000"})
    off, ppm, ref = raw.skew
    assert (off, ppm) == (1.5, 2000.0)
    w0 = MPI.Wtime()
    r = raw()
    w1 = MPI.Wtime()
    # raw = W + 1.5 + 2e-3 (W - ref) for some W in [w0, w1]
    assert w0 + 1.5 + 2e-3 * (w0 - ref) <= r <= w1 + 1.5 + 2e-3 * (w1 - ref)
    assert clock.raw_clock(0, env={clock.SKEW_ENV: "2:1.5:2000"}) is MPI.Wtime


def test_drift_and_align_in_closed_form():
    attrs = {"clock_start": clock.record(3.0, 1e-6, 2.0),
             "clock_end": clock.record(3.0 + 0.004, 2e-6, 12.0)}   # 400 ppm over 10 s
    # intervals apart: the drift as estimated
    assert clock.drift(attrs) == pytest.approx(4e-4)
    t = np.array([2.0, 7.0, 12.0, 22.0])
    # rank 0's time = t - drift (t - t_start)
    np.testing.assert_allclose(clock.align(attrs, t), t - 4e-4 * (t - 2.0))
    # without an end estimate (a killed run) or with a single instant: nothing to remove
    assert clock.align({"clock_start": attrs["clock_start"]}, t) is t
    assert clock.drift({"clock_start": attrs["clock_start"],
                        "clock_end": clock.record(4.0, 0, 2.0)}) == 0.0
    assert clock.align({}, t) is t


def test_estimates_within_each_others_uncertainty_give_no_drift():
    """A start estimate taken on a busy machine (-270 +- 313 us) and a sharp end estimate
    (0.17 +- 1 us), as CI once recorded on one node (true offset 0): no drift, and the trace is
    moved by the difference between the start estimate and the overlap's middle."""
    s, e = clock.record(-270e-6, 313e-6, 0.0), clock.record(0.17e-6, 1e-6, 1.24)
    attrs = {"clock_start": s, "clock_end": e}
    assert clock.drift(attrs) == 0.0
    o = clock.offsets(attrs)
    assert o[0] == o[1] == pytest.approx(0.17e-6, abs=1e-15)   # the overlap is e's interval
    t = np.array([0.0, 0.6262198, 1.24])
    np.testing.assert_allclose(clock.align(attrs, t), t - (0.17e-6 + 270e-6), rtol=0, atol=1e-12)
    # identical estimates: nothing to do
    same = {"clock_start": s, "clock_end": clock.record(-270e-6, 313e-6, 1.24)}
    assert clock.align(same, t) is t


def test_check_attrs():
    assert clock.check_attrs({}) is None
    assert clock.check_attrs({"clock_start": clock.record(0.1, 0.0, 0.0)}) is None
    for bad in ({"offset": 1.0}, {"offset": float("nan"), "uncertainty": 0, "t": 0},
                {"offset": 1.0, "uncertainty": -1.0, "t": 0}, "text", [1, 2, 3],
                {"offset": True, "uncertainty": 0, "t": 0}):
        assert "clock_end" in clock.check_attrs({"clock_end": bad})


def _write(path, attrs, end=None):
    w = TraceWriter(str(path), {"rank": 1, "world_size": 2, **attrs}, lambda: 0.0)
    for t in (1.0, 5.0, 9.0):
        w.comm(0, b"send", 0, 0, b"data", 8, t, t + 0.5)
        w.metric(0, "loss", t)   # (the writer stamps the metric with its clock: 0.0)
    if end is not None:
        w.set_attrs(clock_end=end)
    w.close()


def test_the_reader_puts_rows_on_rank_0s_clock(tmp_path):
    start, end = clock.record(-2.0, 0.0, 1.0), clock.record(-2.0 - 8e-3, 0.0, 9.0)  # -1000 ppm
    _write(tmp_path / "rank1.h5", {"clock_method": "ping-pong", "clock_start": start}, end)
    r = read_rank(str(tmp_path / "rank1.h5"))
    with h5py.File(tmp_path / "rank1.h5", "r") as f:
        raw = f["comm"][()]
        raw_metrics = f["metrics"][()]
    rate = -1e-3
    for col in ("t_post", "t_done"):
        np.testing.assert_allclose(r.comm[col], raw[col] - rate * (raw[col] - 1.0))
    np.testing.assert_allclose(r.metrics["t"], raw_metrics["t"] - rate * (raw_metrics["t"] - 1.0))
    assert r.attrs["clock_start"] == start and r.attrs["clock_end"] == end
    # only the start estimate (killed before the end): the rows as written
    (tmp_path / "one").mkdir()
    _write(tmp_path / "one" / "rank1.h5", {"clock_start": start})
    r = read_rank(str(tmp_path / "one" / "rank1.h5"))
    np.testing.assert_array_equal(r.comm["t_post"], [1.0, 5.0, 9.0])


def test_damaged_clock_attributes_are_refused(tmp_path):
    _write(tmp_path / "rank1.h5", {"clock_start": {"offset": "x", "uncertainty": 0, "t": 0}})
    with pytest.raises(TraceError, match="clock_start"):
        read_rank(str(tmp_path / "rank1.h5"))


class _GlobalClockComm:
    """A communicator whose library says MPI_WTIME_IS_GLOBAL (MPICH and Open MPI here do not)."""
    def Get_attr(self, key):
        assert key == MPI.WTIME_IS_GLOBAL
        return True

    def Get_rank(self):
        return 1

    def Get_size(self):
        return 2


def test_wtime_is_global_is_honoured(monkeypatch):
    monkeypatch.delenv(clock.SKEW_ENV, raising=False)
    comm = _GlobalClockComm()
    assert clock.wtime_is_global(comm) and clock.method(comm) == "MPI_WTIME_IS_GLOBAL"
    # no ping-pong at all (the fake communicator could not answer one): offset 0, uncertainty 0
    off, unc, _ = clock.estimate(comm, MPI.Wtime, clock.method(comm))
    assert (off, unc) == (0.0, 0.0)
    # an injected skew makes the clocks differ whatever the library says
    monkeypatch.setenv(clock.SKEW_ENV, "1:0.5:0")
    assert clock.method(comm) == "ping-pong"
