"""The float graph a NIR file describes: populations, conv synapses and readouts (no integers yet).

``spikedet.deploy.nir_read`` reads a NIR file (``read_nir`` / ``from_nir``, the parser is
``spikedet.deploy.nir_parse``) in the encoding of docs/semantics.md §2 into a ``FloatGraph``:

- populations, in topological order: ``ilif`` (§2.2, u = β·(u − s) + α·x, s in 0..D), ``lif``
  (§2.5, hard reset, s = [u > V_th]), ``maxpool`` (§2.7b, the max-pool of the spikes of ``src``,
  no synapse of its own) and ``readout`` integrators (§2.4);
- synapses: one ``FSynapse`` per (Conv2d, target population) with the compact weight, writing
  channels ``out_offset ..`` of the target (§2.7) after a nearest ``upsample`` (§2.8).

Every problem is a SpikedetError naming the node, population or field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError

POP_KINDS = ("ilif", "lif", "maxpool", "readout", "cuba", "li")
SPIKING_KINDS = ("ilif", "lif", "maxpool", "cuba")  # kinds a synapse or a max-pool may read


def require(ok: Any, what: str, where: str) -> None:
    if not ok:
        raise SpikedetError(what, where)


def conv_output_hw(hw: tuple, kernel: tuple, stride: tuple, padding: tuple) -> tuple[int, int]:
    """Output size of a cross-correlation: floor((n + 2p - k) / s) + 1 per axis (dilation 1)."""
    h, w = ((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, padding))
    return int(h), int(w)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(int(v) for v in value)  # type: ignore[return-value]


@dataclass
class FPopulation:
    """A float population.

    - ``ilif``: u = β·(u − s) + α·x, s = round(clip(u, 0, D));
    - ``lif``: u = β·u·(1 − s) + α·x, s = [u > threshold] (D = 1; β = 1: NIR IF);
    - ``maxpool``: s = maxpool(s of ``src``) over ``pool_kernel`` / ``pool_stride`` /
      ``pool_padding`` (zero padding), D = the source's D; no synapse, β and α unused;
    - ``readout``: v = v + α·x, never leaks (``beta`` is ignored);
    - ``cuba`` (§4.3, NIR CubaLIF without Lava integers): i = β_syn·i + x,
      v = β·v·(1 − s) + α·i + v_bias, s = [v > threshold]; with ``loihi`` (§3.6) the
      integers are given and the float fields are unused; ``reset`` "subtract": v = v − threshold
      where s instead of 0 (§4.2);
    - ``li`` (§4.5, NIR LI / CubaLI): the cuba update without spikes, read out as v.
    """

    name: str
    kind: str
    shape: tuple[int, int, int]
    D: int = 0
    beta: float = 0.0
    alpha: float = 1.0
    threshold: float = 0.5  # lif: V_th
    src: str = ""  # maxpool: the source population
    pool_kernel: tuple[int, int] = (1, 1)
    pool_stride: tuple[int, int] = (1, 1)
    pool_padding: tuple[int, int] = (0, 0)
    loihi: dict | None = None  # cuba: Lava's exact integers (NIR metadata "loihi", §3.6)
    beta_syn: float = 0.0  # cuba: decay of the synaptic current (0: no current memory)
    v_bias: float = 0.0  # cuba: added to v every step (NIR (dt/tau_mem)·v_leak)
    reset: str = "zero"  # cuba: "zero" (v <- 0) or "subtract" (v <- v - threshold) after a spike

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)  # type: ignore[assignment]
        self.pool_kernel = _pair(self.pool_kernel)
        self.pool_stride = _pair(self.pool_stride)
        self.pool_padding = _pair(self.pool_padding)
        kind, where = self.kind, f"population {self.name}"
        require(kind in POP_KINDS, f"unknown population kind {kind!r}", where)
        require(len(self.shape) == 3 and min(self.shape) >= 1, f"bad shape {self.shape}", where)
        levels = kind in ("ilif", "maxpool")
        require(not levels or 1 <= int(self.D) <= 255, f"D must be in 1..255, got {self.D}", where)
        require(kind != "lif" or int(self.D) == 1, f"a lif has D = 1, got {self.D}", where)
        ok = kind not in ("cuba", "li") or int(self.D) == 1
        require(ok, f"a {kind} has D = 1, got {self.D}", where)
        require(self.reset in ("zero", "subtract"), f"unknown reset {self.reset!r}", where)
        decays = kind in ("ilif", "lif", "li") or (kind == "cuba" and self.loihi is None)
        # beta = 1: a lif / cuba without leak (NIR IF, §4.3); an I-LIF always leaks
        ok = not decays or 0 <= self.beta < 1 or (kind != "ilif" and self.beta == 1)
        ok = ok and 0 <= self.beta_syn < 1
        require(ok, f"beta must be in [0, 1), got {self.beta}", where)
        ok = math.isfinite(self.alpha) and self.alpha > 0
        require(ok, f"alpha must be positive and finite, got {self.alpha}", where)
        ok = kind not in ("lif", "cuba") or math.isfinite(self.threshold + self.v_bias)
        require(ok, f"threshold must be finite, got {self.threshold}", where)
        if kind == "maxpool":
            require(self.src, "a maxpool population needs its source population", where)
            ok = min(self.pool_kernel) >= 1 and min(self.pool_stride) >= 1
            ok = ok and len(self.pool_padding) == 2 and min(self.pool_padding) >= 0
            require(ok, "pool kernel/stride must be >= 1 and padding >= 0", where)


@dataclass
class FSynapse:
    """A Conv2d (cross-correlation, torch layout) from ``src`` (population or "input") to ``dst``.

    Its output, repeated ``upsample`` x ``upsample`` (nearest), adds into channels
    ``out_offset .. out_offset + Cout - 1`` of ``dst``.
    """

    name: str
    src: str
    dst: str
    weight: np.ndarray  # float64 (Cout, Cin/groups, KH, KW), compact (only the written rows)
    bias: np.ndarray  # float64 (Cout,), added at every step
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    out_offset: int = 0  # first destination channel written (§2.7)
    upsample: int = 1  # nearest-neighbour factor applied to the conv output (§2.8)
    lag: int = 0  # logical steps: dst at step t reads src at t - lag (recurrent edges, §4.4)
    # parts of ``bias`` that arrive only from a step k >= 1 on, ((k, (Cout,)), ...): a bias
    # written before a recurrent edge or Delay on the path is delayed with it (§4.4)
    late_bias: tuple = ()

    def __post_init__(self) -> None:
        self.weight = np.array(self.weight, dtype=np.float64)  # a copy: never alias NIR arrays
        self.bias = np.array(self.bias, dtype=np.float64).reshape(-1)
        self.stride = _pair(self.stride)
        self.padding = _pair(self.padding)
        self.groups, self.out_offset, self.upsample = (
            int(self.groups),
            int(self.out_offset),
            int(self.upsample),
        )
        self.lag = int(self.lag)
        where, w = f"synapse {self.name}", self.weight
        require(self.lag >= 0, f"lag {self.lag} < 0", where)
        require(w.ndim == 4, f"conv weight must be 4-D, got {w.shape}", where)
        finite = np.all(np.isfinite(w)) and np.all(np.isfinite(self.bias))
        require(finite, "conv weight or bias holds NaN/inf", where)
        require(self.bias.shape == w.shape[:1], f"bias {self.bias.shape} vs {w.shape}", where)
        require(len(self.stride) == 2 and min(self.stride) >= 1, "stride must be >= 1", where)
        require(len(self.padding) == 2 and min(self.padding) >= 0, "padding must be >= 0", where)
        ok = self.groups >= 1 and w.shape[0] % self.groups == 0
        require(ok, f"groups={self.groups} does not divide the output channels", where)
        ok = self.out_offset >= 0 and self.upsample >= 1
        require(ok, f"out_offset {self.out_offset} < 0 or upsample {self.upsample} < 1", where)

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    def output_shape(self, src_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(Cout, f·H', f·W') for a (C, H, W) source; SpikedetError if the channels differ."""
        what = f"conv takes {self.in_channels} input channels, its source has {src_shape[0]}"
        require(src_shape[0] == self.in_channels, what, f"synapse {self.name}")
        kernel = self.weight.shape[2:]
        h, w = conv_output_hw(src_shape[1:], kernel, self.stride, self.padding)
        require(min(h, w) >= 1, f"conv output is empty ({h}x{w})", f"synapse {self.name}")
        return (int(self.weight.shape[0]), h * self.upsample, w * self.upsample)


