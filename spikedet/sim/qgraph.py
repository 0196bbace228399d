"""The quantized graph: what both integer engines (``fixed`` and ``lava``) execute.

Plain dataclasses validated at construction, saved as one ``.npz`` (arrays) with a JSON header,
readable with numpy 1.x (inside ``.venv-lava``) and 2.x. Semantics: docs/semantics.md §3.

Population kinds (§3.2): ``ilif`` (graded spikes 0..D, soft reset), ``lif`` (binary spikes,
hard reset, integer threshold ``vth``), ``maxpool`` (no state: the integer max-pool of its
source population ``src``, one step later, no incoming synapse), ``readout`` (integrator) and
``cuba`` (Loihi's CUBA LIF as Lava's bit-accurate model computes it, §3.6: current u and
voltage v, Lava's own parameters du, dv, vth, bias mantissa and exponent, a periodic reset,
a reset mode and a constant current input ``u_bias``) and ``li`` (the same arithmetic with the
threshold out of reach, read out as v: NIR LI / CubaLI, §4.5).
Synapses may write a channel range of their destination (``out_offset``, §2.7), repeat
their output nearest-neighbour (``upsample``, §2.8) and use a dilated kernel (``dilation``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.sim.qgraph_cuba import check_cuba, cuba_fields

STATE_BITS = 24
DECAY_BITS = 12
POP_KINDS = ("ilif", "lif", "maxpool", "readout", "cuba", "li")
SPIKING_KINDS = ("ilif", "lif", "maxpool", "cuba")  # kinds whose output others may read
CUBA_KINDS = ("cuba", "li")  # Loihi's CUBA LIF arithmetic (§3.6)
READOUT_KINDS = ("readout", "li")  # read out as their final value v_{T-1}, never send
FILE_FORMAT = 2  # npz header format; 1 = before the lif / maxpool / out_offset / upsample fields


def conv_output_hw(
    hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[int, int]:
    """Output size of a cross-correlation or pooling window: floor((n + 2p - k) / s) + 1."""
    h, w = (
        (int(n) + 2 * int(p) - int(k)) // int(s) + 1
        for n, k, s, p in zip(hw, kernel, stride, padding)
    )
    return h, w


def _pair(value: object) -> tuple[int, int]:
    return tuple(int(v) for v in value)  # type: ignore[union-attr, return-value]


@dataclass
class QInput:
    """The graph input: integers ``x_int`` (= float input x input_scale), graded messages."""

    shape: tuple[int, int, int]
    scale: int
    bits: int = 8

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise SpikedetError(f"input shape must be (C, H, W), got {self.shape}", "input")


@dataclass
class QPopulation:
    """A population (docs/semantics.md §3.2, §3.6): I-LIF, LIF, max-pool, readout or cuba.

    ``theta`` (state units per float membrane unit) is unused by ``maxpool`` populations (0 by
    convention), which also have a zero bias, ``dv`` 0 and ``D`` = their source's D.
    A ``cuba`` population's ``bias`` is Lava's bias mantissa, per channel (C,) or per neuron
    (C*H*W,), ``vth`` its threshold mantissa (spike iff v > vth << 6), ``du``/``dv`` Lava's decays.
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    theta: int
    bias: np.ndarray  # int64, (C,)
    depth: int = 0
    D: int = 0  # spike levels (ilif; lif: 1; maxpool: the source's D)
    dv: int = 0  # 12-bit voltage decay: u <- u * (4096 - dv) >> 12
    metadata: dict = field(default_factory=dict)
    vth: int = 0  # lif: integer threshold V_th * theta (s = [u > vth])
    src: str = ""  # maxpool: the source population
    pool_kernel: tuple[int, int] = (1, 1)  # maxpool window (H, W)
    pool_stride: tuple[int, int] = (1, 1)
    pool_padding: tuple[int, int] = (0, 0)  # zero padding (neutral for spikes >= 0)
    du: int = 0  # cuba: current decay, u <- u * (4096 - (du + 1)) >> 12 (Lava's +1 offset)
    bias_exp: int = 0  # cuba: effective bias = bias << bias_exp
    reset_interval: int = 0  # cuba: u, v <- 0 before logical steps t % interval == offset
    reset_offset: int = 0
    reset_mode: str = "zero"  # cuba: v <- 0 after a spike, or "subtract": v <- v - (vth << 6)
    # cuba: a constant current added to a_t, per channel or neuron; 2-D (R, n): row t at step t,
    # the last row from then on (a bias that arrives late, §4.5)
    u_bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        self.bias = np.asarray(self.bias, dtype=np.int64).reshape(-1)
        self.u_bias = np.asarray(self.u_bias, dtype=np.int64)
        self.u_bias = self.u_bias if self.u_bias.ndim == 2 else self.u_bias.reshape(-1)
        self.pool_kernel = _pair(self.pool_kernel)
        self.pool_stride = _pair(self.pool_stride)
        self.pool_padding = _pair(self.pool_padding)
        self.vth, self.D, self.dv = int(self.vth), int(self.D), int(self.dv)
        self.du, self.bias_exp = int(self.du), int(self.bias_exp)
        self.reset_interval, self.reset_offset = int(self.reset_interval), int(self.reset_offset)
        where = f"population {self.name}"
        if self.kind not in POP_KINDS:
            raise SpikedetError(f"unknown population kind {self.kind!r}", where)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise SpikedetError(f"shape must be (C, H, W), got {self.shape}", where)
        per_neuron = self.kind in CUBA_KINDS and self.bias.size == self.size
        if self.bias.shape != (self.shape[0],) and not per_neuron:
            raise SpikedetError(f"bias has {self.bias.shape}, expected ({self.shape[0]},)", where)
        if self.kind in CUBA_KINDS:
            check_cuba(self, where)
        elif self.reset_mode != "zero" or self.u_bias.size:
            raise SpikedetError("reset_mode and u_bias are fields of cuba populations", where)
        if self.kind == "maxpool":
            self._check_maxpool(where)
        elif self.theta < 2 or self.theta % 2:
            raise SpikedetError(f"theta must be an even integer >= 2, got {self.theta}", where)
        if self.kind == "ilif" and not (1 <= self.D <= 255):
            raise SpikedetError(f"D must be in 1..255, got {self.D}", where)
        if self.kind == "lif" and self.D != 1:
            raise SpikedetError(f"a lif population has D = 1, got {self.D}", where)
        if self.kind == "lif" and abs(self.vth) >= 1 << (STATE_BITS - 1):
            raise SpikedetError(f"vth={self.vth} does not fit the {STATE_BITS}-bit state", where)
        if not (0 <= self.dv < 1 << DECAY_BITS):
            raise SpikedetError(f"dv must be a 12-bit decay, got {self.dv}", where)

    def _check_maxpool(self, where: str) -> None:
        if not self.src:
            raise SpikedetError("a maxpool population needs its source population src", where)
        if not (1 <= self.D <= 255):
            raise SpikedetError(f"D must be in 1..255 (the source's), got {self.D}", where)
        if self.bias.any() or self.dv or self.theta < 0:
            raise SpikedetError("a maxpool population has no bias, decay or theta", where)
        ok = min(self.pool_kernel) >= 1 and min(self.pool_stride) >= 1
        if not ok or min(self.pool_padding) < 0:
            raise SpikedetError(
                f"bad pool kernel {self.pool_kernel}, stride {self.pool_stride} or padding "
                f"{self.pool_padding}",
                where,
            )

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class QSynapse:
    """A convolution from ``src`` (a population name or ``"input"``) into population ``dst``."""

    name: str
    src: str
    dst: str
    weight: np.ndarray  # int64, torch layout (Cout, Cin/groups, KH, KW)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    delay: int = 0  # extra steps beyond the one-step synapse latency (§3.3)
    out_offset: int = 0  # first destination channel written (§2.7); Cout = weight.shape[0]
    upsample: int = 1  # nearest-neighbour factor applied to the (wrapped) conv output (§2.8)
    dilation: tuple[int, int] = (1, 1)  # kernel tap spacing (H, W), as torch's Conv2d
    # logical steps: dst at step t reads src at t - lag (a NIR recurrent edge or Delay, §4.4);
    # lag >= 1 lets a synapse point back (a recurrent self-synapse, or a cycle of several)
    lag: int = 0

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.int64)
        self.lag = int(self.lag)
        self.stride = _pair(self.stride)
        self.padding = _pair(self.padding)
        self.dilation = _pair(self.dilation)
        self.groups, self.delay = int(self.groups), int(self.delay)
        self.out_offset, self.upsample = int(self.out_offset), int(self.upsample)
        where = f"synapse {self.name}"
        if self.weight.ndim != 4:
            raise SpikedetError(f"conv weight must be 4-D, got {self.weight.shape}", where)
        if self.groups < 1 or self.weight.shape[0] % self.groups:
            raise SpikedetError("output channels not divisible by groups", where)
        if self.delay < 0 or self.lag < 0:
            raise SpikedetError(f"negative delay {self.delay} or lag {self.lag}", where)
        if min(self.dilation) < 1:
            raise SpikedetError(f"dilation must be >= 1, got {self.dilation}", where)
        if self.out_offset < 0 or self.upsample < 1:
            raise SpikedetError(
                f"out_offset must be >= 0 and upsample >= 1, got {self.out_offset}, "
                f"{self.upsample}",
                where,
            )

    @property
    def kernel_extent(self) -> tuple[int, int]:
        """The kernel's span on the input: d * (k - 1) + 1 per axis."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.weight.shape[2:]))

    def dilated_weight(self) -> np.ndarray:
        """The weight with ``dilation`` expanded into zero taps (the weight itself when 1)."""
        if self.dilation == (1, 1):
            return self.weight
        (dh, dw), (eh, ew) = self.dilation, self.kernel_extent
        out = np.zeros((*self.weight.shape[:2], eh, ew), dtype=self.weight.dtype)
        out[:, :, ::dh, ::dw] = self.weight
        return out

    def output_shape(self, src_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(Cout, f*H', f*W'): the conv output of a (C, H, W) source, upsampled by f."""
        h, w = conv_output_hw(src_shape[1:], self.kernel_extent, self.stride, self.padding)
        return int(self.weight.shape[0]), h * self.upsample, w * self.upsample


