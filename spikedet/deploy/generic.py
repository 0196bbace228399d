"""`spikedet deploy MODEL.nir --input X.npy [--labels Y.npy]`: any NIR network, no dataset.

The graph is either spikedet's own (§2, parsed by ``nir_read.from_nir``) or any other tool's
(§4, ``nir_generic.parse_generic``, under the dt / reset / input-scale conventions of
``--dt`` / ``--reset`` / ``--input-scale``; each value assumed is named on ONE warning line).
Then, as the detection path: quantize for the target, map onto cores, run the ``fixed``
engine on every sample (and ``lava`` on the first ``--samples``), run the float reference on
the same input, and write the report (mapping, per-layer activity and energy, validation:
spike agreement per population, output error, accuracy from ``--labels``).
Nothing is written until the report is complete. No torch at import.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError


def warn(text: str) -> None:
    print(f"spikedet: warning: {text}", file=sys.stderr)


def _prepare(opts: Any) -> tuple[Any, Any, dict, np.ndarray, np.ndarray | None, Any]:
    """(graph, float graph, info, x float [T, B, C, H, W], labels, conventions)."""
    from spikedet.deploy.generic_input import load_input, load_labels
    from spikedet.deploy.nir_flat import flatten, read_any, shape_of
    from spikedet.deploy.nir_generic import Conventions, is_generic, parse_generic
    from spikedet.deploy.nir_graph import plain
    from spikedet.deploy.nir_read import from_nir

    path = Path(opts.nir_path)
    graph, type_error = read_any(path)
    meta = plain(graph.metadata if isinstance(graph.metadata, dict) else {})
    nodes, _ = flatten(graph)
    inputs = [n for n, v in nodes.items() if type(v).__name__ == "Input"]
    if len(inputs) != 1:
        raise SpikedetError(f"the graph needs one Input node, found {len(inputs)}", str(path))
    in_shape = shape_of(nodes[inputs[0]].input_type["input"])
    x, inline_labels, data_dt = load_input(Path(opts.input), in_shape, inputs[0], opts.dt)
    labels = load_labels(opts.labels, inline_labels, x.shape[1])
    T = int(x.shape[0])
    conv = Conventions(opts.dt, opts.reset, opts.input_scale, data_dt)
    if is_generic(meta):
        fg, info = parse_generic(graph, T, conv, str(path))
    else:
        if type_error is not None and not meta.get("spikedet.format"):
            raise SpikedetError(f"NIR type check failed: {type_error}", str(path))
        fg = from_nir(graph, str(path))
        if fg.T != T:
            raise SpikedetError(
                f"input has {T} steps, the graph was trained with spikedet.T={fg.T}", "--input"
            )
        own_dt = float(meta.get("dt", 1e-4))  # §2: the step our exporter wrote the graph at
        if conv.dt is not None and abs(conv.dt - own_dt) > 1e-12 * own_dt:
            raise SpikedetError(f"a spikedet graph runs at its own dt = {own_dt:g} s", "--dt")
        if conv.reset not in (None, "zero"):
            raise SpikedetError("a spikedet graph defines its own resets (§2)", "--reset")
        conv.dt, conv.reset = own_dt, "zero"
        conv.input_scale = conv.input_scale or fg.input_scale
        fg.input_scale = conv.input_scale
        info = None
    x5 = x.reshape(T, x.shape[1], *fg.input_shape)
    return graph, fg, info, x5, labels, conv


def _reference(graph: Any, fg: Any, info: Any, x: np.ndarray, conv: Any, batch: int) -> dict:
    """Float run: spikes per population reshaped to the integer layout [T, B, C, H, W] and
    readout floats in the integer model's unit (final value; mean over T for §2.4 readouts)."""
    import torch

    from spikedet.convert.nir_torch import NIRExecutor

    ex = NIRExecutor(graph, device="cpu", dtype=torch.float64, dt=conv.dt, reset=conv.reset)
    spikes: dict[str, list[np.ndarray]] = {}
    reads: dict[str, list[np.ndarray]] = {}
    in_shape = ex.input_shapes[ex.inputs[0]]
    sums = info.sums if info is not None else {}
    for start in range(0, x.shape[1], batch):
        part = x[:, start : start + batch]
        part = part.reshape(part.shape[0], part.shape[1], *in_shape)
        res = ex.run(torch.as_tensor(part), record=bool(sums))
        for name, s in res.spikes.items():
            spikes.setdefault(name, []).append(s.numpy())
        for name, r in res.readouts.items():
            reads.setdefault(name, []).append(r.numpy())
        for name, out in sums.items():  # an Output fed by a linear layer: its sum over T
            reads.setdefault(name, []).append(res.node_outputs[out].sum(0).numpy())
    pops = {p.name: p for p in fg.populations}
    out_spikes = {
        n: np.concatenate(v, axis=1).reshape(x.shape[0], x.shape[1], *pops[n].shape)
        for n, v in spikes.items()
        if n in pops
    }
    out_reads = {
        n: np.concatenate(v, axis=0).reshape(x.shape[1], *pops[n].shape)
        for n, v in reads.items()
        if n in pops
    }
    return {"spikes": out_spikes, "readouts": out_reads}


