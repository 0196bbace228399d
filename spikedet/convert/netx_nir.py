"""A parsed netx network (``spikedet.convert.netx``) as a NIR graph and as a QuantGraph.

docs/semantics.md §3.6 and §5. Both forms carry Lava's exact integers; the NIR graph is also
the float counterpart (dt = 1, one float unit of membrane = one weight unit = 64 Loihi state
units, because Loihi shifts the synaptic input and the threshold left by 6):

- the netx input layer (a LIF driven by bias_mant = the sample) becomes the graph ``Input``
  (the sample, presented every step) -> a 1x1 identity ``Conv2d`` -> the input neuron with
  bias 0; exact because the reader only accepts input layers with du = 4095, where
  u_t = x_t << 6 equals Lava's bias term x << 6;
- conv -> ``Conv2d`` (the file's kernel, cross-correlation), dense -> ``Flatten`` (after a map)
  and ``Affine`` (the weights Lava really applies, ``netx_dense``);
- neuron, with b = bias_mant * 2^(bias_exp - 6) in weight units:
  du = 4095 (no current memory), dv > 0: ``LIF`` tau = 4096/dv, r = tau, v_leak = 0, and b as
  the synapse's bias; du = 4095, dv = 0: ``IF`` r = 1, b as the synapse's bias;
  du < 4095, dv > 0: ``CubaLIF`` tau_syn = 4096/(du+1), w_in = tau_syn, tau_mem = 4096/dv,
  r = tau_mem, v_leak = b * r (a voltage bias), synapse bias 0; v_threshold = vth, v_reset 0.
  Every neuron node carries ``metadata["loihi"]`` = {du, dv, vth, bias_exp, bias (per-channel
  mantissas), reset_interval, reset_offset, theta = 64}: the integers ``quantize`` uses as they
  are.
"""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from spikedet.convert.netx import NetxLayer, NetxNet
from spikedet.deploy.quantize import assign_depths
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

THETA = 64  # state units per weight unit (Loihi's 6-bit MSB alignment)
INPUT_BITS = 8  # the sample travels as 8-bit graded input messages (0..255)


def _bias(layer: NetxLayer) -> np.ndarray:
    channels = layer.shape[0]
    return np.zeros(channels, np.int64) if layer.bias is None else layer.bias.astype(np.int64)


def loihi_params(layer: NetxLayer, reset_interval: int) -> dict:
    """The exact integers of a layer's neuron (the ``metadata["loihi"]`` of its NIR node)."""
    n = layer.neuron
    assert n is not None
    return {
        "kind": "cuba",
        "du": n.du,
        "dv": n.dv,
        "vth": n.vth,
        "bias_exp": n.bias_exp,
        "bias": _bias(layer),
        "reset_interval": int(reset_interval),
        "reset_offset": 0,  # netx resets list-layer i at Lava step i+1: our logical step 0
        "theta": THETA,
        "netx_layer": layer.index,
    }


def _sources(net: NetxNet) -> list[tuple[str, NetxLayer]]:
    """(source population name or "input", layer) for every population in order."""
    out, src = [], "input"
    for layer in net.layers:
        out.append((src, layer))
        src = layer.name
    return out


def _input_weight(channels: int) -> np.ndarray:
    return np.eye(channels, dtype=np.int64).reshape(channels, channels, 1, 1)


def to_quant_graph(net: NetxNet, T: int, reset_interval: int = 0) -> QuantGraph:
    """The QuantGraph Lava's netx ``Network(net, reset_interval=...)`` computes (§3.6)."""
    if T < 1:
        raise SpikedetError(f"T must be >= 1, got {T}", net.path)
    pops, syns = [], []
    for src, layer in _sources(net):
        p = loihi_params(layer, reset_interval)
        pops.append(
            QPopulation(
                name=layer.name,
                kind="cuba",
                shape=layer.shape,
                theta=THETA,
                bias=p["bias"],
                D=1,
                du=p["du"],
                dv=p["dv"],
                vth=p["vth"],
                bias_exp=p["bias_exp"],
                reset_interval=p["reset_interval"],
                metadata={"netx_layer": layer.index, "netx_type": layer.kind},
            )
        )
        weight = _input_weight(layer.shape[0]) if layer.kind == "input" else layer.weight
        syns.append(
            QSynapse(
                name=f"{layer.name}.{'synapse' if layer.kind == 'input' else layer.kind}",
                src=src,
                dst=layer.name,
                weight=weight,
                stride=layer.stride,
                padding=layer.padding,
                groups=layer.groups,
                dilation=layer.dilation,
            )
        )
    assign_depths(pops, syns)
    meta = {"netx": {"file": Path(net.path).name, "input_transform": net.input_transform}}
    return QuantGraph(T, QInput(net.input_shape, 1, INPUT_BITS), pops, syns, 1, meta)


