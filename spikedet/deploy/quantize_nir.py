"""A NIR CubaLIF (float, §4.3) -> a ``cuba`` QPopulation (Loihi's CUBA LIF, §3.6) and QSynapses.

Float (per step, after the Euler discretisation of nir_generic):
    i_t = β_syn·i_{t-1} + x_t,   x_t = Σ_e W_e·s_e + b
    v_t = β·v_{t-1} + α·i_t + v_bias,   s_t = [v_t > V_th], then v_t <- 0
Integer (Lava's LIF): u_t = decay(u, du + 1) + (a_t << 6), v_t = decay(v, dv) + u_t + bias<<e.
With one float membrane unit = Θ = 64·σ state units, u = Θ·α·i, so a_t = σ·α·W·s:

    W_q = round(σ·α·W)    (input weights also / input_scale)
    σ   = the largest multiple of lcm(2, q) not above w_max / max|α·W| (V_th = p/q, q <= 256),
          so the threshold mantissa vth = V_th·σ is an exact integer (spike iff v > vth << 6),
          and at most the one that keeps vth within 17 bits
    du  = round(4096·(1 − β_syn)) − 1,   dv = min(round(4096·(1 − β)), 4095)
    bias<<e = Θ·(v_bias + α·b / (1 − β_syn)),  e the smallest exponent with a 13-bit mantissa.

The synaptic bias b: Loihi adds its bias to v, not to the current, so a constant drive into a
current with memory (β_syn > 0) is moved to v as its steady state α·b/(1 − β_syn); the float
and integer runs then differ only while β_syn^t is not negligible (documented, §4.5). With
β_syn = 0 (NIR LIF on this kind) it is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from spikedet.deploy.nir_graph import FPopulation, FSynapse
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QPopulation, QSynapse
from spikedet.sim.qgraph_cuba import CUBA_BIAS_BITS, CUBA_BIAS_EXP_MAX, CUBA_VTH_BITS

MSB = 64  # Loihi's 6-bit left alignment of the synaptic input and the threshold


def _threshold_fraction(threshold: float, where: str) -> Fraction:
    frac = Fraction(float(threshold)).limit_denominator(256)
    if abs(float(frac) - threshold) > 1e-6 * max(1.0, abs(threshold)) or frac < 0:
        raise SpikedetError(
            f"threshold {threshold!r} is not a non-negative fraction p/q with q <= 256", where
        )
    return frac


def _bias(total: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """(mantissa, exponent) of the integer bias ``total`` (rounded) within 13 bits."""
    half = 1 << (CUBA_BIAS_BITS - 1)
    for exp in range(CUBA_BIAS_EXP_MAX + 1):
        mant = np.rint(total / (1 << exp)).astype(np.int64)
        if mant.size == 0 or (mant.min() >= -half and mant.max() < half):
            return mant, exp
    raise SpikedetError(f"bias {np.abs(total).max():.4g} state units exceeds 13 bits << 7", where)


def float_cuba_population(
    pop: FPopulation, incoming: Sequence[FSynapse], input_scale: int, w_max: int
) -> tuple[QPopulation, list[QSynapse]]:
    """QPopulation + QSynapses of a float ``cuba`` population (module docstring)."""
    where = f"population {pop.name}"
    folded = [
        (s, s.weight * pop.alpha / (input_scale if s.src == "input" else 1)) for s in incoming
    ]
    peak = max((float(np.abs(w).max()) for _, w in folded if w.size), default=0.0)
    if peak == 0.0:
        raise SpikedetError("all incoming weights are zero; its scale is undefined", where)
    frac = _threshold_fraction(pop.threshold, where)
    q = math.lcm(2, frac.denominator)  # even, like every theta of §3.1 (halves stay exact)
    sigma = q * math.floor(w_max / peak / q)
    if frac > 0:  # a high threshold over small weights: the 17-bit vth caps the scale instead
        sigma = min(sigma, q * math.floor(((1 << CUBA_VTH_BITS) - 1) / float(frac) / q))
    if sigma < 1:
        raise SpikedetError(
            f"V_th={frac} needs a weight scale that is a multiple of {q}, but the weights "
            f"(up to {peak:.4g}) allow at most {w_max / peak:.4g}",
            where,
        )
    vth = int(frac * sigma)
    if vth >= 1 << CUBA_VTH_BITS:
        raise SpikedetError(f"threshold mantissa {vth} exceeds 17 bits", where)
    theta = MSB * sigma
    syns, bias = [], np.zeros(pop.shape[0])
    for s, w in folded:
        syns.append(
            QSynapse(
                name=s.name, src=s.src, dst=s.dst, weight=np.rint(w * sigma).astype(np.int64),
                stride=s.stride, padding=s.padding, groups=s.groups, out_offset=s.out_offset,
                upsample=s.upsample,
            )
        )  # fmt: skip
        bias[s.out_offset : s.out_offset + s.bias.size] += s.bias
    steady = pop.alpha * bias / (1.0 - pop.beta_syn)  # the current bias moved to v
    mant, exp = _bias(theta * (pop.v_bias + steady), where)
    du = round(4096 * (1.0 - pop.beta_syn)) - 1
    dv = min(round(4096 * (1.0 - pop.beta)), 4095)
    qpop = QPopulation(
        name=pop.name, kind="cuba", shape=pop.shape, theta=theta, bias=mant, D=1,
        du=min(max(du, 0), 4095), dv=dv, vth=vth, bias_exp=exp,
        metadata={
            "beta": float(pop.beta), "beta_syn": float(pop.beta_syn), "alpha": float(pop.alpha),
            "threshold": float(pop.threshold), "scale": float(theta), "sigma": float(sigma),
            "current_bias_to_v": bool(np.any(bias) and pop.beta_syn > 0),
        },
    )  # fmt: skip
    return qpop, syns
