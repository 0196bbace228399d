"""Corrupted model-side files: weight files, NIR graphs, hardware profiles, reports."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.robustness.corrupt import GARBAGE, Case, Damage, _delete, _json, _truncate, _write

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


CORE_MODEL_FIGURES = (
    "connectivity.word_bits",
    "connectivity.dense_synapse_bits",
    "connectivity.conv_header_words",
    "connectivity.conv_axons_per_edge",
    "partition.neurons",
)


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
    # the connectivity-aware core model (Loihi 2): all of it or none, valid counts
    *(Case(f"missing-{k}", _yaml(_figure(k, None))) for k in CORE_MODEL_FIGURES),
    *(Case(f"negative-{k}", _yaml(_figure(k, "value", -1))) for k in CORE_MODEL_FIGURES),
    Case("zero-partition-neurons", _yaml(_figure("partition.neurons", "value", 0))),
    Case("zero-word-bits", _yaml(_figure("connectivity.word_bits", "value", 0))),
    Case(
        "partition-unknown-kind",
        _yaml(lambda d: d["partition"].__setitem__("neurons_spiky", d["partition"]["neurons"])),
    ),
    Case("status-derived-typo", _yaml(_figure("partition.neurons", "status", "derive"))),
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
