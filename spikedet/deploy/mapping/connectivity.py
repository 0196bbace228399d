"""Per-core costs of a connectivity-aware core (Loihi 2, ``CoreModel``) and its compiler's
partition rule; used by ``tiles`` when the profile has a core model.

Loihi 2 encodes connections by how they are shared, not one per source neuron
(calibrated on the per-core tables of Lava's Loihi 2 compiler, hardware_profiles/loihi2.yaml):

- a *conv* edge (its kernel slides over more than one destination position) reaches a core on
  population axons, ``conv_axons`` per edge whatever the receptive field, and the core stores
  its kernel once: per (source channel, kernel tap) row, the weights of the tile's destination
  channels packed ``weight bits`` each into ``word_bits`` words, plus ``conv_header_words``;
- a *dense* edge (one destination position: each weight used once, e.g. a flattened fully
  connected layer) costs one axon per source neuron, and per axon its synapses to the tile's
  channels at ``dense_synapse_bits`` each (weight plus index), rounded up to whole words.

The weight bits of a conv edge are those of its integers (``HwEdge.weight_bits``: mantissa bits
plus sign, after the common power-of-two factor, as netx fits Loihi synapses), at most the
profile's ``weight_bits``.

Partition (``partition_tile``), as the compiler does it: a layer of N compartments is cut into
r = ceil(N / budget) parts: columns first (tile width W / r rounded up to a power of two),
then rows (likewise) when r exceeds the columns, then channels (ceil(C / r'), unrounded, as
the compiler cuts dense layers). While a tile exceeds a core limit the cut is refined by
ceil(figure / limit) (the compiler's "max_ratio"): synaptic memory and fan-in by cutting the
channels into that many more groups (a core stores the kernel slice of its channels only),
fan-out and neurons by that many more spatial parts. The integer results never depend on
tiling.
"""

from __future__ import annotations

import numpy as np

from spikedet.deploy.core_model import CoreModel
from spikedet.deploy.mapping.geometry import HwEdge, HwGraph, window_max


def is_conv(e: HwEdge, hw: HwGraph) -> bool:
    """A kernel shared over several destination positions (a dense edge has one position)."""
    shape = hw.shape(e.dst)
    return shape[1] * shape[2] > 1


def edge_weight_bits(e: HwEdge, profile_bits: int) -> int:
    """Bits one stored weight of ``e`` takes (its fitted bits, at most the profile's)."""
    return min(profile_bits, e.weight_bits) if e.weight_bits > 0 else profile_bits


def memory_words(
    e: HwEdge, hw: HwGraph, src_channels: np.ndarray, readers: np.ndarray, wb: int, m: CoreModel
) -> np.ndarray:
    """Words per channel tile of edge ``e``: ``src_channels`` source channels read and
    ``readers`` = Σ stored weights per tap (destination channels x their source channels)."""
    per_src = -(-readers // np.maximum(src_channels, 1))  # destination channels per source
    rows = src_channels * e.taps  # (source channel, tap) rows: source neurons for dense edges
    if is_conv(e, hw):
        return rows * (-(-(per_src * wb) // m.word_bits) + m.conv_header_words)
    return rows * (-(-(per_src * m.dense_synapse_bits) // m.word_bits))


def channel_costs(e: HwEdge, hw: HwGraph, wb: int, m: CoreModel | None) -> tuple[int, int]:
    """(fan-in axons, memory bits) one source channel of ``e`` costs a one-neuron tile: the
    per-channel weights of a fan-in split's greedy grouping (``splits``). Without a core
    model: its window of source neurons, and one weight per tap."""
    if m is None:
        return window_max(e, hw), e.taps * wb
    wb = edge_weight_bits(e, wb)
    if is_conv(e, hw):  # population axons: a constant per edge, not per channel
        return 0, e.taps * (-(-wb // m.word_bits) + m.conv_header_words) * m.word_bits
    shape = hw.shape(e.src)
    return shape[1] * shape[2], e.taps * -(-m.dense_synapse_bits // m.word_bits) * m.word_bits


def _pow2_at_least(x: float) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(x, 1.0)) - 1e-12)))


def partition_tile(
    shape: tuple[int, int, int], parts: int, channel_parts: int = 1
) -> tuple[int, int, int]:
    """The compiler's tile (module docstring) for ``parts`` spatial parts of a (C, H, W)
    population whose channels are first cut into ``channel_parts`` groups."""
    c, h, w = shape
    c = -(-c // channel_parts)
    if parts <= w:
        return c, h, min(w, _pow2_at_least(w / parts))
    rest = parts / w
    if rest <= h:
        return c, min(h, _pow2_at_least(h / rest)), 1
    return max(1, -(-c // int(np.ceil(rest / h)))), 1, 1


def initial_parts(compartments: int, budget: int) -> int:
    return max(1, -(-compartments // budget))
