"""Opening a run: a run directory (or one rank file) read into a :class:`Run`.

:func:`load` reads the per-rank HDF5 files through :mod:`mpidist.trace` (``read_run`` /
``read_rank``, which raise ``TraceError`` with one clear line), optionally skipping unreadable rank
files (never files of another run or a second file of one rank: ``check_run`` refuses those),
and collects what it noticed (missing ranks, files never closed by a killed job, a resume from a
checkpoint, rows a writer could not write) in ``Run.notes``. :class:`Run` gives the rows (``comm``, ``metrics``) and the
run's attributes, duration, step count and status to the rest of :mod:`mpidist.analysis`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import trace as _trace
from ..trace import TraceError


@dataclass
class Run:
    """A loaded run directory plus what the reader noticed about it (``notes``)."""
    path: str
    trace: _trace.RunTrace
    notes: list = field(default_factory=list)
    label: str = ""

    @property
    def ranks(self) -> list:
        return self.trace.ranks

    @property
    def attrs(self) -> dict:
        return self.trace.attrs

    @property
    def algorithm(self) -> str:
        return str(self.attrs.get("algorithm", "?"))

    @property
    def args(self) -> dict:
        a = self.attrs.get("args", {})
        return a if isinstance(a, dict) else {}

    @property
    def world_size(self) -> int:
        return int(self.attrs.get("world_size", len(self.ranks)))

    @property
    def comm(self) -> np.ndarray:
        if not hasattr(self, "_comm"):
            self._comm = self.trace.comm if self.ranks else np.zeros(0)
        return self._comm

    @property
    def metrics(self) -> np.ndarray:
        if not hasattr(self, "_metrics"):
            self._metrics = self.trace.metrics if self.ranks else np.zeros(0)
        return self._metrics

    @property
    def duration(self) -> float:
        """Seconds from t = 0 to the last thing any rank recorded (or closed its file)."""
        end = 0.0
        for r in self.ranks:
            if len(r.comm):
                end = max(end, float(r.comm["t_done"].max()))
            if len(r.metrics):
                end = max(end, float(r.metrics["t"].max()))
            if "end_time" in r.attrs and "start_time" in r.attrs:
                end = max(end, float(r.attrs["end_time"]) - float(r.attrs["start_time"]))
        return end

    @property
    def steps(self) -> int:
        """Number of steps seen (1 + the largest step of any row)."""
        s = -1
        if len(self.comm):
            s = max(s, int(self.comm["step"].max()))
        if len(self.metrics):
            s = max(s, int(self.metrics["step"].max()))
        return s + 1

    @property
    def status(self) -> str:
        st = {str(r.attrs.get("status", "?")) for r in self.ranks}
        if st == {"ok"} and len(self.ranks) == self.world_size:
            return "ok"
        if any(s.startswith("failed") for s in st):
            return "failed"
        if "running" in st:
            return "killed or still running"
        return ", ".join(sorted(st))


def load(path: str, skip_bad: bool = False, label: str | None = None) -> Run:
    """Read a run directory (or one rank file). Unreadable rank files raise TraceError, or with
    ``skip_bad`` are left out and named in ``notes``. Notes also name missing ranks and ranks whose
    file was never closed (a killed job)."""
    notes = []
    if skip_bad and os.path.isdir(path):
        files = _trace.rank_files(path)
        ranks = []
        for f in files:
            try:
                ranks.append(_trace.read_rank(os.path.join(path, f)))
            except TraceError as e:
                notes.append(f"skipped: {e}")
        if not ranks:
            raise TraceError(f"{path}: no readable rank<k>.h5 file"
                             + (f" ({notes[0][9:]})" if notes else "; not an mpidist run"))
        _trace.check_run(path, ranks)  # files of two runs are not skipped: they are refused
        rt = _trace.RunTrace(path, ranks)
    else:
        rt = _trace.read_run(path)
    run = Run(path.rstrip("/") or path, rt, notes)
    ws = run.world_size
    have = {r.rank for r in rt.ranks}
    missing = sorted(set(range(ws)) - have)
    if missing and os.path.isdir(path):
        notes.append(f"world size {ws} but no readable file for rank(s) "
                     f"{', '.join(map(str, missing))}")
    for r in rt.ranks:
        st = str(r.attrs.get("status", "?"))
        if st == "running":
            last = max([0.0] + ([float(r.comm["t_done"].max())] if len(r.comm) else [])
                       + ([float(r.metrics["t"].max())] if len(r.metrics) else []))
            notes.append(f"rank {r.rank}: file never closed (status 'running'): the job was "
                         f"killed or is still running; rows up to its last flush (t = {last:.2f} s)")
        elif st != "ok":
            notes.append(f"rank {r.rank}: status '{st}'")
    for r in rt.ranks:
        lost = (int(r.attrs.get("dropped_comm_rows", 0)), int(r.attrs.get("dropped_metric_rows", 0)))
        if any(lost):
            notes.append(f"rank {r.rank}: {lost[0]} message rows and {lost[1]} metric rows were "
                         "dropped by its writer (the file system refused them for too long)")
    resumed = sorted({r.attrs["resumed_at_step"] for r in rt.ranks if "resumed_at_step" in r.attrs})
    if resumed:
        notes.append(f"resumed from a checkpoint of step {', '.join(map(str, resumed))}: later rows "
                     "of the interrupted attempt were dropped, the clock continues")
    run.label = label or os.path.basename(run.path) or run.path
    return run
