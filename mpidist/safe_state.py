"""Checkpoint states as files that load without running code.

A checkpoint file holds only what ``torch.load(..., weights_only=True)`` reads back: tensors,
``None``, bools, ints, floats, strings, bytes, and dicts (plain or ordered), lists and tuples of
them. Pickle can rebuild any class by calling any function named in the file (``os.system``
included); the weights-only loader refuses every such name, so loading such a file never runs
code that the file names.

:func:`encode` turns a state into that form before it is saved, :func:`decode` undoes it after
loading. The one translation: a numpy array or numpy scalar (of a numeric or bool dtype) becomes
``{NUMPY: "array"|"scalar", "dtype": "<f8", "shape": [...], "data": uint8 tensor of its bytes}``
and comes back bit for bit, as the same dtype. Anything else (a dataclass, a set, a namedtuple, an
object array, any other class) is refused at save time with the path to it inside the state, so a
checkpoint that saves is a checkpoint that loads safely.
"""
from __future__ import annotations

import collections
import io
import re

import numpy as np
import torch

NUMPY = "__mpidist_numpy__"   # the key that marks an encoded numpy value
_PLAIN = (type(None), bool, int, float, str, bytes)
_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)  # the weights-only loader takes these


class UnsafeState(TypeError):
    """A state holds a value that a safe checkpoint cannot (the message names where)."""


class UnsafeFile(ValueError):
    """A file needs more than the weights-only loader allows (the message names what)."""


def encode(obj, path: str = "state"):
    """``obj`` with every numpy value replaced by its tagged form (see the module); raises
    UnsafeState naming ``path`` for a value that is neither plain, a tensor, numpy nor a
    dict/list/tuple of such."""
    if isinstance(obj, np.generic) or isinstance(obj, np.ndarray):
        return _encode_numpy(obj, path)
    if isinstance(obj, _TORCH):
        return obj
    if type(obj) in _PLAIN:
        return obj
    if type(obj) in (dict, collections.OrderedDict):
        if NUMPY in obj:
            raise UnsafeState(f"{path}: a dict with the key {NUMPY!r} (reserved) cannot be saved")
        out = type(obj)()
        for k, v in obj.items():
            if type(k) not in _PLAIN:
                raise UnsafeState(f"{path}: a dict key of type {type(k).__name__} cannot be saved "
                                  f"safely (keys: strings, numbers)")
            out[k] = encode(v, f"{path}[{k!r}]")
        meta = getattr(obj, "_metadata", None)   # a module's state_dict: its version numbers
        if meta is not None:
            out._metadata = encode(meta, f"{path}._metadata")
        return out
    if type(obj) in (list, tuple):
        return type(obj)(encode(v, f"{path}[{i}]") for i, v in enumerate(obj))
    raise UnsafeState(f"{path}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be saved "
                      f"in a safe checkpoint (only tensors, numbers, strings, numpy arrays and "
                      f"lists/tuples/dicts of them)")


def _encode_numpy(value, path: str) -> dict:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
        raise UnsafeState(f"{path}: a numpy value of dtype {arr.dtype} cannot be saved safely "
                          f"(only numeric and bool dtypes)")
    raw = np.ascontiguousarray(arr).tobytes()
    return {NUMPY: "scalar" if isinstance(value, np.generic) else "array",
            "dtype": arr.dtype.str, "shape": list(arr.shape),
            "data": torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw
            else torch.empty(0, dtype=torch.uint8)}


def decode(obj):
    """The state :func:`encode` was given (numpy values back, bit for bit). A state that was
    saved otherwise (an older checkpoint loaded in full) comes back unchanged."""
    if type(obj) in (dict, collections.OrderedDict):
        if obj.get(NUMPY) in ("array", "scalar") and set(obj) == {NUMPY, "dtype", "shape", "data"}:
            data = obj["data"].detach().cpu().contiguous().numpy().tobytes()
            arr = np.frombuffer(data, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
            return arr[()] if obj[NUMPY] == "scalar" else arr
        out = type(obj)((k, decode(v)) for k, v in obj.items())
        if getattr(obj, "_metadata", None) is not None:
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(decode(v) for v in obj)
    return obj


def dumps(state) -> bytes:
    """The bytes of a safe checkpoint file of ``state`` (``torch.save`` of :func:`encode`)."""
    buf = io.BytesIO()
    torch.save(encode(state), buf)
    return buf.getvalue()


def loads(data: bytes, map_location="cpu", trust: bool = False):
    """The state in the bytes of a checkpoint file. Only the weights-only loader, unless
    ``trust`` (the user's ``--trust-checkpoint``): then a full unpickle, which runs whatever code
    the file names. Raises UnsafeFile (its message: what the file names) when the file asks the
    loader for a function or class it does not allow; other errors (a damaged file) pass
    through."""
    if trust:
        return decode(torch.load(io.BytesIO(data), map_location=map_location, weights_only=False))
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - the loader's refusal is an UnpicklingError
        named = re.search(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|but got (<class [^>]*>)",
                          str(e))
        if named:  # it asks for a function or class: what a planted pickle does
            raise UnsafeFile(f"it names {next(g for g in named.groups() if g)}") from None
        raise      # a damaged file
    return decode(state)
