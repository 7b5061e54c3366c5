"""Checkpoint files load without running code and are verified before use (issue 20), in one
process: the safe form of states (mpidist.safe_state), the manifest's sizes and SHA-256s, the
refusals of checkpoint.read_rank / load_rank, the RNG states as plain values, the
--trust-checkpoint flag. The planted checkpoint against every algorithm's entry point is
tests/mpi/test_checkpoint_security.py."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpidist import checkpoint, safe_state
from mpidist.checkpoint import CheckpointError


class Planted:
    """Unpickling it runs ``touch path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _bitwise_equal(a, b) -> bool:
    return (type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype
            and np.asarray(a).shape == np.asarray(b).shape
            and np.asarray(a).tobytes() == np.asarray(b).tobytes())


# ------------------------------------------------------------------------------ safe_state
NUMPY_VALUES = {
    "u32": np.arange(624, dtype=np.uint32) * 6700417,
    "f16": np.array([1.5, -0.0, np.inf], dtype=np.float16),
    "f64_nan": np.array([np.nan, 1e-310, -2.5]),
    "bool": np.array([[True, False], [False, True]]),
    "c128": np.array([1 + 2j, -3j]),
    "int8_3d": np.arange(24, dtype=np.int8).reshape(2, 3, 4),
    "empty": np.zeros((2, 0)),
    "zero_d": np.array(7, dtype=np.int16),
    "strided": np.arange(20, dtype=np.float32)[::3],
    "big_endian": np.array([1, 258], dtype=">i4"),
    "scalar_f32": np.float32(0.1),
    "scalar_i64": np.int64(-(2 ** 62)),
    "scalar_bool": np.bool_(True),
}


@pytest.mark.parametrize("name", sorted(NUMPY_VALUES))
def test_numpy_values_come_back_bit_for_bit(name):
    v = NUMPY_VALUES[name]
    back = safe_state.loads(safe_state.dumps({"v": v, "in": [(v,)]}))
    assert _bitwise_equal(back["v"], v)
    assert _bitwise_equal(back["in"][0][0], v) and type(back["in"][0]) is tuple


def test_the_file_is_what_torchs_own_weights_only_loader_reads():
    """torch.load(weights_only=True) itself accepts the bytes (no numpy object is pickled), and the
    plain values come through with their types: OrderedDict and its _metadata, tuples, big ints."""
    bn = torch.nn.BatchNorm1d(3).state_dict()
    state = {"bn": bn, "pcg": np.random.default_rng(3).bit_generator.state,
             "t": (1, 2.5, None, "s", b"\x00\xff", True), "a": np.arange(3),
             "dtype": torch.float16, "big": -(2 ** 127) + 1}
    raw = torch.load(io.BytesIO(safe_state.dumps(state)), weights_only=True)
    assert raw["a"] == {safe_state.NUMPY: "array", "dtype": np.arange(3).dtype.str,
                        "shape": [3], "data": raw["a"]["data"]}
    assert raw["a"]["data"].dtype == torch.uint8
    back = safe_state.decode(raw)
    assert type(back["bn"]) is collections.OrderedDict
    assert back["bn"]._metadata == bn._metadata
    assert all(torch.equal(back["bn"][k], bn[k]) for k in bn)
    assert back["pcg"] == state["pcg"] and back["big"] == state["big"]
    assert back["t"] == state["t"] and back["dtype"] is torch.float16


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize("value, words", [
    ({1, 2}, "state['opt'][1]: a builtins.set cannot be saved"),
    (Point(1), f"state['opt'][1]: a {__name__}.Point cannot be saved"),
    (collections.namedtuple("P", "a")(1), f"state['opt'][1]: a {__name__}.P cannot be saved"),
    (np.array(["a", None], dtype=object), "dtype object cannot be saved safely"),
    (lambda: 0, "a builtins.function cannot be saved"),
])
def test_what_has_no_safe_form_is_refused_at_save_naming_where(value, words):
    with pytest.raises(safe_state.UnsafeState) as e:
        safe_state.dumps({"opt": [0, value]})
    assert words in str(e.value)


def test_the_reserved_key_is_refused():
    with pytest.raises(safe_state.UnsafeState, match="reserved"):
        safe_state.encode({safe_state.NUMPY: "array", "dtype": "<f8", "shape": [], "data": 0})


