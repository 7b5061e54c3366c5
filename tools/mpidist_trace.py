#!/usr/bin/env python
"""Read mpidist traces (the per-rank HDF5 files of a run directory) and show what happened.

    python tools/mpidist_trace.py summary runs/<run> [--csv table.csv] [--time-csv time.csv]
    python tools/mpidist_trace.py plot    runs/<run> [-o DIR] [--metrics loss,accuracy]
                                                     [--window T0 T1]
    python tools/mpidist_trace.py compare runs/<a> runs/<b> ... [-o DIR] [--x ARG]
                                                     [--metrics loss] [--labels A,B,...]
    python tools/mpidist_trace.py analyze runs/<run> [--csv-dir DIR]
    python tools/mpidist_trace.py export  runs/<run> [-o trace.json] [--steps A:B] [--max-events N]
    python tools/mpidist_trace.py export  --format otf2 runs/<run> [-o DIR]   # Vampir, Scalasca

summary   communication per rank, op, peer and channel (messages, bytes, time in flight and
          time the rank was blocked on it, overlap), the time of each rank and channel: compute,
          blocked and overlap % (in-flight time during which the rank was not blocked), and
          per-channel and per-run totals, as text (CSV with --csv and --time-csv).
plot      PNG figures into DIR (default <run>/figures): bytes_per_step.png (traffic per channel
          against steps), traffic_heatmap.png (rank x rank bytes), timeline.png (the spans each
          rank was blocked waiting for a message; timeline_zoom.png: the middle of a long run),
          metrics_steps.png and metrics_time.png (every metric against steps and against
          seconds since the start).
compare   several runs in one figure (compare.png) and one table (compare.csv, and printed),
          written next to the runs (the directory holding them) unless -o: traffic per run (or
          against an argument of the runs with --x, e.g. --x sync_period), each algorithm's
          headline metrics (AdaComm: train_loss) against wall clock and steps, one line per run;
          a metric logged once per run is a table.
analyze   the rank-by-rank traffic matrix, the message-size histogram, per-step load imbalance
          (slowest rank's step time over the mean) and bytes per step against each paper's
          formula (PC-ASGD, D-PSGD, AdaComm); --csv-dir DIR: the same as CSV files.
export    Chrome trace-event JSON for ui.perfetto.dev or chrome://tracing: one process per
          rank, one track per peer and direction, a slice per span the rank was blocked on an
          operation, a flow arrow from each send's posting to its receive's completion,
          counters of bytes in flight and of the metrics; a window of
          whole steps (--steps A:B, and at most --max-events events, default 40000: a few MB).
          --format otf2: an OTF2 archive (a directory; default <run>/otf2) for Vampir,
          Scalasca/Cube and pipit (needs pip install otf2).

The files of a killed run are read up to each rank's last flush; a running job's files are read
without locking them (never delaying its flushes). Refused with one line on stderr and exit
status 2: a path that is not an mpidist trace (or not a regular file: a FIFO, a device), a
directory mixing the files of two runs (each run's files share a run id) or holding two files of
one rank, and an output (--csv, -o) that is an HDF5 file or named *.h5. The library is
mpidist.analysis.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

try:
    from mpidist import analysis
    from mpidist.trace import TraceError
except ImportError:  # run from a checkout without installing: use the package next to tools/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mpidist import analysis
    from mpidist.trace import TraceError

PROG = "mpidist_trace"


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in ONE line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--skip-bad", action="store_true",
                        help="leave out rank files that cannot be read (named in the notes) "
                             "instead of refusing the run")

    s = sub.add_parser("summary", parents=[common], help="communication table and totals")
    s.add_argument("run", help="run directory (or one rank<k>.h5)")
    s.add_argument("--csv", metavar="FILE", help="also write the table as CSV ('-': CSV to "
                                                 "stdout instead of the text)")
    s.add_argument("--time-csv", metavar="FILE", help="also write the time per rank and channel "
                                                      "(compute, blocked, overlap) as CSV ('-': "
                                                      "to stdout instead of the text)")

    pl = sub.add_parser("plot", parents=[common], help="PNG figures of one run")
    pl.add_argument("run")
    pl.add_argument("-o", "--out", metavar="DIR", help="output directory (default <run>/figures)")
    pl.add_argument("--metrics", type=_csv_list, metavar="A,B",
                    help="metrics to plot (default: every metric in the trace)")
    pl.add_argument("--window", type=float, nargs=2, metavar=("T0", "T1"),
                    help="timeline of this window only (seconds since start)")

    c = sub.add_parser("compare", parents=[common], help="several runs side by side")
    c.add_argument("runs", nargs="+")
    c.add_argument("-o", "--out", metavar="DIR",
                   help="where compare.png and compare.csv go (default: the directory that "
                        "holds the runs)")
    c.add_argument("--labels", type=_csv_list, metavar="A,B,...",
                   help="one label per run (default: the arguments that differ between runs)")
    c.add_argument("--x", metavar="ARG", help="plot the traffic against this argument of the "
                                              "runs (e.g. sync_period) instead of per run")
    c.add_argument("--metrics", type=_csv_list, metavar="A,B",
                   help="metrics to compare (default: each algorithm's headline metrics, e.g. "
                        "loss,test_acc; AdaComm train_loss,test_acc; at most 3)")
    c.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="moving mean over N logged values for the metric curves (default 1)")
    c.add_argument("--name", default="compare", help="file name stem (default compare)")

    an = sub.add_parser("analyze", parents=[common], help="traffic matrix, message sizes, load "
                                                           "imbalance, bytes against the papers")
    an.add_argument("run")
    an.add_argument("--csv-dir", metavar="DIR", help="also write matrix.csv, sizes.csv, "
                                                     "imbalance.csv and formula.csv into DIR")

    e = sub.add_parser("export", parents=[common], help="Chrome trace / Perfetto JSON, or OTF2")
    e.add_argument("run")
    e.add_argument("--format", choices=("chrome", "otf2"), default="chrome",
                   help="chrome: trace-event JSON for ui.perfetto.dev (default); otf2: an OTF2 "
                        "archive for Vampir, Scalasca/Cube, pipit")
    e.add_argument("-o", "--out", metavar="PATH",
                   help="output file (default <run>/trace.json; '-': stdout), or with --format "
                        "otf2 a new directory (default <run>/otf2)")
    e.add_argument("--steps", type=_step_range, metavar="A:B",
                   help="only steps A to B (inclusive; A: or :B open-ended) (chrome)")
    e.add_argument("--max-events", type=_nonneg_int, default=analysis.DEFAULT_MAX_EVENTS,
                   metavar="N", help="at most about N events: a window of whole steps around the "
                   f"middle (default {analysis.DEFAULT_MAX_EVENTS}, a few MB; 0: no limit) (chrome)")
    return p


def _step_range(s: str) -> tuple:
    a, sep, b = s.partition(":")
    try:
        if not sep:
            raise ValueError
        lo = int(a) if a.strip() else -(1 << 62)
        hi = int(b) if b.strip() else 1 << 62
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a step range A:B (e.g. 100:120)") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"'{s}': the first step is after the last")
    return lo, hi


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number >= 0")
    return v


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def refuse_output(path: str, flag: str) -> None:
    """An output path that would destroy a trace (or a file of HDF5) is refused with one line:
    a name ending in .h5/.hdf5, or an existing file that is HDF5 (HDF5's signature at byte 0)."""
    if path in (None, "-"):
        return
    if path.lower().endswith((".h5", ".hdf5")):
        raise TraceError(f"{flag} {path}: refusing to write an output named like a trace file "
                         "(.h5); choose another name")
    if os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            return  # writing it will fail with its own message
        if head == HDF5_SIGNATURE:
            raise TraceError(f"{flag} {path}: refusing to overwrite an HDF5 file (a trace?); "
                             "choose another name")
    elif os.path.exists(path) and not os.path.isdir(path) and not path.startswith("/dev/"):
        raise TraceError(f"{flag} {path}: not a regular file; choose another name")


def refuse_output_dir(path: str | None) -> None:
    """-o DIR of plot and compare: an existing path that is not a directory is refused."""
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise TraceError(f"-o {path}: exists and is not a directory (the figures go into a "
                         "directory); choose another")


def cmd_summary(a) -> None:
    refuse_output(a.csv, "--csv")
    refuse_output(a.time_csv, "--time-csv")
    run = analysis.load(a.run, a.skip_bad)
    if a.csv == "-" and a.time_csv == "-":
        raise TraceError("--csv - and --time-csv -: only one of them can go to stdout")
    if a.time_csv == "-":
        sys.stdout.write(analysis.time_csv(run))
        return
    # files first, so that a path that cannot be written fails before any output
    if a.time_csv:
        with open(a.time_csv, "w", newline="") as f:
            f.write(analysis.time_csv(run))
    if a.csv == "-":
        sys.stdout.write(analysis.summary_csv(run))
        return
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            f.write(analysis.summary_csv(run))
    print(analysis.summary_text(run))
    for path in (a.csv, a.time_csv):
        if path:
            print(f"\ncsv: {path}")


def cmd_plot(a) -> None:
    refuse_output_dir(a.out)
    run = analysis.load(a.run, a.skip_bad)
    for n in run.notes:
        print(f"note: {n}", file=sys.stderr)
    if a.metrics:
        unknown = [m for m in a.metrics if m not in analysis.metric_names(run)]
        if unknown:
            raise TraceError(f"{a.run}: no metric {', '.join(unknown)} in this run (it has: "
                             f"{', '.join(analysis.metric_names(run)) or 'none'})")
    out = a.out or os.path.join(a.run if os.path.isdir(a.run) else os.path.dirname(a.run) or ".",
                                "figures")
    for path in analysis.plot_run(run, out, a.metrics, tuple(a.window) if a.window else None):
        print(path)


def cmd_compare(a) -> None:
    refuse_output_dir(a.out)
    runs = [analysis.load(r, a.skip_bad) for r in a.runs]
    if a.out is None:
        a.out = analysis.default_out(runs)
        refuse_output_dir(a.out)
    if a.labels:
        if len(a.labels) != len(runs):
            raise TraceError(f"--labels has {len(a.labels)} labels for {len(runs)} runs")
        labels = a.labels
    else:
        labels = analysis.auto_labels(runs)
    for r, l in zip(runs, labels):
        r.label = l
        for n in r.notes:
            print(f"note: {r.path}: {n}", file=sys.stderr)
    common = analysis.common_metrics(runs)
    if a.metrics:
        missing = [f"{m} (in {r.path})" for m in a.metrics for r in runs
                   if m not in analysis.metric_names(r)]
        if missing:
            raise TraceError(f"metric not logged: {', '.join(missing)}; shared by all runs: "
                             f"{', '.join(common) or 'none'}")
        metrics = a.metrics
    else:
        metrics = analysis.default_metrics(runs)
    if a.x:
        miss = [r.path for r in runs if a.x not in r.args]
        if miss:
            raise TraceError(f"--x {a.x}: not an argument of {', '.join(miss)}")
    os.makedirs(a.out, exist_ok=True)
    rows = analysis.compare_table(runs, metrics)
    cols = [k for k in rows[0] if k != "path"]
    print(analysis.text_table(rows, cols, {"bytes": analysis.fmt_bytes,
                                           "bytes_per_step": analysis.fmt_bytes}))
    csv_path = os.path.join(a.out, f"{a.name}.csv")
    with open(csv_path, "w", newline="") as f:
        f.write(analysis.dict_csv(rows))
    png = analysis.plot_compare(runs, os.path.join(a.out, f"{a.name}.png"), metrics, a.x,
                                max(1, a.smooth))
    print(f"\n{png}\n{csv_path}")


def cmd_analyze(a) -> None:
    refuse_output_dir(a.csv_dir)
    run = analysis.load(a.run, a.skip_bad)
    if a.csv_dir:  # first, so that a directory that cannot be written fails before any output
        paths = analysis.write_csvs(run, a.csv_dir)
    print(analysis.analyze_text(run))
    if a.csv_dir:
        print("\n" + "\n".join(paths))


def cmd_export(a) -> None:
    refuse_output(a.out, "-o")
    run = analysis.load(a.run, a.skip_bad)
    base = a.run if os.path.isdir(a.run) else os.path.dirname(a.run) or "."
    if a.format == "otf2":
        if a.out == "-":
            raise TraceError("-o -: an OTF2 archive is a directory of files; give a directory")
        out = a.out or os.path.join(base, "otf2")
        n = analysis.export_otf2(run, out)
        print(f"{n['anchor']}: {n['p2p']} point-to-point messages, {n['collectives']} "
              f"collectives, {n['metric_values']} metric values ({n['events']} events); open "
              "it in Vampir, Scalasca/Cube or pipit")
        return
    obj = analysis.chrome_trace(run, a.steps, a.max_events)
    if a.out == "-":
        json.dump(obj, sys.stdout)
        return
    out = a.out or os.path.join(base, "trace.json")
    refuse_output(out, "-o")
    with open(out, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    n = sum(1 for e in obj["traceEvents"] if e["ph"] == "X")
    od = obj["otherData"]
    lo, hi = od["steps"]
    part = (f"steps {lo}..{hi} of {od['run_steps'][0]}..{od['run_steps'][1]}"
            + (f" (at most --max-events {a.max_events}; --steps A:B for another window)"
               if od["narrowed"] else ""))
    print(f"{out}: {n} slices, {od['flows']} send->recv flows, {part}, "
          f"{os.path.getsize(out) / 2**20:.1f} MiB; open it in https://ui.perfetto.dev "
          "(or chrome://tracing)")


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if getattr(a, "window", None) and not a.window[0] < a.window[1]:
        p.error(f"--window {a.window[0]:g} {a.window[1]:g}: T0 must be less than T1")
    try:
        {"summary": cmd_summary, "plot": cmd_plot, "compare": cmd_compare,
         "analyze": cmd_analyze, "export": cmd_export}[a.command](a)
    except TraceError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # summary | head (before OSError, of which it is a kind)
        return 0
    except OSError as e:  # an output path that cannot be written (the reader raises TraceError)
        print(f"{PROG}: error: cannot write {e.filename or 'the output'}: {e.strerror or e} "
              "(choose another -o/--csv path)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
