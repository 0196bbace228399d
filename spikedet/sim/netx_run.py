"""Run a netx ``.net`` file with lava-dl's own ``netx.hdf5.Network`` (``.venv-lava`` only).

    python -m spikedet.sim.netx_run --net F.net --steps N --out OUT.npz [--states]
        [--reset-interval R [--reset-offset O] | --upstream-reset K]
        [--bias B.npy | --input X.npy [--input-bits b]]

The network is Intel's code end to end (netx builds Lava's LIF / LIFReset, Conv and Dense; Lava
``Loihi2SimCfg`` with ``fixed_pt`` picks their bit-accurate models); netx is imported through
``spikedet.sim.netx_shim``. Input: ``--bias`` sets the input layer's ``bias_mant`` (X, Y, C) as
upstream's tests do, or ``--input`` feeds graded input x (X, Y, C, N) to a net whose input layer
has no neuron, through Lava's ``RingBuffer`` (value x[..., n] at Lava step n + 1).
Resets: ``--reset-interval R`` / ``--reset-offset O`` are netx's ``Network(reset_interval=R,
reset_offset=O)``; ``--upstream-reset K`` is the reset of upstream's
``test_hdf5.py::test_tinynet`` (Lava ``io.reset.Reset`` of u and v of layer i, interval K,
offset i - 1). Every layer's spikes come back through an ``Extractor``;
with ``--states`` also the final u and v of every layer (``Var.get()``).

OUT.npz: ``spike__<i>`` int64 (N, X, Y, C) or (N, n) per netx layer i (0 = the first block),
``u__<i>`` / ``v__<i>`` (with ``--states``) and ``info`` (JSON). Errors: one line
``spikedet-netx: error: <what> (<where>)`` on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.sim.netx_shim import load_netx


def build(args: argparse.Namespace) -> tuple[object, object, list, dict]:
    """(netx Network, the process to run, [Extractor per layer], model map)."""
    from lava.proc import io
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel

    netx = load_netx()
    graded = args.input is not None
    net = netx.hdf5.Network(
        net_config=str(args.net),
        reset_interval=args.reset_interval or None,
        reset_offset=args.reset_offset,
        input_message_bits=args.input_bits if graded else 0,
    )
    if args.bias is not None:
        net.in_layer.neuron.bias_mant.init = np.load(args.bias).astype(int)
    if args.upstream_reset:
        for i, layer in enumerate(net.layers):
            for var in (layer.neuron.u, layer.neuron.v):
                io.reset.Reset(interval=args.upstream_reset, offset=i - 1).connect_var(var)
    extractors = []
    for layer in net.layers:
        ex = Extractor(shape=layer.out.shape, buffer_size=args.steps)
        layer.out.connect(ex.in_port)
        extractors.append(ex)
    if graded:
        source = io.source.RingBuffer(data=np.load(args.input).astype(np.int32))
        source.s_out.connect(net.inp)
    return net, net, extractors, {Extractor: PyLoihiExtractorModel}


def run(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict]:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    t0 = time.perf_counter()
    net, runner, extractors, model_map = build(args)
    arrays: dict[str, np.ndarray] = {}
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=model_map)
    try:
        with warnings.catch_warnings():
            # Lava's compiler tries every module beside a Process; the torch ones fail (harmless)
            warnings.filterwarnings("ignore", message="Cannot import module")
            runner.create_runtime(run_cfg=cfg)
        compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        runner.run(condition=RunSteps(num_steps=args.steps, blocking=True))
        run_s = time.perf_counter() - t1
        for i, ex in enumerate(extractors):
            frames = [ex.receive() for _ in range(args.steps)]
            arrays[f"spike__{i}"] = np.rint(np.stack(frames)).astype(np.int64)
        if args.states:
            for i, layer in enumerate(net.layers):
                arrays[f"u__{i}"] = np.asarray(layer.neuron.u.get()).astype(np.int64)
                arrays[f"v__{i}"] = np.asarray(layer.neuron.v.get()).astype(np.int64)
    finally:
        if runner.runtime is not None:
            runner.stop()
    info = {
        "layers": len(net.layers),
        "table": str(net),
        "steps": args.steps,
        "compile_s": compile_s,
        "run_s": run_s,
        "step_s": run_s / args.steps,
        "torch_imported": "torch" in sys.modules,
    }
    return arrays, info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spikedet-netx", description=__doc__.split("\n")[0])
    parser.add_argument("--net", required=True, type=Path)
    parser.add_argument("--steps", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--reset-interval", type=int, default=0)
    parser.add_argument("--reset-offset", type=int, default=0)
    parser.add_argument("--upstream-reset", type=int, default=0)
    parser.add_argument("--bias", type=Path, help="input layer bias_mant (X, Y, C) .npy")
    parser.add_argument("--input", type=Path, help="graded input (X, Y, C, N) .npy")
    parser.add_argument("--input-bits", type=int, default=8)
    parser.add_argument("--states", action="store_true", help="also the final u and v")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1:
            raise SpikedetError(f"--steps must be >= 1, got {args.steps}", "netx_run")
        if not args.net.is_file():
            raise SpikedetError("no such file", str(args.net))
        arrays, info = run(args)
        arrays["info"] = np.array(json.dumps(info))
        with atomic_path(args.out, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
    except Exception as err:  # Lava / netx failures keep the one-line contract
        if args.debug:
            traceback.print_exc()
        text = (
            err.one_line()
            if isinstance(err, SpikedetError)
            else f"{type(err).__name__}: {err} ({args.net})"
        )
        sys.stderr.write(f"spikedet-netx: error: {' '.join(text.split())}\n")
        return 2
    print(f"[netx] {info['layers']} layers, {1000 * info['step_s']:.1f} ms/step -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
