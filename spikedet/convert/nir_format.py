"""spikedet's NIR format checks, shared by every reader (no torch: runs in the Lava env too).

- ``check_format``: graph metadata ``spikedet.format`` must be 1 or 2 (1: no §2.5-2.9
  constructs), ``spikedet.extensions`` a JSON list of known §2.8 ops (only in format 2), and
  every node marked ``spikedet.op`` a SumPool2d whose op is known and listed.
- ``pool_spec``: the geometry and op of a SumPool2d node (plain sum pooling, or the extension
  ops ``upsample_nearest``: kernel (1, 1), stride (1, 1), padding (H/2, W/2), scale 2; and
  ``max_pool``: metadata kernel/stride equal to the node's, padding <= kernel/2).
"""

from __future__ import annotations

import json
from typing import Any

import nir
import numpy as np

from spikedet.data.events import REPRESENTATIONS  # numpy only, like this module
from spikedet.errors import SpikedetError

FORMAT_VERSION = 2  # what the exporter writes
FORMATS = (1, 2)  # spikedet.format versions readers accept
UPSAMPLE_OP, MAX_POOL_OP = "upsample_nearest", "max_pool"
EXTENSION_OPS = (UPSAMPLE_OP, MAX_POOL_OP)  # §2.8


def meta_str(metadata: dict[str, Any], key: str) -> str | None:
    """A string metadata value as written or as read back by nir (bytes / 0-d array)."""
    value = metadata.get(key) if isinstance(metadata, dict) else None
    if isinstance(value, bytes):
        return value.decode("utf8")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
        return value.decode("utf8") if isinstance(value, bytes) else str(value)
    return None if value is None else str(value)


def check_format(graph: nir.NIRGraph, metadata: dict[str, Any]) -> list[str]:
    """Validate ``spikedet.format`` / ``spikedet.extensions`` against the nodes; returns the
    listed extensions. Graphs without spikedet metadata (plain NIR) may not use extensions."""
    fmt = metadata.get("spikedet.format")
    if fmt is not None:
        try:
            fmt = int(np.asarray(fmt).reshape(-1)[0])
        except (TypeError, ValueError, IndexError) as err:
            raise SpikedetError(f"bad spikedet.format {fmt!r}", "NIR graph") from err
        if fmt not in FORMATS:
            raise SpikedetError(
                f"unknown spikedet.format {fmt} (this reader knows {list(FORMATS)})", "NIR graph"
            )
    listed: list[str] = []
    text = meta_str(metadata, "spikedet.extensions")
    if text is not None:
        try:
            listed = [str(v) for v in json.loads(text)]
        except (ValueError, TypeError) as err:
            raise SpikedetError(
                f"spikedet.extensions is not a JSON list: {err}", "NIR graph"
            ) from err
    unknown = [e for e in listed if e not in EXTENSION_OPS]
    if unknown or (listed and fmt != 2):
        raise SpikedetError(
            f"unknown extensions {unknown} or extensions in a format {fmt} graph "
            f"(known: {list(EXTENSION_OPS)}, format 2)",
            "NIR graph",
        )
    for name, node in graph.nodes.items():
        op = meta_str(getattr(node, "metadata", None) or {}, "spikedet.op")
        if op is None:
            continue
        if op not in EXTENSION_OPS or not isinstance(node, nir.SumPool2d):
            raise SpikedetError(f"unknown extension op {op!r} on a {type(node).__name__}", name)
        if op not in listed:
            raise SpikedetError(f"extension op {op!r} is not listed in spikedet.extensions", name)
    return listed


def pool_spec(name: str, node: nir.SumPool2d) -> dict[str, Any]:
    """Geometry and op of a SumPool2d node; an extension op's metadata must match it (§2.8)."""
    kernel, stride, padding = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
    meta = node.metadata if isinstance(node.metadata, dict) else {}
    op = meta_str(meta, "spikedet.op") or "sum"
    static = {"op": op, "kernel": kernel, "stride": stride, "padding": padding, "scale": 1}
    if op == "upsample_nearest":
        scale = meta.get("spikedet.scale")
        if scale is None or int(np.asarray(scale).reshape(-1)[0]) != 2:
            raise SpikedetError(f"upsample_nearest needs spikedet.scale 2, got {scale}", name)
        if kernel != (1, 1) or stride != (1, 1):
            raise SpikedetError("upsample_nearest needs kernel (1, 1) and stride (1, 1)", name)
        static["scale"] = 2
    elif op == "max_pool":
        declared = [meta.get(f"spikedet.{k}") for k in ("kernel", "stride")]
        if any(d is None or _pair(d) != v for d, v in zip(declared, (kernel, stride))):
            raise SpikedetError(
                f"max_pool metadata kernel/stride {declared} differ from the node's "
                f"{kernel}/{stride}",
                name,
            )
        if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
            raise SpikedetError(f"max_pool padding {padding} exceeds half the kernel", name)
    return static


def _pair(value: Any) -> tuple[int, int]:
    arr = np.asarray(value).reshape(-1)
    return (int(arr[0]), int(arr[0])) if arr.size == 1 else (int(arr[0]), int(arr[1]))


def input_encoding(train_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the graph's input is, from a checkpoint's ``train_config`` (metadata
    ``spikedet.input``): ``dataset`` (coco or gen1), the Gen1 ``representation`` and ``bins``,
    and ``input_scale``, the factor that makes every input an integer (x_int = x * scale): 255
    for images and polarity3 frames (value / 255), 1 for event counts and histograms."""
    tc = train_config or {}
    dataset = str(tc.get("dataset", "coco"))
    representation = str(tc.get("representation", "polarity3"))
    scale = 255 if dataset == "coco" or representation == "polarity3" else 1
    encoding = {
        "dataset": dataset,
        "representation": representation,
        "bins": int(tc.get("bins", 10)),
    }
    return {**encoding, "input_scale": scale}


def graph_input(metadata: dict[str, Any]) -> dict[str, Any]:
    """``spikedet.input`` of a graph, checked; graphs written before it: COCO-style images."""
    text = meta_str(metadata, "spikedet.input")
    try:
        spec = {} if text is None else json.loads(text)
    except json.JSONDecodeError as err:
        raise SpikedetError(f"not JSON: {err}", "spikedet.input") from None
    if not isinstance(spec, dict):
        raise SpikedetError("must be a JSON object", "spikedet.input")
    out = input_encoding(spec)
    bad = (
        out["dataset"] not in ("coco", "gen1")
        or out["representation"] not in REPRESENTATIONS
        or out["bins"] < 1
    )
    if bad:
        raise SpikedetError(f"unknown input {spec}", "spikedet.input")
    return out
