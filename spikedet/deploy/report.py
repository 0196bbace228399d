"""The deployment report: ``report.json``, ``report.md`` and three PNG plots, written atomically.

Report dict layout (built by ``spikedet.deploy.energy.energy_report``; the deploy pipeline adds
``validation`` and may overwrite ``model``/``target`` or add scalars such as ``engine``). All
counts and energies are per inference (averaged over the simulated samples); energies in pJ.

- ``model``: str; ``target``: str (profile name or the --target given).
- ``profile``: {name, description, kind, path, notices: [str]} (notices include the 45 nm ones).
- ``mapping``: ``Mapping.to_dict()``: {profile, cores, chips, modes, precision, limits, layers}.
- ``layers``: one dict per population (with its incoming synapses, and its partial sums and
  relays), topological order: name, type (encoding | spiking | maxpool | readout), shape,
  neurons, compartments (x D for max-pool), D, depth, hw_depth, cores, tile_shape,
  syn_mem_bits_per_core, syn_mem_bits_total, fan_in_axons, fan_out_cores, fan_in_parts,
  psum_cores, relay_cores, extra_steps, psum_payload_bits, psum_messages_graded,
  psum_messages_binary, aux_updates (partial-sum and relay compartments), spikes_in_messages,
  spikes_in_units, spikes_out_messages, spikes_out_units, firing_rate, message_rate,
  synops_graded, synops_binary, dense_macs, neuron_updates, active_updates, binary_updates,
  binary_active_updates, routed_messages_graded, routed_messages_binary,
  energy_graded / energy_binary: {total_pj, synops_pj, active_updates_pj, inactive_updates_pj,
  messages_pj} (dynamic energy).
- ``totals``: the default mode's figures (graded when supported): mode, T, samples, neurons,
  compartments, cores, chips, synaptic_memory_bits, split_layers, psum_cores, relay_cores,
  extra_latency_steps, hw_steps, synops, routed_messages, neuron_updates,
  energy_dynamic_pj, energy_static_pj, energy_total_pj, latency_us, inferences_per_s, power_mw.
- ``modes``: {graded, binary}: supported, reason and the same figures as totals.
- ``cmos45nm``: first_layer_macs, acs, energy_pj, flops_formula {first_layer_macs, acs,
  energy_pj}, ann {macs, energy_pj}, ann_over_snn45, ann45_over_target, e_mac_pj, e_ac_pj.
- ``provenance``: [{profile, key, value, unit, status, source}] for every figure used.
- ``validation`` (optional, free form): rendered generically (tables for dicts of dicts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from spikedet.deploy.report_format import (
    fmt,
    is_scalar,
    jsonable,
    kib,
    render_plots,
    render_section,
    table,
)
from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path, write_json, write_text

PLOTS = ("energy_per_layer.png", "firing_rate_per_layer.png", "cores_per_layer.png")


def _splits_section(report: dict) -> list[str]:
    """Fan-in splits and delay relays of the mapping (nothing when the graph has neither)."""
    layers = report["mapping"]["layers"]
    split = [ly for ly in layers if ly.get("psums")]
    relays = [(ly["name"], r) for ly in layers for r in ly.get("relays", [])]
    if not split and not relays:
        return []
    mp = report["mapping"]
    lines = ["## Fan-in splits and delay relays", ""]
    if split:
        lines += [
            f"{len(split)} layer(s) have neurons whose inputs exceed one core "
            f"({mp['limits']['fan_in_axons']} fan-in axons, "
            f"{kib(mp['limits']['synaptic_memory_bits']):g} KiB): their input channels are "
            "divided over partial-sum compartments on separate cores that send graded sums to "
            "the neuron's core. The integer results do not change (partial sums are sums of "
            "exact integers, and the §3.3 delays re-align the other paths); each split adds one "
            f"hardware step on its paths (hardware depth {mp['hw_depth']} vs logical "
            f"{mp['logical_depth']}).",
            "",
        ]
        lines += table(
            ["layer", "groups", "partial-sum cores", "neuron cores", "payload bits", "max |sum|"],
            [
                [
                    ly["name"], ly["fan_in_parts"], sum(p["tiles"] for p in ly["psums"]),
                    ly["tiles"], max(p["payload_bits"] for p in ly["psums"]),
                    max(p["bound"] for p in ly["psums"]),
                ]
                for ly in split
            ],
        )  # fmt: skip
    if relays:
        delay = mp["precision"].get("delay_steps", {})
        lines += [
            f"Delays up to {delay.get('needed')} steps are needed, the target has "
            f"{delay.get('available')}: {len(relays)} relay stage(s) forward the spikes of a "
            "source (exact values) so that every synapse delay fits.",
            "",
        ]
        lines += table(
            ["layer", "relays spikes of", "stage", "cores"],
            [[name, r["source"], r["stage"], r["tiles"]] for name, r in relays],
        )
    return lines


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
    info += [[k, v] for k, v in report.items() if k not in known and is_scalar(v)]
    lines += table(["", ""], info) + [report["profile"]["description"], ""]
    lines += ["## Mapping", ""]
    lines += table(
        ["cores", "chips", "neurons", "synaptic memory (KiB)"],
        [[mp["cores"], mp["chips"], t["neurons"], kib(t["synaptic_memory_bits"])]],
    )
    lines += table(["limit per core", "value"], [[k, v] for k, v in mp["limits"].items()])
    prec = mp["precision"]
    cols = list(dict.fromkeys(c for v in prec.values() for c in v))
    lines += table(
        ["precision"] + cols, [[k] + [v.get(c, "") for c in cols] for k, v in prec.items()]
    )
    lines += _splits_section(report)
    lines += ["## Per-layer resources, activity and energy (per inference)", ""]
    rows = [
        [
            ly["name"],
            ly["type"],
            ly["shape"],
            ly["neurons"],
            ly["cores"],
            ly["tile_shape"],
            kib(ly["syn_mem_bits_per_core"]),
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
    lines += table(
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
    lines += table(
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
    lines += table(["", "graded", "binary"], rows)
    lines += [f"Graded: {modes['graded']['reason']}.", ""]
    lines += ["## 45 nm CMOS estimate (the papers' model) and the equivalent ANN", ""]
    ff = c45["flops_formula"]
    lines += table(
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
    if "papers" in c45:  # each paper's own formula (spikedet.deploy.paper_energy)
        pe = c45["papers"]
        lines += [
            "",
            f"The papers' own accounting: FLOPs {pe['flops_per_step']:,} per step "
            f"({pe['mac_flops_per_step']:,} MAC, {pe['ac_flops_per_step']:,} AC), SOPs "
            f"{pe['sops']:,.0f}; SpikeYOLO {pe['spikeyolo']['formula']} = "
            f"{pe['spikeyolo']['energy_pj'] / 1e9:.4g} mJ; EMS-YOLO (Eq. 6) "
            f"{pe['ems_yolo']['formula']} = {pe['ems_yolo']['energy_pj'] / 1e9:.4g} mJ.",
        ]
    lines += [
        f"E_MAC = {c45['e_mac_pj']} pJ, E_AC = {c45['e_ac_pj']} pJ; ANN / SNN (45 nm) = "
        f"{fmt(c45['ann_over_snn45'])}; ANN (45 nm) / target = "
        f"{fmt(c45['ann45_over_target'])}.",
        "",
    ]
    if report.get("validation"):
        lines += render_section("Validation", report["validation"], level=2)
    lines += ["## Provenance", ""] + [f"- {n}" for n in report["profile"].get("notices", [])]
    lines += [""] + table(
        ["profile", "figure", "value", "unit", "status", "source"],
        [
            [p["profile"], p["key"], p["value"], p["unit"], p["status"], p["source"]]
            for p in report["provenance"]
        ],
    )
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict) -> list[Path]:
    """Write report.json, report.md and the PNG plots; each file is renamed into place."""
    out = Path(out_dir)
    data = jsonable(report)
    text = render_markdown(data)  # render everything before writing anything
    plots = render_plots(data)
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
        if is_scalar(val):
            lines.append(f"  {key}: {fmt(val)}")
        elif isinstance(val, dict):
            parts = [f"{k}={fmt(v)}" for k, v in val.items() if is_scalar(v)]
            parts += [
                f"{k}: " + " ".join(f"{kk}={fmt(vv)}" for kk, vv in v.items() if is_scalar(vv))
                for k, v in val.items()
                if isinstance(v, dict)
                and v
                and all(is_scalar(x) for x in v.values())
                and len(v) <= 6
            ]
            if parts:
                text = "; ".join(parts)
                lines.append(f"  {key}: {text[:160] + ('...' if len(text) > 160 else '')}")
    return lines


def finish_report(
    out_dir: str | Path, report: dict, meta: dict, validation: dict, t0: float, log
) -> dict:
    """The last step of ``deploy`` (both paths): ``meta`` (model, target, engine, nir) and the
    ``validation`` with the total time since ``t0`` added to the energy ``report``, written to
    ``out_dir`` and summarised through ``log``."""
    report.update(meta)
    validation["timing_s"]["deploy_total"] = round(time.perf_counter() - t0, 3)
    report["validation"] = validation
    write_report(out_dir, report)
    log(f"[deploy] report written to {out_dir}/report.md")
    log(summary_table(report))
    return report


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
    if t.get("split_layers") or t.get("relay_cores"):
        lines.append(
            f"fan-in splits: {t['split_layers']} layer(s), {t['psum_cores']:,} partial-sum cores, "
            f"+{t['extra_latency_steps']} hardware step(s); delay relays: {t['relay_cores']:,} "
            "cores (integer results unchanged)"
        )
    c45 = report.get("cmos45nm")
    if c45:
        lines.append(
            f"45 nm estimate: SNN {c45['energy_pj'] / 1e3:.4g} nJ, equivalent ANN "
            f"{c45['ann']['energy_pj'] / 1e3:.4g} nJ"
        )
    if report.get("validation"):
        lines += ["validation:"] + _headline(report["validation"])
    return "\n".join(lines)