@dataclass
class FloatGraph:
    """Populations (topological order, readouts included), synapses and run parameters."""

    input_shape: tuple[int, int, int]
    input_scale: float
    T: int
    populations: list[FPopulation]
    synapses: list[FSynapse]
    head: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        shape, scale = self.input_shape, self.input_scale
        require(len(shape) == 3 and min(shape) >= 1, f"bad input shape {shape}", "input")
        require(math.isfinite(scale) and scale > 0, f"bad input_scale {scale}", "input")
        require(int(self.T) >= 1, f"T must be >= 1, got {self.T}", "FloatGraph")
        order = {"input": -1}
        for i, p in enumerate(self.populations):
            require(p.name not in order, "population names must be unique, not 'input'", p.name)
            order[p.name] = i
        for s in self.synapses:
            where = f"synapse {s.name}"
            known = s.src in order and s.dst in order and s.dst != "input"
            require(known, f"unknown endpoint {s.src} -> {s.dst}", where)
            ok = order[s.src] < order[s.dst] or s.lag >= 1  # a lagged synapse may point back
            require(ok, "populations not in topological order", where)
            ok = s.src == "input" or self.pop(s.src).kind in SPIKING_KINDS
            require(ok, "a readout cannot be a synapse source", where)
            dst = self.pop(s.dst)
            require(dst.kind != "maxpool", "a maxpool population has no synapse", where)
            cout, h, w = s.output_shape(self.src_shape(s.src))
            ok = (h, w) == dst.shape[1:] and s.out_offset + cout <= dst.shape[0]
            what = f"conv output {(cout, h, w)} at channel offset {s.out_offset} does not fit"
            require(ok, f"{what} population {dst.shape}", where)
        for p in self.populations:
            if p.kind == "maxpool":
                self._check_maxpool(p, order)
                continue
            ok = any(s.dst == p.name for s in self.synapses)
            require(ok, "population has no incoming synapse", f"population {p.name}")

    def _check_maxpool(self, p: FPopulation, order: dict[str, int]) -> None:
        where = f"population {p.name}"
        ok = p.src in order and p.src != "input" and order[p.src] < order[p.name]
        require(ok, f"source {p.src!r} is not an earlier population", where)
        src = self.pop(p.src)
        require(src.kind in SPIKING_KINDS, f"source {p.src} is a {src.kind}", where)
        h, w = conv_output_hw(src.shape[1:], p.pool_kernel, p.pool_stride, p.pool_padding)
        ok = p.D == src.D and p.shape == (src.shape[0], h, w)
        what = f"max-pool of {p.src} {src.shape} (D={src.D}) is {(src.shape[0], h, w)}"
        require(ok, f"{what}, not {p.shape} (D={p.D})", where)

    def pop(self, name: str) -> FPopulation:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def src_shape(self, src: str) -> tuple[int, int, int]:
        return self.input_shape if src == "input" else self.pop(src).shape


# ---- reading ---------------------------------------------------------------------------------


def one_line(err: BaseException, limit: int = 240) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain(value: Any) -> Any:
    """numpy scalars/arrays and bytes (as nir.read returns metadata) -> JSON-safe Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (np.ndarray, np.generic)):
        return plain(value.tolist())
    return value
