"""The value types of mpidist's flags (argparse ``type=`` functions and one action): each turns a
flag's text into its value or raises ``argparse.ArgumentTypeError`` with a message that says what
was expected. :mod:`mpidist.cli` re-exports them (``cli.positive_int``, ...)."""
from __future__ import annotations

import argparse
import math


def _number(s: str, cast):
    v = cast(s)  # a ValueError becomes argparse's "invalid <type> value: 'x'"
    if cast is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    if cast is int and abs(v) >= 2 ** 53:
        raise argparse.ArgumentTypeError(f"must be below 2**53, got {s}")
    return v


def seed_int(s: str) -> int:
    """A seed that every generator takes: rank k seeds with seed*1000+k, below 2**32."""
    v = nonneg_int(s)
    if v * 1000 + 999_999 >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be below {(2 ** 32 - 999_999) // 1000}, got {s}")
    return v


def positive_int(s: str) -> int:
    v = _number(s, int)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = _number(s, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def positive_float(s: str) -> float:
    v = _number(s, float)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def nonneg_float(s: str) -> float:
    v = _number(s, float)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def open_unit_float(s: str) -> float:
    v = _number(s, float)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}")
    return v


def left_open_unit_float(s: str) -> float:
    v = _number(s, float)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def unit_float(s: str) -> float:
    v = _number(s, float)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def key_value(s: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--model-arg``; VALUE becomes an int or float where it reads as one."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected key=value, got '{s}'")
    k, v = s.split("=", 1)
    for cast in (int, float):
        try:
            return k, cast(v)
        except ValueError:
            pass
    return k, v


def epoch_list(s) -> list[float]:
    """``--lr-milestones 81,122``: sorted epochs > 0 (empty: none)."""
    if s is None or s == "" or isinstance(s, list):
        return list(s or [])
    try:
        epochs = sorted(float(v) for v in str(s).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 81,122, "
                                         f"got {s}") from None
    if epochs[0] <= 0:
        raise argparse.ArgumentTypeError(f"every epoch must be > 0, got {s}")
    return epochs


def checkpoint_period(s: str) -> tuple[int, float]:
    """``--checkpoint-every``: (steps, 0) for a number, (0, seconds) for a duration 90s/15m/2h."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if s and s[-1] in units:
            v = float(s[:-1]) * units[s[-1]]
            if not (v > 0 and math.isfinite(v)):
                raise ValueError
            return 0, v
        v = int(s)
        if v < 0:
            raise ValueError
        return v, 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps (>= 0) or a duration such "
                                         f"as 90s, 15m, 2h, got {s}") from None


class _CheckpointEvery(argparse.Action):
    """Stores ``--checkpoint-every`` as ``checkpoint_every`` (steps) and ``checkpoint_seconds``."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.checkpoint_every, namespace.checkpoint_seconds = value


def fail_spec(s: str) -> tuple[int, int, str]:
    parts = s.split(":")
    try:
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("raise", "kill")):
            raise ValueError
        step, rank = int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEP:RANK[:raise|kill], got {s}") from None
    return step, rank, parts[2] if len(parts) == 3 else "raise"
