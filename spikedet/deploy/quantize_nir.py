"""A NIR neuron (float, §4.3) -> a ``cuba`` / ``li`` QPopulation (Loihi's CUBA LIF, §3.6, §4.5).

Float (per step, after the Euler discretisation of nir_generic; LIF, IF, Threshold are the
cases β_syn = 0, Threshold also β = 0, α = 1; LI and CubaLI have no spike):
    i_t = β_syn·i_{t-1} + x_t,   x_t = Σ_e W_e·s_e + b
    v_t = β·v_{t-1} + α·i_t + v_bias,   s_t = [v_t > V_th], then v_t <- 0 (or v_t − V_th)
Integer (Lava's LIF): u_t = decay(u, du + 1) + ((a_t + u_bias) << 6),
v_t = decay(v, dv) + u_t + bias<<e. With one float membrane unit = Θ = 64·σ state units,
u = Θ·α·i, so a_t = σ·α·W·s:

    W_q = round(σ·α·W)    (input weights also / input_scale)
    σ   = the largest multiple of lcm(2, q) not above w_max / max|α·W| (V_th = p/q, q <= 256),
          so the threshold mantissa vth = V_th·σ is an exact integer (spike iff v > vth << 6),
          and at most the one that keeps vth within 17 bits
    du  = round(4096·(1 − β_syn)) − 1,   dv = min(round(4096·(1 − β)), 4095)
    u_bias  = round(σ·α·b_t), the synaptic bias current of step t in weight units (rows while
              late parts arrive, §4.4; ``_current_bias``): all of b with β_syn > 0 (it enters
              the current every step, as in the float model), else its late parts only;
    bias<<e = Θ·(v_bias + (α·b − u_bias_last/σ)/(1 − β_syn)), e the smallest exponent with a
              13-bit mantissa: with β_syn = 0 the bias arriving from step 0 enters v as Lava's
              bias, exact (u holds this step's input only); what rounding u_bias leaves (< 1/2
              weight unit) is moved to v as its steady state, the one approximation;
    reset_interval = 1 when β = β_syn = 0 (Threshold, or τ = dt): u, v <- 0 before every step,
              because dv = 4095 keeps trunc(v/4096) of v and is not memory-less (§4.5);
    li: vth = 2^17 − 1 (spike only above (2^17 − 1)·64 = 2^23 − 64, 63 below v's clip);
    reset_mode = the population's reset ("subtract": v <- v − (vth << 6), exact: Θ·V_th).
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


def _current_bias(
    pop: FPopulation, sigma: int, bias: np.ndarray, late: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(u_bias, the bias moved to v in float units) of the synaptic bias ``bias`` (C,) of which
    ``late[k]`` arrives from step k on. Row t of u_bias is the current of step t in weight units
    (the last row holds on): with current memory every part, else only the late ones (an
    immediate one is exact as Lava's v bias). What the rounding to whole weight units leaves,
    < 1/2 per channel, goes to v as its steady state, the one approximation (§4.5)."""
    memory = pop.beta_syn > 0
    rows = [bias - sum(late.values(), np.zeros_like(bias)) if memory else np.zeros_like(bias)]
    for k in range(1, max(late, default=0) + 1):
        rows.append(rows[-1] + late.get(k, 0.0))
    u_rows = np.rint(sigma * pop.alpha * np.asarray(rows)).astype(np.int64)
    to_v = (pop.alpha * bias - u_rows[-1] / sigma) / (1.0 - pop.beta_syn)
    if not u_rows.any():
        return np.zeros(0, np.int64), to_v
    return (u_rows[0] if len(u_rows) == 1 else u_rows), to_v


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
    readout = pop.kind == "li"
    frac = _threshold_fraction(0.0 if readout else pop.threshold, where)
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
    syns, bias, late = [], np.zeros(pop.shape[0]), {}
    for s, w in folded:
        syns.append(
            QSynapse(
                name=s.name, src=s.src, dst=s.dst, weight=np.rint(w * sigma).astype(np.int64),
                stride=s.stride, padding=s.padding, groups=s.groups, out_offset=s.out_offset,
                upsample=s.upsample,
            )
        )  # fmt: skip
        rows = slice(s.out_offset, s.out_offset + s.bias.size)
        bias[rows] += s.bias
        for k, part in s.late_bias:
            late.setdefault(int(k), np.zeros(pop.shape[0]))[rows] += part
    u_bias, to_v = _current_bias(pop, sigma, bias, late)
    mant, exp = _bias(theta * (pop.v_bias + to_v), where)
    du = round(4096 * (1.0 - pop.beta_syn)) - 1
    dv = min(round(4096 * (1.0 - pop.beta)), 4095)
    qpop = QPopulation(
        name=pop.name, kind=pop.kind, shape=pop.shape, theta=theta, bias=mant, D=1,
        du=min(max(du, 0), 4095), dv=dv, vth=(1 << CUBA_VTH_BITS) - 1 if readout else vth,
        bias_exp=exp, reset_interval=int(pop.beta == 0 and pop.beta_syn == 0), u_bias=u_bias,
        reset_mode=pop.reset,
        metadata={
            "beta": float(pop.beta), "beta_syn": float(pop.beta_syn), "alpha": float(pop.alpha),
            "threshold": float(pop.threshold), "scale": float(theta), "sigma": float(sigma),
        },
    )  # fmt: skip
    return qpop, syns
