"""Formatting for the trace tools' text and figures: byte counts and rates, decoded strings,
aligned text tables, and the binary unit that fits a figure's axis."""
from __future__ import annotations

import numpy as np


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1000 or unit == "TiB":  # 1000 not 1024: '1e+03 KiB' reads badly
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def fmt_rate(bps: float) -> str:
    if not np.isfinite(bps):
        return "-"
    return fmt_bytes(bps) + "/s"


def _dec(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def text_table(rows: list, columns: list, formats: dict | None = None) -> str:
    """Rows (dicts) as an aligned text table; numbers right-aligned."""
    formats = formats or {}
    cells = [[formats.get(c, str)(r[c]) if c in formats else _cell(r[c]) for c in columns]
             for r in rows]
    width = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(columns)]
    num = [all(isinstance(r[c], (int, float, np.integer, np.floating)) for r in rows)
           for c in columns]
    def line(vals):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, width, num)).rstrip()
    out = [line(columns), line(["-" * w for w in width])]
    out += [line(x) for x in cells]
    return "\n".join(out)


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


def byte_unit(vmax: float) -> tuple[float, str]:
    """(divisor, name) of the binary unit that shows ``vmax`` as a number below 1000."""
    for k, unit in enumerate(("B", "KiB", "MiB", "GiB", "TiB")):
        if vmax < 1000 * 1024 ** k or unit == "TiB":
            return float(1024 ** k), unit
    return float(1024 ** 4), "TiB"
