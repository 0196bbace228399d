"""Forward + backward time of multi-step neuron layers: spikedet vs spikingjelly, snnTorch, norse.

Shape [T, B, C, H, W] = [4, 8, 64, 80, 80] by default (one SpikeYOLO stage at 640 px, batch 8).
Each layer gets the same seeded input (requires_grad) and is timed on
``y = layer(x); y.sum().backward()``, median of ``--repeat`` interleaved runs after a warm-up.
Peers are configured as close to our neurons as their APIs allow (decay 0.25, threshold 0.5,
hard reset for LIF); peers that are not importable are skipped with a note. Run it from a venv
that holds the peers (see the report / Makefile ``bench`` extra), e.g.

    .venv-bench/bin/python benchmarks/neurons.py --threads 1

spikedet itself is imported from this checkout (the script puts the repo root on sys.path), so
the peer venv only needs torch and the peer packages (`make bench` builds it as .venv-bench).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikedet.train.neurons import ILIF, LIF  # noqa: E402

BETA, V_TH = 0.25, 0.5
Layer = Callable[[Tensor], Tensor]


def ours_lif() -> Layer:
    return LIF(beta=BETA, threshold=V_TH)


def ours_ilif() -> Layer:
    return ILIF(levels=4, beta=BETA, alpha=1.0)


def spikingjelly_lif() -> Layer:
    """LIFNode, multi-step, pure-torch path: tau = 1/(1 - beta) without input decay."""
    from spikingjelly.activation_based import neuron

    node = neuron.LIFNode(
        tau=1.0 / (1.0 - BETA),
        decay_input=False,
        v_threshold=V_TH,
        v_reset=0.0,
        detach_reset=True,
        step_mode="m",
    )
    if "torch" in (getattr(node, "supported_backends", None) or ()):
        node.backend = "torch"  # spikingjelly 0.0.0.0.x; 2.x has only the torch path here

    def run(x: Tensor) -> Tensor:
        node.reset()
        return node(x)

    return run


def snntorch_lif() -> Layer:
    """snntorch.Leaky with zero reset, stepped over T (its documented multi-step usage)."""
    import snntorch

    leaky = snntorch.Leaky(beta=BETA, threshold=V_TH, reset_mechanism="zero")

    def run(x: Tensor) -> Tensor:
        mem = leaky.init_leaky()
        out = []
        for t in range(x.shape[0]):
            spk, mem = leaky(x[t], mem)
            out.append(spk)
        return torch.stack(out)

    return run


def norse_lif() -> Layer:
    """norse LIFBoxCell (LIF without synaptic current): decay dt*tau_mem_inv = 1 - beta."""
    import norse.torch as nt

    params = nt.LIFBoxParameters(
        tau_mem_inv=torch.tensor((1.0 - BETA) / 1e-3), v_th=torch.tensor(V_TH)
    )
    cell = nt.LIFBoxCell(params, dt=1e-3)

    def run(x: Tensor) -> Tensor:
        state = None
        out = []
        for t in range(x.shape[0]):
            spk, state = cell(x[t], state)
            out.append(spk)
        return torch.stack(out)

    return run


LAYERS: dict[str, Callable[[], Layer]] = {
    "spikedet LIF (EMS)": ours_lif,
    "spikedet I-LIF (D=4)": ours_ilif,
    "spikingjelly LIFNode (torch)": spikingjelly_lif,
    "snntorch Leaky": snntorch_lif,
    "norse LIFBoxCell": norse_lif,
}
OURS = ("spikedet LIF (EMS)", "spikedet I-LIF (D=4)")


def time_layers(layers: dict[str, Layer], shape: tuple[int, ...], repeat: int) -> dict[str, float]:
    """Median seconds of forward + backward (sum of outputs) on a seeded input, per layer.

    Layers are interleaved within every repeat (round robin), so load changes on a shared
    machine hit all of them alike; the first round is a warm-up and is not timed.
    """
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(shape, generator=gen)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for k in range(repeat + 1):
        for name, layer in layers.items():
            x = base.clone().requires_grad_(True)
            start = time.perf_counter()
            layer(x).sum().backward()
            if k > 0:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=5, default=[4, 8, 64, 80, 80])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    layers: dict[str, Layer] = {}
    for name, make in LAYERS.items():
        try:
            layers[name] = make()
        except ImportError as err:
            print(f"skip {name}: not importable ({err})")
    results = time_layers(layers, shape, args.repeat)
    peers = {n: t for n, t in results.items() if n not in OURS}
    fastest_peer = min(peers.values()) if peers else None
    print(
        f"\nforward+backward, shape [T,B,C,H,W]={list(shape)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeat}"
    )
    print(f"{'layer':30s} {'ms':>9s} {'fastest peer / this':>20s}")
    for name, seconds in results.items():
        ratio = f"{fastest_peer / seconds:.2f}x" if fastest_peer else "n/a"
        print(f"{name:30s} {seconds * 1e3:9.1f} {ratio:>20s}")
    if not peers:
        print("no peer importable: install spikingjelly, snntorch, norse to compare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
