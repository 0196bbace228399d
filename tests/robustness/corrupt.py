"""Generators of corrupted inputs for the bad-input suite (``test_bad_inputs.py``).

Every ``Case`` damages one copy of a valid file in place: ``damage(path)`` rewrites (or deletes)
``path`` and returns the text the one-line error must contain (``None``: the file's own name).
The case lists are built at import time, so pytest ids are stable and the count is known before
any fixture runs. Nothing here imports torch; the weight-file cases do so inside ``damage``.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikedet.train.data.gen1 import BBOX_DTYPE, RAW_DTYPE

Damage = Callable[[Path], "str | None"]
GARBAGE = bytes(np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8))


@dataclass(frozen=True)
class Case:
    """One corruption: ``id`` (the pytest id) and the in-place ``damage`` of a valid file."""

    id: str
    damage: Damage


def _write(data: bytes) -> Damage:
    def damage(path: Path) -> None:
        path.write_bytes(data)

    return damage


def _truncate(keep: Callable[[int], int]) -> Damage:
    """Keep the first ``keep(size)`` bytes of the file."""

    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])

    return damage


def _delete(path: Path) -> None:
    path.unlink()


# --------------------------------------------------------------------------------------------
# Gen1 .dat: '%' header lines, 2 bytes (type, size), then 8-byte (t, w) records.


def _split_dat(data: bytes) -> tuple[bytes, bytes, np.ndarray]:
    pos = 0
    while data[pos : pos + 1] == b"%":
        pos = data.index(b"\n", pos) + 1
    return data[:pos], data[pos : pos + 2], np.frombuffer(data[pos + 2 :], RAW_DTYPE).copy()


def _events(edit: Callable[[np.ndarray], None], header: Callable[[bytes], bytes] | None = None):
    """Decode the records, let ``edit`` change them (and ``header`` the header), write back."""

    def damage(path: Path) -> None:
        head, type_size, raw = _split_dat(path.read_bytes())
        edit(raw)
        head = header(head) if header else head
        path.write_bytes(head + type_size + raw.tobytes())

    return damage


def _type_size(event_type: int, event_size: int) -> Damage:
    def damage(path: Path) -> None:
        head, _, raw = _split_dat(path.read_bytes())
        path.write_bytes(head + bytes([event_type, event_size]) + raw.tobytes())

    return damage


def _set_bits(field: str, value: int, lo: int, hi: int):
    """Set a 14-bit coordinate (x: bits 0-13, y: 14-27) or OR in bits of w on events [lo, hi)."""

    def edit(raw: np.ndarray) -> None:
        part = raw["w"][int(len(raw) * lo) // 4 : int(len(raw) * hi) // 4]
        if field == "x":
            part[:] = (part & ~np.uint32(0x3FFF)) | np.uint32(value)
        elif field == "y":
            part[:] = (part & ~np.uint32(0x3FFF << 14)) | np.uint32(value << 14)
        else:
            part[:] |= np.uint32(value)
        raw["w"][int(len(raw) * lo) // 4 : int(len(raw) * hi) // 4] = part

    return edit


def _backwards(frac: float) -> Callable[[np.ndarray], None]:
    """Make event k's predecessor later than event k, so time steps back at k."""

    def edit(raw: np.ndarray) -> None:
        k = max(1, min(len(raw) - 1, int(len(raw) * frac)))
        raw["t"][k - 1] = raw["t"][k] + 10

    return edit


def _header(old_line: bytes | None, new_lines: bytes) -> Callable[[bytes], bytes]:
    return lambda head: head + new_lines if old_line is None else head.replace(old_line, new_lines)


def _dat_only(transform: Callable[[bytes], bytes]) -> Damage:
    def damage(path: Path) -> None:
        path.write_bytes(transform(path.read_bytes()))

    return damage


def _no_header(data: bytes) -> bytes:
    head, type_size, raw = _split_dat(data)
    return type_size + raw.tobytes()


