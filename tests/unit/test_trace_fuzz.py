"""Damaged trace files: the reader and the trace tools fail with one clear error, never with another
exception, a crash or a hang, and never read a damaged file as different values.

The fuzzing runs tests/programs/fuzz_trace.py in a subprocess (libhdf5 could crash or loop on a
crafted file, which must fail this test, not end or hang pytest); the rest damages files on
purpose at known places and checks the answer in this process or through the real command line.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpidist import trace
from mpidist.trace import TraceError, TraceWriter, read_rank, read_run

import fuzz_trace  # noqa: E402  (make_run, regions: the same original as the fuzzing)
from mpirun import PROGRAMS, REPO

FUZZ = os.path.join(PROGRAMS, "fuzz_trace.py")
TOOL = os.path.join(REPO, "tools", "mpidist_trace.py")


def _counts(line: str) -> dict:
    return {k: float(v.rstrip("s")) if k == "wall" else v if k == "checksum" else int(v)
            for k, v in re.findall(r"(\w+)=(\S+)", line)}


def test_fuzz_damaged_files_give_trace_errors():
    """300 damaged copies (truncated, bit flips, zeroed ranges, appended garbage; seed 0): each
    either reads back exactly the original or is refused with a TraceError naming the file (the
    CLI: exit 2, one line); no other exception, no crash, no hang, no silently different value.
    A case is a hang after 120 s (a read takes well under a second when idle; the bound holds on a
    busy machine); the whole fuzzing's time is printed, not asserted."""
    p = subprocess.run([sys.executable, FUZZ, "--cases", "300", "--seed", "0", "--timeout", "120"],
                       capture_output=True, text=True, timeout=1800, cwd=REPO)
    out = p.stdout
    fuzz = [ln for ln in out.splitlines() if ln.startswith("FUZZ ")]
    assert len(fuzz) == 1, (p.returncode, out[-3000:], p.stderr[-3000:])
    c = _counts(fuzz[0])
    assert c["cases"] == 300 and c["checksum"] == "yes", fuzz[0]
    for bad in ("exception", "crash", "hang", "different"):
        assert c[bad] == 0, f"{bad} cases:\n{out}"
    assert c["error"] + c["same"] == 300 and c["error"] >= 100 and c["same"] >= 30, fuzz[0]
    assert all(c[k] == 75 for k in ("truncate", "flip", "zero", "append")), fuzz[0]
    kinds = {(m[1], m[2]): _counts(m[3])
             for m in re.finditer(r"^KIND (\w+) (\w+) (.*)$", out, re.M)}
    # every truncation is found (HDF5 stores the file's end); appended bytes are never read; every
    # flip in the written rows fails fletcher32; every place of every damage was drawn
    assert {w for k, w in kinds if k == "truncate"} == {"empty", "superblock", "meta", "anywhere",
                                                        "short1"}, kinds
    assert all(v["same"] == 0 for (k, _), v in kinds.items() if k == "truncate"), kinds
    assert kinds[("append", "garbage")]["error"] == 0, kinds
    assert kinds[("flip", "rows")]["same"] == 0 and kinds[("flip", "rows")]["error"] > 5, kinds
    for k in ("flip", "zero"):
        assert {w for kk, w in kinds if kk == k} == {"anywhere", "meta", "rows"}, kinds
        assert sum(v["error"] for (kk, _), v in kinds.items() if kk == k) > 20, kinds
    assert p.returncode == 0, out[-3000:]
    print(f"\nfuzzing: {c['wall']:.1f} s for 300 cases")


# ------------------------------------------------------------------------------ damage on purpose

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"new": run dir as TraceWriter writes it now, "legacy": the same as written before the
    checksums (no fletcher32, variable-length string attributes)}."""
    base = tmp_path_factory.mktemp("fuzz_runs")
    out = {}
    for kind in ("new", "legacy"):
        out[kind] = str(base / kind)
        fuzz_trace.make_run(out[kind], legacy=kind == "legacy")
    return out


def _copy_damaged(src_dir, dst_dir, name, edit):
    os.makedirs(dst_dir)
    for f in os.listdir(src_dir):
        with open(os.path.join(src_dir, f), "rb") as fh:
            data = fh.read()
        if f == name:
            data = edit(bytearray(data), fuzz_trace.regions(os.path.join(src_dir, f)))
        with open(os.path.join(dst_dir, f), "wb") as fh:
            fh.write(bytes(data))
    return os.path.join(dst_dir, name)


def _flip_nbytes_of_first_row(data, reg):
    """One bit of the first comm row's ``nbytes`` (offset 52 in COMM_DTYPE): a plausible value."""
    start = reg["rows"][0][0] + trace.COMM_DTYPE.fields["nbytes"][1]
    data[start + 2] ^= 0x02  # 65536 = 0x010000 -> 0x030000
    return data