@dataclass
class QuantGraph:
    """Populations in topological order, synapses, and the run length T (logical steps)."""

    T: int
    input: QInput
    populations: list[QPopulation]
    synapses: list[QSynapse]
    message_bits: int = 3  # graded payload of I-LIF spikes
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [p.name for p in self.populations]
        if len(set(names)) != len(names) or "input" in names:
            raise SpikedetError("population names must be unique and not 'input'", "QuantGraph")
        order = {n: i for i, n in enumerate(names)}
        order["input"] = -1
        for s in self.synapses:
            where = f"synapse {s.name}"
            if s.src not in order or s.dst not in order or s.dst == "input":
                raise SpikedetError(f"unknown endpoint {s.src} -> {s.dst}", where)
            if order[s.src] >= order[s.dst] and s.lag < 1:  # a lagged synapse may point back
                raise SpikedetError("populations are not in topological order", where)
            if s.src != "input" and self.pop(s.src).kind not in SPIKING_KINDS:
                raise SpikedetError("a readout cannot be a synapse source", where)
            dst = self.pop(s.dst)
            if dst.kind == "maxpool":
                raise SpikedetError("a maxpool population has no incoming synapse", where)
            if s.out_offset + s.weight.shape[0] > dst.shape[0]:
                raise SpikedetError(
                    f"writes channels {s.out_offset}..{s.out_offset + s.weight.shape[0] - 1} "
                    f"of {s.dst}, which has {dst.shape[0]}",
                    where,
                )
        for p in self.populations:
            if p.kind == "maxpool":
                self._check_maxpool(p, order)

    def _check_maxpool(self, p: QPopulation, order: dict[str, int]) -> None:
        where = f"population {p.name}"
        if p.src not in order or p.src == "input" or order[p.src] >= order[p.name]:
            raise SpikedetError(f"source {p.src!r} is not an earlier population", where)
        src = self.pop(p.src)
        if src.kind not in SPIKING_KINDS:
            raise SpikedetError(f"source {p.src} is a {src.kind}, not a spiking population", where)
        h, w = conv_output_hw(src.shape[1:], p.pool_kernel, p.pool_stride, p.pool_padding)
        if p.D != src.D or p.shape != (src.shape[0], h, w):
            raise SpikedetError(
                f"max-pool of {p.src} {src.shape} (D={src.D}) gives {(src.shape[0], h, w)} "
                f"(D={src.D}), not {p.shape} (D={p.D})",
                where,
            )

    def pop(self, name: str) -> QPopulation:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def incoming(self, name: str) -> list[QSynapse]:
        """The synapses into ``name`` (none for a maxpool population: it reads ``src``)."""
        return [s for s in self.synapses if s.dst == name]

    def src_shape(self, src: str) -> tuple[int, int, int]:
        return self.input.shape if src == "input" else self.pop(src).shape

    @property
    def hw_steps(self) -> int:
        """Hardware steps of one run: max depth + T (§3.3)."""
        return max(p.depth for p in self.populations) + self.T

    # ---- serialization -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        header = {
            "format": FILE_FORMAT,
            "T": self.T,
            "message_bits": self.message_bits,
            "metadata": self.metadata,
            "input": {
                "shape": list(self.input.shape),
                "scale": self.input.scale,
                "bits": self.input.bits,
            },
            "populations": [],
            "synapses": [],
        }
        for i, p in enumerate(self.populations):
            arrays[f"p{i}_bias"] = p.bias
            header["populations"].append(
                {
                    "name": p.name,
                    "kind": p.kind,
                    "shape": list(p.shape),
                    "theta": p.theta,
                    "depth": p.depth,
                    "D": p.D,
                    "dv": p.dv,
                    "metadata": p.metadata,
                    "vth": p.vth,
                    "src": p.src,
                    "pool_kernel": list(p.pool_kernel),
                    "pool_stride": list(p.pool_stride),
                    "pool_padding": list(p.pool_padding),
                    **(cuba_fields(p) if p.kind in CUBA_KINDS else {}),
                }
            )
        for i, s in enumerate(self.synapses):
            arrays[f"s{i}_weight"] = s.weight
            header["synapses"].append(
                {
                    "name": s.name,
                    "src": s.src,
                    "dst": s.dst,
                    "stride": list(s.stride),
                    "padding": list(s.padding),
                    "groups": s.groups,
                    "delay": s.delay,
                    "out_offset": s.out_offset,
                    "upsample": s.upsample,
                    **({"dilation": list(s.dilation)} if s.dilation != (1, 1) else {}),
                    **({"lag": s.lag} if s.lag else {}),
                }
            )
        arrays["header"] = np.array(json.dumps(header))
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> QuantGraph:
        """Read a graph written by ``save``; files of format 1 (without the lif / maxpool /
        out_offset / upsample fields) load with those fields at their defaults."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                if header.get("format", 1) not in (1, FILE_FORMAT):
                    raise SpikedetError(
                        f"quantized graph format {header.get('format')!r}; this reader knows "
                        f"1..{FILE_FORMAT}",
                        str(path),
                    )
                pops = [
                    QPopulation(bias=z[f"p{i}_bias"], **h)
                    for i, h in enumerate(header["populations"])
                ]
                syns = [
                    QSynapse(weight=z[f"s{i}_weight"], **h)
                    for i, h in enumerate(header["synapses"])
                ]
        except SpikedetError:
            raise
        except Exception as err:  # corrupt or foreign file
            raise SpikedetError(f"not a spikedet quantized graph: {err}", str(path)) from None
        return cls(
            T=header["T"],
            input=QInput(**header["input"]),
            populations=pops,
            synapses=syns,
            message_bits=header["message_bits"],
            metadata=header["metadata"],
        )
