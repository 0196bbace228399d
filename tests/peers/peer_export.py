"""Run inside the peer environment (.venv-peers: snnTorch, norse, sinabs; NOT spikedet's env).

    python tests/peers/peer_export.py TOOL OUT_DIR

Builds a small conv SNN in TOOL (conv, pooling, flatten, dense, the tool's LIF or IF neuron)
with seeded weights, runs it in TOOL on a fixed binary input for T steps, exports it with
TOOL's own NIR exporter and writes OUT_DIR/{model.nir, input.npy ([T, B, 2, 8, 8]),
output.npy (the tool's output spikes [T, B, 5]), conventions.json (the dt and reset under which
the tool's run is the NIR graph's forward-Euler run, and what the exporter dropped)}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

T, B, SHAPE, CLASSES = 12, 4, (2, 8, 8), 5


def _seeded(net: nn.Module, gain: float) -> None:
    """Deterministic weights, scaled so every layer spikes on the test input."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # not the neurons' own parameters
                for p in m.parameters():
                    p.copy_((torch.rand(p.shape, generator=gen) - 0.45) * gain)


def _input() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random((T, B, *SHAPE)) < 0.3).astype(np.float32)


def snntorch_run(x: torch.Tensor):
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    def leaky(beta: float, shape: tuple, **kw):  # per-neuron arrays: nir's type inference
        return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.ones(shape),
                         init_hidden=True, reset_mechanism="zero", **kw)  # fmt: skip

    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        leaky(0.9, (4, 8, 8)),
        nn.AvgPool2d((2, 2), stride=(2, 2)),  # pairs: the exporter copies them as they are
        nn.Flatten(),
        nn.Linear(64, CLASSES),
        leaky(0.8, (CLASSES,), output=True),
    )
    _seeded(net, 1.2)
    utils.reset(net)
    out = []
    with torch.no_grad():
        for t in range(T):
            spk, _ = net(x[t])
            out.append(spk)
    utils.reset(net)
    graph = export_to_nir(net, x[0], ignore_dims=[0])  # x[0] is [B, ...]: drop the batch
    # snnTorch's exporter writes dt = 1e-4 with r = tau/dt (snntorch/export_nir.py)
    return graph, torch.stack(out), {"dt": 1e-4, "reset": "zero", "dropped": []}


def norse_run(x: torch.Tensor):
    import norse.torch as norse

    def lif(shape: tuple):  # per-neuron arrays: nir's type inference needs the shapes
        p = norse.LIFBoxParameters(
            tau_mem_inv=torch.full(shape, 100.0),
            v_th=torch.full(shape, 0.3),
            v_leak=torch.zeros(shape),
            v_reset=torch.zeros(shape),
        )
        return norse.LIFBoxCell(p)

    net = norse.SequentialState(
        nn.Conv2d(2, 4, 3, padding=1),
        lif((4, 8, 8)),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, CLASSES),
        lif((CLASSES,)),
    )
    _seeded(net, 4.0)
    out, state = [], None
    with torch.no_grad():
        for t in range(T):
            z, state = net(x[t], state)
            out.append(z)
    graph = norse.to_nir(net, x[0], dt=1e-3)
    # norse 1.1.0's exporter knows Conv2d, Linear and its neurons only: the pooling and the
    # Flatten come out as None nodes, which nir cannot write. They are put in here, as the
    # NIR nodes of those torch modules, and reported.
    dropped = []
    for name, node in list(graph.nodes.items()):
        if node is None:
            module = net[int(name)]
            dropped.append(type(module).__name__)
            if isinstance(module, nn.Flatten):
                graph.nodes[name] = nir.Flatten(input_type=None, start_dim=0, end_dim=-1)
            else:
                k = (module.kernel_size,) * 2
                graph.nodes[name] = nir.AvgPool2d(kernel_size=k, stride=k, padding=(0, 0))
    # and its Input keeps the sample's batch axis: the NIR type is the sample's shape
    graph.nodes["input"] = nir.Input(input_type=np.array(SHAPE))
    graph.nodes["output"] = nir.Output(output_type=np.array([CLASSES]))
    dropped.append("batch axis of the Input type")
    graph = nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, type_check=False)
    # norse writes tau = dt / tau_mem_inv (= dt * tau) and r = 1 (norse issue #411): its own
    # Euler step dt/tau then needs dt' / (dt * tau), i.e. dt' = dt**2 = 1e-6 in NIR terms.
    return graph, torch.stack(out), {"dt": 1e-6, "reset": "zero", "dropped": dropped}


def sinabs_run(x: torch.Tensor):
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike
    from sinabs.nir import to_nir

    def iaf():
        return sl.IAFSqueeze(batch_size=B, spike_threshold=torch.tensor(1.0),
                             spike_fn=SingleSpike, reset_fn=MembraneReset(), min_v_mem=None)  # fmt: skip

    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), iaf(), sl.SumPool2d(2), nn.Flatten(),
        nn.Linear(64, CLASSES, bias=False), iaf(),
    )  # fmt: skip
    _seeded(net, 1.0)
    xs = x.transpose(0, 1).reshape(B * T, *SHAPE)  # sinabs' squeezed layout: (B*T, ...)
    with torch.no_grad():
        out = net(xs).reshape(B, T, -1).transpose(0, 1)
        graph = to_nir(net, xs)
    # sinabs' IAF is discrete-time with r = 1: one step is dt = 1 (its spike test is v >= thr,
    # NIR's is v > thr: equal unless a membrane lands exactly on the threshold)
    return graph, out, {"dt": 1.0, "reset": "zero", "dropped": []}


def main() -> int:
    tool, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    x = _input()
    run = {"snntorch": snntorch_run, "norse": norse_run, "sinabs": sinabs_run}[tool]
    graph, out, conventions = run(torch.from_numpy(x))
    graph.infer_types()  # the exporters leave conv/pool/flatten types open; nir.write needs them
    nir.write(out_dir / "model.nir", graph)
    np.save(out_dir / "input.npy", x)
    np.save(out_dir / "output.npy", out.detach().numpy().reshape(T, B, -1).astype(np.float32))
    conventions["nodes"] = sorted(f"{k}:{type(v).__name__}" for k, v in graph.nodes.items())
    (out_dir / "conventions.json").write_text(json.dumps(conventions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