def _readout_floats(qg: Any, result: Any, generic: bool) -> dict[str, np.ndarray]:
    """Integer readouts in float units: the final value (generic I) or its mean over T (§2.4)."""
    from spikedet.sim.interface import readout_floats

    floats = readout_floats(qg, result)
    return {k: v * qg.T for k, v in floats.items()} if generic else floats


def agreement(ref: dict, spikes: dict, readouts: dict) -> dict:
    """Per population: equal fraction and mean |difference| of spike values; per readout:
    max / mean absolute error; overall: value-weighted spike agreement."""
    pops, equal, count = {}, 0, 0
    for name, s_int in spikes.items():
        if name not in ref["spikes"]:
            continue
        delta = np.abs(ref["spikes"][name].astype(np.int64) - s_int)
        pops[name] = {
            "equal_fraction": float(np.mean(delta == 0)),
            "mean_abs_diff": float(delta.mean()),
            "spikes_reference": int(ref["spikes"][name].sum()),
            "spikes_integer": int(s_int.sum()),
        }
        equal, count = equal + int(np.count_nonzero(delta == 0)), count + delta.size
    reads = {}
    for name, r_int in readouts.items():
        if name in ref["readouts"]:
            err = np.abs(ref["readouts"][name].astype(np.float64) - r_int)
            reads[name] = {"max_abs_err": float(err.max()), "mean_abs_err": float(err.mean())}
    return {
        "overall_spike_agreement": equal / count if count else 1.0,
        "populations": pops,
        "readouts": reads,
    }


def _first(result: Any, n: int) -> Any:
    """The first ``n`` samples of an engine result."""
    from spikedet.sim.interface import EngineResult

    return EngineResult(
        spikes={k: v[:, :n] for k, v in result.spikes.items()},
        readouts={k: v[:n] for k, v in result.readouts.items()},
        wall_s=result.wall_s,
        engine=result.engine,
    )


def scores(spikes: dict, readouts: dict, outputs: list[str]) -> np.ndarray:
    """Per sample and class: spike counts over T of the output population, or its readout."""
    name = outputs[0]
    if name in spikes:
        s = spikes[name]
        return s.reshape(s.shape[0], s.shape[1], -1).sum(axis=0)
    r = readouts[name]
    return r.reshape(r.shape[0], -1)


def accuracy(score: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(score, axis=1) == labels))


