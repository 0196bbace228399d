"""Corrupted data files: Gen1 ``.dat`` and ``_bbox.npy``, COCO instances JSON, images."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spikedet.data.gen1 import RAW_DTYPE
from spikedet.data.gen1_labels import BBOX_DTYPE
from tests.robustness.corrupt import GARBAGE, Case, Damage, _delete, _json, _truncate, _write

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
