"""Which populations Lava's own LIF computes exactly, and with which parameters (docs §3.8).

Imports neither torch nor Lava: the ``lava`` engine (``lava_worker``, inside ``.venv-lava``) and
the netx writer (``spikedet.convert.netx_write``) ask the same question here.

Lava's bit-accurate LIF (lava-nc 0.10.0 ``lava/proc/lif/models.py``, ``PyLifModelBitAcc``):
u <- decay(u, du + 1) + (a << 6) (one-shot 24-bit wrap), v <- clip24(decay(v, dv) + u +
(bias_mant << bias_exp)), spike iff v > vth << 6, then v <- 0. A ``cuba`` population is this by
definition (§3.6), and so is an ``li`` one (§4.5: vth = 2^17 − 1, its v read by a Lava
``Monitor``). Two cuba fields are not Lava's LIF and the engine adds them around it (§4.5):
``reset_mode`` "subtract" (Lava's model with only ``reset_voltage`` replaced: v <- v −
(vth << 6)) and ``u_bias`` (a constant source summed into the LIF's ``a_in`` with the
synapses). An EMS ``lif`` population (§3.2) is this with du = 4095 (u = a << 6),
bias_mant = b, bias_exp = 6 and v = 64 * (our state) only while the decay keeps v a multiple of
64, i.e. dv = 0, and while neither model reaches its limits (|a| < 2^17 so that a << 6 does not
wrap; |state| * 64 below 2^23 - 1 so that Lava's clip, which sits 64 times lower in our units,
never acts). I-LIF (graded spikes, soft reset) has no LIF form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spikedet.sim.qgraph import QPopulation, QuantGraph

MSB_SHIFT = 6  # Lava shifts the synaptic input and the threshold left by 6 bits
NO_CURRENT_MEMORY = 4095  # du = 4095: decay factor 4096 - (du + 1) = 0, so u = a << 6
VTH_LIMIT = 1 << 17  # 17-bit unsigned threshold mantissa
BIAS_LIMIT = 1 << 12  # 13-bit signed bias mantissa
STATE_LIMIT = (1 << 23) - 1
WRAP = 1 << 23  # one synapse's sum wraps to signed 24 bits (§3.2)


@dataclass(frozen=True)
class LavaLif:
    """Arguments of Lava's ``LIF`` / ``LIFReset`` for one population, in our (C, H, W) layout:
    ``bias_mant`` is per channel (C,) or per neuron (C*H*W,) in C order; reset_interval 0 =
    none (Lava's LIFReset is then given the sample period); ``reset_mode`` and ``u_bias`` (per
    channel or neuron, empty: none) as the population's (§4.5)."""

    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: int
    reset_interval: int = 0
    reset_mode: str = "zero"
    u_bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def input_bound(qg: QuantGraph, pop: QPopulation) -> int:
    """A bound on |a_t| of ``pop``: each synapse's worst-case sum, at most 2^23 after its wrap."""
    total = 0
    for s in qg.incoming(pop.name):
        peak = (1 << qg.input.bits) - 1 if s.src == "input" else qg.pop(s.src).D
        fan_in = int(np.prod(s.weight.shape[1:]))
        total += min(int(np.abs(s.weight).max(initial=0)) * peak * fan_in, WRAP)
    return total


def lava_lif(qg: QuantGraph, pop: QPopulation) -> tuple[LavaLif | None, str]:
    """(parameters, "") when Lava's LIF computes ``pop`` bit for bit, else (None, why not)."""
    if pop.kind in ("cuba", "li"):
        if pop.reset_interval and pop.reset_offset:
            return None, (
                f"reset_offset={pop.reset_offset}: the lava engine also resets at logical step 0, "
                "which one LIFReset interval expresses only for offset 0"
            )
        return LavaLif(
            pop.du, pop.dv, pop.vth, pop.bias, pop.bias_exp, pop.reset_interval,
            pop.reset_mode, pop.u_bias,
        ), ""  # fmt: skip
    if pop.kind != "lif":
        return None, f"a {pop.kind} population has no Lava LIF form (§3.8)"
    why = _lif_obstacle(qg, pop)
    if why:
        return None, why
    return LavaLif(NO_CURRENT_MEMORY, 0, pop.vth, pop.bias, MSB_SHIFT), ""


def _lif_obstacle(qg: QuantGraph, pop: QPopulation) -> str:
    """Why an EMS lif population is not Lava's LIF (empty when it is), docs/semantics.md §3.8."""
    if pop.dv:
        return (
            f"dv={pop.dv}: Lava decays v = 64 * u and keeps the 6 fraction bits our 12-bit decay "
            "truncates away"
        )
    if not 0 <= pop.vth < VTH_LIMIT:
        return f"vth={pop.vth} is not a 17-bit unsigned threshold mantissa"
    bias = int(np.abs(pop.bias).max(initial=0))
    if bias >= BIAS_LIMIT:
        return f"bias {bias} does not fit the 13-bit mantissa (bias_exp 6)"
    a_max = input_bound(qg, pop)
    if a_max << MSB_SHIFT > WRAP:
        return f"synaptic input up to {a_max}: a << 6 can wrap Lava's 24-bit current"
    if qg.T * (a_max + bias) << MSB_SHIFT > STATE_LIMIT:
        return f"the state can reach {qg.T * (a_max + bias)}, where Lava's 24-bit v (x64) clips"
    return ""
