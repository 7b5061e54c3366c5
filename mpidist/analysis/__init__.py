"""What a run's trace says: communication tables, figures, comparisons and a Perfetto timeline.

The library behind ``tools/mpidist_trace.py`` (``summary``, ``plot``, ``compare``, ``export``),
importable from notebooks. It reads traces only through :mod:`mpidist.trace` (``read_run`` /
``read_rank``, which raise ``TraceError`` with one clear line) and knows nothing of any algorithm:
channels, peers and metric names come from the files, so it works on the traces of every mpidist
algorithm, and on the files of a killed run (rows up to each rank's last flush, status "running").

Conventions used in every table and figure (README, "The trace tools"):

- A *message group* is the rows of one (rank, op, peer, channel). Each row is in flight from
  ``t_post`` to ``t_done`` and blocked the rank from ``t_wait`` to ``t_done`` (if it waited).
  ``in_flight_s`` and ``blocked_s`` measure the UNION of those intervals (receives posted ahead
  count once), ``compute_s`` is the rank's time not blocked, and ``overlap_pct`` the share of
  in-flight time during which the rank was not blocked (:mod:`.blocking` has the formulas).
- *Traffic* counts each point-to-point byte once, at its sender (``send`` rows), plus every rank's
  buffer of a collective (``allreduce``, ``bcast``, ...); ``recv`` rows mirror sends and are not
  added again.
- Times are seconds since the run's t = 0 (all ranks start their clocks after one barrier).

The package, by concern: :mod:`.loading` (a run directory or rank file read into a ``Run``),
:mod:`.blocking` (compute, blocked and overlap from unions of intervals),
:mod:`.formatting` (bytes, rates, text tables), :mod:`.tables` (per rank/peer/channel and per-run
tables, metric series, the ``summary`` text and CSV), :mod:`.plots` (the ``plot`` figures),
:mod:`.compare` (the ``compare`` table and figure, default metrics and output directory),
:mod:`.sizes` (message-size histogram), :mod:`.imbalance` (per-step load imbalance),
:mod:`.formulas` (bytes per step against each paper's formula), :mod:`.report` (the ``analyze``
text and CSVs), :mod:`.export` (Perfetto / Chrome JSON) and :mod:`.otf2_export` (OTF2, with
the optional ``otf2`` package).
Every public name is importable from ``mpidist.analysis`` itself, as before the split.
"""
from __future__ import annotations

from ..trace import TraceError
from .blocking import (NOT_RECORDED, TIME_COLUMNS, covered, group_times, intervals, rank_times,
                       records_wait, run_time_totals, time_table)
from .compare import (HEADLINE, auto_labels, common_metrics, compare_table, default_metrics,
                      default_out, differing_args, plot_compare, single_valued)
from .export import (DEFAULT_MAX_EVENTS, check_chrome_trace, choose_steps, chrome_trace,
                     match_messages)
from .formulas import bytes_vs_formula
from .imbalance import load_imbalance, step_ends, step_times
from .otf2_export import export_otf2, read_otf2, wait_start
from .report import analyze_text, matrix_rows, write_csvs
from .sizes import size_histogram
from .formatting import byte_unit, fmt_bytes, fmt_rate, text_table
from .loading import Run, load
from .plots import (channel_colors, plot_bytes_per_step, plot_heatmap, plot_metrics, plot_run,
                    plot_timeline, zoom_window)
from .tables import (COMM_COLUMNS, channel_totals, channels, comm_table, dict_csv, last_metric,
                     mean_metric, metric_names, metric_series, run_totals, summary_csv,
                     summary_text, time_csv, traffic_mask, traffic_matrix)

__all__ = [
    # loading
    "Run", "load", "TraceError",
    # formatting
    "fmt_bytes", "fmt_rate", "text_table", "byte_unit",
    # tables
    "COMM_COLUMNS", "comm_table", "traffic_mask", "channel_totals", "run_totals", "channels",
    "metric_names", "last_metric", "metric_series", "mean_metric", "traffic_matrix",
    "summary_text", "summary_csv", "dict_csv",
    # blocked time
    "NOT_RECORDED", "TIME_COLUMNS", "covered", "intervals", "group_times", "rank_times",
    "records_wait", "run_time_totals", "time_table", "time_csv",
    # plots
    "channel_colors", "plot_bytes_per_step", "plot_heatmap", "plot_timeline", "zoom_window",
    "plot_metrics", "plot_run",
    # compare
    "differing_args", "auto_labels", "compare_table", "common_metrics", "plot_compare",
    "HEADLINE", "default_metrics", "default_out", "single_valued",
    # analyses (the analyze command)
    "matrix_rows", "size_histogram", "step_ends", "step_times", "load_imbalance",
    "bytes_vs_formula", "analyze_text", "write_csvs",
    # export
    "chrome_trace", "check_chrome_trace", "choose_steps", "match_messages", "DEFAULT_MAX_EVENTS",
    "export_otf2", "read_otf2", "wait_start",
]
