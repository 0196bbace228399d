"""Run a QuantGraph with Intel Lava (``Loihi2SimCfg``, ``fixed_pt``); runs only in ``.venv-lava``.

    python -m spikedet.sim.lava_worker --graph G.npz --input X.npy --out OUT.npz [--debug]

The input holds integers ``x_int``: [B, C, H, W] (static, repeated for each logical step) or
[T, B, C, H, W]. One Lava network is built for the graph (docs/semantics.md §3.3):
``GradedSource`` -> [``SpikeDelay``] -> Lava ``Conv`` -> [``SynapseFanout``: upsampling and
channel range] -> population ``a_in`` (an InPort fed by several Convs sums them); a maxpool
population reads its source's ``s_out`` directly (it adds the step of latency itself); every
population's ``s_out`` -> an ``Extractor`` read once per step by this host process
(``Var.get()`` costs ~35 µs per element, so it is never used).

A channel range is a pass-through placement, not zero weight rows: Lava's Conv computes every
output channel in every step. Lava's ``Dense`` / ``Sparse`` are not used: their fixed_pt models
(lava-nc 0.10.0) keep the dendritic sum in int32 without the 24-bit wrap of ``Conv`` and
truncate mixed-sign 8-bit weights to even values, so a synapse built from them is not §3.2.

The B samples run back to back, ``qg.hw_steps`` hardware steps each, in the same network: the
gating in ``lava_procs`` resets every population between samples, and Conv buffers and delay
rings are empty at each boundary (every source is silent in a period's last steps), so this
equals one fresh network per sample.

OUT.npz: ``spike__<pop>`` int64 [T, B, C, H, W] for spiking populations (hardware steps
depth..depth+T-1), ``readout__<pop>`` int64 [B, C, H, W] (v_{T-1}) for readouts, and ``info``
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
from spikedet.sim.qgraph import QPopulation, QuantGraph

# Extractor channels hold up to CHUNK steps of every population between two host reads; this
# caps their shared memory (8 bytes per neuron and step, the Extractor sends float64).
EXTRACT_BUFFER_BYTES = 256 << 20
# Lava's Conv model stores ``groups`` in an int8 Var; larger values wrap (see to_lava_groups).
LAVA_MAX_GROUPS = 127


def lava_shape(chw: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) -> Lava's (X, Y, C) = (W, H, C)."""
    c, h, w = (int(v) for v in chw)
    return (w, h, c)


def to_lava_weight(weight: np.ndarray) -> np.ndarray:
    """torch (Cout, Cin/g, KH, KW) -> Lava (Cout, KX, KY, Cin/g), spatially flipped.

    Lava's Conv computes a true convolution (scipy ``convolve2d``) where torch correlates, so
    the kernel is flipped on both spatial axes after the (0, 3, 2, 1) transpose.
    """
    return np.ascontiguousarray(weight.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :]).astype(np.int32)