def _header_only(data: bytes) -> bytes:
    return _split_dat(data)[0]


def _header_no_newline(data: bytes) -> bytes:
    return _split_dat(data)[0].rstrip(b"\n")


def _rename_dat(path: Path) -> str:
    path.unlink()  # the _bbox.npy is left without its partner
    return path.name.replace("_td.dat", "_bbox.npy")


DAT_CASES: list[Case] = [
    *(Case(f"truncated-{n}", _truncate(lambda s, n=n: s - n)) for n in (1, 3, 4, 5, 7)),
    Case("truncated-mid-record", _truncate(lambda s: s // 2 + 3 - (s // 2) % 8)),
    Case("header-only", _dat_only(_header_only)),
    Case("header-unterminated", _dat_only(_header_no_newline)),
    Case("header-plus-type-byte", _dat_only(lambda d: _split_dat(d)[0] + b"\x00")),
    Case("no-header", _dat_only(_no_header)),
    *(Case(f"event-type-{t}", _type_size(t, 8)) for t in (1, 2, 8, 13, 255)),
    *(Case(f"event-size-{s}", _type_size(0, s)) for s in (0, 4, 7, 16, 255)),
    *(Case(f"backwards-at-{f}", _events(_backwards(f))) for f in (0.0, 0.3, 0.6, 0.95)),
    Case("x-equals-width", _events(_set_bits("x", 304, 0, 4))),
    Case("x-max", _events(_set_bits("x", 0x3FFF, 0, 4))),
    Case("y-equals-height", _events(_set_bits("y", 240, 0, 4))),
    Case("y-max", _events(_set_bits("y", 0x3FFF, 0, 4))),
    Case("x-late-half", _events(_set_bits("x", 400, 2, 4))),
    *(Case(f"polarity-bit-{b}", _events(_set_bits("p", 1 << b, 0, 4))) for b in (29, 30, 31)),
    Case("polarity-all-bits", _events(_set_bits("p", 0xE << 28, 0, 4))),
    Case("small-sensor-header", _events(lambda raw: None, _header(None, b"% Height 100\n"))),
    Case("bad-height-text", _events(lambda raw: None, _header(None, b"% Height tall\n"))),
    Case("height-zero", _events(lambda raw: None, _header(None, b"% Height 0\n"))),
    Case("width-huge", _events(lambda raw: None, _header(None, b"% Width 99999\n"))),
    Case("other-sensor", _events(lambda raw: None, _header(None, b"% Height 480\n% Width 640\n"))),
    Case("empty-file", _write(b"")),
    Case("garbage", _write(GARBAGE)),
    Case("garbage-after-percent", _write(b"%" + GARBAGE.replace(b"\n", b"."))),
    Case("text-file", _write(b"this is not an event file\n" * 40)),
    Case("missing", _rename_dat),
]


# --------------------------------------------------------------------------------------------
# Gen1 _bbox.npy


def _boxes(edit: Callable[[np.ndarray], np.ndarray | None]) -> Damage:
    """np.load the valid boxes, let ``edit`` change them (or return a new array), np.save."""

    def damage(path: Path) -> None:
        arr = np.load(path)
        new = edit(arr)
        np.save(path, arr if new is None else new)

    return damage


def _field(name: str, value: Any, row: int = 0) -> Callable[[np.ndarray], None]:
    """Set one field of one row; ``t``/``class_confidence`` also match the original layout's
    ``ts``/``confidence``."""

    def edit(arr: np.ndarray) -> None:
        alias = {"t": "ts", "class_confidence": "confidence"}.get(name, name)
        arr[name if name in arr.dtype.names else alias][row] = value

    return edit


def _unsorted(arr: np.ndarray) -> np.ndarray:
    t = arr["t" if "t" in arr.dtype.names else "ts"]
    assert t[0] != t[-1], "the valid boxes need two label times"
    return np.ascontiguousarray(arr[::-1])


def _drop_field(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def edit(arr: np.ndarray) -> np.ndarray:
        keep = [n for n in arr.dtype.names if n != name]
        out = np.empty(len(arr), [(n, arr.dtype[n]) for n in keep])
        for n in keep:
            out[n] = arr[n]
        return out

    return edit


def _pickled_object_array(path: Path) -> None:
    np.save(path, np.array([{"t": 0}], dtype=object), allow_pickle=True)


BBOX_CASES: list[Case] = [
    Case("float-matrix", _boxes(lambda a: np.zeros((len(a), 8), np.float64))),
    Case("int32-vector", _boxes(lambda a: np.arange(len(a), dtype=np.int32))),
    Case("missing-field-h", _boxes(_drop_field("h"))),
    Case("missing-field-class", _boxes(_drop_field("class_id"))),
    Case("two-dim", _boxes(lambda a: np.stack([a, a]))),
    Case("scalar", _boxes(lambda a: np.float32(3.0))),
    Case("extra-field", _boxes(lambda a: np.zeros(len(a), BBOX_DTYPE.descr + [("z", "<f4")]))),
    Case("negative-w", _boxes(_field("w", -5.0))),
    Case("negative-h", _boxes(_field("h", -0.5, -1))),
    Case("nan-x", _boxes(_field("x", np.nan))),
    Case("inf-h", _boxes(_field("h", np.inf))),
    Case("nan-confidence", _boxes(_field("class_confidence", np.nan))),
    Case("class-id-2", _boxes(_field("class_id", 2))),
    Case("class-id-huge", _boxes(_field("class_id", 255))),
    Case("unsorted-t", _boxes(_unsorted)),
    Case("t-jumps-back", _boxes(_field("t", 0, -1))),
    Case("missing", lambda p: (_delete(p), p.name.replace("_bbox.npy", "_td.dat"))[1]),
    Case("empty-file", _write(b"")),
    Case("text-file", _write(b"t,x,y,w,h\n1,2,3,4,5\n")),
    Case("garbage", _write(GARBAGE)),
    Case("npy-magic-garbage", _write(b"\x93NUMPY\x01\x00" + GARBAGE[:200])),
    Case("truncated", _truncate(lambda s: s // 2)),
    Case("pickled-objects", _pickled_object_array),
]


# --------------------------------------------------------------------------------------------
# COCO instances JSON


def _json(edit: Callable[[Any], Any]) -> Damage:
    """Load the JSON, let ``edit`` mutate it (or return a replacement), dump it back."""

    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        new = edit(data)
        path.write_text(json.dumps(data if new is None else new))

    return damage


def _pop(section: str, key: str) -> Callable[[dict], None]:
    return lambda d: d[section][0].pop(key)


def _set(section: str, key: str, value: Any, index: int = 0) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d[section][index][key] = copy.deepcopy(value)

    return edit


ITEM_KEYS = {
    "categories": ("id", "name"),
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
}
BAD_VALUES = {
    "categories": {"id": ["1", 1.5, True, None], "name": [7, None]},
    "images": {
        "id": ["0"],
        "file_name": [5, None],
        "width": [0, -64, "64", 64.5],
        "height": [0, -1, None],
    },
    "annotations": {"id": [None], "image_id": ["0", 2.0], "category_id": ["1", None]},
}
BAD_BBOXES = {
    "len3": [1, 2, 3],
    "len5": [1, 2, 3, 4, 5],
    "empty": [],
    "neg-w": [1, 1, -3, 4],
    "neg-h": [1, 1, 3, -4],
    "strings": ["1", "2", "3", "4"],
    "null": None,
    "dict": {"x": 1},
    "nested": [[1, 2], [3, 4]],
    "bool": [True, 1, 2, 3],
    "number": 5,
    "null-item": [1, None, 3, 4],
}


def _wider(d: dict) -> None:
    """Annotated widths 5 px larger than the PNG files (the error names the image)."""
    for image in d["images"]:
        image["width"] += 5


def _bad_json(text: bytes) -> Damage:
    return _write(text)


COCO_CASES: list[Case] = [
    *(Case(f"no-{k}", _json(lambda d, k=k: d.pop(k))) for k in ITEM_KEYS),
    *(Case(f"{k}-is-dict", _json(lambda d, k=k: d.__setitem__(k, {}))) for k in ITEM_KEYS),
    *(Case(f"{k}-is-null", _json(lambda d, k=k: d.__setitem__(k, None))) for k in ITEM_KEYS),
    *(
        Case(f"{s}-item-not-object", _json(lambda d, s=s: d[s].__setitem__(0, 5)))
        for s in ITEM_KEYS
    ),
    *(Case(f"{s}-no-{k}", _json(_pop(s, k))) for s, keys in ITEM_KEYS.items() for k in keys),
    *(
        Case(f"{s}-{k}-{json.dumps(v)}", _json(_set(s, k, v)))
        for s, fields in BAD_VALUES.items()
        for k, values in fields.items()
        for v in values
    ),
    *(Case(f"bbox-{n}", _json(_set("annotations", "bbox", v))) for n, v in BAD_BBOXES.items()),
    Case(
        "bbox-nan",
        _bad_json(
            b'{"images": [], "categories": [{"id": 1, "name": "a"}], '
            b'"annotations": [{"id": 1, "image_id": 0, "category_id": 1, '
            b'"bbox": [NaN, 1, 2, 3]}]}'
        ),
    ),
    Case("bbox-infinity", _json(_set("annotations", "bbox", [1, 1, 1e400, 2]))),
    Case("unknown-category", _json(_set("annotations", "category_id", 999))),
    Case("unknown-image", _json(_set("annotations", "image_id", 999))),
    Case("duplicate-image-id", _json(lambda d: d["images"].append(dict(d["images"][0])))),
    Case("duplicate-category-id", _json(lambda d: d["categories"].append(d["categories"][0]))),
    Case("empty-categories", _json(lambda d: d.__setitem__("categories", []))),
    *(
        Case(f"top-level-{n}", _json(lambda d, v=v: v))
        for n, v in (("list", []), ("string", "coco"), ("number", 3))
    ),
    Case("top-level-null", _write(b"null")),
    Case("truncated-json", _truncate(lambda s: s // 2)),
    Case("trailing-comma", _bad_json(b'{"images": [], "annotations": [], "categories": [],}')),
    Case("empty-file", _write(b"")),
    Case("garbage", _write(GARBAGE)),
    Case("latin1-bytes", _write(b'{"images": "\xe9\xff"}')),
    Case("missing-annotation-file", lambda p: (_delete(p), p.name)[1]),
    Case("image-size-mismatch", lambda p: _json(_wider)(p) or ".png"),
    Case(
        "missing-image-file",
        lambda p: _json(_set("images", "file_name", "gone.png"))(p) or "gone.png",
    ),
]


# --------------------------------------------------------------------------------------------
# Images (PNG files referenced by the COCO annotations)


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 3, len(data) * 2 // 3):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def _small_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (1, 2, 3)).save(path, format="PNG")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


IMAGE_CASES: list[Case] = [
    Case("truncated-half", _truncate(lambda s: s // 2)),
    Case("truncated-signature", _truncate(lambda s: 8)),
    Case("truncated-three-quarters", _truncate(lambda s: s * 3 // 4)),
    Case("zero-bytes", _write(b"")),
    Case("text", _write(b"not an image\n")),
    Case("json", _write(b'{"png": false}')),
    Case("garbage", _write(GARBAGE)),
    Case("png-magic-garbage", _write(b"\x89PNG\r\n\x1a\n" + GARBAGE[:300])),
    Case("corrupt-idat", _flip_middle),
    Case("wrong-size", _small_png),
    Case("deleted", lambda p: (_delete(p), p.name)[1]),
    Case("a-directory", _directory),
]


# --------------------------------------------------------------------------------------------
# Weight files (a valid pico checkpoint -> damaged); torch is imported inside.


class _Planted:
    """Unpickling this calls ``exec`` on code that writes ``marker``: the attack weights_only
    must refuse (``pickle.loads`` of it proves the payload is live)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


def marker_of(path: Path) -> Path:
    """Where a code-carrying weight file would write its marker."""
    return path.with_name(path.name + ".EXECUTED")


def code_pickle(path: Path) -> None:
    """A plain pickle (not a torch zip) whose loading runs code."""
    path.write_bytes(
        pickle.dumps({"format": "spikedet-checkpoint", "x": _Planted(marker_of(path))})
    )


def code_torch_zip(path: Path) -> None:
    """A torch.save zip holding the same payload next to a real state."""
    import torch

    state = torch.load(path, weights_only=True)
    state["extra"] = _Planted(marker_of(path))
    torch.save(state, path)


def _torch_state(edit: Callable[[dict], Any]) -> Damage:
    def damage(path: Path) -> None:
        import torch

        state = torch.load(path, weights_only=True)
        new = edit(state)
        torch.save(state if new is None else new, path)

    return damage


def _other_model(state: dict) -> None:
    from spikedet.train.models.registry import build_model

    other = build_model("spikeyolo-pico", nc=3, widths=[8, 16, 32])
    state["model"] = other.state_dict()


def _wrong_shape(state: dict) -> None:
    key = next(k for k, v in state["model"].items() if v.ndim == 4)
    state["model"][key] = state["model"][key][:, :1].clone()


WEIGHT_CASES: list[Case] = [
    Case("other-architecture", _torch_state(_other_model)),
    Case("bare-state-dict", _torch_state(lambda s: s["model"])),
    Case("missing-tensor", _torch_state(lambda s: s["model"].pop(next(iter(s["model"]))))),
    Case("wrong-shape", _torch_state(_wrong_shape)),
    Case("no-model-key", _torch_state(lambda s: s.pop("model"))),
    Case("no-format", _torch_state(lambda s: s.pop("format"))),
    Case("future-version", _torch_state(lambda s: s.__setitem__("version", 99))),
    Case("config-not-dict", _torch_state(lambda s: s.__setitem__("config", [1, 2]))),
    Case("config-no-widths", _torch_state(lambda s: s["config"].pop("widths"))),
    Case("config-bad-widths", _torch_state(lambda s: s["config"].__setitem__("widths", "wide"))),
    Case("config-negative-T", _torch_state(lambda s: s["config"].__setitem__("T", -1))),
    Case("weights-not-dict", _torch_state(lambda s: s.__setitem__("model", "weights"))),
    Case("list-top-level", _torch_state(lambda s: [s])),
    Case("code-pickle", code_pickle),
    Case("code-in-torch-zip", code_torch_zip),
    Case("plain-pickle", _write(pickle.dumps({"format": "spikedet-checkpoint", "model": {}}))),
    Case("truncated-half", _truncate(lambda s: s // 2)),
    Case("truncated-100", _truncate(lambda s: 100)),
    Case("zero-bytes", _write(b"")),
    Case("text", _write(b"weights go here\n")),
    Case("garbage", _write(GARBAGE)),
    Case("zip-not-torch", _write(b"PK\x05\x06" + b"\x00" * 18)),
]


# --------------------------------------------------------------------------------------------
# NIR files (a valid exported pico graph, damaged with h5py). Node names are found by type so
# the cases do not depend on the exporter's naming beyond the §2 encoding.


def _nodes_of(f: Any, kind: str) -> list[str]:
    nodes = f["node/nodes"]
    return [n for n in nodes if nodes[n]["type"][()] in (kind, kind.encode())]


def _h5(edit: Callable[[Any], str | None]) -> Damage:
    """Open the NIR file read-write and let ``edit`` damage it; it returns the expected text."""

    def damage(path: Path) -> str | None:
        import h5py

        with h5py.File(path, "r+") as f:
            return edit(f)

    return damage


def _del_node(kind: str, index: int = 0) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        del f["node/nodes"][_nodes_of(f, kind)[index]]

    return edit


def _del_edges(pick: Callable[[list], list]) -> Callable[[Any], None]:
    """Rewrite the edge list keeping ``pick(edges)``."""

    def edit(f: Any) -> None:
        edges = [tuple(e) for e in f["node/edges"][()]]
        kept = pick(edges)
        del f["node/edges"]
        f["node"].create_dataset("edges", data=np.array(kept, dtype=object), dtype=_str_type())

    return edit


def _str_type() -> Any:
    import h5py

    return h5py.string_dtype()


def _replace(kind: str, key: str, make: Callable[[np.ndarray], Any], index: int = 0):
    """Replace dataset ``key`` of the ``index``-th node of ``kind`` by ``make(old)``."""

    def edit(f: Any) -> None:
        group = f["node/nodes"][_nodes_of(f, kind)[index]]
        old = group[key][()]
        del group[key]
        group[key] = make(old)

    return edit


def _poison(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def make(old: np.ndarray) -> np.ndarray:
        new = np.array(old, dtype=np.float32)
        new.reshape(-1)[new.size // 2] = value
        return new

    return make


def _add_node(type_name: str) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        group = f["node/nodes"].create_group("mystery")
        group["type"] = type_name
        group["shape"] = np.array([3, 64, 64])
        edges = [tuple(e) for e in f["node/edges"][()]] + [(b"input", b"mystery")]
        del f["node/edges"]
        f["node"].create_dataset("edges", data=np.array(edges, dtype=object), dtype=_str_type())

    return edit


def _meta(key: str, value: Any) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        meta = f["node/metadata"]
        if key in meta:
            del meta[key]
        if value is not None:
            meta[key] = value

    return edit


def _head(edit_head: Callable[[dict], None]) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        raw = f["node/metadata/spikedet.head"][()]
        head = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        edit_head(head)
        _meta("spikedet.head", json.dumps(head))(f)

    return edit


NIR_CASES: list[Case] = [
    *(
        Case(f"no-node-{k.lower()}", _h5(_del_node(k)))
        for k in ("Input", "Output", "Conv2d", "LI", "Threshold", "Scale", "I")
    ),
    Case("no-last-conv", _h5(_del_node("Conv2d", -1))),
    Case("no-edges", _h5(_del_edges(lambda e: []))),
    Case("no-first-edge", _h5(_del_edges(lambda e: e[1:]))),
    Case("no-middle-edge", _h5(_del_edges(lambda e: e[: len(e) // 2] + e[len(e) // 2 + 1 :]))),
    Case("no-reset-edges", _h5(_del_edges(lambda e: [x for x in e if b"reset" not in x[1]]))),
    Case("no-output-edges", _h5(_del_edges(lambda e: [x for x in e if b"output" not in x[1]]))),
    Case("edge-to-nowhere", _h5(_del_edges(lambda e: e + [(b"input", b"ghost")]))),
    Case("unknown-type", _h5(_add_node("Banana"))),
    Case("unsupported-type", _h5(_add_node("Flatten"))),
    Case("conv-weight-cin", _h5(_replace("Conv2d", "weight", lambda w: w[:, :1]))),
    Case("conv-weight-3d", _h5(_replace("Conv2d", "weight", lambda w: w[0]))),
    Case("conv-bias-len", _h5(_replace("Conv2d", "bias", lambda b: b[:-1], 3))),
    Case("conv-input-shape", _h5(_replace("Conv2d", "input_shape", lambda s: s * 2, 2))),
    Case("li-tau-shape", _h5(_replace("LI", "tau", lambda t: t[:-1]))),
    Case("li-r-shape", _h5(_replace("LI", "r", lambda r: r.reshape(-1), 1))),
    Case("threshold-shape", _h5(_replace("Threshold", "threshold", lambda t: t[..., :-1]))),
    Case("input-shape", _h5(_replace("Input", "shape", lambda s: np.array([5, 64, 64])))),
    Case("input-shape-2d", _h5(_replace("Input", "shape", lambda s: np.array([64, 64])))),
    *(
        Case(f"conv-weight-{n}", _h5(_replace("Conv2d", "weight", _poison(v), 1)))
        for n, v in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf))
    ),
    Case("conv-bias-nan", _h5(_replace("Conv2d", "bias", _poison(np.nan), 2))),
    Case("li-tau-nan", _h5(_replace("LI", "tau", _poison(np.nan)))),
    Case("li-tau-zero", _h5(_replace("LI", "tau", _poison(0.0)))),
    Case("li-r-inf", _h5(_replace("LI", "r", _poison(np.inf), 2))),
    Case("threshold-nan", _h5(_replace("Threshold", "threshold", _poison(np.nan)))),
    Case("threshold-wrong", _h5(_replace("Threshold", "threshold", lambda t: t * 0 + 0.7))),
    Case("threshold-negative", _h5(_replace("Threshold", "threshold", lambda t: t * 0 - 1.0, 1))),
    Case("threshold-ragged", _h5(_replace("Threshold", "threshold", _poison(3.25), 2))),
    Case("reset-scale-wrong", _h5(_replace("Scale", "scale", lambda s: s * 0 + 5.0))),
    Case("readout-r-nan", _h5(_replace("I", "r", _poison(np.nan)))),
    Case("T-zero", _h5(_meta("spikedet.T", 0))),
    Case("T-missing", _h5(_meta("spikedet.T", None))),
    Case("format-99", _h5(_meta("spikedet.format", 99))),
    Case("input-scale-zero", _h5(_meta("spikedet.input_scale", 0))),
    Case("dt-negative", _h5(_meta("dt", -1.0))),
    Case("head-missing", _h5(_meta("spikedet.head", None))),
    Case("head-not-json", _h5(_meta("spikedet.head", "{dfl"))),
    Case("head-unknown-output", _h5(_head(lambda h: h["outputs"][0].__setitem__(0, "ghost")))),
    Case("head-imgsz-string", _h5(_head(lambda h: h.__setitem__("imgsz", "big")))),
    Case("head-strides-short", _h5(_head(lambda h: h.__setitem__("strides", [8])))),
    Case("empty-file", _write(b"")),
    Case("garbage", _write(GARBAGE)),
    Case("hdf5-magic-garbage", _write(b"\x89HDF\r\n\x1a\n" + GARBAGE)),
    Case("truncated-half", _truncate(lambda s: s // 2)),
    Case("truncated-4k", _truncate(lambda s: 4096)),
    Case("text", _write(b"nodes: []\nedges: []\n")),
    Case("empty-hdf5", _h5(lambda f: [f.__delitem__(k) for k in list(f)] and None)),
]


# --------------------------------------------------------------------------------------------
# Hardware profile YAML (a copy of the built-in loihi2 profile).

PROFILE_FIGURES = (
    "chip.cores_per_chip",
    "chip.static_power",
    "core.neurons_per_core",
    "core.synaptic_memory",
    "core.fan_in_axons",
    "core.fan_out_cores",
    "precision.weight_bits",
    "precision.state_bits",
    "precision.decay_bits",
    "precision.message_bits",
    "precision.delay_bits",
    "precision.conv_weight_sharing",
    "energy.synop",
    "energy.neuron_update_active",
    "energy.neuron_update_inactive",
    "energy.message",
    "timing.step_time",
)
# Figures whose minimum is above zero (zero must be refused); the others accept zero.
POSITIVE_FIGURES = (
    "chip.cores_per_chip",
    "core.neurons_per_core",
    "core.synaptic_memory",
    "core.fan_in_axons",
    "core.fan_out_cores",
    "precision.weight_bits",
    "precision.state_bits",
    "precision.decay_bits",
    "precision.message_bits",
    "timing.step_time",
)


def _yaml(edit: Callable[[dict], Any]) -> Damage:
    def damage(path: Path) -> str:
        import yaml

        data = yaml.safe_load(path.read_text())
        new = edit(data)
        path.write_text(yaml.safe_dump(data if new is None else new))
        return path.name

    return damage


def _figure(key: str, field: str | None, value: Any = None) -> Callable[[dict], None]:
    """Delete figure ``key`` (field None) or set one of its fields."""
    section, name = key.split(".")

    def edit(d: dict) -> None:
        if field is None:
            del d[section][name]
        else:
            d[section][name][field] = value

    return edit


PROFILE_CASES: list[Case] = [
    *(Case(f"missing-{k}", _yaml(_figure(k, None))) for k in PROFILE_FIGURES),
    *(
        Case(f"negative-{k}", _yaml(_figure(k, "value", -3)))
        for k in PROFILE_FIGURES
        if k != "precision.conv_weight_sharing"
    ),
    *(Case(f"zero-{k}", _yaml(_figure(k, "value", 0))) for k in POSITIVE_FIGURES),
    *(Case(f"string-{k}", _yaml(_figure(k, "value", "many"))) for k in PROFILE_FIGURES[::3]),
    Case("list-value", _yaml(_figure("energy.synop", "value", [1, 2]))),
    Case("float-count", _yaml(_figure("core.neurons_per_core", "value", 10.5))),
    Case("nan-energy", _yaml(_figure("energy.synop", "value", float("nan")))),
    Case("number-flag", _yaml(_figure("precision.conv_weight_sharing", "value", 7))),
    *(
        Case(f"status-{s}", _yaml(_figure("energy.message", "status", s)))
        for s in ("guessed", "", None, 3)
    ),
    Case("unit-wrong-quantity", _yaml(_figure("energy.synop", "unit", "mW"))),
    Case("unit-unknown", _yaml(_figure("timing.step_time", "unit", "fortnights"))),
    Case("figure-not-mapping", _yaml(lambda d: d["energy"].__setitem__("synop", 23.6))),
    Case("no-source", _yaml(lambda d: d["energy"]["synop"].pop("source"))),
    Case("section-is-list", _yaml(lambda d: d.__setitem__("core", [1, 2]))),
    Case("kind-unknown", _yaml(lambda d: d.__setitem__("kind", "quantum"))),
    Case("kind-cmos", _yaml(lambda d: d.__setitem__("kind", "cmos"))),
    Case("no-name", _yaml(lambda d: d.pop("name"))),
    Case("top-level-list", _yaml(lambda d: [d])),
    Case("top-level-string", _yaml(lambda d: "loihi2")),
    Case("tab-indent", _write(b"name: x\nchip:\n\tcores_per_chip: 1\n")),
    Case("unclosed-bracket", _write(b"name: [x\nkind: neuromorphic\n")),
    Case("empty-file", _write(b"")),
    Case("garbage", _write(GARBAGE)),
    Case("deleted", lambda p: (_delete(p), p.name)[1]),
]


# --------------------------------------------------------------------------------------------
# Deployment report (OUT/report.json)

REPORT_CASES: list[Case] = [
    *(Case(f"no-{k}", _json(lambda d, k=k: d.pop(k))) for k in ("layers", "totals", "profile")),
    *(
        Case(f"{k}-wrong-type", _json(lambda d, k=k: d.__setitem__(k, "oops")))
        for k in ("layers", "totals", "profile")
    ),
    Case("layer-not-object", _json(lambda d: d["layers"].__setitem__(0, 5))),
    Case("top-level-list", _json(lambda d: [d])),
    Case("malformed", _truncate(lambda s: s // 2)),
    Case("empty-file", _write(b"")),
    Case("garbage", _write(GARBAGE)),
    Case("deleted", lambda p: (_delete(p), p.name)[1]),
]
