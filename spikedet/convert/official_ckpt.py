"""Read an authors' checkpoint (ultralytics / yolov5 style pickled modules) without running it.

Both official repositories save whole pickled modules (``torch.save({"model": <module>, "ema":
<module>, ...})``). ``torch.load(weights_only=True)`` refuses them, and the usual
``torch.load`` would import the authors' code and run whatever the pickle names. Here the zip
archive is opened directly and its ``data.pkl`` is unpickled with a restricted unpickler:

- storages are read from the archive's ``data/<key>`` records (dtype from the storage class name);
- only these globals are real: the tensor/parameter rebuild functions (replaced by our own,
  bounds-checked versions), ``collections.OrderedDict``, ``builtins.set/frozenset``,
  ``torch.Size`` and torch dtypes;
- every other global (a module class, ``os.system``, ``builtins.eval`` ...) becomes an inert
  ``Opaque`` class: instantiating or calling it only records the arguments, and ``BUILD``
  stores the state in its ``__dict__``. So an nn.Module's ``_parameters``, ``_buffers`` and
  ``_modules`` can be walked, and nothing from the file ever executes.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spikedet.errors import SpikedetError

# torch storage class names -> dtype (torch/storage.py, _pickle_storage_type)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = {
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "double", "float", "half", "long", "int", "short",
}  # fmt: skip


class Opaque:
    """Inert stand-in for any class or function a pickle names; records what was passed."""

    official_path = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_opaque_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update({str(k): v for k, v in part.items()})
        elif isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self.__dict__["_opaque_state"] = state

    def __repr__(self) -> str:
        return f"<opaque {self.official_path}>"


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _Storage:
    """A storage read from the archive: a flat tensor of its dtype."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2, bounds-checked (a forged view could read past a storage)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage record")
    dims = tuple(size) if isinstance(size, tuple | list | torch.Size) else None
    steps = tuple(stride) if isinstance(stride, tuple | list | torch.Size) else None
    ok = isinstance(offset, int) and dims is not None and steps is not None
    ok = ok and len(dims) == len(steps) and all(isinstance(v, int) and v >= 0 for v in dims + steps)
    if not ok:
        raise pickle.UnpicklingError("malformed tensor record")
    numel = storage.flat.numel()
    if all(dims):
        last = offset + sum((d - 1) * s for d, s in zip(dims, steps))
        if offset < 0 or last >= numel:
            raise pickle.UnpicklingError("tensor view exceeds its storage (truncated file?)")
    return torch.as_strided(storage.flat, dims, steps, offset)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args) if func in _SAFE_FUNCTIONS else Opaque(func, args)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor: only ever builds an Opaque (or a plain OrderedDict)."""
    if isinstance(cls, type) and issubclass(cls, Opaque):
        return cls.__new__(cls)
    if cls is collections.OrderedDict:
        return collections.OrderedDict()
    return Opaque(cls, base, state)


_SAFE_FUNCTIONS = {_rebuild_tensor, _rebuild_parameter}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("copyreg", "_reconstructor"): _reconstructor,
}


class _RestrictedUnpickler(pickle._Unpickler):  # the Python one: its opcodes can be replaced
    """``BUILD`` (set an object's state) is allowed on ``Opaque`` only: on a real object it would
    call that type's ``__setstate__`` (a tensor's re-points its storage), so it is refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, Opaque):
            raise pickle.UnpicklingError(f"state set on a {type(inst).__name__}: refused")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, _Storage] = {}
        self._opaque: dict[str, type] = {}
        self.globals_seen: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (``__builtin__.set``): map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        path = f"{module}.{name}"
        self.globals_seen.append(path)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if path not in self._opaque:
            self._opaque[path] = type(str(name), (Opaque,), {"official_path": path})
        return self._opaque[path]

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent record {str(pid)[:60]}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError("malformed storage record")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, stype.dtype, numel)
        return self._storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        name = f"{self._prefix}/data/{key}"
        try:
            raw = self._archive.read(name)
        except KeyError as err:
            raise pickle.UnpicklingError(f"storage record {key} missing from the archive") from err
        itemsize = torch.empty((), dtype=dtype).element_size()
        # Typed storages count elements (UntypedStorage: bytes, itemsize 1).
        if len(raw) != numel * itemsize:
            raise pickle.UnpicklingError(
                f"storage {key}: {len(raw)} bytes for {numel} x {itemsize} (truncated file?)"
            )
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return _Storage(flat)


@dataclass
class OfficialCheckpoint:
    """What was read: the top-level dict (Opaque modules inside) and the globals it named."""

    path: str
    top: dict[str, Any]
    globals_seen: list[str]


def read_official(path: str | os.PathLike) -> OfficialCheckpoint:
    """Unpickle ``path`` with the restricted unpickler; any failure -> SpikedetError naming it."""
    where = str(path)
    if not Path(path).is_file():
        raise SpikedetError("checkpoint file not found", where)
    try:
        with zipfile.ZipFile(path) as archive:
            pkls = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise SpikedetError("not a torch zip checkpoint (no single data.pkl)", where)
            prefix = pkls[0].split("/")[0]
            byteorder = f"{prefix}/byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
                raise SpikedetError("big-endian checkpoints are not supported", where)
            unpickler = _RestrictedUnpickler(archive.read(pkls[0]), archive, prefix)
            top = unpickler.load()
    except SpikedetError:
        raise
    except zipfile.BadZipFile as err:
        raise SpikedetError(f"not a readable torch zip checkpoint ({err})", where) from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:160] or type(err).__name__
        raise SpikedetError(f"unreadable checkpoint pickle: {detail}", where) from err
    except Exception as err:  # noqa: BLE001 - corrupt archives fail in many ways (zlib, struct)
        raise SpikedetError(f"unreadable checkpoint ({type(err).__name__}: {err})", where) from err
    if not isinstance(top, dict):
        raise SpikedetError(f"checkpoint is a {type(top).__name__}, not a dict", where)
    return OfficialCheckpoint(where, top, unpickler.globals_seen)


def is_module(obj: Any) -> bool:
    """An unpickled nn.Module: an Opaque with the three module dicts."""
    return isinstance(obj, Opaque) and all(
        isinstance(obj.__dict__.get(k), dict) for k in ("_parameters", "_buffers", "_modules")
    )


def children(obj: Opaque) -> dict[str, Opaque]:
    return {str(k): v for k, v in obj.__dict__["_modules"].items() if is_module(v)}


def module_tensors(obj: Opaque, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of an unpickled module: parameters and persistent buffers, recursively.

    A parameter or buffer that is not a tensor (a forged record) raises SpikedetError."""
    out: dict[str, torch.Tensor] = {}
    skip = obj.__dict__.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in obj.__dict__[kind].items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise SpikedetError(f"{kind[1:-1]} is not a tensor", f"{prefix}{name}")
            out[f"{prefix}{name}"] = value
    for name, child in children(obj).items():
        out.update(module_tensors(child, f"{prefix}{name}."))
    return out


def module_at(root: Opaque, dotted: str) -> Opaque | None:
    """The submodule at ``a.b.c`` (None when absent)."""
    node: Opaque | None = root
    for part in dotted.split(".") if dotted else []:
        node = children(node).get(part) if node is not None else None
    return node


def class_of(obj: Any) -> str:
    return getattr(obj, "official_path", type(obj).__name__)


def attr(obj: Opaque | None, name: str, default: Any = None) -> Any:
    return default if obj is None else obj.__dict__.get(name, default)
