"""tools/mpidist_trace.py (summary, plot, compare, export) on traces of short real runs.

The fixtures are made by running the modules (tests/programs/tools_fixtures.py: the traced demo
tests/programs/trace_demo.py, whose message counts are known in closed form, each of the four algorithms
with tiny settings, and a demo run killed by SIGKILL), all in one mpiexec launch. Then every tool
runs on every trace, plus a truncated file and files that are not traces.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mpidist.algorithms import ALGORITHMS as REGISTRY
from mpirun import REPO, run_mpi

ALGORITHMS = list(REGISTRY)  # every algorithm of the registry
WORLD = 4
DEMO_STEPS = 12        # tests/programs/tools_fixtures.py
NUMEL = 16384          # tests/programs/trace_demo.py defaults: ring message of NUMEL float32
BCAST_EVERY = 5
TOOL = os.path.join(REPO, "tools", "mpidist_trace.py")


def _load_tool():
    spec = importlib.util.spec_from_file_location("mpidist_trace", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tool = _load_tool()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: run dir} of the runs tests/programs/tools_fixtures.py made (missing algorithms left out)."""
    out = tmp_path_factory.mktemp("traces")
    proc = run_mpi(WORLD, [os.path.join("tests", "programs", "tools_fixtures.py"), str(out)], timeout=600)
    made = {line.split()[1] for line in proc.stdout.splitlines()
            if line.startswith("FIXTURE ") and line.endswith(" ok")}
    # the last run kills the job, so mpiexec fails; every run before it must have finished
    assert proc.returncode != 0, "the killed run did not end the job"
    for name in ["demo_fe1", "demo_fe3"] + ALGORITHMS:
        assert name in made, f"fixture {name} did not finish:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert os.path.exists(out / "killed" / "rank3.h5")
    return {name: str(out / name) for name in made | {"killed"}}


def cli(capsys, *argv):
    """Run the tool in this process; return (exit status, stdout, stderr)."""
    code = tool.main([str(a) for a in argv])
    o = capsys.readouterr()
    return code, o.out, o.err


def algorithm_runs(runs):
    return [a for a in ALGORITHMS if a in runs]


def raw_rows(run_dir):
    """Every rank's /comm rows read with h5py directly (independent of mpidist.trace)."""
    rows = {}
    for f in sorted(os.listdir(run_dir)):
        if f.startswith("rank") and f.endswith(".h5"):
            with h5py.File(os.path.join(run_dir, f), "r") as h:
                rows[int(h.attrs["rank"])] = h["comm"][()]
    return rows


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------------------------- summary

@pytest.mark.parametrize("fe", [1, 3])
def test_summary_matches_closed_form(runs, capsys, fe):
    """The demo's message counts: per rank and step one 64 KiB ring send and receive, a 1 KiB
    allreduce; every fe steps a 16 KiB feedback send/receive; every 5 steps a 4 KiB bcast."""
    code, out, _ = cli(capsys, "summary", runs[f"demo_fe{fe}"], "--csv", "-")
    assert code == 0
    rows = csv_rows(out)
    per = {(r["rank"], r["op"], r["channel"]): r for r in rows}
    s, n_fb, n_bc = DEMO_STEPS, math.ceil(DEMO_STEPS / fe), math.ceil(DEMO_STEPS / BCAST_EVERY)
    for k in range(WORLD):
        k = str(k)
        expect = {("send", "params"): (s, s * NUMEL * 4), ("recv", "params"): (s, s * NUMEL * 4),
                  ("send", "feedback"): (n_fb, n_fb * NUMEL), ("recv", "feedback"): (n_fb, n_fb * NUMEL),
                  ("allreduce", "grads"): (s, s * 1024), ("bcast", "swap"): (n_bc, n_bc * 4096)}
        for (op, ch), (msgs, nbytes) in expect.items():
            r = per[(k, op, ch)]
            assert (int(r["messages"]), int(r["bytes"])) == (msgs, nbytes), (k, op, ch, r)
            assert float(r["in_flight_s"]) > 0 and 0 <= float(r["blocked_s"]) <= float(
                r["in_flight_s"]) + 1e-9
            assert int(r["first_step"]) == 0
        assert per[(k, "send", "params")]["peer"] == str((int(k) + 1) % WORLD)
        assert per[(k, "send", "feedback")]["peer"] == str((int(k) - 1) % WORLD)
    # on the shared loop the demo agrees on a stop signal after every step but the last: one
    # 8-byte allreduce on channel "control"
    n_ctl = s - 1
    for k in range(WORLD):
        r = per[(str(k), "allreduce", "control")]
        assert (int(r["messages"]), int(r["bytes"])) == (n_ctl, 8 * n_ctl)
    total = [r for r in rows if r["channel"] == "*"][0]
    traffic = WORLD * (s * NUMEL * 4 + n_fb * NUMEL + s * 1024 + n_bc * 4096 + 8 * n_ctl)
    assert int(total["messages"]) == WORLD * (s + n_fb + s + n_bc + n_ctl)
    assert int(total["bytes"]) == traffic

    code, text, _ = cli(capsys, "summary", runs[f"demo_fe{fe}"])
    assert code == 0
    assert "status ok" in text and "run totals" in text
    assert f"messages {WORLD * (s + n_fb + s + n_bc + n_ctl)} " in text


