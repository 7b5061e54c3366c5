"""tools/bench_comm.py's goal statistics: the ratio of two ways' medians with a bootstrap interval
over the rounds (the same rounds for both ways), and the HOLDS / FAILS / UNRESOLVED verdicts."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
sys.path.insert(0, TOOLS)
import bench_comm as bc  # noqa: E402


def ratio(a, b):
    return a / b


def test_interval_of_constant_ways_is_the_ratio_itself():
    a = [[2.0] * 5 for _ in range(8)]
    b = [[1.0] * 5 for _ in range(8)]
    assert bc.interval(a, b, ratio) == (2.0, 2.0, 2.0)


def test_interval_resamples_the_same_rounds_for_both_ways():
    """Round i is c_i times slower for both ways (the machine's slow moment) and b always takes
    1.25x a's time: resampled together, every bootstrap median ratio is exactly 1/1.25, so the
    interval is one point. Resampled apart, the 10x spread of c_i would make it wide."""
    c = [1.0, 10.0, 2.0, 7.0, 3.0, 5.0, 1.5, 9.0, 4.0, 6.0]
    a = [[ci] * 3 for ci in c]
    b = [[ci * 1.25] * 3 for ci in c]
    v, lo, hi = bc.interval(a, b, ratio)
    assert v == pytest.approx(0.8) and lo == pytest.approx(0.8) and hi == pytest.approx(0.8)


def test_interval_brackets_the_pooled_medians_of_noisy_rounds():
    rng = np.random.default_rng(3)
    a = [list(1.0 + 0.1 * rng.random(20)) for _ in range(12)]
    b = [list(1.0 + 0.1 * rng.random(20)) for _ in range(12)]
    v, lo, hi = bc.interval(a, b, lambda x, y: (y - x) * 1e6)
    assert v == pytest.approx((np.median(np.concatenate(b)) - np.median(np.concatenate(a))) * 1e6)
    assert lo < v < hi and hi - lo < 0.1e6


def test_verdicts():
    assert bc.verdict(0.96, 1.05, 0.95) == "HOLDS"
    assert bc.verdict(0.95, 1.05, 0.95) == "HOLDS"
    assert bc.verdict(0.90, 0.949, 0.95) == "FAILS"
    assert bc.verdict(0.93, 0.97, 0.95) == "UNRESOLVED"
    assert bc.verdict(0.2, 0.9, 1.0, at_least=False) == "HOLDS"
    assert bc.verdict(1.1, 1.5, 1.0, at_least=False) == "FAILS"
    assert bc.verdict(0.8, 1.2, 1.0, at_least=False) == "UNRESOLVED"
    assert bc.overall(["HOLDS", "HOLDS"]) == "HOLDS"
    assert bc.overall(["HOLDS", "UNRESOLVED"]) == "UNRESOLVED"
    assert bc.overall(["UNRESOLVED", "FAILS", "HOLDS"]) == "FAILS"


def test_more_round_trips_from_1_mib():
    assert bc.reps_for(1 << 10, 1) == 3000
    assert bc.reps_for(512 << 10, 1) == 820
    assert bc.reps_for(1 << 20, 1) == 1640 and bc.reps_for(64 << 20, 1) == 65
    assert bc.reps_for(64 << 20, 0.001) == 4
