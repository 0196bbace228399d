"""The deployment report: ``report.json``, ``report.md`` and three PNG plots, written atomically.

Report dict layout (built by ``spikedet.deploy.energy.energy_report``; the deploy pipeline adds
``validation`` and may overwrite ``model``/``target`` or add scalars such as ``engine``). All
counts and energies are per inference (averaged over the simulated samples); energies in pJ.

- ``model``: str; ``target``: str (profile name or the --target given).
- ``profile``: {name, description, kind, path, notices: [str]} (notices include the 45 nm ones).
- ``mapping``: ``Mapping.to_dict()``: {profile, cores, chips, modes, precision, limits, layers}.
- ``layers``: one dict per population (with its incoming synapses), topological order: name,
  type (encoding | spiking | readout), shape, neurons, D, depth, cores, tile_shape,
  syn_mem_bits_per_core, syn_mem_bits_total, fan_in_axons, fan_out_cores, spikes_in_messages,
  spikes_in_units, spikes_out_messages, spikes_out_units, firing_rate, message_rate,
  synops_graded, synops_binary, dense_macs, neuron_updates, active_updates, binary_updates,
  binary_active_updates, routed_messages_graded, routed_messages_binary,
  energy_graded / energy_binary: {total_pj, synops_pj, active_updates_pj, inactive_updates_pj,
  messages_pj} (dynamic energy).
- ``totals``: the default mode's figures (graded when supported): mode, T, samples, neurons,
  cores, chips, synaptic_memory_bits, hw_steps, synops, routed_messages, neuron_updates,
  energy_dynamic_pj, energy_static_pj, energy_total_pj, latency_us, inferences_per_s, power_mw.
- ``modes``: {graded, binary}: supported, reason and the same figures as totals.
- ``cmos45nm``: first_layer_macs, acs, energy_pj, flops_formula {first_layer_macs, acs,
  energy_pj}, ann {macs, energy_pj}, ann_over_snn45, ann45_over_target, e_mac_pj, e_ac_pj.
- ``provenance``: [{profile, key, value, unit, status, source}] for every figure used.
- ``validation`` (optional, free form): rendered generically (tables for dicts of dicts).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path, write_json, write_text

PLOTS = ("energy_per_layer.png", "firing_rate_per_layer.png", "cores_per_layer.png")


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(v: Any) -> str:
    """Numbers with 4 significant digits (integers in full), everything else as text."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
            return f"{v:.4g}"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else str(v)
    if isinstance(v, dict):
        return json.dumps(jsonable(v), separators=(",", ":"))
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list, tuple))


def render_section(title: str, value: Any, level: int = 3) -> list[str]:
    """Markdown for a free-form value: scalars as a key/value table, dicts of dicts as tables."""
    head = ["#" * level + " " + title, ""]
    if isinstance(value, (dict, list, tuple)) and not value:
        return head + ["(empty)", ""]
    if _is_scalar(value):
        return head + [_fmt(value), ""]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            return head + _table(cols, [[v.get(c, "") for c in cols] for v in value])
        return head + [_fmt(list(value)), ""]
    scalars = {k: v for k, v in value.items() if _is_scalar(v) or isinstance(v, (list, tuple))}
    nested = {k: v for k, v in value.items() if isinstance(v, dict)}
    lines = head
    if scalars:
        lines += _table(["key", "value"], [[k, v] for k, v in scalars.items()])
    flat = {k: v for k, v in nested.items() if v and all(_is_scalar(x) for x in v.values())}
    if len(flat) >= 2 or (flat and len(flat) == len(nested) and not scalars):
        cols = list(dict.fromkeys(c for v in flat.values() for c in v))
        lines += _table([""] + cols, [[k] + [v.get(c, "") for c in cols] for k, v in flat.items()])
        nested = {k: v for k, v in nested.items() if k not in flat}
    for k, v in nested.items():
        lines += render_section(f"{title}: {k}" if level > 3 else k, v, min(level + 1, 6))
    return lines


def _kib(bits: float) -> float:
    return bits / 8192


