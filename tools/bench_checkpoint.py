"""What a safe, verified checkpoint costs per rank file (issue 20): ms per MB of the SHA-256 (at
save and at resume), of the safe form (mpidist.safe_state: encoding, the weights-only load) next
to torch.save / torch.load of the same state, and of the atomic write itself.

    python tools/bench_checkpoint.py [--sizes-mb 1,16,128] [--repeat 5]

The state is what an algorithm saves: a model's state_dict (float32 tensors, the given size in
all), an optimizer-like dict of tensors of the same size, a few numbers and the runtime's RNG
states. One process, CPU; each figure is the median of --repeat runs.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mpidist import checkpoint, safe_state  # noqa: E402


def state_of(mb: float) -> dict:
    n = int(mb * 2 ** 20 / 4 / 2)   # half in weights, half in the optimizer's buffers
    w = {f"layer{i}.weight": torch.randn(n // 8) for i in range(8)}
    rng = {"torch": torch.get_rng_state(), "random": random.getstate(),
           "numpy": {"bit_generator": "MT19937",
                     "state": {"key": np.random.get_state()[1].tolist(), "pos": 624},
                     "has_gauss": 0, "gauss": 0.0},
           "shared": np.random.default_rng(0).bit_generator.state}
    return {"algorithm": {"model": w, "opt": {k: torch.randn_like(v) for k, v in w.items()},
                          "step": 5, "pos": np.int64(7)},
            "step": 5, "t": 1.0, "rng": rng}


def median_ms(f, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mb", default="1,16,128")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'MB':>6} {'sha256':>14} {'safe dumps':>14} {'torch.save':>14} {'write+fsync':>14} "
          f"{'safe loads':>14} {'torch.load':>14}   (ms per MB)")
    for mb in [float(s) for s in a.sizes_mb.split(",")]:
        state = state_of(mb)
        data = safe_state.dumps(state)
        size = len(data) / 2 ** 20
        sha = median_ms(lambda: hashlib.sha256(data).hexdigest(), a.repeat)
        dumps = median_ms(lambda: safe_state.dumps(state), a.repeat)

        def plain_save():
            buf = io.BytesIO()
            torch.save(state, buf)
        save = median_ms(plain_save, a.repeat)
        with tempfile.TemporaryDirectory() as d:
            write = median_ms(lambda: checkpoint._atomic_write(os.path.join(d, "r.pt"),
                                                               lambda f: f.write(data)), a.repeat)
        loads = median_ms(lambda: safe_state.loads(data), a.repeat)
        raw = io.BytesIO()
        torch.save(state, raw)
        raw = raw.getvalue()
        load = median_ms(lambda: torch.load(io.BytesIO(raw), weights_only=False), a.repeat)
        print(f"{size:6.1f} " + " ".join(f"{v / size:14.2f}" for v in
                                         (sha, dumps, save, write, loads, load)))
    print("sha256 is paid twice per checkpoint: once at save (each rank, its own file) and once "
          "at --resume (each rank verifies its own file).")


if __name__ == "__main__":
    main()
