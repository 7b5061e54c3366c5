"""Bytes per step measured in a trace against what each algorithm's paper says it sends.

The one module of :mod:`mpidist.analysis` that knows algorithms: for each it rebuilds, from the
run's own arguments (``args``) and :mod:`mpidist.topology`, who sends what to whom, and compares
the closed form with the bytes of the trace's send (or collective) rows. ``M``, the bytes of one
model message, is read from the trace (the most common size of the model channel's messages: the
flat parameters, plus PC-ASGD's one-element step stamp), so the comparison checks the message
*counts* the formula predicts; the parameter count the run recorded is shown beside it.

- **PC-ASGD** (Asynchronous Training Schemes in Distributed Learning with Time Delay): per step
  agent i sends its model to each reliable neighbour and, to each unreliable neighbour, its model
  and its gradient (P-ASGD too; D-ASGD the model only; C-ASGD nothing): ``M (|R_i| + k |U_i|)``
  with k = 2, 2, 1, 0 for ``--variant`` pc, p, dasgd, c. Over a run of S steps exactly
  ``M (|R_i| S + k |U_i| max(0, S - tau))``: x_0 and x_1 .. x_{S-1} go to reliable neighbours,
  and a message to an unreliable one that would be consumed after the last step is not sent.
- **D-PSGD** (Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
  Decentralized Parallel Stochastic Gradient Descent, X. Lian et al.): every iteration worker i
  sends its model to each of its ``deg_i`` neighbours: ``M deg_i`` per step, ``M deg_i S`` in all.
- **AdaComm / PASGD / sync SGD** (Adaptive Communication Strategies to Achieve the Best
  Error-Runtime Trade-off in Local-Update SGD, J. Wang, G. Joshi): one allreduce of the model
  (sync SGD: of the gradient) per averaging, every tau local steps. A ring allreduce moves
  ``2 (p - 1) / p M`` bytes out of each of the p workers; the trace records the buffer, ``M`` per
  rank and averaging (MPI's ``Iallreduce`` chooses its own algorithm), so the table gives both:
  ``M A / S`` recorded and ``2 (p - 1) / p M A / S`` on the wire of a ring, A averagings in S
  steps (PASGD: ``A = floor(S / tau)``, sync: ``A = S``; AdaComm's tau changes, so A is counted).
- **DADA** (Distributed Asynchronous Domain Adaptation, S. Gan, A. Mathur, A. Isopoussu,
  N. Berthouze, N. D. Lane, F. Kawsar): at each sync-up step (``n % p == 0``, n = 1 .. S) one
  allreduce of the discriminator's payload (G_acc for sync/ga, D's weights for naive/ma/dpsgd):
  ``M / p`` per step recorded, ``M floor(S / p)`` over the run, whatever the number of ranks;
  ``2 (n - 1) / n`` of that on the wire of a ring (channels ``disc_grads``/``disc_params``).
"""
from __future__ import annotations

import re

import numpy as np

from .loading import Run

PCASGD_K = {"pc": 2, "p": 2, "dasgd": 1, "c": 0}


def _model_bytes(rows: np.ndarray) -> int:
    """The most common message size of ``rows`` (0 if none)."""
    if not len(rows):
        return 0
    v, n = np.unique(rows["nbytes"], return_counts=True)
    return int(v[int(np.argmax(n))])


def _parameters(run: Run):
    """The parameter count the run recorded (``parameters``, or "(N parameters)" in ``task``)."""
    a = run.attrs
    if "parameters" in a:
        return int(a["parameters"])
    m = re.search(r"\((\d+) parameters\)", str(a.get("task", "")))
    return int(m.group(1)) if m else None


def _train_steps(run: Run, rank: int) -> int:
    """S: 1 + the last step of the rank's per-step metric (``loss``), else of any row >= 0."""
    r = next(x for x in run.ranks if x.rank == rank)
    s, _, _ = r.metric("loss")
    if len(s):
        return int(s.max()) + 1
    return max(run.steps, 0)


def _sent(run: Run, rank: int, channels) -> np.ndarray:
    c = run.comm
    if not len(c):
        return c
    sel = (c["rank"] == rank) & (c["op"] == b"send")
    sel &= np.isin(c["channel"], [ch.encode() for ch in channels])
    return c[sel]


def _row(rank, channels, m, formula, per_step, expected, measured, steps, **extra) -> dict:
    return {"rank": rank, "channels": ",".join(channels), "model_bytes": m, "formula": formula,
            "formula_per_step": per_step, "steps": steps, "expected_bytes": expected,
            "measured_bytes": measured,
            "measured_per_step": measured / steps if steps > 0 else float("nan"),
            "ratio": measured / expected if expected > 0 else float("nan"), **extra}