def render_markdown(report: dict) -> str:
    """The human-readable report (see the module docstring for the keys it reads)."""
    t, mp, modes, c45 = report["totals"], report["mapping"], report["modes"], report["cmos45nm"]
    lines = [f"# spikedet deployment report: {report.get('model', '?')}", ""]
    known = {
        "model",
        "target",
        "profile",
        "mapping",
        "layers",
        "totals",
        "cmos45nm",
        "modes",
        "provenance",
        "validation",
    }
    info = [
        ["target", report.get("target")],
        ["profile", report["profile"]["name"]],
        ["profile file", report["profile"]["path"]],
        ["default mode", t["mode"]],
        ["logical steps T", t["T"]],
        ["samples simulated", t["samples"]],
    ]
    info += [[k, v] for k, v in report.items() if k not in known and _is_scalar(v)]
    lines += _table(["", ""], info) + [report["profile"]["description"], ""]
    lines += ["## Mapping", ""]
    lines += _table(
        ["cores", "chips", "neurons", "synaptic memory (KiB)"],
        [[mp["cores"], mp["chips"], t["neurons"], _kib(t["synaptic_memory_bits"])]],
    )
    lines += _table(["limit per core", "value"], [[k, v] for k, v in mp["limits"].items()])
    prec = mp["precision"]
    cols = list(dict.fromkeys(c for v in prec.values() for c in v))
    lines += _table(
        ["precision"] + cols, [[k] + [v.get(c, "") for c in cols] for k, v in prec.items()]
    )
    lines += ["## Per-layer resources, activity and energy (per inference)", ""]
    rows = [
        [
            ly["name"],
            ly["type"],
            ly["shape"],
            ly["neurons"],
            ly["cores"],
            ly["tile_shape"],
            _kib(ly["syn_mem_bits_per_core"]),
            ly["fan_in_axons"],
            ly["fan_out_cores"],
            ly["firing_rate"],
            ly["synops_graded"],
            ly["synops_binary"],
            ly["energy_graded"]["total_pj"] / 1e3,
            ly["energy_binary"]["total_pj"] / 1e3,
        ]
        for ly in report["layers"]
    ]
    lines += _table(
        [
            "layer",
            "type",
            "shape",
            "neurons",
            "cores",
            "tile",
            "syn mem/core KiB",
            "fan-in",
            "fan-out",
            "fr",
            "synops graded",
            "synops binary",
            "E graded nJ",
            "E binary nJ",
        ],
        rows,
    )
    lines += [f"## Totals ({t['mode']} mode, per inference)", ""]
    lines += _table(
        ["quantity", "value"],
        [
            ["synaptic ops", t["synops"]],
            ["routed messages", t["routed_messages"]],
            ["neuron updates", t["neuron_updates"]],
            ["hardware steps", t["hw_steps"]],
            ["dynamic energy (nJ)", t["energy_dynamic_pj"] / 1e3],
            ["static energy (nJ)", t["energy_static_pj"] / 1e3],
            ["total energy (nJ)", t["energy_total_pj"] / 1e3],
            ["latency (us)", t["latency_us"]],
            ["inferences / s", t["inferences_per_s"]],
            ["power (mW)", t["power_mw"]],
        ],
    )
    lines += ["## Graded vs binary deployment", ""]
    keys = [
        "supported",
        "hw_steps",
        "synops",
        "routed_messages",
        "neuron_updates",
        "energy_dynamic_pj",
        "energy_static_pj",
        "energy_total_pj",
        "inferences_per_s",
        "power_mw",
    ]
    rows = []
    for k in keys:
        g, b = modes["graded"][k], modes["binary"][k]
        if k.endswith("_pj"):  # shown in nJ like the rest of the report
            k, g, b = k[: -len("_pj")] + " (nJ)", g / 1e3, b / 1e3
        rows.append([k, g, b])
    lines += _table(["", "graded", "binary"], rows)
    lines += [f"Graded: {modes['graded']['reason']}.", ""]
    lines += ["## 45 nm CMOS estimate (the papers' model) and the equivalent ANN", ""]
    ff = c45["flops_formula"]
    lines += _table(
        ["", "MACs", "ACs", "energy (nJ)"],
        [
            ["SNN, exact counts", c45["first_layer_macs"], c45["acs"], c45["energy_pj"] / 1e3],
            ["SNN, FLOPs x fr formula", ff["first_layer_macs"], ff["acs"], ff["energy_pj"] / 1e3],
            ["equivalent ANN", c45["ann"]["macs"], 0, c45["ann"]["energy_pj"] / 1e3],
            [
                f"target {report['profile']['name']} ({t['mode']})",
                "",
                "",
                t["energy_total_pj"] / 1e3,
            ],
        ],
    )
    lines += [
        f"E_MAC = {c45['e_mac_pj']} pJ, E_AC = {c45['e_ac_pj']} pJ; ANN / SNN (45 nm) = "
        f"{_fmt(c45['ann_over_snn45'])}; ANN (45 nm) / target = "
        f"{_fmt(c45['ann45_over_target'])}.",
        "",
    ]
    if report.get("validation"):
        lines += render_section("Validation", report["validation"], level=2)
    lines += ["## Provenance", ""] + [f"- {n}" for n in report["profile"].get("notices", [])]
    lines += [""] + _table(
        ["profile", "figure", "value", "unit", "status", "source"],
        [
            [p["profile"], p["key"], p["value"], p["unit"], p["status"], p["source"]]
            for p in report["provenance"]
        ],
    )
    return "\n".join(lines)


