"""``benchmarks/engines.py --lava [--quick]``: time per step of the `fixed` engine vs the Lava
engine on the same quantized graphs.

Graphs: spikeyolo-pico at 64 px (random weights, exported to NIR and quantized for loihi2) and
a ~100k-neuron conv net (64x64x2 -> conv3x3 16 -> I-LIF -> conv3x3/2 32 -> I-LIF, T=8). Both
engines get the same QuantGraph and input; the spikes must be identical; printed: wall time per
hardware step (Lava: its own step timer, compile excluded) and per inference. Goal: `fixed`
>= 100x faster than Lava with identical spikes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def conv_net(rng: np.random.Generator, T: int = 8):
    """64x64x2 graded input -> 16 ch (3x3) -> 32 ch (3x3 stride 2): 98,304 I-LIF neurons."""
    from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

    pops = [
        QPopulation(
            "l1", "ilif", (16, 64, 64), theta=512, bias=np.zeros(16), D=4, dv=3072, depth=1
        ),
        QPopulation(
            "l2", "ilif", (32, 32, 32), theta=256, bias=np.zeros(32), D=4, dv=3072, depth=2
        ),
    ]
    syns = [
        QSynapse("c1", "input", "l1", rng.integers(-64, 65, (16, 2, 3, 3)), (1, 1), (1, 1)),
        QSynapse("c2", "l1", "l2", rng.integers(-64, 65, (32, 16, 3, 3)), (2, 2), (1, 1)),
    ]
    return QuantGraph(
        T=T, input=QInput((2, 64, 64), scale=1, bits=8), populations=pops, synapses=syns
    )


def pico_graph():
    """spikeyolo-pico (random init, BN in eval mode) -> NIR -> quantized for loihi2."""
    import torch

    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.deploy.nir_read import read_nir
    from spikedet.deploy.quantize import quantize
    from spikedet.train.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("spikeyolo-pico").eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pico.nir"
        write_nir(export_model(model), path)
        return quantize(read_nir(path))


def bench_lava(name: str, qg, x: np.ndarray, lava, repeats: int) -> dict:
    from spikedet.sim.fixed import FixedEngine
    from spikedet.sim.interface import compare

    fixed = FixedEngine()
    fixed.run(qg, x)  # warm-up
    times = []
    for _ in range(repeats):  # best of: the machine is shared, the minimum is the engine's cost
        t0 = time.perf_counter()
        res_fixed = fixed.run(qg, x)
        times.append(time.perf_counter() - t0)
    fixed_inf = min(times) / len(x)
    res_lava = lava.run(qg, x)
    lava_step = float(res_lava.info["step_s"])
    return {
        "graph": name,
        "neurons": sum(p.size for p in qg.populations),
        "T": qg.T,
        "hw_steps": qg.hw_steps,
        "fixed_ms_per_inference": 1000 * fixed_inf,
        "fixed_ms_per_step": 1000 * fixed_inf / qg.hw_steps,
        "lava_ms_per_step": 1000 * lava_step,
        "lava_ms_per_inference": 1000 * lava_step * qg.hw_steps,
        "lava_compile_s": float(res_lava.info["compile_s"]),
        "speedup": lava_step * qg.hw_steps / fixed_inf,
        "mismatches": compare(res_fixed, res_lava)["total_mismatches"],
    }


def lava_main(quick: bool) -> int:
    from spikedet.sim.lava_engine import LavaEngine

    lava = LavaEngine()
    ok, why = lava.available()
    if not ok:
        print(why, file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    pico = pico_graph()
    x_pico = rng.integers(0, 256, (2, *pico.input.shape))
    rows = [bench_lava("spikeyolo-pico 64px", pico, x_pico, lava, repeats=5)]
    net = conv_net(rng, T=2 if quick else 8)
    x_net = rng.integers(0, 4, (1, 2, 64, 64))
    rows.append(bench_lava("conv 64x64x2->16->32/2", net, x_net, lava, 1 if quick else 10))
    head = (
        f"{'graph':24} {'neurons':>8} {'T':>2} {'steps':>5} {'fixed ms/step':>13} "
        f"{'lava ms/step':>12} {'fixed ms/inf':>12} {'lava ms/inf':>11} {'speedup':>8} "
        f"{'mismatch':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['graph']:24} {r['neurons']:>8,} {r['T']:>2} {r['hw_steps']:>5} "
            f"{r['fixed_ms_per_step']:>13.3f} {r['lava_ms_per_step']:>12.1f} "
            f"{r['fixed_ms_per_inference']:>12.2f} {r['lava_ms_per_inference']:>11.0f} "
            f"{r['speedup']:>7.0f}x {r['mismatches']:>8}"
        )
    compiles = ", ".join(f"{r['lava_compile_s']:.1f}" for r in rows)
    print(f"fixed: per sample over a batch; lava: its step timer, compile excluded ({compiles} s)")
    return 0
