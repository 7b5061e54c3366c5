"""The message-size histogram of a run: how many messages (sends and collective buffers, each
message once, as the traffic counts them) fall in each power-of-two size range, and how many bytes
they carry."""
from __future__ import annotations

import numpy as np

from .formatting import _dec, fmt_bytes
from .loading import Run
from .tables import traffic_mask


def size_histogram(run: Run) -> list[dict]:
    """One row per non-empty size range ``[lo, hi)``, ``hi = 2 lo`` (bin k: ``2^k <= nbytes <
    2^(k+1)``; empty messages, a barrier's, in a row of their own with ``lo = hi = 0``):
    ``messages``, ``bytes``, ``byte_share`` (of the run's traffic) and the channels seen, smallest
    range first."""
    c = run.comm
    t = c[traffic_mask(c)] if len(c) else c
    if not len(t):
        return []
    n = t["nbytes"].astype(np.int64)
    k = np.where(n > 0, np.floor(np.log2(np.maximum(n, 1))).astype(np.int64), -1)
    # log2 of a float can round up just below a power of two: fix the bin by integer comparison
    k = np.where((n > 0) & (np.left_shift(1, np.maximum(k, 0)) > n), k - 1, k)
    k = np.where((n > 0) & (np.left_shift(1, np.maximum(k + 1, 0)) <= n), k + 1, k)
    total = float(n.sum())
    rows = []
    for b in np.unique(k):
        sel = k == b
        lo, hi = (0, 0) if b < 0 else (1 << int(b), 1 << int(b) + 1)
        nb = int(n[sel].sum())
        rows.append({"size": "0 B" if b < 0 else f"{fmt_bytes(lo)} - {fmt_bytes(hi)}",
                     "lo": lo, "hi": hi, "messages": int(sel.sum()), "bytes": nb,
                     "byte_share": nb / total if total > 0 else float("nan"),
                     "channels": ",".join(sorted({_dec(x) for x in np.unique(t["channel"][sel])}))})
    return rows
