"""tools/bench_scaling.py's link-model projection in closed form (ResNet-50-sized model, 10 and
100 Gbit/s), and tools/bench_trace_cost.py's pure parts: the paired on/off ratio statistics and
the seconds per step read from a rank's metric rows."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mpidist.link import LinkModel

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
sys.path.insert(0, TOOLS)
import bench_scaling as bs  # noqa: E402
import bench_trace_cost as btc  # noqa: E402

M = 25.6e6 * 4                      # bytes of a ResNet-50-sized fp32 model
L10, B10 = 20e-6, 10e9 / 8          # 10 Gbit/s = 1.25e9 bytes/s
L100, B100 = 2e-6, 100e9 / 8


def test_model_size_and_links():
    assert bs.M_RESNET50 == 102_400_000 and bs.IMAGENET_SAMPLE == 602_112
    assert bs.GBIT * 10 == B10 and bs.GBIT * 100 == B100


@pytest.mark.parametrize("p", [64, 256, 1024])
def test_bytes_per_step_closed_form(p):
    assert bs.bytes_per_step("dpsgd", p) == 2 * M
    assert bs.bytes_per_step("pcasgd", p) == M * (3 + 2 * (p - 4))
    assert bs.bytes_per_step("adacomm", p) == pytest.approx(2 * (p - 1) / p * M / 8)
    assert bs.bytes_per_step("dada", p) == pytest.approx(2 * (p - 1) / p * M / 2)
    assert bs.bytes_per_step("dada-all-to-all", p) == (p - 1) * M / 2
    assert bs.bytes_per_step("mdgan", p) == 2 * (p - 1) * 32 * 602_112
    # the allreduce stays below 2 M whatever p; the all-to-all grows linearly
    assert bs.bytes_per_step("dada", p) < M < bs.bytes_per_step("dada-all-to-all", p)


def test_seconds_per_step_closed_form_at_64_ranks():
    p, l10 = 64, LinkModel(L10, B10)
    # D-PSGD: two model messages on the rank's link, then one latency
    assert bs.seconds_per_step_model("dpsgd", p, l10) == pytest.approx(2 * M / B10 + L10)
    assert bs.seconds_per_step_model("dpsgd", p, l10) == pytest.approx(0.16386)
    # PC-ASGD: |R| = 3, |U| = 60: 123 model messages
    assert bs.seconds_per_step_model("pcasgd", p, l10) == pytest.approx(123 * M / B10 + L10)
    # ring allreduce 2 (p-1) L + 2 (p-1)/p M / B, every 8 (AdaComm) or 2 (DADA) steps
    ring = 2 * 63 * L10 + 2 * 63 / 64 * M / B10
    assert bs.seconds_per_step_model("adacomm", p, l10) == pytest.approx(ring / 8)
    assert bs.seconds_per_step_model("dada", p, l10) == pytest.approx(ring / 2)
    assert bs.seconds_per_step_model("dada", p, l10) == pytest.approx(0.081900, rel=1e-4)
    # the all-to-all exchange: 63 messages every 2 steps
    assert bs.seconds_per_step_model("dada-all-to-all", p, l10) == \
        pytest.approx((63 * M / B10 + L10) / 2)
    # MD-GAN: the server sends 2 b samples to each of 63 workers
    l100 = LinkModel(L100, B100)
    assert bs.seconds_per_step_model("mdgan", p, l100) == \
        pytest.approx(2 * 63 * 32 * 602_112 / B100 + L100)


def test_projection_grows_as_the_formulas_say():
    l100 = LinkModel(L100, B100)
    t = {p: bs.seconds_per_step_model("dpsgd", p, l100) for p in (64, 1024)}
    assert t[64] == t[1024]                           # a ring: independent of p
    a2a = {p: bs.bytes_per_step("dada-all-to-all", p) for p in (64, 1024)}
    assert a2a[1024] / a2a[64] == pytest.approx(1023 / 63)
    with pytest.raises(ValueError):
        bs.bytes_per_step("fedavg", 4)


def test_projection_only_prints_every_algorithm_and_rank_count():
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "bench_scaling.py"),
                        "--projection-only"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for alg in bs.PROJECTED:
        for n in (64, 256, 1024):
            assert any(line.split()[:2] == [alg, str(n)] for line in p.stdout.splitlines()), alg
    dpsgd = next(line for line in p.stdout.splitlines() if line.split()[:2] == ["dpsgd", "64"])
    assert dpsgd.split()[2:] == ["204.8", "0.1639", "0.0164"]


def test_pcasgd_clusters_and_neighbours():
    assert bs.pcasgd_neighbours(64) == (3, 60) and bs.pcasgd_neighbours(2) == (1, 0)
    # clusters of 4 at every N: launch() adds them where the paper has no network of N agents,
    # extra_args where it has one (8 agents: the paper's 3,5)
    assert btc.needed_args("pcasgd", 10) == ["--clusters", "4,4,2"]
    assert btc.needed_args("pcasgd", 2) == ["--clusters", "2"]
    assert btc.needed_args("pcasgd", 8) == [] and btc.needed_args("dpsgd", 3) == []
    assert bs.extra_args("pcasgd", 8, 30)[2:] == ["--clusters", "4,4"]
    assert bs.extra_args("pcasgd", 16, 30)[2:] == []


def test_ratio_stats_pairs_neighbouring_runs():
    st = btc.ratio_stats([1.0, 2.2, 3.0, 4.4], [1.0, 2.0, 3.0, 4.0])
    assert st["ratios"] == pytest.approx([1.0, 1.1, 1.0, 1.1])
    assert st["median"] == pytest.approx(1.05) and st["min"] == 1.0 and st["max"] == 1.1
    assert st["iqr"] == pytest.approx(0.1)  # sorted 1, 1, 1.1, 1.1: quartiles 1.0 and 1.1
    assert st["of_medians"] == pytest.approx(2.6 / 2.5)


class _Rank:
    def __init__(self, steps, times):
        self.metrics = {"step": np.array(steps), "t": np.array(times)}


def test_seconds_per_step_leaves_out_the_first_and_last_steps():
    # steps 0..5, 0.1 s apart, two rows each; step 0 starts late (start-up), step 5 has a slow
    # evaluation after it: from step 1 (t = 1.0) to step 4 (t = 1.3), 3 steps
    steps = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    times = [0.2, 0.25, 1.0, 1.01, 1.1, 1.11, 1.2, 1.21, 1.3, 1.31, 1.4, 9.0]
    assert btc.seconds_per_step(_Rank(steps, times)) == pytest.approx(0.1)
    with pytest.raises(SystemExit):
        btc.seconds_per_step(_Rank([0, 1, 2], [0.0, 0.1, 0.2]))


def test_block_stats_of_an_in_process_run():
    """--in-process: blocks of 4 steps in the order on, off, off, on, ...; traced steps take 1.1 s,
    untraced 1.0 s, so every pair of blocks and the whole run give on/off = 1.1 exactly. Blocks 0
    and 1 (warm-up), the last block, a block cut short and a block whose steps disagree on the
    state are left out."""
    assert [btc.block_on(k) for k in range(8)] == [True, False, False, True] * 2
    block, times = 4, []
    for step in range(1, 48):                       # from step 1 (like DADA): block 0 is short
        on = btc.block_on(step // block)
        times.append((step, on, 1.1 if on else 1.0))
    times[-5] = (times[-5][0], not times[-5][1], 5.0)   # step 43 (block 10) disagrees: left out
    st = btc.block_stats(times, block, boot=200)
    # blocks 2..10 qualify but the last (11) and 10 (mixed): pairs (2,3) (4,5) (6,7) (8,9)
    assert st["pairs"] == 4
    assert st["ratio"] == pytest.approx(1.1) and st["median"] == pytest.approx(1.1)
    assert st["iqr"] == pytest.approx(0.0) and st["lo"] == pytest.approx(1.1)
    assert st["hi"] == pytest.approx(1.1)
    assert st["on"] == pytest.approx(1.1) and st["off"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        btc.block_stats(times[:20], block)           # fewer than 3 pairs
