"""The trace writer and reader: rows round-trip, flushes survive a kill, non-traces are refused."""
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from mpidist.trace import COMM_DTYPE, TraceError, TraceWriter, read_rank, read_run


def make(path, **kw):
    t = [0.0]

    def clock():
        t[0] += 0.5
        return t[0]
    return TraceWriter(str(path), {"algorithm": "test", "rank": 0, "world_size": 1,
                                   "args": {"lr": 0.1}}, clock, **kw)


def test_rows_roundtrip(tmp_path):
    w = make(tmp_path / "rank0.h5", capacity=4)  # capacity 4: several automatic flushes
    for i in range(10):
        w.comm(i, b"send", 1, 7, b"params", 4000 + i, 0.1 * i, 0.1 * i + 0.05)
    w.metric(3, "loss", 0.25)
    w.metric(4, "loss", 0.125)
    w.close()
    t = read_rank(str(tmp_path / "rank0.h5"))
    assert len(t.comm) == 10 and t.comm.dtype == COMM_DTYPE
    assert list(t.comm["nbytes"]) == [4000 + i for i in range(10)]
    assert np.allclose(t.comm["t_done"] - t.comm["t_post"], 0.05)
    assert set(t.comm["channel"]) == {b"params"} and set(t.comm["op"]) == {b"send"}
    steps, times, values = t.metric("loss")
    assert list(steps) == [3, 4] and list(values) == [0.25, 0.125] and times[1] > times[0]
    assert t.attrs["args"] == {"lr": 0.1} and t.attrs["status"] == "ok" and t.rank == 0
    assert t.attrs["format"] == "mpidist-trace" and "end_time" in t.attrs


def test_refuses_to_overwrite(tmp_path):
    make(tmp_path / "rank0.h5").close()
    with pytest.raises(TraceError, match="already exists"):
        make(tmp_path / "rank0.h5")


def test_killed_writer_leaves_readable_file(tmp_path):
    """Rows flushed before an abrupt exit (no close, no atexit) are all there."""
    code = textwrap.dedent(f"""
        import os, time
        from mpidist.trace import TraceWriter
        w = TraceWriter({str(tmp_path / 'rank0.h5')!r}, {{"rank": 0}}, time.monotonic)
        for i in range(100):
            w.comm(i, b"recv", 0, 1, b"grads", 8, 0.0, 1.0)
        w.flush()
        for i in range(5):
            w.comm(i, b"recv", 0, 1, b"lost", 8, 0.0, 1.0)  # never flushed
        os._exit(9)
    """)
    p = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert p.returncode == 9
    t = read_run(str(tmp_path))
    assert len(t.ranks) == 1 and len(t.ranks[0].comm) == 100
    assert t.ranks[0].attrs["status"] == "running"  # it never closed


def test_not_a_trace_and_damaged_files(tmp_path):
    with h5py.File(tmp_path / "rank0.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TraceError, match="not an mpidist trace"):
        read_rank(str(tmp_path / "rank0.h5"))
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(TraceError, match="not a readable mpidist trace"):
        read_rank(str(tmp_path / "text.h5"))
    good = tmp_path / "good"
    good.mkdir()
    w = make(good / "rank0.h5")
    for i in range(3000):
        w.comm(i, b"send", 1, 0, b"p", 8, 0.0, 1.0)
    w.close()
    data = (good / "rank0.h5").read_bytes()
    (good / "rank0.h5").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(TraceError, match="rank0.h5"):
        read_run(str(good))
    with pytest.raises(TraceError, match="no rank<k>.h5"):
        (tmp_path / "empty").mkdir()
        read_run(str(tmp_path / "empty"))
    with pytest.raises(TraceError, match="no such"):
        read_run(str(tmp_path / "missing"))


def test_run_stacks_ranks(tmp_path):
    for r in range(3):
        w = TraceWriter(str(tmp_path / f"rank{r}.h5"), {"rank": r}, lambda: 0.0)
        for i in range(r + 1):
            w.comm(i, b"send", (r + 1) % 3, 0, b"p", 10 * r, 0.0, 0.0)
        w.close()
    run = read_run(str(tmp_path))
    assert [t.rank for t in run.ranks] == [0, 1, 2]
    c = run.comm
    assert len(c) == 6 and list(c["rank"]) == [0, 1, 1, 2, 2, 2]
    assert list(c["nbytes"]) == [0, 10, 10, 20, 20, 20]
