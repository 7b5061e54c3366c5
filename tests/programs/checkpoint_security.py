"""Planted and damaged checkpoints against the real entry points (issue 20), every algorithm, ONE
launch:

    mpiexec -n 2 python tests/programs/checkpoint_security.py OUTDIR [ALGO ...]

For each algorithm, a real run of 6 steps with ``--checkpoint-every 2`` (2 ranks) makes a pristine
run directory; each case below gets its own copy of it, damaged on rank 0, and then every rank calls
``mpidist.<algo>.main(["--resume", ...])`` in this process. A planted file holds the real rank
state plus one entry whose unpickling calls ``os.system("touch MARKER")`` (MARKER outside the run
directory), as in the issue.

Refusals (every rank ends with SystemExit(2); rank 0 printed exactly one line on stderr, with the
case's words; no other output; the marker does not exist; every file of the run directory is
byte-identical afterwards and none was added):

- ``planted``: rank0.pt planted, the manifest untouched -> the checksum refuses it;
- ``planted-rehashed``: rank1.pt planted and the manifest's size and SHA-256 made to fit -> the
  weights-only loader refuses it, naming ``posix.system``;
- ``planted-old-style``: rank0.pt planted in a checkpoint of the format of before (numpy objects
  pickled in full, no checksums in the manifest) -> refused, the line names --trust-checkpoint;
- ``flipped-byte``: one byte of rank1.pt flipped -> the checksum refuses it.

And resumes that run (every rank exits 0, rank 0 says "resuming from step"):

- ``resumed``: the untouched checkpoint (the reference of the next case);
- ``trusted-old-style``: the planted old-style checkpoint resumed with ``--trust-checkpoint``; the
  marker IS created (the plant is live, so the refusals above are not vacuous), and the last
  checkpoint it writes equals the one ``resumed`` wrote, bit for bit (tensors, RNG states, every
  number but the clock: ``t``, AdaComm's averaged time slot): the old format, numpy's RNG tuple included, loads into the same run.

Output: one line per case, ``PASS <algo>:<case> <json>`` or ``FAIL ...`` (json: reasons, the rank-0
line), then ``DONE <n>``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import time

import checks
import in_process
from checks import snapshot  # noqa: E402

ALARM = 120   # a case still running after this long has accepted what it should refuse

RUNS = {"pcasgd": ["--clusters", "2"],
        "adacomm": ["--time-budget", "0", "--method", "pasgd", "--tau", "1"],
        "dada": ["--pretrain-steps", "2"],
        "mdgan": [],
        "dpsgd": []}
STEPS = ["--steps", "6", "--checkpoint-every", "2", "--quiet"]

CASES = {  # name: (words the rank-0 line must hold, ...)
    "planted": ("rank0.pt: checksum mismatch: the checkpoint was altered or torn",),
    "planted-rehashed": ("rank1.pt is refused: loading it could run code", "posix.system"),
    "planted-old-style": ("written before mpidist verified its checkpoints",
                          "resume with --trust-checkpoint"),
    "flipped-byte": ("rank1.pt: checksum mismatch: the checkpoint was altered or torn",),
}


class Planted:
    """Unpickling it runs ``touch path`` (what a malicious checkpoint entry does)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# ------------------------------------------------------------------------------ damaging (rank 0)
def _read(path) -> dict:
    from mpidist import safe_state
    with open(path, "rb") as f:
        return safe_state.loads(f.read())


def _manifest(step_dir) -> dict:
    with open(os.path.join(step_dir, "MANIFEST.json")) as f:
        return json.load(f)


def _write_manifest(step_dir, m) -> None:
    with open(os.path.join(step_dir, "MANIFEST.json"), "w") as f:
        json.dump(m, f)


def _old_numpy(state):
    """The state as the runtime saved it before issue 20: numpy's RNG state as the tuple of
    ``np.random.get_state()`` (its key an ndarray), pickled in full."""
    import numpy as np
    if isinstance(state, dict):
        if state.get("bit_generator") == "MT19937" and "has_gauss" in state:
            return ("MT19937", np.asarray(state["state"]["key"], dtype=np.uint32),
                    state["state"]["pos"], state["has_gauss"], state["gauss"])
        return type(state)((k, _old_numpy(v)) for k, v in state.items())
    if isinstance(state, list):
        return [_old_numpy(v) for v in state]
    return state