def test_summary_of_every_algorithm(runs, capsys, tmp_path):
    """Text and CSV for each algorithm's trace; the CSV totals equal what the files hold."""
    for algo in algorithm_runs(runs):
        csv_path = tmp_path / f"{algo}.csv"
        code, text, err = cli(capsys, "summary", runs[algo], "--csv", csv_path)
        assert code == 0, err
        assert f"algorithm  {algo}" in text and "communication per rank" in text
        rows = csv_rows(csv_path.read_text())
        raw = raw_rows(runs[algo])
        assert raw, algo
        sent = sum(int(r["nbytes"].sum()) for rr in raw.values() for r in [rr[rr["op"] != b"recv"]])
        msgs = sum(int((rr["op"] != b"recv").sum()) for rr in raw.values())
        total = [r for r in rows if r["channel"] == "*"][0]
        assert (int(total["bytes"]), int(total["messages"])) == (sent, msgs), algo
        per_rank = [r for r in rows if r["rank"] != "all"]
        assert sum(int(r["messages"]) for r in per_rank) == sum(len(rr) for rr in raw.values())
        # every point-to-point byte sent arrived: sends and receives pair up per rank pair/channel
        send = {}
        for k, rr in raw.items():
            for r in rr[rr["op"] == b"send"]:
                key = (k, int(r["peer"]), r["channel"])
                send[key] = send.get(key, 0) + int(r["nbytes"])
            for r in rr[rr["op"] == b"recv"]:
                key = (int(r["peer"]), k, r["channel"])
                send[key] = send.get(key, 0) - int(r["nbytes"])
        assert all(v == 0 for v in send.values()), (algo, send)


def test_summary_of_a_killed_run(runs, capsys):
    code, text, _ = cli(capsys, "summary", runs["killed"])
    assert code == 0
    assert "killed or still running" in text and "never closed" in text
    code, out, _ = cli(capsys, "summary", runs["killed"], "--csv", "-")
    per = {(r["rank"], r["op"], r["channel"]): r for r in csv_rows(out)}
    # the last rank flushed and killed itself at step 6: steps 0..5 are all in its file
    assert per[("3", "send", "params")]["messages"] == "6"
    assert per[("3", "send", "params")]["last_step"] == "5"
    for k in range(3):  # the others: whatever reached their last flush, at most step 6
        assert int(per[(str(k), "send", "params")]["last_step"]) <= 6


# ------------------------------------------------------------------------------------- plot

def check_png(path):
    import matplotlib.image as mpimg
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= 500 and h >= 250, (path, img.shape)
    assert img[..., :3].std() > 0.02, f"{path} looks blank"


