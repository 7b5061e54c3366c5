"""Traces open everywhere, survive every failure and never stop training (issue 14, part A):

- files are HDF5 1.10's format: the h5dump/h5ls of HDF5 1.10 (Debian's hdf5-tools) read them, and
  an h5py built on an older HDF5 when MPIDIST_OLD_H5PY_PYTHON names its python;
- a writer killed at random points of its flushes leaves a file that h5py, mpidist and h5dump
  open, holding exactly the rows of every flush that returned (tests/programs/trace_crash.py);
- a full disk (a small tmpfs) or an I/O error: the writer warns once, keeps its rows (a bounded
  number), writes them when it works again, and counts what it had to drop;
- a reader holding HDF5's file lock never blocks a flush; a lock-free reader retries torn reads.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mpidist import trace
from mpidist.trace import TraceError, TraceWriter, read_rank, read_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAMS = os.path.join(REPO, "tests", "programs")
H5DUMP, H5LS = shutil.which("h5dump"), shutil.which("h5ls")
NO_TOOLS = "no h5dump/h5ls here (Debian: apt-get install hdf5-tools; .ci/run does as root)"


def rows(n, start=0):
    """Closed form of the rows the tests write: row i has step i, nbytes 8 i, t_post i/1000."""
    r = np.zeros(n, trace.COMM_DTYPE)
    i = np.arange(start, start + n)
    r["step"], r["op"], r["peer"], r["tag"], r["channel"] = i, b"send", 1, 7, b"params"
    r["nbytes"], r["t_post"], r["t_done"] = 8 * i, i / 1000, i / 1000 + 0.5
    r["t_wait"] = np.nan  # never blocked on (the writer's default)
    return r


def record(w, n, start):
    for r in rows(n, start).tolist():
        w.comm(*r)
    return start + n


def writer(path, **kw):
    return TraceWriter(str(path), {"algorithm": "test", "rank": 0, "world_size": 1,
                                   "run_id": "r1"}, lambda: 1.0, **kw)


# ------------------------------------------------------------------------------- compatibility

@pytest.fixture
def fresh(tmp_path):
    path = tmp_path / "rank0.h5"
    w = writer(path, capacity=64)
    record(w, 1000, 0)
    w.metric(3, "loss", 0.25)
    w.close()
    return str(path)


def test_written_in_the_hdf5_1_10_format(fresh):
    with open(fresh, "rb") as f:
        head = f.read(9)
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] == 3  # superblock version 3 (HDF5 1.10)
    with h5py.File(fresh, "r") as f:
        assert f.attrs["format_version"] == trace.FORMAT_VERSION == 3
        assert f["comm"].fletcher32 and f["metrics"].fletcher32


@pytest.mark.skipif(not (H5DUMP and H5LS), reason=NO_TOOLS)
def test_h5dump_and_h5ls_read_a_fresh_trace(fresh):
    ls = subprocess.run([H5LS, "-r", fresh], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and "ERROR" not in ls.stdout, ls.stdout + ls.stderr
    assert re.search(r"/comm\s+Dataset \{1000/Inf\}", ls.stdout), ls.stdout
    assert re.search(r"/metrics\s+Dataset \{1/Inf\}", ls.stdout), ls.stdout
    dump = subprocess.run([H5DUMP, "-a", "/format", fresh], capture_output=True, text=True,
                          timeout=60)
    assert dump.returncode == 0 and '"mpidist-trace"' in dump.stdout, dump.stdout + dump.stderr
    # the values of a row, as h5dump prints them: row 999 has nbytes 7992, t_post 0.999
    dump = subprocess.run([H5DUMP, "-d", "/comm", "-s", "999", "-c", "1", fresh],
                          capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "ERROR" not in dump.stdout, dump.stdout + dump.stderr
    assert "7992" in dump.stdout and "0.999" in dump.stdout and '"params\\000' in dump.stdout


@pytest.mark.skipif(not os.environ.get("MPIDIST_OLD_H5PY_PYTHON"),
                    reason="MPIDIST_OLD_H5PY_PYTHON (a python with an older h5py, e.g. h5py 3.11 "
                           "on HDF5 1.14) is not set")
def test_an_older_h5py_reads_a_fresh_trace(fresh):
    code = ("import h5py, sys\nf = h5py.File(sys.argv[1], 'r')\nc = f['comm'][()]\n"
            "print(h5py.version.hdf5_version, len(c), int(c['nbytes'][999]), "
            "f.attrs['format'].decode(), f.attrs['status'].decode())")
    p = subprocess.run([os.environ["MPIDIST_OLD_H5PY_PYTHON"], "-c", code, fresh],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    version, n, nbytes, fmt, status = p.stdout.split()
    assert (n, nbytes, fmt, status) == ("1000", "7992", "mpidist-trace", "ok"), p.stdout
    assert tuple(map(int, version.split(".")[:2])) < (2, 0), version


def test_version_1_files_still_read_and_unknown_versions_are_refused(tmp_path):
    """A file as mpidist wrote it before (libver "latest", format_version 1) reads as before."""
    old = str(tmp_path / "rank0.h5")
    v1 = np.zeros(5, trace.COMM_DTYPE_V2)  # the rows of format versions 1 and 2: no t_wait
    for name in v1.dtype.names:
        v1[name] = rows(5)[name]
    with h5py.File(old, "w", libver="latest") as f:
        f.attrs["format"] = np.array(b"mpidist-trace", dtype=h5py.string_dtype("utf-8", 13))
        f.attrs["format_version"] = 1
        f.attrs["rank"] = 0
        f.create_dataset("comm", data=v1, maxshape=(None,), chunks=(4096,),
                         fletcher32=True)
        f.create_dataset("metrics", shape=(0,), maxshape=(None,), chunks=(1024,),
                         dtype=trace.METRIC_DTYPE, fletcher32=True)
    assert read_rank(old).comm.tobytes() == rows(5).tobytes()  # t_wait: NaN, filled in
    assert not read_rank(old).records_wait
    with h5py.File(old, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(TraceError, match=r"format_version 99, which this reader does not know"):
        read_rank(old)


# ------------------------------------------------------------------------------ crash-consistency

def test_writers_killed_at_random_points_of_flushes_leave_every_flushed_row(tmp_path):
    """300 writers killed by SIGKILL at random delays, most of them inside a flush: every file
    opens (h5py with its file lock, mpidist, h5dump where installed) and holds exactly the rows of
    the flushes that returned (or of one more: killed after its commit, before saying so)."""
    argv = [sys.executable, os.path.join(PROGRAMS, "trace_crash.py"), "--cases", "300",
            "--seed", "14", "--dir", str(tmp_path)] + (["--h5dump"] if H5DUMP else [])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    line = [x for x in p.stdout.splitlines() if x.startswith("CRASH ")]
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    got = dict(kv.split("=") for kv in line[0].split()[1:])
    assert got["cases"] == got["readable_h5py"] == got["readable_mpidist"] == "300", line
    assert got["rows_lost"] == got["wrong_rows"] == "0", line
    assert int(got["mid_flush"]) >= 150, line  # the kills did land inside flushes
    assert got["h5dump_ok"] == ("300" if H5DUMP else "n/a"), line


def test_the_writer_never_opens_the_rank_file_for_writing(tmp_path):
    """Between and during flushes rank0.h5 is a closed file: HDF5's "open for write" flag is
    never set in it (a reader opening it during a flush sees a complete earlier or later file)."""
    path = tmp_path / "rank0.h5"
    w = writer(path, capacity=1 << 12)
    n = 0
    for _ in range(6):
        n = record(w, 500, n)
        w.flush()
        with open(path, "rb") as f:
            sb = f.read(12)
        assert sb[8] == 3 and sb[11] == 0, sb  # superblock v3, file consistency flags 0
        assert len(read_rank(str(path)).comm) == n
    assert sorted(os.listdir(tmp_path)) == [".rank0.h5.next", "rank0.h5"]
    w.close()
    assert os.listdir(tmp_path) == ["rank0.h5"]  # the writer's shadow goes at close


# ------------------------------------------------------------------ failures never end training

@pytest.fixture
def small_disk(tmpfs):
    """A 4 MiB tmpfs (needs root and mount: tests/conftest.py)."""
    return tmpfs("4m")


def _fill(path, nbytes):
    with open(path, "wb") as f:
        try:
            f.write(b"\0" * nbytes)
            f.flush()
        except OSError:
            pass


def test_full_disk_warns_once_keeps_rows_and_catches_up(small_disk, capfd):
    path = small_disk / "rank0.h5"
    filler = small_disk / "filler"
    _fill(filler, 2 << 20)
    warnings = []
    w = writer(path, capacity=1 << 12, warn=warnings.append)
    n, written, block = 0, 0, 2000
    while w.failures == 0 and n < 200_000:  # until the disk is full
        n = record(w, block, n)
        w.flush()
        if w.failures == 0:
            written = n
    assert w.failures == 1 and 0 < written < n, (w.failures, written, n)
    # the file holds every row of every flush that was written, for every reader
    assert read_rank(str(path)).comm.tobytes() == rows(written).tobytes()
    with h5py.File(path, "r") as f:
        assert f["comm"].shape == (written,)
    if H5DUMP:
        d = subprocess.run([H5DUMP, "-H", str(path)], capture_output=True, text=True, timeout=60)
        assert d.returncode == 0 and "ERROR" not in d.stdout, d.stdout + d.stderr
    # training goes on: more rows, more flushes, nothing raised, still one warning line
    for _ in range(3):
        n = record(w, block, n)
        w.flush()
    assert w.failures == 4 and len(warnings) == 1, warnings
    assert "No space left on device" in warnings[0] and "training goes on" in warnings[0]
    assert len(read_rank(str(path)).comm) == written
    # space again: the next flush writes everything that waited, in order
    os.remove(filler)
    n = record(w, 10, n)
    w.flush()
    assert read_rank(str(path)).comm.tobytes() == rows(n).tobytes()
    w.close()
    assert len(warnings) == 1 and read_rank(str(path)).attrs["status"] == "ok"
    assert "dropped_comm_rows" not in read_rank(str(path)).attrs
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "HDF5" not in out + err, (out, err)
    assert sorted(os.listdir(small_disk)) == ["rank0.h5"]


def test_rows_beyond_the_memory_bound_are_dropped_and_counted(small_disk, capfd):
    path = small_disk / "rank0.h5"
    w = writer(path, capacity=1000, max_pending_rows=2500)
    n = record(w, 1000, 0)
    w.flush()
    _fill(small_disk / "filler", 8 << 20)  # the disk is full from here on
    n = record(w, 4000, n)  # 4 buffers of 1000 rows: 2500 kept in memory, 1500 dropped
    w.metric(1, "loss", 0.5)
    w.flush()
    assert w.dropped == [1500, 0] and w.failures >= 1
    w.close(status="ok")  # cannot be written either: says so, does not raise
    out, err = capfd.readouterr()
    lines = [x for x in err.splitlines() if x]
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith(f"mpidist: warning: cannot write the trace {path} ")
    assert lines[1] == (f"mpidist: warning: trace {path}: 4000 message rows and 1 metric rows "
                        "could not be written (dropped); the file holds every row of every flush "
                        "that was written")
    t = read_rank(str(path))  # the last written flush, complete
    assert t.comm.tobytes() == rows(1000).tobytes() and t.attrs["status"] == "running"
    os.remove(small_disk / "filler")


def test_rows_dropped_are_recorded_in_the_file_when_it_can_be_written(tmp_path):
    path = tmp_path / "rank0.h5"
    shadow = tmp_path / ".rank0.h5.next"
    warnings = []
    w = writer(path, capacity=1000, max_pending_rows=1500, warn=warnings.append)
    n = record(w, 1000, 0)
    w.flush()
    os.remove(shadow)
    shadow.mkdir()  # an I/O error at every flush: the shadow cannot be removed or written
    n = record(w, 3000, n)
    w.flush()
    assert w.failures >= 1 and w.dropped == [1500, 0]
    shadow.rmdir()  # it works again: the 1500 rows kept are written, in order
    w.close()
    t = read_rank(str(path))
    assert t.comm.tobytes() == rows(2500).tobytes()
    assert t.attrs["dropped_comm_rows"] == 1500 and t.attrs["dropped_metric_rows"] == 0
    assert len(warnings) == 2 and "IsADirectoryError" in warnings[0], warnings
    assert "1500 message rows and 0 metric rows could not be written" in warnings[1]
    from mpidist.analysis import load
    assert any("1500 message rows and 0 metric rows were dropped" in x
               for x in load(str(tmp_path)).notes)


def test_a_failing_flush_is_retried_at_later_flushes_with_back_off(tmp_path):
    path = tmp_path / "rank0.h5"
    shadow = tmp_path / ".rank0.h5.next"
    w = writer(path, capacity=1 << 12, flush_seconds=0.0, warn=lambda line: None)
    n = record(w, 10, 0)
    w.flush()
    os.remove(shadow)
    shadow.mkdir()
    n = record(w, 10, n)
    w.flush()  # fails: the next try waits (back-off), maybe_flush does not try before
    assert w.failures == 1
    shadow.rmdir()
    w.maybe_flush()
    assert w.failures == 1 and len(read_rank(str(path)).comm) == 10  # not retried yet
    w._retry_at = 0.0  # the back-off is over
    w.maybe_flush()
    assert len(read_rank(str(path)).comm) == 20
    w.close()


# ----------------------------------------------------------------------------- readers and writer

def test_a_locking_reader_never_delays_a_flush_and_keeps_its_snapshot(tmp_path):
    """A notebook holding h5py.File(rank0.h5) with HDF5's file lock (h5py's default) for the
    whole run: every flush is committed at once (each read after a flush sees its rows), and the
    reader's own open file never changes under it."""
    path = str(tmp_path / "rank0.h5")
    w = writer(path, capacity=1 << 12)
    n = record(w, 100, 0)
    w.flush()
    hold = ("import h5py, sys\n"
            "f = h5py.File(sys.argv[1], 'r')  # with HDF5's file lock\n"
            "print(len(f['comm'][()]), flush=True)\n"
            "sys.stdin.readline()\n"
            "c = f['comm'][()]\n"
            "print(len(c), int(c['nbytes'].sum()), flush=True)\n")
    reader = subprocess.Popen([sys.executable, "-c", hold, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().split() == ["100"]
        for _ in range(6):
            n = record(w, 100, n)
            w.flush()
            assert read_rank(path).comm.tobytes() == rows(n).tobytes()
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == ["100", str(8 * sum(range(100)))]
    finally:
        reader.kill()
        reader.wait()
    w.close()
    assert w._file.copies >= 2  # the held file was left to its reader, a fresh copy used
    assert read_rank(path).comm.tobytes() == rows(700).tobytes()


def test_a_lock_free_reader_retries_torn_reads(tmp_path):
    """mpidist's reader reading in a loop while a writer commits every 0.1 s (20 times the
    default pace; the file a read opened is written again as the writer's shadow one commit
    later): every read answers, with the rows of some number of whole flushes, never fewer than
    the read before."""
    path = str(tmp_path / "rank0.h5")
    w = writer(path, capacity=1 << 12)
    w.flush()
    loop = ("import sys, time\nsys.path.insert(0, sys.argv[2])\n"
            "from mpidist import trace\n"
            "t, counts, errors = time.monotonic(), [], []\n"
            "while time.monotonic() - t < 3:\n"
            "    try:\n"
            "        r = trace.read_rank(sys.argv[1])\n"
            "        counts.append(len(r.comm))\n"
            "        assert (r.comm['nbytes'] == 8 * r.comm['step']).all()\n"
            "    except trace.TraceError as e:\n"
            "        errors.append(str(e))\n"
            "print(len(counts), len(errors), counts == sorted(counts), "
            "all(c % 50 == 0 for c in counts), max(counts, default=0), repr(errors[:1]))\n")
    reader = subprocess.Popen([sys.executable, "-c", loop, path, REPO], stdout=subprocess.PIPE,
                              text=True)
    n, t0 = 0, time.monotonic()
    while reader.poll() is None and time.monotonic() - t0 < 60:
        n = record(w, 50, n)
        w.flush()
        time.sleep(0.1)
    out = reader.communicate(timeout=60)[0].split(maxsplit=5)
    w.close()
    reads, errors, ordered, whole, last, first_error = out
    assert int(reads) > 10 and errors == "0" and ordered == whole == "True", out
    assert 0 < int(last) <= n


def test_a_directory_of_the_writer_private_files_reads_as_the_run(tmp_path):
    """A killed writer leaves its shadow (.rank0.h5.next); readers and the next writer ignore it
    (a resumed run continues rank0.h5 and replaces the shadow)."""
    path = tmp_path / "rank0.h5"
    w = writer(path, capacity=1 << 12)
    n = record(w, 30, 0)
    w.flush()
    n = record(w, 30, n)
    w.flush()
    assert (tmp_path / ".rank0.h5.next").exists()
    (tmp_path / ".rank0.h5.next").write_bytes(b"garbage from a killed writer")
    assert len(read_run(str(tmp_path)).ranks) == 1 and len(read_rank(str(path)).comm) == 60
    w2 = TraceWriter(str(path), {"rank": 0, "world_size": 1}, lambda: 2.0, resume_step=44)
    w2.comm(45, b"send", 1, 7, b"params", 360, 0.045, 0.545)
    w2.close()
    t = read_rank(str(path))
    assert t.comm.tobytes() == rows(46).tobytes() and t.attrs["resumed_at_step"] == 44
    assert t.attrs["run_id"] == "r1" and os.listdir(tmp_path) == ["rank0.h5"]