def run_generic_deploy(opts: Any, log: Callable[[str], None] = print) -> dict:
    """The whole --input deploy; writes ``opts.out/report.{json,md}``; returns the report."""
    from spikedet.deploy.energy import count_activity, energy_report
    from spikedet.deploy.generic_input import to_integers
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.profiles import load_profile, resolve_target
    from spikedet.deploy.quantize import quantize
    from spikedet.deploy.report import finish_report
    from spikedet.sim.interface import compare
    from spikedet.sim.registry import available_engine, get_engine

    t0 = time.perf_counter()
    profile, cmos = resolve_target(opts.target), load_profile("cmos45nm")
    lava = available_engine("lava") if opts.engine in ("lava", "both") else None
    graph, fg, info, x, labels, conv = _prepare(opts)
    generic = info is not None
    outputs = info.outputs if generic else [p.name for p in fg.populations][-1:]
    try:
        qg = quantize(
            fg, weight_bits=int(profile.weight_bits), state_bits=int(profile.state_bits),
            max_delay=None,
        )  # fmt: skip
    except SpikedetError as err:  # name the file too (quantize names the layer)
        raise SpikedetError(err.what, f"{opts.nir_path}: {err.where}") from None
    limit = (1 << int(profile.delay_bits)) - 1
    for s in qg.synapses:  # a NIR Delay is a synaptic delay: it must fit the target's bits
        if s.lag and s.delay > limit:
            raise SpikedetError(
                f"needs a synaptic delay of {s.delay} steps (lag {s.lag}); {profile.name} has "
                f"{profile.delay_bits}-bit delays (at most {limit})",
                f"{opts.nir_path}: synapse {s.name}",
            )
    x_int = to_integers(x, qg.input.scale, qg.input.bits, str(opts.input))
    name = Path(opts.nir_path).name
    log(
        f"[deploy] {name}: {len(qg.populations)} populations, {len(qg.synapses)} synapses, "
        f"T={qg.T}, {x.shape[1]} sample(s), dt={conv.dt:g} s, reset={conv.reset}"
    )
    mapping = map_graph(qg, profile)
    if conv.assumed:  # once graph, input and mapping are accepted: an error stays one line
        warn("assumed " + "; ".join(conv.assumed))
    log(f"[deploy] mapped onto {profile.name}: {mapping.cores} cores on {mapping.chips} chip(s)")
    fixed_res = get_engine("fixed").run(qg, x_int)
    fixed_reads = _readout_floats(qg, fixed_res, generic)
    fixed_score = scores(fixed_res.spikes, fixed_reads, outputs)
    validation: dict = {
        "samples": int(x.shape[1]),
        "steps": int(qg.T),
        "input": str(opts.input),
        "conventions": {
            "dt_s": conv.dt,
            "reset": conv.reset,
            "input_scale": qg.input.scale,
            "assumed": list(conv.assumed),
        },  # fmt: skip
        "outputs": outputs,
        "output_total": {"fixed": float(fixed_score.sum())},
        "timing_s": {"fixed_total": round(fixed_res.wall_s, 4)},
    }
    accs: dict = {}
    if labels is not None:
        accs["fixed"] = accuracy(fixed_score, labels)
    if opts.reference:
        t_ref = time.perf_counter()
        ref = _reference(graph, fg, info, x / 1.0, conv, max(1, opts.batch))
        validation["timing_s"]["reference_total"] = round(time.perf_counter() - t_ref, 4)
        validation["reference_vs_fixed"] = agreement(ref, fixed_res.spikes, fixed_reads)
        ref_score = scores(ref["spikes"], ref["readouts"], outputs)
        validation["output_total"]["reference"] = float(ref_score.sum())
        validation["output_max_abs_err"] = float(np.abs(ref_score - fixed_score).max())
        if labels is not None:
            accs["reference"] = accuracy(ref_score, labels)
        agree = validation["reference_vs_fixed"]["overall_spike_agreement"]
        log(f"[deploy] reference (float64, cpu) vs fixed: spike agreement {agree:.4f}")
    if lava is not None:
        n = max(1, min(opts.samples, x_int.shape[1]))
        lava_res = lava.run(qg, x_int[:, :n])
        cmp = compare(_first(fixed_res, n), lava_res)
        validation["lava_vs_fixed"] = {"samples": n, **cmp}
        validation["timing_s"]["lava_total"] = round(lava_res.wall_s, 4)
        log(f"[deploy] lava vs fixed: {cmp['total_mismatches']} mismatches over {n} sample(s)")
    if accs:
        validation["accuracy"] = accs
        log("[deploy] accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    activity = count_activity(qg, fixed_res.spikes, x_int)
    report = energy_report(qg, mapping, activity, profile, cmos)
    model = fg.metadata.get("spikedet.model", Path(opts.nir_path).stem)
    meta = {"model": model, "target": opts.target, "engine": opts.engine, "nir": str(opts.nir_path)}
    return finish_report(opts.out, report, meta, validation, t0, log)