def test_old_files_still_read_and_checksums_catch_a_flipped_row(runs, tmp_path):
    new, old = read_run(runs["new"]), read_run(runs["legacy"])
    for a, b in zip(new.ranks, old.ranks):  # the same rows and attributes, either way stored
        assert a.comm.tobytes() == b.comm.tobytes() and a.metrics.tobytes() == b.metrics.tobytes()
        skip = {"args", "start_time", "end_time"}
        assert {k: v for k, v in a.attrs.items() if k not in skip} == \
            {k: v for k, v in b.attrs.items() if k not in skip}
    with h5py.File(os.path.join(runs["new"], "rank0.h5"), "r") as f:
        assert f["comm"].fletcher32 and f["metrics"].fletcher32
        assert h5py.check_string_dtype(f.attrs.get_id("algorithm").dtype).length == 4  # fixed
    # one flipped bit in a row: a TraceError now; before the checksums, a wrong byte count
    bad = _copy_damaged(runs["new"], tmp_path / "new", "rank0.h5", _flip_nbytes_of_first_row)
    with pytest.raises(TraceError, match=r"rank0\.h5: .*a checksum of its rows does not match"):
        read_run(os.path.dirname(bad))
    bad = _copy_damaged(runs["legacy"], tmp_path / "old", "rank0.h5", _flip_nbytes_of_first_row)
    got = read_rank(bad).comm["nbytes"][0]
    assert got == 3 * 65536 and old.ranks[0].comm["nbytes"][0] == 65536


