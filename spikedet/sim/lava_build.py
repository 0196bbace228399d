"""Build the Lava process network of a QuantGraph (used by ``lava_worker``; ``.venv-lava`` only).

Lava's code computes everything it can express exactly (docs/semantics.md §3.8):
- neurons: ``cuba`` and ``li`` populations, and EMS ``lif`` populations that
  ``spikedet.sim.lava_lif`` accepts, are Lava's own ``LIFReset`` (``PyLifResetModelBitAcc``;
  with reset by subtraction its subclass that replaces only the reset, and a constant
  ``u_bias`` as a source into its ``a_in``: ``lava_cuba``); I-LIF, the other ``lif``
  populations, max-pool and readout populations are our processes (``lava_procs``);
- synapses: Lava's ``Conv`` (``PyConvModelFixed``), and Lava's ``Dense``
  (``PyDenseModelBitAcc``) for a synapse whose kernel covers its whole source map (a netx dense
  layer) when netx's weight preparation makes it exact (``dense_args``).

Lava's LIF has no enable gate (§3.3: a population is idle before its depth). It is given a
``LIFReset`` that zeroes u and v right before its logical step 0 of every sample (and every
``reset_interval`` steps after), so what it computes before that is discarded: its spikes reach
every consumer before the consumer's own logical step 0 (delays align the paths), where the
consumer resets or, for our processes, ignores input outside its window. A lagged synapse
(§4.4) delivers its source's step t - L at step t, so its spikes go through a delay line that
forwards only what the source sent inside its own window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from spikedet.sim.lava_lif import LavaLif, lava_lif
from spikedet.sim.qgraph import QPopulation, QSynapse, QuantGraph

# Lava's Conv model stores ``groups`` in an int8 Var; larger values wrap (see to_lava_groups).
LAVA_MAX_GROUPS = 127
DENSE_SUM_LIMIT = 1 << 23  # Lava's Dense does not wrap its sum to 24 bits as Conv does


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


def lava_lifs(qg: QuantGraph) -> dict[str, LavaLif]:
    """The populations Lava's LIF computes, with their parameters (``lava_lif``)."""
    out = {}
    for p in qg.populations:
        params, _ = lava_lif(qg, p)
        if params is not None:
            out[p.name] = params
    return out


