"""Checkpoints: every rank's state at one step, written atomically; the newest complete one wins;
verified and loaded without running code.

Layout: ``<root>/step-<step>/rank<k>.pt`` (one per rank, the algorithm's state in the safe form of
:mod:`mpidist.safe_state`: tensors, numbers, strings and containers only) and
``<root>/step-<step>/MANIFEST.json`` (algorithm, world size, step, time, and the size and SHA-256
of every rank file), which rank 0 writes only after every rank has saved its file. Every file is
written to a temporary name in the same directory and renamed, so a checkpoint is either complete
(it has a manifest) or ignored; a killed job never leaves a half-written file under a final name.

Resuming (:func:`read_rank`, :func:`load_rank`): each rank reads its file, checks its size and
SHA-256 against the manifest (a mismatch: the file was altered or torn; refused), and loads it with
``torch.load(weights_only=True)``, which never calls a function the file names. A checkpoint of
before the checksums (no ``files`` in its manifest) is refused unless the user passes
``--trust-checkpoint``, which allows the full unpickle of what they trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

from . import safe_state
from .errors import UsageError

MANIFEST = "MANIFEST.json"
FORMAT = 2   # manifest "format": 2 = rank files in the safe form, with sizes and SHA-256s
RANK_KEYS = {"algorithm", "step", "t", "rng"}   # what the runtime saves in every rank<k>.pt
RNG_KEYS = {"torch", "numpy", "random", "shared"}


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from (missing, corrupt, another algorithm or world)."""


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step-{step:09d}")


def _atomic_write(path: str, write) -> None:
    """Write ``path`` whole or not at all: a temporary file in the same directory, fsync, rename.
    A failure (a full disk, an I/O error) removes the temporary file and raises."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def discard(root: str, step: int, rank: int) -> None:
    """Remove this rank's file of an incomplete checkpoint ``step`` (and the step's directory once
    it is empty): a checkpoint that could not be written on every rank leaves nothing behind."""
    d = step_dir(root, step)
    try:
        os.remove(os.path.join(d, f"rank{rank}.pt"))
    except OSError:
        pass
    try:
        os.rmdir(d)
    except OSError:
        pass


def _entry(data: bytes) -> dict:
    """What the manifest records of one rank file."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_rank(root: str, step: int, rank: int, state: dict) -> dict:
    """Write this rank's ``state`` for ``step`` (atomically, in the safe form; a value that has
    none raises safe_state.UnsafeState naming it); returns the file's manifest entry (its size
    and SHA-256)."""
    data = safe_state.dumps(state)
    d = step_dir(root, step)
    os.makedirs(d, exist_ok=True)
    _atomic_write(os.path.join(d, f"rank{rank}.pt"), lambda f: f.write(data))
    return _entry(data)


def save_rank(root: str, step: int, rank: int, state: dict) -> str:
    """Write this rank's ``state`` for ``step`` (:func:`write_rank`); returns the step directory."""
    write_rank(root, step, rank, state)
    return step_dir(root, step)


def complete(root: str, step: int, algorithm: str, world_size: int, keep: int = 2,
             files: list[dict] | None = None) -> None:
    """Rank 0, after every rank saved: mark the checkpoint complete (the manifest, with the size
    and SHA-256 of every rank file: ``files[k]`` from rank k's :func:`write_rank`, or read back
    from the files here when None), drop all but the newest ``keep`` complete ones."""
    d = step_dir(root, step)
    missing = [k for k in range(world_size) if not os.path.exists(os.path.join(d, f"rank{k}.pt"))]
    if missing:
        raise CheckpointError(f"checkpoint {d}: ranks {missing} did not save")
    if files is None:
        files = []
        for k in range(world_size):
            with open(os.path.join(d, f"rank{k}.pt"), "rb") as f:
                files.append(_entry(f.read()))
    manifest = {"algorithm": algorithm, "world_size": world_size, "step": step, "time": time.time(),
                "format": FORMAT, "files": {f"rank{k}.pt": e for k, e in enumerate(files)}}
    _atomic_write(os.path.join(d, MANIFEST), lambda f: f.write(json.dumps(manifest).encode()))
    for old in list_complete(root)[:-keep]:
        shutil.rmtree(old[0], ignore_errors=True)


def list_complete(root: str) -> list[tuple[str, dict]]:
    """(directory, manifest) of every complete checkpoint under ``root``, oldest first."""
    out = []
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        m = os.path.join(root, name, MANIFEST)
        if name.startswith("step-") and os.path.exists(m):
            manifest = _read_manifest(m)
            if manifest is not None:  # an unreadable manifest: that checkpoint does not count
                out.append((os.path.join(root, name), manifest))
    return sorted(out, key=lambda x: x[1].get("step", -1))


def _read_manifest(path: str) -> dict | None:
    """The manifest at ``path``, or None when it cannot be read or is not a JSON object."""
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _unreadable(root: str) -> list[str]:
    """The step directories under ``root`` whose manifest exists but cannot be read."""
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, n) for n in sorted(os.listdir(root))
            if n.startswith("step-") and os.path.exists(os.path.join(root, n, MANIFEST))
            and _read_manifest(os.path.join(root, n, MANIFEST)) is None]


