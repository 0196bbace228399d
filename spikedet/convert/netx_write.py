"""Write a chain-shaped QuantGraph as a lava-dl netx ``.net`` file (h5py, torch-free).

The layout is what lava-dl 0.6.0 reads (repository lava-nc/lava-dl at
d825ac506eb9bb91ea2b945116fb45a40e775451, ``src/lava/lib/dl/netx/hdf5.py`` ``Network._create``,
``create_input`` / ``create_conv`` / ``create_dense``, ``get_neuron_params``; ``utils.py``
``NetDict``): ``layer/<i>`` in chain order, each with ``type`` (a one-element byte string),
``shape`` (C, H, W) and, for neurons, ``neuron/{type, iDecay, vDecay, vThMant}`` (netx maps them
to Lava's LIF as du = iDecay - 1, dv = vDecay, vth = vThMant, bias_exp = 6):

- the graph input becomes an ``input`` layer. When the first population reads it through a
  1x1 identity synapse and has no bias (the form ``spikedet.convert.netx_nir`` reads), that
  population *is* the input layer (netx drives it with the sample as ``bias_mant``: the same
  numbers, since u = x << 6 with du = 4095); otherwise the input layer declares only the shape
  and the sample is fed as graded spikes into the first conv;
- a synapse whose kernel covers its whole source map, into a (Cout, 1, 1) population, becomes a
  ``dense`` layer (after a ``flatten`` when it reads a map) if Lava's Dense computes it exactly
  through netx's weight preparation (``netx_dense.lava_dense_weight`` gives back the weights),
  any other synapse a ``conv`` layer (torch-layout kernel: netx's flip and Lava's convolution
  cancel);
- biases are mantissas for bias_exp 6: b * 2^(bias_exp - 6) must be an integer of 13 bits.

Populations must be ``cuba`` or EMS ``lif`` ones Lava's LIF computes exactly (``lava_lif``);
the graph must be a chain (netx has no shortcuts, sums, concatenation, pooling or upsampling):
anything else is refused with one SpikedetError naming the first offending node.
``NetxPlan`` says how to run the file so that it computes what the graph computes
(docs/semantics.md §3.9).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from spikedet.convert.netx_dense import lava_dense_weight
from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.sim.lava_lif import LavaLif, lava_lif
from spikedet.sim.qgraph import QPopulation, QSynapse, QuantGraph

NETX_BIAS_EXP = 6
BIAS_LIMIT = 1 << 12


@dataclass(frozen=True)
class NetxPlan:
    """How to run the written file: ``Network(net, reset_interval=..., reset_offset=...)``,
    ``steps`` Lava steps; input ``"bias"`` (the sample as the input layer's bias_mant, X, Y, C)
    or ``"graded"`` (x[..., n] at Lava step n + 1, ``input_message_bits`` = ``input_bits``).
    netx block i (0 = first) handles logical step t at Lava step index t + i + ``shift``."""

    input: str
    input_bits: int
    reset_interval: int
    reset_offset: int
    shift: int
    steps: int
    populations: tuple[str, ...]


def _fail(what: str, where: str) -> None:
    raise SpikedetError(f"{what}: netx builds chains of LIF layers only", where)


def _is_identity(syn: QSynapse, channels: int) -> bool:
    eye = np.eye(channels, dtype=np.int64).reshape(channels, channels, 1, 1)
    plain = syn.stride == (1, 1) and syn.padding == (0, 0) and syn.groups == 1
    return plain and syn.weight.shape == eye.shape and np.array_equal(syn.weight, eye)


def _mantissa(params: LavaLif, pop: QPopulation) -> np.ndarray:
    """The bias mantissa for netx's bias_exp 6, as netx wants it: (C,) or (X, Y, C)."""
    exp = params.bias_exp - NETX_BIAS_EXP
    bias = params.bias_mant.astype(np.int64)
    if exp < 0 and np.any(bias % (1 << -exp)):
        _fail(f"bias_exp {params.bias_exp} < 6 with a bias netx's exponent 6 cannot hold",
              f"population {pop.name}")  # fmt: skip
    mant = bias << exp if exp >= 0 else bias >> -exp
    if mant.size and int(np.abs(mant).max()) >= BIAS_LIMIT:
        _fail("the bias mantissa for bias_exp 6 exceeds 13 bits", f"population {pop.name}")
    if mant.size == pop.shape[0]:
        return mant
    return mant.reshape(pop.shape).transpose(2, 1, 0)


def _neuron_group(group: h5py.Group, params: LavaLif) -> None:
    cfg = group.create_group("neuron")
    cfg.create_dataset("type", data=b"LOIHI", dtype=h5py.string_dtype("ascii"))
    cfg.create_dataset("iDecay", data=params.du + 1)
    cfg.create_dataset("vDecay", data=params.dv)
    cfg.create_dataset("vThMant", data=params.vth)


def _type(group: h5py.Group, name: str) -> None:
    group.create_dataset("type", data=np.array([name.encode()], dtype="S10"))


def _dense_weight(qg: QuantGraph, syn: QSynapse) -> np.ndarray | None:
    """The (out, in) matrix when ``syn`` is a dense layer Lava's Dense computes exactly."""
    c, h, w = qg.src_shape(syn.src)
    c_out = syn.weight.shape[0]
    plain = syn.padding == (0, 0) and syn.groups == 1 and syn.dilation == (1, 1)
    if not plain or syn.weight.shape[1:] != (c, h, w) or qg.pop(syn.dst).shape != (c_out, 1, 1):
        return None
    flat = syn.weight.reshape(c_out, -1)
    try:
        effective, _ = lava_dense_weight(flat)
    except ValueError:
        return None
    return flat if np.array_equal(effective, flat) else None


def _chain(qg: QuantGraph) -> list[tuple[QPopulation, QSynapse, LavaLif]]:
    """Populations in chain order with their one synapse and Lava LIF parameters."""
    out, prev = [], "input"
    for pop in qg.populations:
        where = f"population {pop.name}"
        params, why = lava_lif(qg, pop)
        if params is None:
            _fail(why, where)
        if pop.kind == "li" or params.reset_mode != "zero" or params.u_bias.size:
            _fail("a readout, reset by subtraction or a current bias (no netx form)", where)
        incoming = qg.incoming(pop.name)
        if len(incoming) != 1:
            _fail(f"{len(incoming)} incoming synapses (a shortcut or sum)", where)
        syn = incoming[0]
        if syn.src != prev:
            _fail(f"reads {syn.src}, not the previous layer {prev}", f"synapse {syn.name}")
        extras = syn.delay or syn.lag or syn.out_offset or syn.upsample != 1
        if extras or syn.weight.shape[0] != pop.shape[0]:
            _fail("a delay, channel range or upsampling", f"synapse {syn.name}")
        out.append((pop, syn, params))
        prev = pop.name
    if not out:
        raise SpikedetError("the graph has no population", "QuantGraph")
    intervals = {p.reset_interval for _, _, p in out}
    if len(intervals) > 1:
        _fail(f"reset intervals {sorted(intervals)} differ (netx has one)", "QuantGraph")
    return out


def plan_netx(qg: QuantGraph) -> tuple[list, NetxPlan]:
    """The layers to write ([(kind, population, synapse, params, dense weight)]) and the plan."""
    chain = _chain(qg)
    first_pop, first_syn, first_params = chain[0]
    bias_form = (
        _is_identity(first_syn, qg.input.shape[0])
        and not first_params.bias_mant.any()
        and first_params.du == 4095
        and qg.input.bits <= 12
    )
    layers, reads_flat = [], False
    for pop, syn, params in chain[1:] if bias_form else chain:
        dense = _dense_weight(qg, syn)
        if reads_flat and dense is None:
            _fail("a conv cannot read a dense layer", f"synapse {syn.name}")
        layers.append(("dense" if dense is not None else "conv", pop, syn, params, dense))
        reads_flat = reads_flat or dense is not None
    interval = chain[0][2].reset_interval
    n = len(chain)
    shift = 0 if bias_form else 1
    plan = NetxPlan(
        input="bias" if bias_form else "graded",
        input_bits=qg.input.bits,
        # without a periodic reset, one reset right before each layer's logical step 0 (netx
        # otherwise lets the bias run from Lava step 1): an interval longer than the run
        reset_interval=interval or qg.T + n + 1,
        reset_offset=shift,
        shift=shift,
        steps=qg.T + n - 1 + shift,
        populations=tuple(p.name for p, _, _ in chain),
    )
    return [("input", first_pop, first_syn, first_params, None), *layers], plan


def write_netx(qg: QuantGraph, path: str | Path) -> NetxPlan:
    """Write ``qg`` as a netx ``.net`` file (atomically); return how to run it."""
    layers, plan = plan_netx(qg)
    with atomic_path(path, suffix=".net") as tmp, h5py.File(tmp, "w") as f:
        top = f.create_group("layer")
        index = 0
        first = top.create_group("0")
        _type(first, "input")
        first.create_dataset("shape", data=np.array(qg.input.shape))
        if plan.input == "bias":
            _neuron_group(first, layers[0][3])
        prev_shape = qg.input.shape
        for kind, pop, syn, params, dense in layers[1:]:
            if kind == "dense" and prev_shape[1:] != (1, 1):
                index += 1
                flat = top.create_group(str(index))
                _type(flat, "flatten")
                flat.create_dataset("shape", data=np.array([1, 1, int(np.prod(prev_shape))]))
            index += 1
            group = top.create_group(str(index))
            _layer(group, kind, pop, syn, params, dense)
            prev_shape = pop.shape
        sim = f.create_group("simulation")
        sim.create_dataset("Ts", data=1)
        sim.create_dataset("tSample", data=qg.T)
        f.attrs["spikedet.netx_plan"] = json.dumps(asdict(plan))
    return plan


def _layer(group: h5py.Group, kind: str, pop, syn: QSynapse, params: LavaLif, dense) -> None:
    _type(group, kind)
    group.create_dataset("shape", data=np.array(pop.shape))
    _neuron_group(group, params)
    group.create_dataset("bias", data=_mantissa(params, pop).astype(np.float32))
    if kind == "dense":
        group.create_dataset("weight", data=dense.astype(np.float32))
        group.create_dataset("inFeatures", data=dense.shape[1])
        group.create_dataset("outFeatures", data=dense.shape[0])
        return
    group.create_dataset("weight", data=syn.weight.astype(np.float32))
    group.create_dataset("stride", data=np.array(syn.stride))
    group.create_dataset("padding", data=np.array(syn.padding))
    group.create_dataset("dilation", data=np.array(syn.dilation))
    group.create_dataset("groups", data=syn.groups)
    group.create_dataset("inChannels", data=syn.weight.shape[1] * syn.groups)
    group.create_dataset("outChannels", data=syn.weight.shape[0])
    group.create_dataset("kernelSize", data=np.array(syn.weight.shape[2:]))