def test_old_file_with_a_zeroed_global_heap_is_refused_not_looped_on(runs, tmp_path):
    """libhdf5 2.0 loops forever (holding the GIL) on a global heap object header of size 0: the
    reader finds it first. Run in a subprocess, so that a regression fails instead of hanging."""
    with open(os.path.join(runs["new"], "rank0.h5"), "rb") as f:
        assert b"GCOL" not in f.read()  # files written now have no global heap at all

    def edit(data, reg):
        pos = data.find(b"GCOL\x01")
        assert pos > 0
        data[pos + 16:pos + 32] = bytes(16)  # the first object's header
        return data
    bad = _copy_damaged(runs["legacy"], tmp_path / "run", "rank0.h5", edit)
    code = ("import sys\nfrom mpidist import trace\ntry:\n    trace.read_rank(sys.argv[1])\n"
            "except trace.TraceError as e:\n    print(e)\n")
    try:
        p = subprocess.run([sys.executable, "-c", code, bad], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("read_rank hung on a zeroed global heap object header")
    assert p.stdout.startswith(bad + ": ") and "global heap" in p.stdout, (p.stdout, p.stderr)


def _run_tool(*argv):
    return subprocess.run([sys.executable, TOOL, *map(str, argv)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("damage", ["truncated", "row_bit", "zeroed_metadata", "superblock"])
def test_cli_refuses_a_damaged_run_in_one_line(runs, tmp_path, damage):
    def edit(data, reg):
        if damage == "truncated":
            return data[: len(data) * 2 // 3]
        if damage == "row_bit":
            return _flip_nbytes_of_first_row(data, reg)
        if damage == "zeroed_metadata":  # the root object header and its attributes
            data[200:1200] = bytes(1000)
            return data
        data[0] ^= 0x80  # the superblock's signature: not HDF5 any more
        return data
    bad = _copy_damaged(runs["new"], tmp_path / "run", "rank1.h5", edit)
    for argv in (["summary", tmp_path / "run"],
                 ["export", tmp_path / "run", "-o", tmp_path / "t.json"]):
        p = _run_tool(*argv)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, (argv, p.returncode, p.stderr)
        assert lines[0].startswith("mpidist_trace: error: ") and bad in lines[0], lines
        assert "not a readable mpidist trace" in lines[0] and p.stdout == "", lines
    assert not os.path.exists(tmp_path / "t.json")


def test_structure_checks(tmp_path):
    """Files that open but are not the format's are refused, each with its reason."""
    def made(name, edit):
        path = str(tmp_path / name)
        TraceWriter(path, {"rank": 0, "world_size": 2}, lambda: 0.0).close()
        with h5py.File(path, "a") as f:
            edit(f)
        return path

    def wrong_dtype(f):
        del f["comm"]
        f.create_dataset("comm", data=np.zeros(3, dtype=[("step", "<i8")]))

    def huge(f):
        del f["metrics"]
        f.create_dataset("metrics", shape=(10 ** 9,), maxshape=(None,), chunks=(1024,),
                         dtype=trace.METRIC_DTYPE)  # never written: it claims 56 GB

    def row(field, value):
        def edit(f):
            r = np.zeros(1, trace.COMM_DTYPE)
            r[field] = value
            f["comm"].resize((1,))
            f["comm"][0] = r[0]
        return edit

    cases = {"no /metrics dataset": lambda f: f.__delitem__("metrics"),
             "unexpected /comm": wrong_dtype,
             "claims 1000000000 rows": huge,
             "attribute rank = 'zero'": lambda f: f.attrs.__setitem__("rank", "zero"),
             "attribute world_size = 0": lambda f: f.attrs.__setitem__("world_size", 0),
             "attribute rank = 2 not below world_size = 2":
                 lambda f: f.attrs.__setitem__("rank", 2),
             "attribute end_time = 'soon'": lambda f: f.attrs.__setitem__("end_time", "soon"),
             "/comm row 0 has peer = -3, not a rank or -1": row("peer", -3),
             "/comm row 0 has tag = -2, not a tag or -1": row("tag", -2),
             "/comm row 0 has nbytes = -5, not a byte count": row("nbytes", -5),
             "/comm row 0 has t_done = nan, not seconds": row("t_done", np.nan)}
    for i, (words, edit) in enumerate(cases.items()):
        path = made(f"rank{i}.h5", edit)
        with pytest.raises(TraceError) as e:
            read_rank(path)
        assert str(e.value).startswith(path + ": ") and words in str(e.value), (words, e.value)


def test_no_string_attribute_in_the_global_heap(tmp_path):
    """Every string attribute a writer stores (at creation, by set_attrs, at close) is fixed
    length: no global heap (unchecked, and a damaged one makes libhdf5 2.0 loop forever)."""
    path = str(tmp_path / "rank0.h5")
    w = TraceWriter(path, {"rank": 0, "algorithm": "x" * 70000, "args": {"a": [1, "é"]}},
                    lambda: 0.0)
    w.set_attrs(note="", final=[0.5, 0.25])
    w.close(status="failed: ValueError: ✗")
    with h5py.File(path, "r") as f:
        kinds = {k: h5py.check_string_dtype(f.attrs.get_id(k).dtype) for k in f.attrs}
    strings = {k for k, v in kinds.items() if v is not None}
    assert {"algorithm", "args", "note", "final", "status", "format", "hostname"} <= strings
    assert all(kinds[k].length is not None for k in strings), kinds
    a = read_rank(path).attrs
    assert a["status"] == "failed: ValueError: ✗" and a["note"] == ""
    assert a["final"] == [0.5, 0.25]
    assert len(a["algorithm"]) == 70000 and a["args"] == {"a": [1, "é"]}
    with pytest.raises(ValueError, match="NUL"):
        w2 = TraceWriter(str(tmp_path / "rank1.h5"), {"rank": 1}, lambda: 0.0)
        w2.set_attrs(bad="a\x00b")


# ------------------------------------------------------------------------------ attribute values

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40)
_leaf = (st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63 - 1)
         | st.floats(allow_nan=False) | _text)
_json = st.recursive(_leaf, lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(_text, c, max_size=4), max_leaves=12)
# a top-level string that starts like JSON reads back as JSON: the reader's documented rule
_top = (st.booleans() | st.integers(-2 ** 63, 2 ** 63 - 1) | st.floats()
        | _text.filter(lambda s: s[:1] not in ("{", "["))
        | st.lists(_json, max_size=4) | st.dictionaries(_text, _json, max_size=4))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None)
@given(value=_top)
def test_attribute_values_round_trip(value):
    """Any attribute value a writer is given reads back equal (tuples become lists, as in JSON)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rank0.h5")
        w = TraceWriter(path, {"rank": 0, "value": value}, lambda: 0.0)
        w.set_attrs(later=value)
        w.close()
        a = read_rank(path).attrs
    expect = json.loads(json.dumps(value)) if isinstance(value, (list, dict)) else value
    assert _same(a["value"], expect) and _same(a["later"], expect), (value, a["value"])
