"""``spikedet map``: does a network fit a target, on how many cores and chips, at what energy.

    spikedet map MODEL.nir|MODEL.net --target loihi2 [--imgsz S] [--rates REPORT.json]
                 [--rate R] [--json]

No dataset and no simulation: the graph is read (a NIR export is quantized to the target's
weight bits; a lava-dl netx ``.net`` keeps its integers), optionally resized to S x S input
(fully convolutional graphs), mapped (``spikedet.deploy.mapping``), and priced at firing rates
(``spikedet.deploy.estimate``): the per-layer rates of a deploy report (``--rates``, its
``report.json``) where given, otherwise one assumed rate (``--rate``, default 0.1), printed
as assumed. Per layer: neurons, cores, tile, neurons / memory / axons per core and what binds
(the largest share of a per-core limit). ``--json`` prints the figures as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spikedet.errors import SpikedetError

DEFAULT_RATE = 0.1  # spikes per neuron per step; PilotNet on silicon: about 0.1 (lava-dl data)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="cores, chips, energy and latency of a network on a target")
    p.add_argument("model", help="a NIR export (.nir) or a lava-dl netx network (.net)")
    p.add_argument("--target", default="loihi2", help="hardware profile name or YAML path")
    p.add_argument("--imgsz", type=int, default=None, help="map at this square input size")
    p.add_argument("--rates", default=None, help="a deploy report.json: its measured rates")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="assumed firing rate")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def load_graph(path: Path, weight_bits: int, state_bits: int):
    """A QuantGraph of a ``.net`` (integers kept) or ``.nir`` (quantized) file."""
    if not path.is_file():
        raise SpikedetError("model file not found", str(path))
    if path.suffix == ".net":
        from spikedet.convert.netx import read_netx
        from spikedet.convert.netx_nir import to_quant_graph

        # the graph Lava's netx builds (the same one `deploy` runs), 16 steps as Intel's runs
        return to_quant_graph(read_netx(path), T=16)
    from spikedet.deploy.nir_read import read_nir
    from spikedet.deploy.quantize import quantize

    return quantize(read_nir(path), weight_bits=weight_bits, state_bits=state_bits, max_delay=None)


def read_rates(path: str) -> dict[str, float]:
    """Per-layer firing rates of a deploy report (``report.json``: energy layers)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        layers = data["energy"]["layers"] if "energy" in data else data["layers"]
        return {ly["name"]: float(ly["firing_rate"]) for ly in layers if "firing_rate" in ly}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpikedetError(
            f"not a deploy report with per-layer firing rates ({err})", path
        ) from None


def layer_rows(mapping, profile) -> list[dict]:
    rows = []
    for lm in mapping.layers:
        shares = {
            "neurons": lm.neurons_per_tile / profile.neurons_per_core,
            "synaptic memory": lm.syn_mem_bits_per_tile / profile.synaptic_memory_bits,
            "fan-in axons": lm.fan_in_axons_per_tile / profile.fan_in_axons,
            "fan-out cores": lm.fan_out_cores / profile.fan_out_axons,
        }
        rows.append({
            "name": lm.name, "kind": lm.kind, "shape": list(lm.shape), "neurons": lm.neurons,
            "cores": lm.cores, "tiles": lm.tiles, "tile": list(lm.tile_shape),
            "neurons_per_core": lm.neurons_per_tile,
            "syn_mem_kib_per_core": lm.syn_mem_bits_per_tile / 8192,
            "fan_in_axons": lm.fan_in_axons_per_tile, "fan_out_cores": lm.fan_out_cores,
            "partial_sum_cores": sum(x.tiles for x in lm.psums),
            "relay_cores": sum(x.tiles for x in lm.relays),
            "binds": max(shares, key=shares.get), "share": max(shares.values()),
        })  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> int:
    from spikedet.deploy.estimate import estimate, resize
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.profiles import resolve_target

    t0 = time.perf_counter()
    profile = resolve_target(args.target)
    qg = load_graph(Path(args.model), profile.weight_bits, profile.state_bits)
    if args.imgsz is not None:
        qg = resize(qg, args.imgsz)
    rates = read_rates(args.rates) if args.rates else {}
    t1 = time.perf_counter()
    mapping = map_graph(qg, profile)
    t2 = time.perf_counter()
    est = estimate(qg, mapping, profile, rates, args.rate, bool(rates))
    t3 = time.perf_counter()
    rows = layer_rows(mapping, profile)
    out = {
        "model": str(args.model), "target": profile.name, "input": list(qg.input.shape),
        "T": qg.T, "cores": mapping.cores, "chips": mapping.chips,
        "cores_per_chip": profile.cores_per_chip, "hw_depth": mapping.hw_depth,
        "split_layers": mapping.split_layers, "layers": rows, "estimate": est,
        "notices": profile.notices, "seconds": time.perf_counter() - t0,
        "stage_seconds": {"read": t1 - t0, "map": t2 - t1, "estimate": t3 - t2},
    }  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=1, default=float))
    else:
        print(render(out))
    return 0


def render(out: dict) -> str:
    est = out["estimate"]
    c, h, w = out["input"]
    lines = [
        f"{out['model']} on {out['target']}: input {c}x{h}x{w}, T={out['T']}: "
        f"{out['cores']:,} cores on {out['chips']:,} chip(s) ({out['cores_per_chip']} cores "
        f"per chip), {len(out['split_layers'])} fan-in split layer(s), hardware depth "
        f"{out['hw_depth']}",
        "",
        "| layer | kind | shape | neurons | cores | tile (C,H,W) | neurons/core | syn KiB/core "
        "| fan-in | fan-out | binds |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in out["layers"]:
        lines.append(
            f"| {r['name']} | {r['kind']} | {'x'.join(map(str, r['shape']))} | {r['neurons']:,} "
            f"| {r['cores']:,} | {'x'.join(map(str, r['tile']))} | {r['neurons_per_core']:,} | "
            f"{r['syn_mem_kib_per_core']:.1f} | {r['fan_in_axons']:,} | {r['fan_out_cores']:,} "
            f"| {r['binds']} ({100 * r['share']:.0f} %) |"
        )
    how = "measured (deploy report)" if est["rates_measured"] else "ASSUMED"
    lines += [
        "",
        f"Firing rate: {how}; {est['rate']:.3g} spikes per neuron per step where not measured.",
        f"Energy per inference: {est['energy_total_pj'] * 1e-6:.4g} uJ "
        f"(dynamic {est['dynamic_pj'] * 1e-6:.4g} uJ: {est['synops']:.3g} synops, "
        f"{est['updates']:.3g} neuron updates, {est['messages']:.3g} messages; static "
        f"{est['energy_static_pj'] * 1e-6:.4g} uJ); latency {est['latency_us']:.4g} us "
        f"({est['hw_steps']} steps), {est['inferences_per_s']:.4g} inferences/s.",
        *[f"Note: {n}" for n in out["notices"]],
        "({:.1f} s: read {read:.1f}, map {map:.1f}, estimate {estimate:.1f})".format(
            out["seconds"], **out["stage_seconds"]
        ),
    ]
    return "\n".join(lines)
