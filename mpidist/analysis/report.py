"""The ``analyze`` command: the analyses people expect of a run, as text and CSV tables.

- the rank-by-rank traffic matrix (point-to-point bytes sender x receiver, and each rank's
  collective bytes: :func:`mpidist.analysis.tables.traffic_matrix`);
- the message-size histogram (:mod:`.sizes`);
- per-step load imbalance, the slowest rank's step time over the mean (:mod:`.imbalance`);
- bytes per step against each paper's formula (:mod:`.formulas`).
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from .formatting import fmt_bytes, text_table
from .formulas import FORMULAS, bytes_vs_formula
from .imbalance import load_imbalance
from .loading import Run
from .sizes import size_histogram
from .tables import dict_csv, traffic_matrix


def matrix_rows(run: Run) -> list[dict]:
    """The traffic matrix as rows: one per sender, a column ``to <k>`` per receiver, then the
    rank's collective bytes and its total."""
    m, coll = traffic_matrix(run)
    rows = []
    for i in range(len(m)):
        row = {"from": i}
        row.update({f"to {j}": int(m[i, j]) for j in range(len(m))})
        row["collective"] = int(coll[i])
        row["total"] = int(m[i].sum() + coll[i])
        rows.append(row)
    return rows


def analyze_text(run: Run) -> str:
    lines = [f"run        {run.path}", f"algorithm  {run.algorithm}    ranks "
             f"{len(run.ranks)}/{run.world_size}    status {run.status}"]
    lines += [f"note       {n}" for n in run.notes]
    rows = matrix_rows(run)
    lines += ["", "traffic matrix (point-to-point bytes sent, row = sender; collective: the rank's "
              "collective buffers)"]
    if rows:
        cols = list(rows[0])
        lines.append(text_table(rows, cols, {c: fmt_bytes for c in cols if c != "from"}))
    hist = size_histogram(run)
    lines += ["", "message sizes (sends and collective buffers)"]
    lines.append(text_table(hist, ["size", "messages", "bytes", "byte_share", "channels"], {
        "bytes": fmt_bytes, "byte_share": lambda x: f"{100 * x:.1f} %"}) if hist
        else "(no messages recorded)")
    imb = load_imbalance(run)
    lines += ["", "load imbalance (slowest rank's step time / mean rank's; a step ends at the "
              "rank's last record of it)"]
    if imb["n_steps"]:
        lines.append(f"  steps {imb['n_steps']}    mean {imb['mean']:.3f}    max {imb['max']:.3f} "
                     f"(step {imb['max_step']})    time-weighted {imb['time_weighted']:.3f}    "
                     f"slowest rank most often: {imb['slowest_rank']}")
    else:
        lines.append("  (no step recorded by every rank twice)")
    f = bytes_vs_formula(run)
    lines += ["", "bytes per step against the paper's formula (M: one model message; ratio = "
              "measured / expected over the run)"]
    if f:
        cols = ["rank", "channels", "model_bytes", "parameters", "formula", "formula_per_step",
                "measured_per_step", "steps", "expected_bytes", "measured_bytes", "ratio"]
        lines.append(text_table(f, cols, {
            "model_bytes": fmt_bytes, "formula_per_step": fmt_bytes, "measured_per_step": fmt_bytes,
            "expected_bytes": fmt_bytes, "measured_bytes": fmt_bytes,
            "ratio": lambda x: f"{x:.4f}" if np.isfinite(x) else "-",
            "parameters": lambda x: "-" if x is None else str(x)}))
        if "ring_wire_per_step" in f[0]:
            lines.append("  ring allreduce on the wire, per rank and step: "
                         + ", ".join(f"rank {r['rank']} {fmt_bytes(r['ring_wire_per_step'])}"
                                     for r in f))
    else:
        lines.append(f"  (no formula for {run.algorithm}; known: {', '.join(FORMULAS)})")
    return "\n".join(lines)


def write_csvs(run: Run, out_dir: str) -> list[str]:
    """matrix.csv, sizes.csv, imbalance.csv (per step) and formula.csv into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    imb = load_imbalance(run)
    tables = {"matrix.csv": dict_csv(matrix_rows(run)),
              "sizes.csv": dict_csv(size_histogram(run)),
              "formula.csv": dict_csv(bytes_vs_formula(run))}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "imbalance"])
    for s, v in zip(imb["steps"], imb["imbalance"]):
        w.writerow([int(s), float(v)])
    tables["imbalance.csv"] = buf.getvalue()
    paths = []
    for name, text in tables.items():
        p = os.path.join(out_dir, name)
        with open(p, "w", newline="") as fh:
            fh.write(text)
        paths.append(p)
    return paths
