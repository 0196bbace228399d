"""Small random QuantGraphs and inputs, for engine parity tests and benchmarks.

Every graph has a graded 8-bit input, strided / padded / non-square convs, a depthwise conv
(groups = C), a population fed by two sources at different depths (so a synapse gets a delay),
I-LIF populations with D in 1..4 and dv in {0, 2048, 3072, 4095}, even thetas, biases, and a
readout. Depths and delays come from ``spikedet.deploy.quantize.assign_depths`` (§3.3).

With ``constructs=True`` the graph also holds the docs/semantics.md §2.5-2.8 constructs: chain
populations may be LIF (hard reset, random integer threshold), the last one is max-pooled
(sometimes twice, SPPF-style), a "down" population reads the pooled spikes, and a concatenation
population reads the last chain population (channels 0..) and the down population upsampled
x2 (channels after it, ``out_offset``), sometimes plus a full-width input shortcut; the readout
may get an upsampled channel-range synapse too.
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

    def add_conv(
        self,
        src: str,
        dst: str,
        cout: int,
        out_hw: tuple[int, int],
        upsample: int = 1,
        out_offset: int = 0,
        groups: int = 1,
    ) -> bool:
        """A conv src -> dst whose output, upsampled, is ``out_hw``, if one exists."""
        want = [n // upsample for n in out_hw]
        if any(n * upsample != m for n, m in zip(want, out_hw)):
            return False
        axes = [_axis_conv(self.rng, n, m) for n, m in zip(self.shapes[src][1:], want)]
        if None in axes:
            return False
        syn = self.conv(src, dst, cout, tuple(axes), groups)  # type: ignore[arg-type]
        syn.upsample, syn.out_offset = upsample, out_offset
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
    constructs: bool = False,
) -> QuantGraph:
    """A random valid QuantGraph with ``n_pops`` chain populations (see the module docstring).

    Population 1 is depthwise; the last chain population (the readout when n_pops = 1) also
    reads a shallower source through a conv with a matching output shape, which needs a delay.
    ``weight_max`` above 127 makes synapse outputs wrap at 24 bits and membranes clip.
    ``constructs`` adds LIF, maxpool, out_offset and upsample (the same seed then gives another
    graph than without).
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
        kind = "lif" if constructs and rng.random() < 0.4 else "ilif"
        pops.append(_neuron(b, name, kind))
    last = names[-1]
    if constructs:
        last = _add_constructs(b, pops, last, channels)
    if with_readout:
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
        if constructs and cout > 1 and "down" in b.shapes and rng.random() < 0.7:
            # a channel-range synapse into the readout: the upper channels, upsampled
            offset = int(rng.integers(1, cout))
            b.add_conv("down", "readout", cout - offset, (h, w), 2, offset)
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
        metadata={"source": "random_qgraph", "weight_max": weight_max, "constructs": constructs},
    )


def _neuron(b: _Builder, name: str, kind: str) -> QPopulation:
    """An I-LIF (D in 1..4) or LIF (random integer threshold) population fed by b's synapses."""
    rng, cout = b.rng, b.shapes[name][0]
    D = int(rng.integers(1, 5)) if kind == "ilif" else 1
    theta = b.theta_for(name)
    b.levels[name] = D / 2
    bias = rng.integers(-theta, theta + 1, size=cout)
    dv = int(rng.choice(DECAYS))
    vth = int(rng.integers(-(theta // 4), theta + 1)) if kind == "lif" else 0
    return QPopulation(name, kind, b.shapes[name], theta, bias, D=D, dv=dv, vth=vth)


_POOLS = ((2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 0), (5, 1, 2), (3, 1, 0))  # (k, s, p)


def _add_constructs(b: _Builder, pops: list[QPopulation], last: str, channels: tuple) -> str:
    """Max-pool(s) of ``last``, a down population, and a concatenation population (see the
    module docstring); returns the concatenation's name (the readout's source)."""
    rng = b.rng
    src, pooled = last, []
    for depth in range(1 + int(rng.random() < 0.5)):
        c, h, w = b.shapes[src]
        fits = [(k, s, p) for k, s, p in _POOLS if min(h, w) + 2 * p >= k]
        k, s, p = fits[int(rng.integers(len(fits)))] if depth == 0 else (3, 1, 1)
        name = f"m{depth}"
        b.shapes[name] = (c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        b.levels[name] = b.levels[src]
        src_pop = next(q for q in pops if q.name == src)
        pops.append(
            QPopulation(
                name, "maxpool", b.shapes[name], 0, np.zeros(c, np.int64), D=src_pop.D,
                src=src, pool_kernel=(k, k), pool_stride=(s, s), pool_padding=(p, p),
            )
        )  # fmt: skip
        pooled.append(name)
        src = name
    # down: half the size of last; cat: [last-part (c_a), down upsampled x2 (c_b)] at twice
    # down's size (last's size, less one row / column where it is odd)
    c_last, h, w = b.shapes[last]
    f = 2 if min(h, w) >= 2 else 1
    down_hw, c_down = (h // f, w // f), int(rng.choice(channels))
    cat_hw = (down_hw[0] * f, down_hw[1] * f)
    b.shapes["down"] = (c_down, *down_hw)
    if not b.add_conv(str(rng.choice(pooled)), "down", c_down, down_hw):
        assert b.add_conv(last, "down", c_down, down_hw)  # a small pooled map: read last
    pops.append(_neuron(b, "down", "lif" if rng.random() < 0.5 else "ilif"))
    depthwise = rng.random() < 0.3
    c_a = c_last if depthwise else int(rng.choice(channels))
    c_b = int(rng.choice(channels))
    b.shapes["cat"] = (c_a + c_b, *cat_hw)
    assert b.add_conv(last, "cat", c_a, cat_hw, groups=c_a if depthwise else 1)
    assert b.add_conv("down", "cat", c_b, cat_hw, f, c_a)
    if rng.random() < 0.5:
        b.matching_conv(str(rng.choice(["input", *pooled])), "cat", b.shapes["cat"])
    pops.append(_neuron(b, "cat", "lif" if rng.random() < 0.5 else "ilif"))
    return "cat"


def random_input(
    rng: np.random.Generator, qg: QuantGraph, batch: int, static: bool = False
) -> np.ndarray:
    """Random graded input, int64 in 0..2^bits - 1: [T, B, C, H, W], or [B, C, H, W] if static."""
    shape = (batch, *qg.input.shape) if static else (qg.T, batch, *qg.input.shape)
    return rng.integers(0, 1 << qg.input.bits, size=shape, dtype=np.int64)
