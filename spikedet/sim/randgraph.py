"""Small random QuantGraphs and inputs, for engine parity tests and benchmarks.

Every graph has a graded 8-bit input, strided / padded / non-square convs, a depthwise conv
(groups = C), a population fed by two sources at different depths (so a synapse gets a delay),
I-LIF populations with D in 1..4 and dv in {0, 2048, 3072, 4095}, even thetas, biases, and a
readout. Depths and delays come from ``spikedet.deploy.quantize.assign_depths`` (§3.3).
"""

from __future__ import annotations

import math

import numpy as np

from spikedet.deploy.quantize import assign_depths
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import STATE_BITS, QInput, QPopulation, QSynapse, QuantGraph

DECAYS = (0, 2048, 3072, 4095)


def _axis_conv(rng: np.random.Generator, n_in: int, n_out: int) -> tuple[int, int, int] | None:
    """A random (kernel, stride, padding) taking n_in to n_out on one axis, or None."""
    options = [
        (k, s, p)
        for k in (1, 2, 3, 5)
        for s in range(1, max(1, n_in) + 1)
        for p in range(0, k // 2 + 1)
        if (n_in + 2 * p - k) // s + 1 == n_out and n_in + 2 * p >= k
    ]
    return options[int(rng.integers(len(options)))] if options else None


def _random_shape_conv(rng: np.random.Generator, n_in: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a main-path conv: same-size, valid, or strided."""
    choices = [(3, 1, 1), (1, 1, 0), (3, 2, 1), (2, 2, 0)]
    if n_in >= 4:
        choices.append((3, 1, 0))
    if n_in < 3:
        choices = [(3, 1, 1), (1, 1, 0)]
    return choices[int(rng.integers(len(choices)))]


class _Builder:
    def __init__(self, rng: np.random.Generator, weight_max: int, input_bits: int):
        self.rng = rng
        self.weight_max = weight_max
        self.input_bits = input_bits
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.levels: dict[str, float] = {}  # typical |source value|, to size thetas
        self.synapses: list[QSynapse] = []

    def conv(
        self, src: str, dst: str, cout: int, hw: tuple[tuple[int, int, int], ...], groups: int = 1
    ) -> QSynapse:
        cin = self.shapes[src][0]
        (kh, sh, ph), (kw, sw, pw) = hw
        weight = self.rng.integers(
            -self.weight_max, self.weight_max + 1, size=(cout, cin // groups, kh, kw)
        )
        weight[self.rng.random(weight.shape) < 0.2] = 0  # some sparsity, as after training
        syn = QSynapse(
            name=f"{src}->{dst}",
            src=src,
            dst=dst,
            weight=weight,
            stride=(sh, sw),
            padding=(ph, pw),
            groups=groups,
        )
        self.synapses.append(syn)
        return syn

    def matching_conv(self, src: str, dst: str, out_shape: tuple[int, int, int]) -> bool:
        """Add a conv src -> dst whose output equals ``out_shape``, if one exists."""
        axes = [_axis_conv(self.rng, n, m) for n, m in zip(self.shapes[src][1:], out_shape[1:])]
        if None in axes:
            return False
        self.conv(src, dst, out_shape[0], tuple(axes))  # type: ignore[arg-type]
        return True

    def theta_for(self, dst: str) -> int:
        """An even theta near the typical |a_t| so spikes span 0..D (wrapped sums stay < 2^23)."""
        spread = 0.0
        for syn in self.synapses:
            if syn.dst == dst:
                fan_in = syn.weight.shape[1] * syn.weight.shape[2] * syn.weight.shape[3]
                spread += fan_in * (self.weight_max**2 / 3) * self.levels[syn.src] ** 2
        typical = min(math.sqrt(spread), float(1 << (STATE_BITS - 2)))
        return 2 * max(1, int(typical * self.rng.uniform(0.15, 0.6)) // 2)


def random_qgraph(
    rng: np.random.Generator,
    n_pops: int = 3,
    T: int = 2,
    size: int = 8,
    channels: tuple = (2, 4),
    with_readout: bool = True,
    weight_max: int = 127,
    input_bits: int = 8,
) -> QuantGraph:
    """A random valid QuantGraph with ``n_pops`` I-LIF populations (see the module docstring).

    Population 1 is depthwise; the last I-LIF population (the readout when n_pops = 1) also
    reads a shallower source through a conv with a matching output shape, which needs a delay.
    ``weight_max`` above 127 makes synapse outputs wrap at 24 bits and membranes clip.
    """
    if n_pops < 1 or T < 1 or size < 1 or not channels:
        raise SpikedetError("need n_pops >= 1, T >= 1, size >= 1 and channels", "random_qgraph")
    b = _Builder(rng, weight_max, input_bits)
    width = size + int(rng.integers(0, 3))  # non-square, to catch H/W mix-ups
    b.shapes["input"] = (int(rng.choice(channels)), size, width)
    b.levels["input"] = (1 << input_bits) / 2
    pops: list[QPopulation] = []
    names = [f"p{i}" for i in range(n_pops)]
    for i, name in enumerate(names):
        src = "input" if i == 0 else names[i - 1]
        c_src, h, w = b.shapes[src]
        if i == 1:  # depthwise: groups = C, one input channel per output channel
            cout, groups = c_src, c_src
        else:
            cout, groups = int(rng.choice(channels)), 1
        hw = (_random_shape_conv(rng, h), _random_shape_conv(rng, w))
        b.conv(src, name, cout, hw, groups)
        ho, wo = ((n + 2 * p - k) // s + 1 for n, (k, s, p) in zip((h, w), hw))
        b.shapes[name] = (cout, ho, wo)
        earlier = ["input", *names[: i - 1]]  # sources shallower than the main one
        if i >= 1 and (i == n_pops - 1 or rng.random() < 0.5):
            for extra in rng.permutation(earlier):
                if b.matching_conv(str(extra), name, b.shapes[name]):
                    break
        D = int(rng.integers(1, 5))
        theta = b.theta_for(name)
        b.levels[name] = D / 2
        pops.append(
            QPopulation(
                name=name,
                kind="ilif",
                shape=b.shapes[name],
                theta=theta,
                bias=rng.integers(-theta, theta + 1, size=cout),
                D=D,
                dv=int(rng.choice(DECAYS)),
            )
        )
    if with_readout:
        last = names[-1]
        c, h, w = b.shapes[last]
        cout = int(rng.choice(channels))
        b.shapes["readout"] = (cout, h, w)
        b.conv(
            last,
            "readout",
            cout,
            ((3, 1, 1), (3, 1, 1)) if rng.random() < 0.5 else ((1, 1, 0), (1, 1, 0)),
        )
        shallower = ["input"] if n_pops == 1 else names[:-1]
        if n_pops == 1 or rng.random() < 0.5:
            for extra in rng.permutation(shallower):
                if b.matching_conv(str(extra), "readout", b.shapes["readout"]):
                    break
        theta = b.theta_for("readout")
        pops.append(
            QPopulation(
                name="readout",
                kind="readout",
                shape=(cout, h, w),
                theta=theta,
                bias=rng.integers(-theta, theta + 1, size=cout),
            )
        )
    assign_depths(pops, b.synapses, max_delay=None)
    return QuantGraph(
        T=T,
        input=QInput(shape=b.shapes["input"], scale=255, bits=input_bits),
        populations=pops,
        synapses=b.synapses,
        message_bits=max(p.D for p in pops).bit_length(),
        metadata={"source": "random_qgraph", "weight_max": weight_max},
    )


def random_input(
    rng: np.random.Generator, qg: QuantGraph, batch: int, static: bool = False
) -> np.ndarray:
    """Random graded input, int64 in 0..2^bits - 1: [T, B, C, H, W], or [B, C, H, W] if static."""
    shape = (batch, *qg.input.shape) if static else (qg.T, batch, *qg.input.shape)
    return rng.integers(0, 1 << qg.input.bits, size=shape, dtype=np.int64)