def _full_conv(layer: NetxLayer) -> tuple[np.ndarray, dict]:
    """nir 1.0.8 cannot type-check a grouped Conv2d: store the equivalent full weight with
    exact zeros between groups and say so (docs/semantics.md §2.1)."""
    w, g = layer.weight, layer.groups
    assert w is not None
    if g == 1:
        return w, {}
    cout, cin_g = w.shape[:2]
    full = np.zeros((cout, cin_g * g, *w.shape[2:]), dtype=w.dtype)
    per = cout // g
    for k in range(g):
        full[k * per : (k + 1) * per, k * cin_g : (k + 1) * cin_g] = w[k * per : (k + 1) * per]
    return full, {"spikedet.groups": g, "spikedet.in_channels": cin_g * g}


def _neuron(layer: NetxLayer, nir_shape: tuple, loihi: dict) -> tuple[nir.NIRNode, np.ndarray]:
    """The neuron node and the float bias its synapse carries (weight units)."""
    n = layer.neuron
    assert n is not None
    bias = _bias(layer) * 2.0 ** (n.bias_exp - 6)
    full = np.ones(nir_shape, dtype=np.float32)
    meta = {"loihi": loihi}
    vth = full * n.vth
    if n.du == 4095 and n.dv > 0:
        tau = full * (4096.0 / n.dv)
        node = nir.LIF(tau=tau, r=tau, v_leak=0 * full, v_threshold=vth, metadata=meta)
        return node, bias
    if n.du == 4095:
        return nir.IF(r=full, v_threshold=vth, metadata=meta), bias
    if n.dv == 0:
        raise SpikedetError(
            "a current decay (iDecay < 4096) without voltage leak (vDecay = 0) has no NIR "
            "CubaLIF form",
            f"layer {layer.index} ({layer.kind})",
        )
    tau_syn, tau_mem = full * (4096.0 / (n.du + 1)), full * (4096.0 / n.dv)
    per_neuron = np.broadcast_to(bias.reshape(-1, *([1] * (len(nir_shape) - 1))), nir_shape)
    node = nir.CubaLIF(
        tau_syn=tau_syn,
        tau_mem=tau_mem,
        r=tau_mem,
        v_leak=(per_neuron * tau_mem).astype(np.float32),
        v_threshold=vth,
        w_in=tau_syn,
        metadata=meta,
    )
    return node, np.zeros_like(bias)


def to_nir(net: NetxNet, reset_interval: int = 0) -> nir.NIRGraph:
    """The NIR graph of ``net`` (module docstring)."""
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input({"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    prev, prev_shape = "input", net.input_shape
    for _, layer in _sources(net):
        nir_shape = (layer.shape[0],) if layer.kind == "dense" else layer.shape
        node, bias = _neuron(layer, nir_shape, loihi_params(layer, reset_interval))
        syn = f"{layer.name}.{'synapse' if layer.kind == 'input' else layer.kind}"
        if layer.kind == "dense":
            if len(prev_shape) == 3:  # a map: Affine reads it flattened in (C, H, W) order
                flat = f"{layer.name}.flatten"
                nodes[flat] = nir.Flatten({"input": np.array(prev_shape)}, 0, -1)
                edges.append((prev, flat))
                prev = flat
            weight = layer.weight.reshape(layer.shape[0], -1).astype(np.float32)
            nodes[syn] = nir.Affine(weight=weight, bias=bias.astype(np.float32))
        else:
            w, meta = (
                (_input_weight(layer.shape[0]), {}) if layer.kind == "input" else _full_conv(layer)
            )
            nodes[syn] = nir.Conv2d(
                input_shape=tuple(int(v) for v in prev_shape[1:]),
                weight=w.astype(np.float32),
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=1,
                bias=bias.astype(np.float32),
                metadata=meta,
            )
        edges += [(prev, syn), (syn, layer.name)]
        nodes[layer.name] = node
        prev, prev_shape = layer.name, nir_shape
    nodes["output"] = nir.Output({"output": np.array(prev_shape)})
    edges.append((prev, "output"))
    metadata = {
        "dt": 1.0,
        "spikedet.input_scale": 1,
        "spikedet.reset": "zero",
        "netx.file": Path(net.path).name,
        "netx.input_transform": dict(net.input_transform),
        "netx.reset_interval": int(reset_interval),
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