def damage(case: str, step_dir: str, world: int, marker: str) -> None:
    import torch
    from mpidist import checkpoint
    if case in ("planted", "planted-rehashed"):
        k = 0 if case == "planted" else 1
        path = os.path.join(step_dir, f"rank{k}.pt")
        state = _read(path)
        state["extra"] = Planted(marker)
        torch.save(state, path)   # a full pickle, as an attacker writes it
        if case == "planted-rehashed":
            m = _manifest(step_dir)
            with open(path, "rb") as f:
                data = f.read()
            m["files"][f"rank{k}.pt"] = {"bytes": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest()}
            _write_manifest(step_dir, m)
    elif case in ("planted-old-style", "trusted-old-style"):
        for k in range(world):
            path = os.path.join(step_dir, f"rank{k}.pt")
            state = _old_numpy(_read(path))
            if k == 0:
                state["extra"] = Planted(marker)
            torch.save(state, path)
        m = _manifest(step_dir)
        _write_manifest(step_dir, {key: m[key] for key in ("algorithm", "world_size", "step",
                                                            "time")})
        assert checkpoint.list_complete(os.path.dirname(step_dir))
    elif case == "flipped-byte":
        path = os.path.join(step_dir, "rank1.pt")
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))
    else:
        raise ValueError(case)


# ------------------------------------------------------------------------------ comparing
def differences(a, b, path="") -> list[str]:
    """Where two decoded checkpoint states differ (tensors bitwise, numpy arrays exactly)."""
    import numpy as np
    import torch
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
              and a.shape == b.shape and torch.equal(a, b))
        return [] if ok else [path]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(np.asarray(a), np.asarray(b)) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b or (a != a and b != b) else [f"{path}: {a!r} != {b!r}"]


def comparable(state: dict, algo: str) -> dict:
    """What a resumed run must reproduce: all but the clock ``t``, the flags ``args`` and, in
    AdaComm, the control slot that carries the averaged training time (the last len(CTRL)
    entries of ``x`` are its control slots; see mpidist.adacomm.exchange.FlatState)."""
    out = {k: v for k, v in state.items() if k not in ("t", "args")}
    if algo == "adacomm":
        import copy
        from mpidist.adacomm.exchange import CTRL, TIME
        out = copy.deepcopy(out)
        w = out["algorithm"]["adacomm"]["wrapper"]
        keep = [i for i in range(len(w["x"])) if i != len(w["x"]) - len(CTRL) + TIME]
        w["x"] = w["x"][keep]
    return out


# ------------------------------------------------------------------------------ running
def call_main(mod, argv) -> tuple[object, str, str, str]:
    """(exit code, stdout, stderr, crash) of ``mod.main(argv)`` in this process."""
    return in_process.call_main(mod, argv, ALARM)


def run_algo(algo: str, base: str, comm) -> list[dict]:
    from mpidist import checkpoint
    rank, world = comm.Get_rank(), comm.Get_size()
    mod = importlib.import_module(f"mpidist.{algo}")
    pristine = os.path.join(base, algo, "pristine")
    code, out, err, crash = call_main(mod, RUNS[algo] + STEPS + ["--trace-dir", pristine])
    ok = comm.allgather(code == 0 and not crash)
    if not all(ok):
        return [{"name": f"{algo}:run", "ok": False,
                 "why": [f"the run to checkpoint failed: {code} {crash} {err[-1500:]}"]}]
    saved = checkpoint.list_complete(os.path.join(pristine, "checkpoints"))
    older, newer = saved[0][0], saved[-1][0]
    results = []
    for case in ("resumed", *CASES, "trusted-old-style"):
        d = os.path.join(base, algo, case)
        run_dir = os.path.join(d, "run")
        marker = os.path.join(d, "MARKER")
        step_dir = os.path.join(run_dir, "checkpoints", os.path.basename(older))
        if rank == 0:
            shutil.copytree(pristine, run_dir)
            if case != "resumed":
                damage(case, step_dir, world, marker)
            if case in ("resumed", "trusted-old-style"):  # the resumed run must write it anew
                shutil.rmtree(os.path.join(run_dir, "checkpoints", os.path.basename(newer)))
        comm.Barrier()
        before = snapshot(run_dir) if rank == 0 else {}
        trust = case == "trusted-old-style"
        reference = os.path.join(base, algo, "resumed", "run")
        argv = RUNS[algo] + STEPS + ["--resume", step_dir] + (["--trust-checkpoint"] if trust else [])
        t = time.monotonic()
        code, out, err, crash = call_main(mod, argv)
        got = comm.gather({"rank": rank, "code": code, "crash": crash, "stdout": out,
                           "stderr": err, "seconds": time.monotonic() - t}, root=0)
        if rank == 0:
            results.append(judge(algo, case, got, run_dir, before, marker, reference, newer,
                                 world))
        comm.Barrier()
    return results