def test_plot_every_run(runs, capsys, tmp_path):
    names = ["demo_fe1", "killed"] + algorithm_runs(runs)
    for name in names:
        out = tmp_path / name
        code, text, err = cli(capsys, "plot", runs[name], "-o", out)
        assert code == 0, (name, err)
        written = text.split()
        for fig in ("bytes_per_step.png", "traffic_heatmap.png", "timeline.png",
                    "metrics_steps.png", "metrics_time.png"):
            assert str(out / fig) in written, (name, fig, written)
        for path in written:
            check_png(path)
    # options: a time window and a chosen metric; an unknown metric is one clear error
    code, text, _ = cli(capsys, "plot", runs["demo_fe3"], "-o", tmp_path / "w",
                        "--window", "0.05", "0.2", "--metrics", "loss")
    assert code == 0 and "metrics_steps.png" in text
    code, _, err = cli(capsys, "plot", runs["demo_fe3"], "-o", tmp_path / "w", "--metrics", "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no metric nope" in err


# ------------------------------------------------------------------------------------- compare

def test_compare_against_an_argument(runs, capsys, tmp_path):
    code, text, err = cli(capsys, "compare", runs["demo_fe1"], runs["demo_fe3"], "-o", tmp_path,
                          "--x", "feedback_every")
    assert code == 0, err
    check_png(tmp_path / "compare.png")
    rows = csv_rows((tmp_path / "compare.csv").read_text())
    assert [r["--feedback-every"] for r in rows] == ["1", "3"]
    assert [r["run"] for r in rows] == ["feedback_every=1", "feedback_every=3"]
    n_ctl = DEMO_STEPS - 1  # the loop's agreements: after every step but the last
    for r, fe in zip(rows, (1, 3)):
        s, n_fb, n_bc = DEMO_STEPS, math.ceil(DEMO_STEPS / fe), math.ceil(DEMO_STEPS / BCAST_EVERY)
        assert int(r["bytes"]) == WORLD * (s * NUMEL * 4 + n_fb * NUMEL + s * 1024 + n_bc * 4096
                                           + 8 * n_ctl)
        # the demo's loss at the last step, mean over ranks: 2 exp(-11/10) + 0.05 * mean(rank)
        assert float(r["last_loss"]) == pytest.approx(2 * math.exp(-(s - 1) / 10) + 0.05 * 1.5)
    assert "feedback_every=1" in text


def test_compare_algorithms_and_a_killed_run(runs, capsys, tmp_path):
    names = algorithm_runs(runs) + ["killed"]
    code, text, err = cli(capsys, "compare", *[runs[n] for n in names], "-o", tmp_path,
                          "--name", "algos")
    assert code == 0, err
    check_png(tmp_path / "algos.png")
    rows = csv_rows((tmp_path / "algos.csv").read_text())
    assert [r["algorithm"] for r in rows] == [n if n != "killed" else "demo" for n in names]
    assert rows[-1]["status"] == "killed or still running"
    code, _, err = cli(capsys, "compare", runs["demo_fe1"], runs["demo_fe3"], "-o", tmp_path,
                       "--metrics", "no_such_metric")
    assert code == 2 and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- export

def check_trace_events(obj):
    """The trace-event format, checked here independently of mpidist.analysis."""
    ev = obj["traceEvents"]
    assert ev
    tracks, flows = {}, {}
    for e in ev:
        for k in ("ph", "ts", "pid", "tid"):
            assert k in e, e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0, e
            tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
        elif e["ph"] in ("s", "f"):
            flows.setdefault(e["id"], {})[e["ph"]] = e
        elif e["ph"] == "C":
            assert isinstance(e["args"], dict) and e["args"]
    for key, spans in tracks.items():  # complete events on one track must not partly overlap
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert not (b0 < a1 < b1), (key, (a0, a1), (b0, b1))
    for fid, d in flows.items():  # both ends of each flow, each inside a slice of its track
        assert set(d) == {"s", "f"}, (fid, d)
        assert d["f"].get("bp") == "e"
        for e in d.values():
            assert any(a <= e["ts"] <= b for a, b in tracks[(e["pid"], e["tid"])]), e
    return flows


def test_export_demo_flows_follow_the_ring(runs, capsys, tmp_path):
    out = tmp_path / "demo.json"
    code, text, err = cli(capsys, "export", runs["demo_fe3"], "-o", out)
    assert code == 0, err
    obj = json.loads(out.read_text())
    flows = check_trace_events(obj)
    n_fb = math.ceil(DEMO_STEPS / 3)
    assert len(flows) == WORLD * (DEMO_STEPS + n_fb)
    for d in flows.values():
        src, dst = d["s"]["pid"], d["f"]["pid"]
        step = 1 if d["s"]["name"] == "params" else -1  # ring to the right, feedback to the left
        assert dst == (src + step) % WORLD, d
    names = sorted(e["args"]["name"] for e in obj["traceEvents"] if e.get("name") == "process_name")
    assert [n.split(" (")[0] for n in names] == [f"rank {k}" for k in range(WORLD)]
    counters = {e["name"] for e in obj["traceEvents"] if e["ph"] == "C"}
    assert {"bytes in flight", "loss", "accuracy", "tau"} <= counters


def test_export_every_run(runs, capsys, tmp_path):
    for name in algorithm_runs(runs) + ["killed"]:
        out = tmp_path / f"{name}.json"
        code, _, err = cli(capsys, "export", runs[name], "-o", out)
        assert code == 0, (name, err)
        flows = check_trace_events(json.loads(out.read_text()))
        raw = raw_rows(runs[name])
        sends = sum(int((rr["op"] == b"send").sum()) for rr in raw.values())
        recvs = sum(int((rr["op"] == b"recv").sum()) for rr in raw.values())
        if name == "killed":
            assert len(flows) <= min(sends, recvs)
        else:
            assert len(flows) == sends == recvs, name


# ------------------------------------------------------------------------------------- bad input

def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mpidist_trace: error: ")
    return lines[0]


def run_tool(*argv):
    return subprocess.run([sys.executable, TOOL, *map(str, argv)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_truncated_file_is_refused_in_one_line(runs, capsys, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(runs["demo_fe1"], bad)
    f = bad / "rank1.h5"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = one_line_error(run_tool("summary", bad))  # the real command line, once
    assert "rank1.h5" in line and "not a readable mpidist trace" in line
    for argv in (["plot", bad, "-o", tmp_path / "p"], ["export", bad, "-o", tmp_path / "e.json"],
                 ["compare", runs["demo_fe3"], bad, "-o", tmp_path / "c"], ["summary", f]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "rank1.h5" in err, argv
    code, text, _ = cli(capsys, "summary", bad, "--skip-bad")  # the readable ranks, with a note
    assert code == 0 and "skipped:" in text and "ranks 3/4" in text


def test_not_a_trace_is_refused_in_one_line(capsys, tmp_path):
    text_file = tmp_path / "text" / "rank0.h5"
    text_file.parent.mkdir()
    text_file.write_text("this is not HDF5\n" * 100)
    foreign = tmp_path / "foreign" / "rank0.h5"
    foreign.parent.mkdir()
    with h5py.File(foreign, "w") as h:
        h.create_dataset("comm", data=np.arange(10))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(run_tool("export", foreign.parent))
    assert "not an mpidist trace" in line
    for path, words in ((text_file.parent, "not a readable mpidist trace"),
                        (foreign, "not an mpidist trace"),
                        (empty, "no rank<k>.h5 files"), (tmp_path / "nowhere", "no such")):
        for argv in (["summary", path], ["plot", path, "-o", tmp_path / "p"],
                     ["export", path, "-o", tmp_path / "e.json"],
                     ["compare", path, "-o", tmp_path / "c"]):
            code, out, err = cli(capsys, *argv)
            assert code == 2, (argv, out, err)
            assert len(err.strip().splitlines()) == 1 and words in err, (argv, err)


# ------------------------------------------------------------------------------------- live files

def test_reading_a_running_job_never_fails_its_writer(tmp_path):
    """The tools read running jobs' files: that must never make a rank's flush fail. mpidist's
    reader takes no HDF5 file lock; a locking reader (h5py's default, e.g. a notebook) only
    delays the writer."""
    from mpidist.trace import TraceWriter, read_rank
    path = str(tmp_path / "rank0.h5")
    w = TraceWriter(path, {"algorithm": "demo", "rank": 0, "world_size": 1}, clock=lambda: 1.0)
    hold = ("import h5py, sys, time\n"
            "f = h5py.File(sys.argv[1], 'r')  # h5py's default: with the file lock\n"
            "print('open', flush=True); time.sleep(1.5)")
    reader = subprocess.Popen([sys.executable, "-c", hold, path], stdout=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "open"
    w.comm(0, b"send", 1, 7, b"params", 64, 0.5, 0.75)
    w.flush()  # waits for the locking reader instead of raising BlockingIOError
    reader.wait(timeout=30)
    tool_loop = ("import sys, time\n"
                 "sys.path.insert(0, sys.argv[2])\n"
                 "from mpidist import trace\n"
                 "t = time.monotonic()\n"
                 "while time.monotonic() - t < 2:\n"
                 "    try:\n"
                 "        trace.read_rank(sys.argv[1])\n"
                 "    except trace.TraceError:\n"
                 "        pass\n")
    reader = subprocess.Popen([sys.executable, "-c", tool_loop, path, REPO])
    t0 = time.monotonic()
    n = 1
    while reader.poll() is None and time.monotonic() - t0 < 30:
        w.comm(n, b"send", 1, 7, b"params", 64, 0.5, 0.75)
        w.flush()  # many flushes while the tool reads in a loop: none may fail
        n += 1
    assert reader.wait(timeout=30) == 0
    w.close()
    rows = read_rank(path).comm
    assert len(rows) == n and list(rows["step"]) == list(range(n))