def to_lava_groups(weight: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """Re-express a grouped conv with groups <= 127 (Lava keeps ``groups`` in int8).

    With g' the largest divisor of g not above 127 and m = g / g', each new group covers m old
    groups through a block-diagonal kernel (zeros between old groups), which is exact in integer
    arithmetic; the cost grows by m. ``weight`` is in torch layout (Cout, Cin/g, KH, KW).
    """
    if groups <= LAVA_MAX_GROUPS:
        return weight, groups
    new_groups = max(d for d in range(1, LAVA_MAX_GROUPS + 1) if groups % d == 0)
    merge = groups // new_groups
    c_out, c_in_g, kh, kw = weight.shape
    out_per_group = c_out // groups
    merged = np.zeros((c_out, c_in_g * merge, kh, kw), dtype=weight.dtype)
    for o in range(c_out):
        old_group = o // out_per_group
        slot = old_group % merge  # position of the old group inside its new group
        merged[o, slot * c_in_g : (slot + 1) * c_in_g] = weight[o]
    return merged, new_groups


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
        if depth[syn.dst] != depth[syn.src] + 1 + syn.delay:
            raise SpikedetError(
                f"depth({syn.dst})={depth[syn.dst]} != depth({syn.src})={depth[syn.src]} + 1 + "
                f"delay {syn.delay}",
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


def build_network(
    qg: QuantGraph, data: np.ndarray, buffer_size: int
) -> tuple[object, dict[str, object], dict[str, object], dict]:
    """Create the Lava processes; return (source, {pop: process}, {pop: Extractor}, model map).

    The model map pins our process instances to their models: keying by *instance* makes Lava's
    compiler skip its model search, which otherwise executes every sibling module of
    ``lava_procs`` for every process (slow, and it would import the whole ``spikedet.sim``).
    """
    from lava.proc.conv.models import PyConvModelFixed
    from lava.proc.conv.process import Conv
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel

    from spikedet.sim import lava_procs as lp

    period = qg.hw_steps
    model_map: dict = {Extractor: PyLoihiExtractorModel}
    source = lp.GradedSource(data=data, T=qg.T, period=period, name="input")
    model_map[source] = lp.PyGradedSourceModel
    pops, extractors = {}, {}
    for p in qg.populations:
        proc, model = _population_process(qg, p, period)
        if p.kind == "maxpool":
            pops[p.src].s_out.connect(proc.s_in)
        model_map[proc] = model
        pops[p.name] = proc
        extractors[p.name] = Extractor(shape=lava_shape(p.shape), buffer_size=buffer_size)
        proc.s_out.connect(extractors[p.name].in_port)
    fanouts: dict[tuple[str, int, int, int], object] = {}  # (dst, offset, Cout, factor)
    delays: dict[tuple[str, int], object] = {}  # one delay line per (source, delay), shared
    for syn in qg.synapses:
        out_port = source.s_out if syn.src == "input" else pops[syn.src].s_out
        shape = lava_shape(qg.src_shape(syn.src))
        if syn.delay > 0:
            key = (syn.src, syn.delay)
            if key not in delays:
                line = lp.SpikeDelay(shape=shape, delay=syn.delay, name=f"{syn.name}.delay")
                model_map[line] = lp.PySpikeDelayModel
                out_port.connect(line.s_in)
                delays[key] = line
            out_port = delays[key].s_out
        weight, groups = to_lava_groups(syn.weight, syn.groups)
        conv = Conv(
            weight=to_lava_weight(weight),
            input_shape=shape,
            padding=(syn.padding[1], syn.padding[0]),  # Lava wants (X, Y) = (W, H) order
            stride=(syn.stride[1], syn.stride[0]),
            groups=groups,
            num_message_bits=qg.input.bits if syn.src == "input" else qg.message_bits,
            name=syn.name,
        )
        model_map[conv] = PyConvModelFixed
        out_port.connect(conv.s_in)
        c_out, (c, h, w) = syn.weight.shape[0], qg.pop(syn.dst).shape
        if syn.upsample == 1 and syn.out_offset == 0 and c_out == c:
            conv.a_out.connect(pops[syn.dst].a_in)
            continue
        key = (syn.dst, syn.out_offset, c_out, syn.upsample)
        if key not in fanouts:
            fanout = lp.SynapseFanout(
                shape=lava_shape((c_out, h // syn.upsample, w // syn.upsample)),
                factor=syn.upsample,
                offset=syn.out_offset,
                channels=c,
                name=f"{syn.dst}.fanout{len(fanouts)}",
            )
            model_map[fanout] = lp.PySynapseFanoutModel
            fanout.a_out.connect(pops[syn.dst].a_in)
            fanouts[key] = fanout
        conv.a_out.connect(fanouts[key].a_in)
    return source, pops, extractors, model_map


def _population_process(qg: QuantGraph, p: QPopulation, period: int) -> tuple[object, type]:
    """The Lava process of population ``p`` and its fixed_pt model."""
    from spikedet.sim import lava_procs as lp

    if p.kind == "maxpool":
        proc = lp.MaxPoolPopulation(
            in_shape=lava_shape(qg.pop(p.src).shape),
            shape=lava_shape(p.shape),
            kernel=p.pool_kernel[::-1],  # Lava wants (X, Y) = (W, H) order
            stride=p.pool_stride[::-1],
            padding=p.pool_padding[::-1],
            depth=p.depth,
            T=qg.T,
            period=period,
            name=p.name,
        )
        return proc, lp.PyMaxPoolPopulationModel
    common = dict(
        shape=lava_shape(p.shape),
        bias=p.bias,
        theta=p.theta,
        depth=p.depth,
        T=qg.T,
        period=period,
        name=p.name,
    )
    if p.kind == "ilif":
        return lp.ILIFPopulation(D=p.D, dv=p.dv, **common), lp.PyILIFPopulationModel
    if p.kind == "lif":
        return lp.LIFPopulation(vth=p.vth, dv=p.dv, **common), lp.PyLIFPopulationModel
    return lp.ReadoutPopulation(**common), lp.PyReadoutPopulationModel


def run_graph(
    qg: QuantGraph, x_int: np.ndarray, log: Callable[[str], None] = lambda _: None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Simulate every sample; return (spikes [T,B,C,H,W], readouts [B,C,H,W], info)."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    check_graph(qg)
    data = to_lava_input(check_input(qg, x_int))
    batch, period, T = data.shape[0], qg.hw_steps, qg.T
    total = batch * period
    neurons = sum(p.size for p in qg.populations)
    chunk = int(max(1, min(total, EXTRACT_BUFFER_BYTES // (8 * neurons))))

    t0 = time.perf_counter()
    source, pops, extractors, model_map = build_network(qg, data, buffer_size=chunk)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=model_map)
    spikes = {
        p.name: np.zeros((T, batch, *p.shape), np.int64)
        for p in qg.populations
        if p.kind != "readout"
    }
    readouts = {
        p.name: np.zeros((batch, *p.shape), np.int64) for p in qg.populations if p.kind == "readout"
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
                        if p.kind != "readout":
                            spikes[p.name][t, sample] = chw
                        elif t == T - 1:
                            readouts[p.name][sample] = chw
            done += steps
            log(f"[lava] {done}/{total} steps")
        run_s = time.perf_counter() - t1
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
    }
    return spikes, readouts, info


def _lava_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lava-nc")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_result(out: Path, spikes: dict, readouts: dict, info: dict) -> None:
    arrays = {f"spike__{k}": v for k, v in spikes.items()}
    arrays.update({f"readout__{k}": v for k, v in readouts.items()})
    arrays["info"] = np.array(json.dumps(info))
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spikedet-lava", description=__doc__.split("\n")[0])
    parser.add_argument("--graph", required=True, type=Path, help="QuantGraph .npz")
    parser.add_argument("--input", required=True, type=Path, help="int input .npy")
    parser.add_argument("--out", required=True, type=Path, help="result .npz (written atomically)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        qg = QuantGraph.load(args.graph)
        try:
            x_int = np.load(args.input, allow_pickle=False)
        except Exception as err:
            raise SpikedetError(f"cannot read the input: {err}", str(args.input)) from None
        spikes, readouts, info = run_graph(qg, x_int, log=print)
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