def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    """The weights-only load refuses the file and names what it asks for; the marker is not
    created. The same bytes under trust=True (the full unpickle) DO create it: the plant is live."""
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    torch.save({"algorithm": {}, "extra": Planted(marker)}, buf)
    with pytest.raises(safe_state.UnsafeFile) as e:
        safe_state.loads(buf.getvalue())
    assert str(e.value) == "it names posix.system"
    assert not marker.exists()
    assert safe_state.loads(buf.getvalue(), trust=True)["extra"] == 0   # os.system's status
    assert marker.exists()


# ------------------------------------------------------------------------------ the manifest
def _state(step=5, **extra):
    return {"algorithm": {"w": torch.arange(6.0), "pos": np.int64(3)}, "step": step, "t": 1.0,
            "rng": dict.fromkeys(checkpoint.RNG_KEYS), **extra}


def _saved(tmp_path, world=2):
    root = str(tmp_path / "checkpoints")
    files = [checkpoint.write_rank(root, 5, k, _state(rank=k)) for k in range(world)]
    checkpoint.complete(root, 5, "toy", world, files=files)
    d = checkpoint.step_dir(root, 5)
    with open(os.path.join(d, checkpoint.MANIFEST)) as f:
        return root, d, json.load(f), files


def test_the_manifest_holds_size_and_sha256_of_every_rank_file(tmp_path):
    root, d, m, files = _saved(tmp_path)
    assert m["format"] == checkpoint.FORMAT and m["world_size"] == 2 and m["step"] == 5
    for k in range(2):
        data = open(os.path.join(d, f"rank{k}.pt"), "rb").read()
        assert m["files"][f"rank{k}.pt"] == {"bytes": len(data),
                                             "sha256": hashlib.sha256(data).hexdigest()}
        assert files[k] == m["files"][f"rank{k}.pt"]
    # complete() without the ranks' entries reads the files back: the same manifest
    checkpoint.complete(root, 5, "toy", 2)
    with open(os.path.join(d, checkpoint.MANIFEST)) as f:
        assert json.load(f)["files"] == m["files"]


def test_a_verified_file_loads_with_its_values(tmp_path):
    _, d, m, _ = _saved(tmp_path)
    s = checkpoint.load_rank(d, 1)
    assert torch.equal(s["algorithm"]["w"], torch.arange(6.0)) and s["rank"] == 1
    assert type(s["algorithm"]["pos"]) is np.int64 and s["algorithm"]["pos"] == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "swap"])
def test_an_altered_or_torn_file_is_refused_by_the_checksum(tmp_path, damage):
    _, d, m, _ = _saved(tmp_path)
    path = os.path.join(d, "rank1.pt")
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        data[len(data) // 3] ^= 0x10
    elif damage == "truncate":
        data = data[:-100]
    elif damage == "append":
        data += b"\x00"
    else:  # rank 0's (valid) file under rank 1's name
        data = open(os.path.join(d, "rank0.pt"), "rb").read()
    open(path, "wb").write(data)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_rank(d, m, 1)
    assert str(e.value) == (f"--resume {d}: rank1.pt: checksum mismatch: the checkpoint was "
                            f"altered or torn")
    assert checkpoint.read_rank(d, m, 0)  # the other rank's file is fine
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load_rank(d, 1, trust=True)   # the trust flag does not waive the checksum


def test_a_manifest_without_the_entry_is_corrupt(tmp_path):
    _, d, m, _ = _saved(tmp_path)
    del m["files"]["rank1.pt"]
    with pytest.raises(CheckpointError, match=r"corrupt MANIFEST.json \(no size and SHA-256 of "
                                              r"rank1.pt\)"):
        checkpoint.read_rank(d, m, 1)


def _old_style(tmp_path, marker=None):
    """A checkpoint as mpidist wrote them before issue 20: a full pickle (numpy's RNG tuple, numpy
    arrays) and a manifest without checksums."""
    root = str(tmp_path / "old")
    d = checkpoint.step_dir(root, 5)
    os.makedirs(d)
    state = {"algorithm": {"a": np.arange(4.0)}, "step": 5, "t": 2.0,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                     "random": random.getstate(), "shared": None}}
    if marker is not None:
        state["extra"] = Planted(marker)
    torch.save(state, os.path.join(d, "rank0.pt"))
    with open(os.path.join(d, checkpoint.MANIFEST), "w") as f:
        json.dump({"algorithm": "toy", "world_size": 1, "step": 5, "time": 0.0}, f)
    return root, d, state