def sample_period(qg: QuantGraph) -> int:
    """Hardware steps per sample: ``hw_steps`` plus the longest lag (what a lagged synapse
    sends in its source's last step arrives that much later), padded up to a multiple of every
    periodic reset interval, so that one LIFReset phase holds for every sample back to back."""
    intervals = [p.reset_interval for p in lava_lifs(qg).values() if p.reset_interval]
    step = math.lcm(*intervals) if intervals else 1
    steps = qg.hw_steps + max((s.lag for s in qg.synapses), default=0)
    return -(-steps // step) * step


def _xyc(values: np.ndarray, pop: QPopulation) -> np.ndarray:
    """A per-channel (C,) or per-neuron (C*H*W,) array as Lava's per-neuron (X, Y, C)."""
    if values.size == pop.shape[0]:
        chw = np.broadcast_to(values.reshape(-1, 1, 1), pop.shape)
    else:
        chw = values.reshape(pop.shape)
    return np.ascontiguousarray(chw.transpose(2, 1, 0))


def lif_process(p: QPopulation, params: LavaLif, period: int) -> object:
    """Lava's LIFReset for ``p``: u, v <- 0 before logical step 0 of each sample, then every
    ``reset_interval`` steps (Lava's time_step = hardware step + 1)."""
    from lava.proc.lif.process import LIFReset

    interval = params.reset_interval or period
    return LIFReset(
        shape=lava_shape(p.shape),
        du=params.du,
        dv=params.dv,
        vth=params.vth,
        bias_mant=_xyc(params.bias_mant, p).astype(np.int32),
        bias_exp=np.full(lava_shape(p.shape), params.bias_exp, dtype=np.int32),
        reset_interval=interval,
        reset_offset=(p.depth + 1) % interval,
        name=p.name,
    )


def dense_args(qg: QuantGraph, syn: QSynapse) -> dict | None:
    """Lava ``Dense`` arguments netx would pass for ``syn`` (weights prepared by netx's
    ``optimize_weight_bits``), when ``syn`` is a dense layer that Lava's Dense computes exactly;
    None: build it as a Conv. Exact: the kernel covers the source map (no padding, one group)
    into a (Cout, 1, 1) population, no sum can reach 2^23 (Dense does not wrap), and Lava's
    clip / truncation / exponent give back the weights (``netx_dense.lava_dense_weight``)."""
    from spikedet.convert.netx_dense import _netx_scale_bits, lava_dense_weight

    c, h, w = qg.src_shape(syn.src)
    c_out = syn.weight.shape[0]
    plain = syn.padding == (0, 0) and syn.groups == 1 and syn.dilation == (1, 1)
    if not plain or syn.weight.shape[1:] != (c, h, w) or syn.upsample != 1 or syn.out_offset:
        return None
    if qg.pop(syn.dst).shape != (c_out, 1, 1):
        return None
    peak = (1 << qg.input.bits) - 1 if syn.src == "input" else qg.pop(syn.src).D
    flat = syn.weight.reshape(c_out, -1)
    if int(np.abs(flat).max(initial=0)) * peak * flat.shape[1] >= DENSE_SUM_LIMIT:
        return None
    try:
        effective, exp = lava_dense_weight(flat)
        scale_bits, n, _ = _netx_scale_bits(flat)
    except ValueError:
        return None
    if not np.array_equal(effective, flat):
        return None
    return {
        "weights": (flat << scale_bits).astype(np.int32),
        "weight_exp": exp,
        "num_weight_bits": 8 - scale_bits - n,
        "num_message_bits": _message_bits(qg, syn.src),
        "name": syn.name,
    }


def _message_bits(qg: QuantGraph, src: str) -> int:
    """A synapse's ``num_message_bits`` as netx sets it: 0 (binary spikes, read as bool by
    Lava's Conv and Dense) from a binary source, the payload bits from graded ones."""
    if src == "input":
        return qg.input.bits
    return 0 if qg.pop(src).D == 1 else qg.message_bits


def build_network(
    qg: QuantGraph, data: np.ndarray, buffer_size: int, period: int
) -> tuple[object, dict[str, object], dict[str, object], dict, dict[str, str]]:
    """Create the Lava processes; return (source, {pop: process}, {pop: Extractor}, model map,
    {pop: the class that computes its neurons}).

    The model map pins every process instance to its model: keying by *instance* makes Lava's
    compiler skip its model search, which otherwise executes every sibling module of
    ``lava_procs`` for every process (slow, and it would import the whole ``spikedet.sim``).
    """
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.lif.models import PyLifResetModelBitAcc

    from spikedet.sim import lava_cuba as lc
    from spikedet.sim import lava_procs as lp

    model_map: dict = {Extractor: PyLoihiExtractorModel}
    source = lp.GradedSource(data=data, T=qg.T, period=period, name="input")
    model_map[source] = lp.PyGradedSourceModel
    pops, extractors, neuron_models = {}, {}, {}
    lifs = lava_lifs(qg)
    for p in qg.populations:
        if p.name in lifs:
            params = lifs[p.name]
            proc = lif_process(p, params, period)
            subtract = params.reset_mode == "subtract"
            model = lc.PySubtractResetModel if subtract else PyLifResetModelBitAcc
            if params.u_bias.size:  # a constant current beside the synapses (§4.5)
                rows = params.u_bias.reshape(-1, params.u_bias.shape[-1])
                rows = np.stack([_xyc(r, p) for r in rows]).astype(np.int32)
                bias = lc.ConstantCurrent(
                    rows=rows, depth=p.depth, period=period, name=f"{p.name}.u_bias"
                )
                model_map[bias] = lc.PyConstantCurrentModel
                bias.a_out.connect(proc.a_in)
        else:
            proc, model = _own_population(qg, p, period)
        if p.kind == "maxpool":
            pops[p.src].s_out.connect(proc.s_in)
        model_map[proc] = model
        neuron_models[p.name] = f"{model.__module__}.{model.__name__}"
        pops[p.name] = proc
        extractors[p.name] = Extractor(shape=lava_shape(p.shape), buffer_size=buffer_size)
        proc.s_out.connect(extractors[p.name].in_port)
    fanouts: dict[tuple[str, int, int, int], object] = {}  # (dst, offset, Cout, factor)
    delays: dict[tuple, object] = {}  # one delay line per (source, delay, gated), shared
    for syn in qg.synapses:
        out_port = source.s_out if syn.src == "input" else pops[syn.src].s_out
        if syn.delay > 0 or syn.lag:
            key = (syn.src, syn.delay, bool(syn.lag))
            if key not in delays:
                shape = lava_shape(qg.src_shape(syn.src))
                src_depth = 0 if syn.src == "input" else qg.pop(syn.src).depth
                window = (src_depth, qg.T, period) if syn.lag else (0, 0, 0)
                line = lp.SpikeDelay(
                    shape=shape, delay=syn.delay, window=window, name=f"{syn.name}.delay"
                )
                model_map[line] = lp.PySpikeDelayModel
                out_port.connect(line.s_in)
                delays[key] = line
            out_port = delays[key].s_out
        dst = pops[syn.dst]
        if _dense(qg, syn, out_port, dst, model_map):
            continue
        conv = _conv(qg, syn, model_map)
        out_port.connect(conv.s_in)
        c_out, (c, h, w) = syn.weight.shape[0], qg.pop(syn.dst).shape
        if syn.upsample == 1 and syn.out_offset == 0 and c_out == c:
            conv.a_out.connect(dst.a_in)
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
            fanout.a_out.connect(dst.a_in)
            fanouts[key] = fanout
        conv.a_out.connect(fanouts[key].a_in)
    return source, pops, extractors, model_map, neuron_models


def _dense(qg: QuantGraph, syn: QSynapse, out_port, dst, model_map: dict) -> bool:
    """Connect ``syn`` as Lava's Dense when ``dense_args`` allows it (netx's wiring: the source
    map flattened in (C, H, W) order, ``transpose([2, 1, 0]).flatten()`` of (X, Y, C))."""
    from lava.proc.dense.models import PyDenseModelBitAcc
    from lava.proc.dense.process import Dense

    args = dense_args(qg, syn)
    if args is None:
        return False
    dense = Dense(**args)
    model_map[dense] = PyDenseModelBitAcc
    out_port.transpose([2, 1, 0]).flatten().connect(dense.s_in)
    dense.a_out.reshape(lava_shape(qg.pop(syn.dst).shape)).connect(dst.a_in)
    return True


def _conv(qg: QuantGraph, syn: QSynapse, model_map: dict) -> object:
    from lava.proc.conv.models import PyConvModelFixed
    from lava.proc.conv.process import Conv

    weight, groups = to_lava_groups(syn.weight, syn.groups)
    conv = Conv(
        weight=to_lava_weight(weight),
        input_shape=lava_shape(qg.src_shape(syn.src)),
        padding=(syn.padding[1], syn.padding[0]),  # Lava wants (X, Y) = (W, H) order
        stride=(syn.stride[1], syn.stride[0]),
        dilation=(syn.dilation[1], syn.dilation[0]),
        groups=groups,
        num_message_bits=_message_bits(qg, syn.src),
        name=syn.name,
    )
    model_map[conv] = PyConvModelFixed
    return conv


def _own_population(qg: QuantGraph, p: QPopulation, period: int) -> tuple[object, type]:
    """Our Lava process (``lava_procs``) of population ``p`` and its fixed_pt model."""
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