def _plots(report: dict) -> dict[str, bytes] | str:
    """The three PNGs as bytes, or the reason they cannot be drawn (no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"plots skipped: {err}"
    layers = report["layers"]
    names = [ly["name"] for ly in layers]
    x = np.arange(len(layers))
    series = {
        "energy_per_layer.png": (
            "dynamic energy per inference (nJ)",
            {
                "graded": [ly["energy_graded"]["total_pj"] / 1e3 for ly in layers],
                "binary": [ly["energy_binary"]["total_pj"] / 1e3 for ly in layers],
            },
        ),
        "firing_rate_per_layer.png": (
            "firing rate (units / neuron / step, includes D)",
            {"firing rate": [ly["firing_rate"] for ly in layers]},
        ),
        "cores_per_layer.png": ("cores", {"cores": [ly["cores"] for ly in layers]}),
    }
    out: dict[str, bytes] = {}
    for fname, (ylabel, data) in series.items():
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.0))
        width = 0.8 / len(data)
        for i, (label, vals) in enumerate(data.items()):
            ax.bar(x + (i - (len(data) - 1) / 2) * width, vals, width, label=label)
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{report.get('model', '')} on {report['profile']['name']}")
        if len(data) > 1:
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[fname] = buf.getvalue()
    return out


def write_report(out_dir: str | Path, report: dict) -> list[Path]:
    """Write report.json, report.md and the PNG plots; each file is renamed into place."""
    out = Path(out_dir)
    data = jsonable(report)
    text = render_markdown(data)  # render everything before writing anything
    plots = _plots(data)
    if isinstance(plots, str):
        text += f"\n\n_{plots}_\n"
    written = []
    write_json(out / "report.json", data)
    written.append(out / "report.json")
    write_text(out / "report.md", text + "\n")
    written.append(out / "report.md")
    for fname, png in plots.items() if isinstance(plots, dict) else []:
        with atomic_path(out / fname, suffix=".png") as tmp:
            tmp.write_bytes(png)
        written.append(out / fname)
    return written


def load_report(path: str | Path) -> dict:
    """A report.json (or a folder holding one); missing or corrupt -> SpikedetError."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":  # a report folder (existing or not)
        path = path / "report.json"
    if not path.is_file():
        raise SpikedetError("report not found", str(path))
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        for key, kind in (("layers", list), ("totals", dict), ("profile", dict)):
            if not isinstance(report[key], kind):
                raise TypeError(f"'{key}' is a {type(report[key]).__name__}, not a {kind.__name__}")
        if not all(isinstance(layer, dict) for layer in report["layers"]):
            raise TypeError("'layers' holds an entry that is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        what = f"not a spikedet report ({err.__class__.__name__}: {err})"
        raise SpikedetError(what, str(path)) from None
    return report


def _headline(validation: dict) -> list[str]:
    """One line per top-level validation entry: scalars, or a dict's scalar members."""
    lines = []
    for key, val in validation.items():
        if _is_scalar(val):
            lines.append(f"  {key}: {_fmt(val)}")
        elif isinstance(val, dict):
            parts = [f"{k}={_fmt(v)}" for k, v in val.items() if _is_scalar(v)]
            parts += [
                f"{k}: " + " ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items() if _is_scalar(vv))
                for k, v in val.items()
                if isinstance(v, dict)
                and v
                and all(_is_scalar(x) for x in v.values())
                and len(v) <= 6
            ]
            if parts:
                text = "; ".join(parts)
                lines.append(f"  {key}: {text[:160] + ('...' if len(text) > 160 else '')}")
    return lines


def summary_table(report: dict) -> str:
    """A compact terminal table: per layer, then totals, 45 nm comparison and validation."""
    t, mode = report["totals"], report["totals"]["mode"]
    width = max([5] + [len(ly["name"]) for ly in report["layers"]])
    head = f"{'layer':<{width}} {'neurons':>10} {'cores':>7} {'fr':>7} {'synops':>12} {'E nJ':>11}"
    lines = [
        f"spikedet report: {report.get('model', '?')} on {report.get('target', '?')} "
        f"({mode} mode, T={t['T']}, {t['samples']} sample(s), per inference)",
        head,
        "-" * len(head),
    ]
    for ly in report["layers"]:
        lines.append(
            f"{ly['name']:<{width}} {ly['neurons']:>10,} {ly['cores']:>7,} "
            f"{ly['firing_rate']:>7.3f} {ly['synops_' + mode]:>12.4g} "
            f"{ly['energy_' + mode]['total_pj'] / 1e3:>11.4g}"
        )
    lines += [
        "-" * len(head),
        f"{'total':<{width}} {t['neurons']:>10,} {t['cores']:>7,} {'':>7} {t['synops']:>12.4g} "
        f"{t['energy_dynamic_pj'] / 1e3:>11.4g}",
        f"chips {t['chips']}, {t['hw_steps']} hardware steps, static {t['energy_static_pj'] / 1e3:.4g}"
        f" nJ, total {t['energy_total_pj'] / 1e3:.4g} nJ/inference, "
        f"{t['inferences_per_s']:.4g} inferences/s, {t['power_mw']:.4g} mW",
    ]
    c45 = report.get("cmos45nm")
    if c45:
        lines.append(
            f"45 nm estimate: SNN {c45['energy_pj'] / 1e3:.4g} nJ, equivalent ANN "
            f"{c45['ann']['energy_pj'] / 1e3:.4g} nJ"
        )
    if report.get("validation"):
        lines += ["validation:"] + _headline(report["validation"])
    return "\n".join(lines)
