"""Run a QuantGraph with Intel Lava (``Loihi2SimCfg``, ``fixed_pt``); runs only in ``.venv-lava``.

    python -m spikedet.sim.lava_worker --graph G.npz --input X.npy --out OUT.npz [--debug]

The input holds integers ``x_int``: [B, C, H, W] (static, repeated for each logical step) or
[T, B, C, H, W]. One Lava network is built for the graph (``lava_build``, docs/semantics.md
§3.3 and §3.8): ``GradedSource`` -> [``SpikeDelay``] -> Lava ``Conv`` (or Lava ``Dense`` for a
netx dense layer) -> [``SynapseFanout``: upsampling and channel range] -> population ``a_in``
(an InPort fed by several synapses sums them). ``cuba`` populations and the EMS ``lif``
populations Lava can express are Lava's own ``LIFReset``; the others are our processes
(``lava_procs``). A maxpool population reads its source's ``s_out`` directly (it adds the step
of latency itself); every population's ``s_out`` -> an ``Extractor`` read once per step by this
host process (``Var.get()`` costs ~35 µs per element, so it is never used).

A channel range is a pass-through placement, not zero weight rows: Lava's Conv computes every
output channel in every step. Lava's ``Dense`` keeps its sum in int32 without the 24-bit wrap
of ``Conv`` and truncates weights by netx's rules, so it is used only where that is provably
exact (``lava_build.dense_args``).

The B samples run back to back, ``lava_build.sample_period`` hardware steps each (``hw_steps``
padded to a multiple of every periodic reset interval), in the same network: our processes hold
no state outside their window, Lava's LIFs are reset right before their logical step 0, and
anything a population sends outside its window reaches its consumers outside theirs (the
delays align every path), so this equals one fresh network per sample.

OUT.npz: ``spike__<pop>`` int64 [T, B, C, H, W] for spiking populations (hardware steps
depth..depth+T-1), ``readout__<pop>`` int64 [B, C, H, W] (v_{T-1}) for readouts (an ``li``
population's v read by a Lava ``Monitor`` on its LIF, §4.5),
``state__<u|v>__<pop>`` [T, B, C, H, W] for the populations of ``--states``, and ``info``
(JSON: compile and per-step seconds, steps). Errors: one line
``spikedet-lava: error: <what> (<where>)`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.sim.interface import check_input
from spikedet.sim.lava_build import build_network, lava_shape, sample_period, to_lava_groups
from spikedet.sim.lava_lif import lava_lif
from spikedet.sim.qgraph import CUBA_KINDS, READOUT_KINDS, QuantGraph

__all__ = ["check_graph", "lava_shape", "run_graph", "to_lava_groups"]

# Extractor channels hold up to CHUNK steps of every population between two host reads; this
# caps their shared memory (8 bytes per neuron and step, the Extractor sends float64).
EXTRACT_BUFFER_BYTES = 256 << 20


def check_graph(qg: QuantGraph) -> None:
    """Reject graphs Lava cannot run as §3 says: shapes, depths vs delays, int32 conv sums."""
    if qg.message_bits < 1 or qg.input.bits < 1:
        raise SpikedetError("graded messages need >= 1 payload bit", "QuantGraph message_bits")
    depth = {p.name: p.depth for p in qg.populations}
    depth["input"] = 0
    peak = {p.name: p.D for p in qg.populations}
    peak["input"] = (1 << qg.input.bits) - 1
    for p in qg.populations:
        # Lava compiles the processes connected to the one it runs; with an incoming synapse
        # (a maxpool: its source) each population hangs off the input (topological order).
        if p.kind == "maxpool":
            if p.depth != depth[p.src] + 1:
                raise SpikedetError(
                    f"depth({p.name})={p.depth} != depth({p.src})={depth[p.src]} + 1",
                    f"population {p.name}",
                )
        elif not qg.incoming(p.name):
            raise SpikedetError("population has no incoming synapse", f"population {p.name}")
        if p.kind in CUBA_KINDS and lava_lif(qg, p)[0] is None:
            raise SpikedetError(lava_lif(qg, p)[1], f"population {p.name}")
    for syn in qg.synapses:
        where = f"synapse {syn.name}"
        c_in, h, w = qg.src_shape(syn.src)
        dst = qg.pop(syn.dst)
        c_out = syn.weight.shape[0]
        if syn.weight.shape[1] * syn.groups != c_in or syn.out_offset + c_out > dst.shape[0]:
            raise SpikedetError(
                f"weight {syn.weight.shape} with groups={syn.groups} at channel offset "
                f"{syn.out_offset} does not map {c_in} -> {dst.shape[0]} channels",
                where,
            )
        if syn.output_shape((c_in, h, w))[1:] != dst.shape[1:]:
            raise SpikedetError(f"conv output does not match {dst.name} shape {dst.shape}", where)
        if depth[syn.dst] + syn.lag != depth[syn.src] + 1 + syn.delay:  # §3.3, lag §4.4
            lag = f" + lag {syn.lag}" if syn.lag else ""
            raise SpikedetError(
                f"depth({syn.dst})={depth[syn.dst]}{lag} != depth({syn.src})={depth[syn.src]} "
                f"+ 1 + delay {syn.delay}",
                where,
            )
        # Lava's Conv sums in float64 and casts to int32 before its 24-bit wrap; a sum of 2^31
        # or more does not wrap there (x86 numpy yields -2^31), so it cannot be exact.
        fan_in = int(np.prod(syn.weight.shape[1:]))
        w_max = int(np.abs(syn.weight).max()) if syn.weight.size else 0
        if w_max * peak[syn.src] * fan_in >= 1 << 31:
            raise SpikedetError(
                f"worst-case conv sum {w_max} x {peak[syn.src]} x {fan_in} reaches 2^31, beyond "
                "Lava's int32 Conv accumulator",
                where,
            )


def to_lava_input(x: np.ndarray) -> np.ndarray:
    """[T', B, C, H, W] (checked by engine.check_input) -> (B, T', X, Y, C) int32 for Lava."""
    return np.ascontiguousarray(x.transpose(1, 0, 4, 3, 2)).astype(np.int32)


def run_graph(
    qg: QuantGraph,
    x_int: np.ndarray,
    log: Callable[[str], None] = lambda _: None,
    states: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Simulate every sample; return (spikes [T,B,C,H,W], readouts [B,C,H,W], info).

    ``states``: populations computed by Lava's LIF whose u and v are recorded every step by
    Lava's ``Monitor`` (read back with ``Var.get()``, ~35 µs per value: keep them small);
    ``info["states"][pop]`` = {"u": ..., "v": ...} int64 [T, B, C, H, W], as the fixed engine's.
    """
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    check_graph(qg)
    data = to_lava_input(check_input(qg, x_int))
    batch, period, T = data.shape[0], sample_period(qg), qg.T
    total = batch * period
    neurons = sum(p.size for p in qg.populations)
    chunk = int(max(1, min(total, EXTRACT_BUFFER_BYTES // (8 * neurons))))

    t0 = time.perf_counter()
    source, pops, extractors, model_map, neuron_models = build_network(
        qg, data, buffer_size=chunk, period=period
    )
    li = [p.name for p in qg.populations if p.kind == "li" and p.name not in states]
    monitors = _monitors(qg, pops, neuron_models, [*states, *li], total, model_map)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=model_map)
    spikes = {
        p.name: np.zeros((T, batch, *p.shape), np.int64)
        for p in qg.populations
        if p.kind not in READOUT_KINDS
    }
    readouts = {
        p.name: np.zeros((batch, *p.shape), np.int64)
        for p in qg.populations
        if p.kind in READOUT_KINDS
    }
    try:
        source.create_runtime(run_cfg=cfg)
        compile_s = time.perf_counter() - t0
        log(
            f"[lava] compiled {len(model_map) + len(extractors) - 1} processes in "
            f"{compile_s:.2f} s; {batch} sample(s) x {period} steps"
        )
        t1 = time.perf_counter()
        done = 0
        while done < total:
            steps = min(chunk, total - done)
            source.run(condition=RunSteps(num_steps=steps, blocking=True))
            for g in range(done, done + steps):
                sample, h = divmod(g, period)
                for p in qg.populations:
                    frame = extractors[p.name].receive()
                    t = h - p.depth
                    if 0 <= t < T:
                        chw = np.rint(frame).astype(np.int64).transpose(2, 1, 0)
                        if p.kind not in READOUT_KINDS:
                            spikes[p.name][t, sample] = chw
                        elif t == T - 1 and p.kind == "readout":
                            readouts[p.name][sample] = chw
            done += steps
            log(f"[lava] {done}/{total} steps")
        run_s = time.perf_counter() - t1
        recorded = _read_monitors(qg, pops, monitors, period, batch)
        for name in [p.name for p in qg.populations if p.kind == "li"]:  # v_{T-1}: the readout
            readouts[name] = recorded[name]["v"][T - 1]
            if name in li:  # probed for the readout only
                del recorded[name]
    finally:
        if source.runtime is not None:
            source.stop()
    info = {
        "engine": "lava",
        "lava_version": _lava_version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "select_tag": "fixed_pt",
        "processes": len(model_map) + len(extractors) - 1,
        "neurons": neurons,
        "samples": batch,
        "steps": period,
        "total_steps": total,
        "chunk_steps": chunk,
        "compile_s": compile_s,
        "run_s": run_s,
        "step_s": run_s / total,
        "neuron_models": neuron_models,  # {population: the process model computing it}
        "dense_synapses": sorted(k.name for k in model_map if type(k).__name__ == "Dense"),
        "states": recorded,
    }
    return spikes, readouts, info


def _monitors(qg, pops, neuron_models, states, total: int, model_map: dict) -> dict:
    """{(pop, "u" | "v"): Lava Monitor probing that Var for ``total`` steps}."""
    from lava.proc.monitor.models import PyMonitorModel
    from lava.proc.monitor.process import Monitor

    monitors = {}
    for name in states:
        if not neuron_models.get(name, "").endswith(("PyLifResetModelBitAcc", "ResetModel")):
            raise SpikedetError(
                "state recording covers populations computed by Lava's LIF only",
                f"population {name}",
            )
        for q in ("u", "v"):
            monitor = Monitor()
            monitor.probe(getattr(pops[name], q), total)
            monitors[name, q] = monitor
    if monitors:
        model_map[Monitor] = PyMonitorModel
    return monitors


def _read_monitors(qg, pops, monitors: dict, period: int, batch: int) -> dict:
    out: dict[str, dict[str, np.ndarray]] = {}
    for (name, q), monitor in monitors.items():
        data = monitor.get_data()[pops[name].name][q]  # (total, X, Y, C)
        depth = qg.pop(name).depth
        frames = np.rint(np.asarray(data)).astype(np.int64).reshape(batch, period, *data.shape[1:])
        window = frames[:, depth : depth + qg.T].transpose(1, 0, 4, 3, 2)  # [T, B, C, H, W]
        out.setdefault(name, {})[q] = np.ascontiguousarray(window)
    return out


def _lava_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lava-nc")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_result(out: Path, spikes: dict, readouts: dict, info: dict) -> None:
    arrays = {f"spike__{k}": v for k, v in spikes.items()}
    arrays.update({f"readout__{k}": v for k, v in readouts.items()})
    for pop, quantities in info.pop("states", {}).items():
        arrays.update({f"state__{q}__{pop}": v for q, v in quantities.items()})
    arrays["info"] = np.array(json.dumps(info))
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spikedet-lava", description=__doc__.split("\n")[0])
    parser.add_argument("--graph", required=True, type=Path, help="QuantGraph .npz")
    parser.add_argument("--input", required=True, type=Path, help="int input .npy")
    parser.add_argument("--out", required=True, type=Path, help="result .npz (written atomically)")
    parser.add_argument("--states", default="", help="comma list: record u and v of these")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        qg = QuantGraph.load(args.graph)
        try:
            x_int = np.load(args.input, allow_pickle=False)
        except Exception as err:
            raise SpikedetError(f"cannot read the input: {err}", str(args.input)) from None
        states = [n for n in args.states.split(",") if n]
        spikes, readouts, info = run_graph(qg, x_int, log=print, states=states)
        info["torch_imported"] = "torch" in sys.modules
        save_result(args.out, spikes, readouts, info)
    except SpikedetError as err:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"spikedet-lava: error: {err.one_line()}\n")
        return 2
    except Exception as err:  # a Lava failure: keep the one-line contract, detail on --debug
        if args.debug:
            traceback.print_exc()
        text = " ".join(f"{type(err).__name__}: {err}".split())
        sys.stderr.write(f"spikedet-lava: error: {text} (lava run)\n")
        return 2
    print(
        f"[lava] wrote {args.out}: compile {info['compile_s']:.2f} s, "
        f"{1000 * info['step_s']:.1f} ms/step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