def judge(algo, case, got, run_dir, before, marker, reference, newer, world) -> dict:
    why = []
    r0 = got[0]
    lines = [ln for ln in r0["stderr"].splitlines() if ln.strip()]
    message = lines[0] if lines else ""
    if case in ("resumed", "trusted-old-style"):
        for g in got:
            if g["crash"] or g["code"] != 0:
                why.append(f"rank {g['rank']}: exit {g['code']!r} {g['crash']} "
                           f"{g['stderr'][-800:]!r}")
        if "resuming from step" not in r0["stdout"]:
            why.append(f"no 'resuming from step' on rank 0: {r0['stdout'][-300:]!r}")
        if case == "resumed":
            return {"name": f"{algo}:{case}", "ok": not why, "why": why, "message": message}
        if not os.path.exists(marker):
            why.append("the marker was not created: the planted entry is not live (the refusals "
                       "would prove nothing)")
        if not why:
            step = os.path.basename(newer)
            for k in range(world):
                a = _read(os.path.join(reference, "checkpoints", step, f"rank{k}.pt"))
                b = _read(os.path.join(run_dir, "checkpoints", step, f"rank{k}.pt"))
                diff = differences(comparable(a, algo), comparable(b, algo))
                if diff:
                    why.append(f"rank{k}.pt of {step} differs from the one the same run resumed "
                               f"from the safe checkpoint wrote, at {diff[:5]}")
        return {"name": f"{algo}:{case}", "ok": not why, "why": why, "message": message}
    for g in got:
        if g["crash"]:
            why.append(f"rank {g['rank']}: {g['crash']}")
        elif g["code"] != 2:
            why.append(f"rank {g['rank']}: exit {g['code']!r}, expected 2")
        if g["stdout"].strip():
            why.append(f"rank {g['rank']} printed on stdout: {g['stdout'][-300:]!r}")
        if g["rank"] != 0 and g["stderr"].strip():
            why.append(f"rank {g['rank']} printed on stderr: {g['stderr'][-300:]!r}")
    if len(lines) != 1:
        why.append(f"rank 0 printed {len(lines)} lines on stderr: {r0['stderr'][-600:]!r}")
    if not message.startswith(f"mpidist.{algo}: error: --resume "):
        why.append(f"the line does not start with 'mpidist.{algo}: error: --resume '")
    why += [f"the line lacks {w!r}" for w in CASES[case] if w not in message]
    if os.path.exists(marker):
        why.append("the marker file was created: the planted code ran")
    after = snapshot(run_dir)
    if after != before:
        why.append(f"the run directory changed: {sorted(set(after.items()) ^ set(before.items()))}")
    return {"name": f"{algo}:{case}", "ok": not why, "why": why, "message": message}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    base = os.path.abspath(argv[0])
    algos = argv[1:] or list(RUNS)
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    in_process.catch_aborts("checkpoint_security")
    stdout = sys.stdout
    if comm.Get_rank() == 0:
        os.makedirs(base, exist_ok=True)
    comm.Barrier()
    n = 0
    for algo in algos:
        for res in run_algo(algo, base, comm):
            n += 1
            if comm.Get_rank() == 0:
                checks.line(res["ok"], f"{res['name']} {json.dumps(res)}", stdout)
    if comm.Get_rank() == 0:
        stdout.write(f"DONE {n}\n")
        stdout.flush()
    return checks.status()


if __name__ == "__main__":
    sys.exit(main())
