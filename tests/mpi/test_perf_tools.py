"""Launches for issue 15's tools: tools/bench_comm.py's report on a tiny size range (its format,
every way, the goal lines, mpi4py.bench beside; no timing is asserted) and the run flag
--no-trace (no row per message, metrics and status still written)."""
import re

from mpidist.trace import read_run
from mpirun import check, run_mpi

NUM = r"\s+[\d.]+"


def test_bench_comm_report_format():
    out = check(run_mpi(2, ["tools/bench_comm.py", "--sizes", "1K-2K", "--reps", "0.002",
                            "--rounds", "2", "--allreduce", "1K"], timeout=300))
    ways = ["numpy", "torch", "gloo", "mpidist", "mpidist-notrace", "mpidist+snap",
            "mpidist-persistent"]
    if "gloo: skipped" in out:  # allowed, with its reason
        assert re.search(r"^gloo: skipped \(.+\)$", out, re.M)
        ways.remove("gloo")
    assert re.search(r"^binding: (main thread of rank r pinned to CPU r of \[.+\]|unpinned \(.+\))",
                     out, re.M), out
    head = re.search(r"^\s+size" + "".join(rf"\s+{re.escape(w)}" for w in ways)
                     + r"\s+huge pages\s+numpy huge$", out, re.M)
    assert head, out
    for size in ("1 KiB", "2 KiB"):  # a latency row and a bandwidth row per size
        assert re.search(rf"^\s+{size}" + NUM * len(ways) + r"\s+(\d+ kB|-)\s+(\d+ kB|-)$", out,
                         re.M), out
        assert re.search(rf"^\s+{size}" + NUM * (len(ways) + 3 + ("gloo" in ways)) + "$",
                         out, re.M), out
    # goals: the two bandwidth goals have no size >= 1 MiB here; the latency goal is judged
    assert "every size >= 1 MiB: not measured" in out and "1-16 MiB: not measured" in out
    m = re.search(r"at most 1 us added one way at 1 KiB, tracing on: (HOLDS|FAILS|UNRESOLVED) "
                  r"\((-?[\d.]+) us \[(-?[\d.]+), (-?[\d.]+)\]; tracing off -?[\d.]+ us; with the "
                  r"snapshot copy -?[\d.]+ us; persistent requests, traced, -?[\d.]+ us\)", out)
    assert m, out
    lo, hi = map(float, m.group(3, 4))
    assert m.group(1) == ("HOLDS" if hi <= 1 else "FAILS" if lo > 1 else "UNRESOLVED"), out
    assert re.search(r"^    this core's Python speed in those rounds \(rank 0, tools' loop_ns\): median "
                     r"[\d.]+ ns per empty loop iteration, [\d.]+-[\d.]+; over the whole run "
                     r"[\d.]+$", out, re.M), out
    assert re.search(r"^    the same from the 10th percentiles \(less scheduling noise\): "
                     r"-?[\d.]+ us; off -?[\d.]+; snapshot -?[\d.]+; persistent -?[\d.]+ "
                     r"\(numpy [\d.]+ us one way\)$", out, re.M), out
    m = re.search(r"^  the same goal on the fixed exchanges' path \(persistent requests, traced; "
                  r"D-PSGD's\): (HOLDS|FAILS|UNRESOLVED) \((-?[\d.]+) us \[(-?[\d.]+), "
                  r"(-?[\d.]+)\]\)$", out, re.M)
    assert m, out
    added = float(re.search(r"persistent requests, traced, (-?[\d.]+) us\)", out).group(1))
    lo, hi = float(m.group(3)), float(m.group(4))
    assert float(m.group(2)) == added and lo <= hi, out
    assert m.group(1) == ("HOLDS" if hi <= 1 else "FAILS" if lo > 1 else "UNRESOLVED"), out
    assert re.search(r"^ +1024 floats mpi4py +[\d.]+ ms +mpidist +[\d.]+ ms", out, re.M), out
    assert "python -m mpi4py.bench pingpong" in out
    rows = re.findall(r"^\s+(1|2) KiB" + NUM * 5 + "$", out.split("mpi4py.bench pingpong")[1],
                      re.M)
    assert rows == ["1", "2"], out


def test_no_trace_flag_keeps_metrics_and_drops_message_rows(tmp_path):
    toy = "tests/programs/toy.py"
    check(run_mpi(2, [toy, "--steps", "3", "--no-trace", "--trace-dir", str(tmp_path / "off")],
                  120))
    check(run_mpi(2, [toy, "--steps", "3", "--trace-dir", str(tmp_path / "on")], 120))
    off, on = read_run(str(tmp_path / "off")), read_run(str(tmp_path / "on"))
    for a, b in zip(off.ranks, on.ranks):
        assert a.attrs["status"] == "ok" and a.attrs["args"]["no_trace"] is True
        assert len(a.comm) == 0
        assert len(b.comm[b.comm["channel"] == b"ring"]) == 6  # 3 sends + 3 receives
        assert list(a.metric("sum")[0]) == list(b.metric("sum")[0]) == [0, 1, 2]