def find(path: str, algorithm: str, world_size: int) -> tuple[str, dict]:
    """The checkpoint to resume from: ``path`` itself when it is a complete checkpoint, else the
    newest complete one under ``path`` or ``path/checkpoints``. Checks algorithm and world size."""
    if not os.path.exists(path):
        raise CheckpointError(f"--resume {path}: no such directory")
    if os.path.exists(os.path.join(path, MANIFEST)):
        manifest = _read_manifest(os.path.join(path, MANIFEST))
        if manifest is None:
            raise CheckpointError(f"--resume {path}: corrupt {MANIFEST}")
        found = [(path, manifest)]
    else:
        found = list_complete(path) or list_complete(os.path.join(path, "checkpoints"))
    if not found:
        bad = _unreadable(path) + _unreadable(os.path.join(path, "checkpoints"))
        raise CheckpointError(f"--resume {path}: no complete checkpoint there" + (
            f" ({len(bad)} with an unreadable {MANIFEST}, e.g. {bad[-1]})" if bad else ""))
    d, m = found[-1]
    if m.get("algorithm") != algorithm:
        raise CheckpointError(f"--resume {d}: a checkpoint of {m.get('algorithm')}, not {algorithm}")
    if m.get("world_size") != world_size:
        raise CheckpointError(f"--resume {d}: saved by {m.get('world_size')} ranks, this run has "
                              f"{world_size}")
    return d, m


def restore(comm, load) -> None:
    """Call ``load()``, which puts this rank's resumed state into the run's objects, on every rank
    (collective). When it fails on any rank (a checkpoint of other settings: another --model,
    --task, --image-size, ...), every rank raises CheckpointError with the first failure, so the
    runtime ends the job with one line on rank 0 instead of a traceback."""
    err = ""
    try:
        load()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        text = " ".join(ln.strip() for ln in str(e).splitlines()[:2] if ln.strip())
        text = text if len(text) <= 160 else text[:157] + "..."
        err = (f"--resume: the checkpoint does not fit this run's settings on rank {comm.rank} "
               f"({type(e).__name__}: {text}); resume with the flags of the interrupted run")
    errors = [e for e in comm.allgather_object(err) if e]
    if errors:
        raise CheckpointError(errors[0])


OLD_STYLE = ("written before mpidist verified its checkpoints (its {m} has no checksums); "
             "loading it runs any code stored in it. If you trust where it comes from, resume "
             "with --trust-checkpoint")


def read_rank(d: str, manifest: dict, rank: int, trust: bool = False) -> bytes:
    """The bytes of this rank's file in checkpoint ``d``, verified against ``manifest`` (its size
    and SHA-256). A checkpoint without checksums (older than them) only with ``trust``."""
    name = f"rank{rank}.pt"
    files = manifest.get("files")
    if files is None and not trust:
        raise CheckpointError(f"--resume {d}: a checkpoint " + OLD_STYLE.format(m=MANIFEST))
    entry = files.get(name) if isinstance(files, dict) else None
    if files is not None and not (isinstance(entry, dict) and {"bytes", "sha256"} <= set(entry)):
        raise CheckpointError(f"--resume {d}: corrupt {MANIFEST} (no size and SHA-256 of {name})")
    try:
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"--resume {d}: {name} is missing") from None
    except OSError as e:
        raise CheckpointError(f"--resume {d}: {name} cannot be read ({e.strerror})") from None
    if entry is not None and _entry(data) != {"bytes": entry["bytes"], "sha256": entry["sha256"]}:
        raise CheckpointError(f"--resume {d}: {name}: checksum mismatch: the checkpoint was "
                              f"altered or torn")
    return data


def load_rank(d: str, rank: int, map_location="cpu", trust: bool = False,
              data: bytes | None = None, manifest: dict | None = None) -> dict:
    """This rank's state from checkpoint directory ``d``: ``data`` (from :func:`read_rank`), else
    read and verified here against ``manifest`` (else the one in ``d``). Loaded with the
    weights-only loader; ``trust`` (--trust-checkpoint) allows the full unpickle."""
    name = f"rank{rank}.pt"
    if data is None:
        if manifest is None:
            manifest = _read_manifest(os.path.join(d, MANIFEST))
            if manifest is None:
                raise CheckpointError(f"--resume {d}: corrupt {MANIFEST}")
        data = read_rank(d, manifest, rank, trust)
    try:
        state = safe_state.loads(data, map_location, trust)
    except safe_state.UnsafeFile as e:
        raise CheckpointError(f"--resume {d}: {name} is refused: loading it could run code ({e}); "
                              f"an mpidist checkpoint holds only tensors, numbers and strings") from None
    except Exception as e:  # pickle/zip errors of a damaged file
        raise CheckpointError(f"--resume {d}: {name} is unreadable or corrupt "
                              f"({type(e).__name__})") from None
    missing = sorted(RANK_KEYS - set(state)) if isinstance(state, dict) else sorted(RANK_KEYS)
    if not missing and isinstance(state["rng"], dict):
        missing = sorted(f"rng.{k}" for k in RNG_KEYS - set(state["rng"]))
    if missing:
        raise CheckpointError(f"--resume {d}: {name} is not a checkpoint of the mpidist "
                              f"runtime (no {', '.join(missing)})")
    return state


# flags a resumed run may set as it likes: where the run writes, how it talks and reports, when
# it checkpoints and stops; none of them changes what is computed
RUN_FLAGS = frozenset({"trace_dir", "resume", "device", "link_latency", "link_bandwidth",
                       "comm_timeout", "flush_seconds", "no_trace", "progress_seconds", "quiet",
                       "checkpoint_every", "checkpoint_seconds", "term_grace", "fail_at", "help",
                       "trust_checkpoint"})


def resume_mismatch(saved: dict, now: dict, may_change) -> str | None:
    """The flags a resumed run changes although it must not (all but RUN_FLAGS and
    ``may_change``), as one line, or None: a resume continues the interrupted run, it does not
    train another configuration from its state."""
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {now[k]!r}" for k in sorted(saved)
               if k in now and k not in RUN_FLAGS and k not in may_change and saved[k] != now[k]]
    if not changed:
        return None
    return ("a resumed run must continue the interrupted one, but this one changes "
            + ", ".join(changed) + " (resume with the flags of the interrupted run)")
