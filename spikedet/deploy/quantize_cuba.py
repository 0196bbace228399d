"""A ``cuba`` float population with Lava's exact integers -> QPopulation and QSynapses (§3.6).

A NIR neuron node written by ``spikedet import netx`` carries ``metadata["loihi"]`` (du, dv,
vth, bias_exp, bias mantissas, reset_interval, reset_offset, theta); its incoming ``Conv2d`` /
``Affine`` weights are the exact integers Lava applies. Nothing is requantized: the integers
are taken as they are, and checked:

- every incoming weight must be an integer (a float32 NIR file holds them exactly);
- the graph input must arrive unscaled (input_scale 1), as the sample is Lava's bias mantissa;
- with du = 4095 (no current memory) the float counterpart carries the bias on the synapse:
  the sum of the incoming biases must equal bias_mant * 2^(bias_exp - 6) (in weight units),
  so a file whose float and integer parts disagree is refused instead of silently trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spikedet.deploy.nir_graph import FPopulation, FSynapse
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QPopulation, QSynapse

LOIHI_KEYS = ("du", "dv", "vth", "bias_exp", "bias", "reset_interval", "reset_offset", "theta")
BIAS_ATOL = 1e-6  # float32 biases of integers times a power of two are exact; allow rounding


def _ints(loihi: dict, where: str) -> dict:
    missing = [k for k in LOIHI_KEYS if k not in loihi]
    if missing:
        raise SpikedetError(f"metadata 'loihi' lacks {', '.join(missing)}", where)
    out = {}
    for key in LOIHI_KEYS:
        value = np.asarray(loihi[key])
        if value.dtype.kind not in "biu" and not (
            value.dtype.kind == "f" and np.all(value == np.round(value))
        ):
            raise SpikedetError(f"metadata 'loihi' {key} must be integers, got {value!r}", where)
        out[key] = value.astype(np.int64) if key == "bias" else int(value.reshape(-1)[0])
    return out


def _exact(weight: np.ndarray, where: str) -> np.ndarray:
    rounded = np.rint(weight)
    if not np.array_equal(rounded, weight):
        worst = float(np.max(np.abs(rounded - weight)))
        raise SpikedetError(
            f"weights are not the exact integers of a Loihi network (off by up to {worst:.3g})",
            where,
        )
    return rounded.astype(np.int64)


def loihi_population(
    pop: FPopulation, incoming: Sequence[FSynapse], input_scale: float
) -> tuple[QPopulation, list[QSynapse]]:
    """The QPopulation and QSynapses of a cuba population that carries ``pop.loihi``."""
    where = f"population {pop.name}"
    if not isinstance(pop.loihi, dict):
        raise SpikedetError("a cuba population needs Lava's integers (metadata 'loihi')", where)
    p = _ints(pop.loihi, where)
    syns = []
    bias_float = np.zeros(pop.shape[0])
    for s in incoming:
        if s.src == "input" and input_scale != 1:
            raise SpikedetError(
                f"input_scale {input_scale:g}: a Loihi input layer takes the sample unscaled",
                where,
            )
        syns.append(
            QSynapse(
                name=s.name,
                src=s.src,
                dst=s.dst,
                weight=_exact(s.weight, f"synapse {s.name}"),
                stride=s.stride,
                padding=s.padding,
                groups=s.groups,
                out_offset=s.out_offset,
                upsample=s.upsample,
                lag=s.lag,
            )
        )
        bias_float[s.out_offset : s.out_offset + s.bias.size] += s.bias
    mantissa = p["bias"].reshape(-1)
    if p["du"] == 4095 and mantissa.size == pop.shape[0]:
        expected = mantissa * 2.0 ** (p["bias_exp"] - 6)
        if not np.allclose(bias_float, expected, rtol=0, atol=BIAS_ATOL):
            raise SpikedetError(
                "the synapses' float bias disagrees with metadata 'loihi' bias * "
                f"2^(bias_exp - 6) (up to {np.max(np.abs(bias_float - expected)):.3g})",
                where,
            )
    qpop = QPopulation(
        name=pop.name,
        kind="cuba",
        shape=pop.shape,
        theta=p["theta"],
        bias=mantissa,
        D=1,
        du=p["du"],
        dv=p["dv"],
        vth=p["vth"],
        bias_exp=p["bias_exp"],
        reset_interval=p["reset_interval"],
        reset_offset=p["reset_offset"],
        metadata={"loihi": True},
    )
    return qpop, syns