def test_an_old_style_checkpoint_is_refused_naming_the_trust_flag(tmp_path):
    marker = tmp_path / "marker"
    root, d, _ = _old_style(tmp_path, marker)
    found, m = checkpoint.find(root, "toy", 1)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_rank(found, m, 0)
    assert str(e.value) == (
        f"--resume {d}: a checkpoint written before mpidist verified its checkpoints (its "
        f"MANIFEST.json has no checksums); loading it runs any code stored in it. If you trust "
        f"where it comes from, resume with --trust-checkpoint")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        checkpoint.load_rank(found, 0)
    assert not marker.exists()


def test_the_trust_flag_loads_an_old_style_checkpoint(tmp_path):
    root, d, state = _old_style(tmp_path)
    found, m = checkpoint.find(root, "toy", 1)
    s = checkpoint.load_rank(found, 0, trust=True, data=checkpoint.read_rank(found, m, 0, True))
    assert np.array_equal(s["algorithm"]["a"], np.arange(4.0))
    assert s["rng"]["numpy"][0] == "MT19937"
    assert np.array_equal(s["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert s["rng"]["random"] == state["rng"]["random"]


def test_a_safe_checkpoint_that_names_code_is_refused_in_one_line(tmp_path):
    """A planted rank file whose manifest entry was made to fit passes the checksum; the
    weights-only loader refuses it, naming the file and what it asks for."""
    marker = tmp_path / "marker"
    root, d, m, _ = _saved(tmp_path, world=1)
    path = os.path.join(d, "rank0.pt")
    s = torch.load(path, weights_only=True)   # the file's own (safe) form
    s["extra"] = Planted(marker)
    torch.save(s, path)
    data = open(path, "rb").read()
    m["files"]["rank0.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_rank(d, 0, manifest=m)
    assert str(e.value) == (f"--resume {d}: rank0.pt is refused: loading it could run code (it "
                            f"names posix.system); an mpidist checkpoint holds only tensors, "
                            f"numbers and strings")
    assert not marker.exists()


# ------------------------------------------------------------------------------ RNG states
def _draws(run):
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            np.random.randn(3).tolist(), run.shared_rng.random(3).tolist())


def test_rng_states_are_plain_values_that_restore_every_generator():
    """Run.rng_state holds no numpy object (numpy's key is a list of 624 ints) and, through a
    safe checkpoint file, puts torch, numpy (with a cached Gaussian), random and the shared
    generator back exactly; a numpy state of before (the get_state() tuple) too."""
    from mpidist.runtime import Run
    run = SimpleNamespace(shared_rng=np.random.default_rng(11))
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()   # leaves a cached Gaussian in numpy's state
    s = Run.rng_state(run)
    assert isinstance(s["numpy"]["state"]["key"], list) and len(s["numpy"]["state"]["key"]) == 624
    assert s["numpy"]["has_gauss"] == 1
    old_numpy = np.random.get_state()
    first = _draws(run)
    Run.set_rng_state(run, safe_state.loads(safe_state.dumps(s)))
    assert _draws(run) == first
    Run.set_rng_state(run, {**s, "numpy": old_numpy})
    assert _draws(run)[1] == first[1]


# ------------------------------------------------------------------------------ the flag
def test_the_trust_flag_and_the_user_code_note_are_in_every_help():
    from mpidist import cli
    p = cli.parser("toy", "a toy")
    assert p.parse_args(["--resume", "d", "--trust-checkpoint"]).trust_checkpoint is True
    assert p.parse_args([]).trust_checkpoint is False
    text = p.format_help()           # --help names the flag and points to the note
    assert "--trust-checkpoint" in text and "MODULE:FUNCTION" in text and "--help-all" in text
    text = p.format_help(full=True)  # --help-all explains both
    assert "full unpickle" in text and "MPIDIST_SETUP" in text and "MODULE:FUNCTION" in text
    assert "trust_checkpoint" in checkpoint.RUN_FLAGS   # a resume may add it
