"""FloatGraph -> QuantGraph: the integer model of docs/semantics.md §3.1 and the timing of §3.3.

Per population P (I-LIF, LIF or readout), with alpha folded into every incoming weight and bias
and input weights divided by input_scale (the input arrives as x_int = x * input_scale):

    sigma = w_max / max_e max|W_e|,   theta = 2 * floor(sigma / 2),   w_max = 2^(bits-1) - 1
    W_q = round_half_even(W_e * theta),   b_q = round_half_even(theta * sum_e b_e)
    dv  = round(4096 * (1 - beta))  (12-bit decay; readouts never decay, dv = 0)

so that one float unit of membrane is theta state units. A LIF population's theta is further
restricted so that its threshold V_th * theta is an integer (``lif_theta``). A synapse keeps
its compact weight; its bias adds into channels out_offset .. out_offset + Cout - 1. A maxpool
population has no synapse, weight, bias or theta (theta = 0); it copies its source's D.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np

from spikedet.deploy.depths import DEFAULT_MAX_DELAY, assign_depths
from spikedet.deploy.nir_graph import FloatGraph, FPopulation, plain
from spikedet.deploy.quantize_cuba import loihi_population
from spikedet.deploy.quantize_nir import float_cuba_population
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import DECAY_BITS, STATE_BITS, QInput, QPopulation, QSynapse, QuantGraph

STATE_MAX = (1 << (STATE_BITS - 1)) - 1  # largest membrane value (clip24)
MAX_THRESHOLD_DENOMINATOR = 256  # V_th = p/q with q up to this (lif_theta)
THRESHOLD_RTOL = 1e-6  # V_th read from float32 NIR arrays: relative noise allowed in p/q


def decay_of(beta: float) -> int:
    """dv = round(4096 * (1 - beta)), held to the 12-bit range (beta = 0 would give 4096)."""
    return min(round((1 << DECAY_BITS) * (1.0 - beta)), (1 << DECAY_BITS) - 1)


def lif_theta(sigma: float, threshold: float, where: str) -> tuple[int, int]:
    """(theta, vth) of a LIF population whose weights allow a scale up to ``sigma``.

    Rule: write V_th as the fraction p/q in lowest terms with the smallest q <= 256 that
    matches it to 1e-6 relative (float32 files); with m = lcm(2, q), theta = m * floor(sigma / m)
    (the largest multiple of m not above sigma: even, as every theta, and V_th * theta is an
    integer) and vth = p * theta / q exactly. V_th = 0.5 (EMS-YOLO) gives the I-LIF rule
    theta = 2 * floor(sigma / 2) and vth = theta / 2. A V_th no such fraction matches, or a
    sigma below m, is a SpikedetError.
    """
    threshold = float(threshold)  # numpy scalars too (Fraction takes Python floats only)
    frac = Fraction(threshold).limit_denominator(MAX_THRESHOLD_DENOMINATOR)
    if abs(float(frac) - threshold) > THRESHOLD_RTOL * max(1.0, abs(threshold)):
        raise SpikedetError(
            f"threshold V_th={threshold!r} is not a fraction p/q with q <= "
            f"{MAX_THRESHOLD_DENOMINATOR}, so no integer V_th * theta exists",
            where,
        )
    step = math.lcm(2, frac.denominator)
    theta = step * math.floor(sigma / step)
    if theta < 2:
        raise SpikedetError(
            f"V_th={frac} needs a membrane scale theta that is a multiple of {step}, but the "
            f"weights allow at most {sigma:.4g}",
            where,
        )
    return theta, int(frac * theta)


def _maxpool_population(pop: FPopulation) -> QPopulation:
    """§3.2: no state, bias or theta; s_t = maxpool(s_src,t) (depth set by assign_depths)."""
    return QPopulation(
        name=pop.name,
        kind="maxpool",
        shape=pop.shape,
        theta=0,
        bias=np.zeros(pop.shape[0], dtype=np.int64),
        D=int(pop.D),
        src=pop.src,
        pool_kernel=pop.pool_kernel,
        pool_stride=pop.pool_stride,
        pool_padding=pop.pool_padding,
    )


def _json_safe(obj: object) -> object:
    return json.loads(json.dumps(plain(obj), default=str))


def quantize(
    fg: FloatGraph,
    weight_bits: int = 8,
    state_bits: int = STATE_BITS,
    input_bits: int = 8,
    max_delay: int | None = DEFAULT_MAX_DELAY,
) -> QuantGraph:
    """Quantize ``fg`` per §3.1 and assign depths and delays per §3.3 (a delay above
    ``max_delay`` is an error; None: no limit, e.g. when the mapper relays long delays)."""
    if state_bits != STATE_BITS:
        raise SpikedetError(
            f"state_bits={state_bits} is not supported; the integer model has {STATE_BITS}-bit "
            "state (docs/semantics.md §3)",
            "quantize",
        )
    if not 2 <= weight_bits <= 16:
        raise SpikedetError(f"weight_bits must be in 2..16, got {weight_bits}", "quantize")
    if not 1 <= input_bits <= 16:
        raise SpikedetError(f"input_bits must be in 1..16, got {input_bits}", "quantize")
    if max_delay is not None and max_delay < 0:
        raise SpikedetError(f"max_delay must be >= 0, got {max_delay}", "quantize")
    input_scale = int(round(fg.input_scale))
    if abs(fg.input_scale - input_scale) > 1e-9 or input_scale < 1:
        raise SpikedetError(
            f"input_scale must be a positive integer (x_int = x * scale), got {fg.input_scale}",
            "input",
        )
    w_max = (1 << (weight_bits - 1)) - 1

    qpops: list[QPopulation] = []
    qsyn_by_name: dict[str, QSynapse] = {}
    for pop in fg.populations:
        if pop.kind == "maxpool":
            qpops.append(_maxpool_population(pop))
            continue
        incoming = [s for s in fg.synapses if s.dst == pop.name]
        if pop.kind in ("cuba", "li"):  # Lava's exact integers (§3.6) or a NIR neuron (§4.5)
            if pop.loihi is not None:
                qpop, cuba_syns = loihi_population(pop, incoming, fg.input_scale)
            else:
                qpop, cuba_syns = float_cuba_population(pop, incoming, input_scale, w_max)
            qpops.append(qpop)
            qsyn_by_name.update({s.name: s for s in cuba_syns})
            continue
        # alpha folded in; the input arrives multiplied by input_scale, so its weights shrink.
        folded = [
            (s, s.weight * pop.alpha / (input_scale if s.src == "input" else 1)) for s in incoming
        ]
        peak = max(float(np.max(np.abs(w))) if w.size else 0.0 for _, w in folded)
        where = f"population {pop.name}"
        if peak == 0.0:
            raise SpikedetError(
                "all incoming weights are zero; its scale theta is undefined", where
            )
        sigma = w_max / peak
        vth = 0
        if pop.kind == "lif":
            theta, vth = lif_theta(sigma, pop.threshold, where)
        else:
            theta = 2 * math.floor(sigma / 2)
        if theta < 2:
            raise SpikedetError(
                f"incoming weights up to {peak:.4g} (alpha folded) do not fit {weight_bits}-bit "
                "weights with a membrane scale theta >= 2",
                where,
            )
        top = {"ilif": (2 * pop.D - 1) * theta // 2, "lif": abs(vth)}.get(pop.kind, theta)
        if top >= STATE_MAX:  # tiny weights: spike level D (u > (D - 1/2) theta) out of reach
            raise SpikedetError(
                f"membrane scale theta={theta} needs more than {STATE_BITS}-bit state "
                f"(weights up to {peak:.3g} are too small for {weight_bits}-bit quantization)",
                where,
            )
        bias = np.zeros(pop.shape[0])
        for s, w in folded:
            qsyn_by_name[s.name] = QSynapse(
                name=s.name,
                src=s.src,
                dst=s.dst,
                weight=np.rint(w * theta).astype(np.int64),
                stride=s.stride,
                padding=s.padding,
                groups=s.groups,
                out_offset=s.out_offset,
                upsample=s.upsample,
            )
            bias[s.out_offset : s.out_offset + s.bias.size] += s.bias
        bias *= pop.alpha
        neuron = pop.kind in ("ilif", "lif")
        qpops.append(
            QPopulation(
                name=pop.name,
                kind=pop.kind,
                shape=pop.shape,
                theta=theta,
                bias=np.rint(bias * theta).astype(np.int64),
                D=int(pop.D) if neuron else 0,
                dv=decay_of(pop.beta) if neuron else 0,
                vth=vth,
                metadata={
                    "beta": float(pop.beta) if neuron else 1.0,
                    "alpha": float(pop.alpha),
                    "scale": float(theta),  # state units per float membrane unit
                    "sigma": float(sigma),
                    "max_abs_weight": peak,
                    **({"threshold": float(pop.threshold)} if pop.kind == "lif" else {}),
                },
            )
        )
    qsyns = [qsyn_by_name[s.name] for s in fg.synapses]
    for s, q in zip(fg.synapses, qsyns):
        q.lag = s.lag  # NIR recurrent edges and Delay nodes (§4.4)
    assign_depths(qpops, qsyns, max_delay)
    max_d = max((p.D for p in qpops if p.kind != "readout"), default=1)
    return QuantGraph(
        T=int(fg.T),
        input=QInput(shape=fg.input_shape, scale=input_scale, bits=input_bits),
        populations=qpops,
        synapses=qsyns,
        message_bits=int(max_d).bit_length(),  # = ceil(log2(max D + 1))
        metadata=_json_safe(
            {
                "weight_bits": weight_bits,
                "state_bits": state_bits,
                "input_bits": input_bits,
                "max_delay": max_delay,
                "input_scale": fg.input_scale,
                "head": fg.head,
                "graph": fg.metadata,
            }
        ),
    )