def _pcasgd(run: Run) -> list[dict]:
    from .. import topology
    a = run.args
    n = run.world_size
    clusters = topology.parse_clusters(a["clusters"]) if a.get("clusters") else None
    topo = topology.build(n, clusters, a.get("graph", "full"), int(a.get("delay", 0)),
                          a.get("mixing", "lazy"))
    k = PCASGD_K.get(str(a.get("variant", "pc")), 2)
    tau = int(a.get("delay", 0))
    rows = []
    for r in run.ranks:
        i = r.rank
        nr, nu = len(topo.reliable_neighbours(i)), len(topo.unreliable_neighbours(i))
        sent = _sent(run, i, ("params", "grads"))
        m = _model_bytes(sent[sent["channel"] == b"params"])
        s = _train_steps(run, i)
        rows.append(_row(i, ["params", "grads"], m, f"M (|R| + {k} |U|), |R| = {nr}, |U| = {nu}",
                         m * (nr + k * nu), m * (nr * s + k * nu * max(0, s - tau)),
                         int(sent["nbytes"].sum()), s))
    return rows


def _dpsgd(run: Run) -> list[dict]:
    from .. import topology
    adj = topology.adjacency(run.args.get("graph", "ring"), run.world_size)
    rows = []
    for r in run.ranks:
        deg = int(adj[r.rank].sum())
        sent = _sent(run, r.rank, ("params",))
        m = _model_bytes(sent)
        s = _train_steps(run, r.rank)
        rows.append(_row(r.rank, ["params"], m, f"M deg, deg = {deg}", m * deg, m * deg * s,
                         int(sent["nbytes"].sum()), s))
    return rows


def _adacomm(run: Run) -> list[dict]:
    a = run.args
    method = str(a.get("method", "adacomm"))
    ch = "grads" if method == "sync" else "params"
    p = run.world_size
    rows = []
    c = run.comm
    for r in run.ranks:
        sel = c[(c["rank"] == r.rank) & (c["op"] == b"allreduce") & (c["channel"] == ch.encode())]
        sel = sel[sel["step"] >= 0]  # (x_1 is broadcast on "init", not averaged)
        m, n_avg = _model_bytes(sel), len(sel)
        s = _train_steps_adacomm(run, r.rank)
        if method == "sync":
            expected_avg, rule = s, "A = S"
        elif method == "pasgd":
            expected_avg, rule = s // int(a.get("tau", 1)), f"A = floor(S / {int(a.get('tau', 1))})"
        else:
            expected_avg, rule = n_avg, "A counted (tau adapts)"
        ring = 2 * (p - 1) / p
        rows.append(_row(r.rank, [ch], m, f"M A / S recorded; ring: 2(p-1)/p M A / S, {rule}",
                         m * expected_avg / s if s else float("nan"), m * expected_avg,
                         int(sel["nbytes"].sum()), s, averagings=n_avg,
                         expected_averagings=expected_avg,
                         ring_wire_per_step=ring * m * n_avg / s if s else float("nan")))
    return rows


def _train_steps_adacomm(run: Run, rank: int) -> int:
    """S for AdaComm: its metrics are per averaging, so the steps of the run's arguments, else the
    last averaging's step."""
    s = run.args.get("steps")
    if isinstance(s, int) and s > 0:
        return s
    return max(run.steps - 1, 0)


def _dada(run: Run) -> list[dict]:
    a = run.args
    name = str(a.get("strategy") or "ga")
    period = a.get("sync_period")
    p = int(period) if period else (1 if name in ("sync", "dpsgd") else 2)
    ch = "disc_grads" if name in ("sync", "ga") else "disc_params"
    n = run.world_size
    c = run.comm
    rows = []
    for r in run.ranks:
        sel = c[(c["rank"] == r.rank) & (c["op"] == b"allreduce") & (c["channel"] == ch.encode())]
        m = _model_bytes(sel)
        s_metric, _, _ = r.metric("d_loss")  # steps 1..S, one d_loss each
        s = int(s_metric.max()) if len(s_metric) else int(a.get("steps") or 0)
        syncs = s // p
        ring = 2 * (n - 1) / n
        rows.append(_row(r.rank, [ch], m, f"M / p, p = {p} ({name}), one allreduce per sync-up",
                         m / p, m * syncs, int(sel["nbytes"].sum()), s, averagings=len(sel),
                         expected_averagings=syncs,
                         ring_wire_per_step=ring * m * len(sel) / s if s else float("nan")))
    return rows


FORMULAS = {"pcasgd": _pcasgd, "dpsgd": _dpsgd, "adacomm": _adacomm, "dada": _dada}


def bytes_vs_formula(run: Run) -> list[dict]:
    """One row per rank: the model message size ``model_bytes`` (M), the paper's bytes per step
    (``formula_per_step``), the run's expected and measured bytes (``expected_bytes`` for its S
    ``steps``, ``measured_bytes`` summed over the send or collective rows of the model
    channels), ``measured_per_step`` and ``ratio`` (measured / expected, 1 when the algorithm
    sent exactly what the formula says). Empty for an algorithm without a formula here."""
    f = FORMULAS.get(run.algorithm)
    if f is None or not run.ranks:
        return []
    rows = f(run)
    p = _parameters(run)
    for r in rows:
        r["parameters"] = p
    return rows
