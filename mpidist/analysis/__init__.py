"""What a run's trace says: communication tables, figures, comparisons and a Perfetto timeline.

The library behind ``tools/mpidist_trace.py`` (``summary``, ``plot``, ``compare``, ``export``),
importable from notebooks. It reads traces only through :mod:`mpidist.trace` (``read_run`` /
``read_rank``, which raise ``TraceError`` with one clear line) and knows nothing of any algorithm:
channels, peers and metric names come from the files, so it works on the traces of every mpidist
algorithm, and on the files of a killed run (rows up to each rank's last flush, status "running").

Conventions used in every table and figure (README, "The trace tools"):

- A *message group* is the rows of one (rank, op, peer, channel). ``in_flight_s`` sums each row's
  ``t_done - t_post`` (posting to completion as the rank saw it, so a receive posted early also
  counts the time it waited for its sender), and ``bandwidth`` is ``bytes / in_flight_s``: the
  average rate one message of the group saw.
- *Traffic* counts each point-to-point byte once, at its sender (``send`` rows), plus every rank's
  buffer of a collective (``allreduce``, ``bcast``, ...); ``recv`` rows mirror sends and are not
  added again.
- Times are seconds since the run's t = 0 (all ranks start their clocks after one barrier).

The package, by concern: :mod:`.loading` (a run directory or rank file read into a ``Run``),
:mod:`.formatting` (bytes, rates, text tables), :mod:`.tables` (per rank/peer/channel and per-run
tables, metric series, the ``summary`` text and CSV), :mod:`.plots` (the ``plot`` figures),
:mod:`.compare` (the ``compare`` table and figure) and :mod:`.export` (Perfetto / Chrome JSON).
Every public name is importable from ``mpidist.analysis`` itself, as before the split.
"""
from __future__ import annotations

from ..trace import TraceError
from .compare import auto_labels, common_metrics, compare_table, differing_args, plot_compare
from .export import check_chrome_trace, chrome_trace
from .formatting import byte_unit, fmt_bytes, fmt_rate, text_table
from .loading import Run, load
from .plots import (channel_colors, plot_bytes_per_step, plot_heatmap, plot_metrics, plot_run,
                    plot_timeline, zoom_window)
from .tables import (COMM_COLUMNS, channel_totals, channels, comm_table, dict_csv, last_metric,
                     mean_metric, metric_names, metric_series, run_totals, summary_csv,
                     summary_text, traffic_mask, traffic_matrix)

__all__ = [
    # loading
    "Run", "load", "TraceError",
    # formatting
    "fmt_bytes", "fmt_rate", "text_table", "byte_unit",
    # tables
    "COMM_COLUMNS", "comm_table", "traffic_mask", "channel_totals", "run_totals", "channels",
    "metric_names", "last_metric", "metric_series", "mean_metric", "traffic_matrix",
    "summary_text", "summary_csv", "dict_csv",
    # plots
    "channel_colors", "plot_bytes_per_step", "plot_heatmap", "plot_timeline", "zoom_window",
    "plot_metrics", "plot_run",
    # compare
    "differing_args", "auto_labels", "compare_table", "common_metrics", "plot_compare",
    # export
    "chrome_trace", "check_chrome_trace",
]
