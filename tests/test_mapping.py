"""Core mapping: tile counts, per-tile fan-in / memory / fan-out against brute-force sets, limits
that cannot be met, chips, and precision checks. Graphs and profiles are built by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from spikedet.deploy.mapping import destination_cores, map_graph
from spikedet.deploy.profiles import HardwareProfile, load_profile, parse_profile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph


def make_profile(tmp_path: Path | None = None, **limits) -> HardwareProfile:
    """loihi2 with some figures replaced: keys like neurons_per_core=64 (section found by name)."""
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    data["name"] = "tight"
    for key, value in limits.items():
        section = next(s for s, body in data.items() if isinstance(body, dict) and key in body)
        data[section][key]["value"] = value
        if key == "synaptic_memory":
            data[section][key]["unit"] = "bits"
    return parse_profile(data, "tight.yaml")


def pop(name, shape, depth=1, D=4, kind="ilif") -> QPopulation:
    return QPopulation(name, kind, shape, theta=2, bias=np.zeros(shape[0]), depth=depth, D=D)


def syn(name, src, dst, cout, cin_g, k, stride=1, pad=0, groups=1, w=1, delay=0) -> QSynapse:
    weight = np.full((cout, cin_g, k, k), w, np.int64)
    return QSynapse(name, src, dst, weight, (stride, stride), (pad, pad), groups, delay)


def single_conv_graph() -> QuantGraph:
    return QuantGraph(
        T=1,
        input=QInput((2, 8, 8), 255),
        populations=[pop("a", (4, 8, 8))],
        synapses=[syn("c", "input", "a", 4, 2, 3, pad=1)],
    )


def test_tile_count_by_hand_neuron_limit() -> None:
    # 256 neurons, 64 per core -> 4 tiles; ties prefer splitting channels: tile (1, 8, 8).
    m = map_graph(single_conv_graph(), make_profile(neurons_per_core=64))
    a = m.layer("a")
    assert (a.tiles, a.tile_shape, a.splits) == (4, (1, 8, 8), (4, 1, 1))
    # fan-in of a (1, 8, 8) tile: 2 input channels x 8 rows x 8 cols (padding adds nothing)
    assert a.fan_in_axons_per_tile == 2 * 8 * 8
    # shared kernels: 1 output channel x 2 x 3 x 3 weights x 8 bits
    assert a.syn_mem_bits_per_tile == 1 * 2 * 9 * 8 and a.syn_mem_bits_total == 4 * 144
    assert m.cores == 4 and m.chips == 1 and a.core_ids == (0, 4)


def test_fan_in_of_a_3x3_tile_by_hand() -> None:
    # Fan-in <= 40 axons: 2 channels x rows x cols <= 40. Interior tile of 2 rows reads 4 input
    # rows; a 4-column tile reads 5 columns (one side clipped by padding): 2 * 4 * 5 = 40.
    # (3, 3) tiles would read 2 * 5 * 5 = 50. Fewest tiles: 8, as (4, 2, 4) or (4, 4, 2); the
    # tie prefers whole rows (larger w_t).
    m = map_graph(single_conv_graph(), make_profile(neurons_per_core=64, fan_in_axons=40))
    a = m.layer("a")
    assert a.tile_shape == (4, 2, 4) and a.tiles == 8
    assert a.fan_in_axons_per_tile == 40
    m2 = map_graph(single_conv_graph(), make_profile(neurons_per_core=64, fan_in_axons=39))
    assert m2.layer("a").tiles > 8 and m2.layer("a").fan_in_axons_per_tile <= 39


def test_memory_without_sharing_counts_real_connections() -> None:
    # Without sharing each real connection is stored: for the whole 4x8x8 population the real
    # fan-in sum is 4 channels x 2 in-channels x (sum of valid taps per row)^2 = 4*2*22*22.
    prof = make_profile(conv_weight_sharing=False, fan_in_axons=10**6, neurons_per_core=10**4)
    a = map_graph(single_conv_graph(), prof).layer("a")
    assert a.tiles == 1
    assert a.syn_mem_bits_per_tile == 4 * 2 * 22 * 22 * 8


# ---- brute force with Python sets ------------------------------------------------------------
def sources(qg: QuantGraph, s: QSynapse, o: int, y: int, x: int) -> set:
    """Source neurons (c, iy, ix) read by target neuron (o, y, x) through conv s."""
    _, h_in, w_in = qg.src_shape(s.src)
    cout, cin_g, kh, kw = s.weight.shape
    group = o // (cout // s.groups)
    out = set()
    for c in range(group * cin_g, (group + 1) * cin_g):
        for ky, kx in itertools.product(range(kh), range(kw)):
            iy, ix = y * s.stride[0] - s.padding[0] + ky, x * s.stride[1] - s.padding[1] + kx
            if 0 <= iy < h_in and 0 <= ix < w_in:
                out.add((s.src, c, iy, ix))
    return out


def tile_of(shape, tile, n) -> tuple:
    return tuple(n[i] // tile[i] for i in range(3))


def brute_figures(qg, name, tile, wb, sharing, dst_tiles) -> tuple[int, int, int, int]:
    """Worst-tile (neurons, memory bits, fan-in axons, fan-out cores) by explicit sets."""
    shape = qg.pop(name).shape
    tiles: dict[tuple, list] = {}
    for n in itertools.product(*map(range, shape)):
        tiles.setdefault(tile_of(shape, tile, n), []).append(n)
    reach: dict[tuple, set] = {}  # source neuron of `name` -> destination cores
    for s in qg.synapses:
        if s.src == name and s.dst in dst_tiles:
            for n in itertools.product(*map(range, qg.pop(s.dst).shape)):
                core = (s.dst, tile_of(qg.pop(s.dst).shape, dst_tiles[s.dst], n))
                for src in sources(qg, s, *n):
                    reach.setdefault(src[1:], set()).add(core)
    worst = [0, 0, 0, 0]
    for members in tiles.values():
        axons, mem, cores = set(), 0, set()
        for s in qg.incoming(name):
            chans = {n[0] for n in members}
            if sharing:
                mem += len(chans) * s.weight[0].size * wb
            for n in members:
                srcs = sources(qg, s, *n)
                axons |= srcs
                mem += 0 if sharing else len(srcs) * wb
        for n in members:
            cores |= reach.get(n, set())
        for i, v in enumerate((len(members), mem, len(axons), len(cores))):
            worst[i] = max(worst[i], v)
    return tuple(worst)


def branchy_graph() -> QuantGraph:
    """Stride, padding, a depthwise conv, two synapses from one source into one target (united
    fan-in), a target fed by two sources, and a readout."""
    pops = [
        pop("a", (4, 7, 6), 1),
        pop("b", (4, 4, 3), 2),
        pop("c", (4, 4, 3), 3),
        pop("r", (2, 4, 3), 4, kind="readout", D=0),
    ]
    syns = [
        syn("in_a", "input", "a", 4, 2, 3, pad=1),
        syn("a_b3", "a", "b", 4, 4, 3, stride=2, pad=1),
        syn("a_b1", "a", "b", 4, 4, 1, stride=2),
        syn("b_c", "b", "c", 4, 1, 3, pad=1, groups=4),
        syn("a_c", "a", "c", 4, 4, 3, stride=2, pad=1, delay=1),
        syn("c_r", "c", "r", 2, 4, 1),
    ]
    return QuantGraph(T=2, input=QInput((2, 7, 6), 255), populations=pops, synapses=syns)


@pytest.mark.parametrize("sharing, fan_out", [(True, 12), (False, 12), (True, 100)])
def test_per_tile_figures_equal_brute_force_and_tile_count_is_minimal(sharing, fan_out) -> None:
    # fan-out 12 binds for population a (7 tiles would reach 16 cores); no-sharing memory
    # nearly binds for b (3712 of 4000 bits)
    qg = branchy_graph()
    prof = make_profile(
        neurons_per_core=24,
        fan_in_axons=70,
        fan_out_cores=fan_out,
        conv_weight_sharing=sharing,
        synaptic_memory=4000,
    )
    m = map_graph(qg, prof)
    chosen = {lm.name: lm.tile_shape for lm in m.layers}
    for lm in reversed(m.layers):
        later = {k: v for k, v in chosen.items() if k != lm.name}
        figs = brute_figures(qg, lm.name, lm.tile_shape, 8, sharing, later)
        assert figs == (
            lm.neurons_per_tile,
            lm.syn_mem_bits_per_tile,
            lm.fan_in_axons_per_tile,
            lm.fan_out_cores,
        ), lm.name
        # no candidate tile (sizes ceil(N/k)) with fewer tiles satisfies every limit
        shape = lm.shape
        for tile in itertools.product(
            *[{math.ceil(n / k) for k in range(1, n + 1)} for n in shape]
        ):
            count = math.prod(math.ceil(n / t) for n, t in zip(shape, tile))
            if count >= lm.tiles or math.prod(tile) > 24:
                continue
            _, mem, fan_in, reach_cores = brute_figures(qg, lm.name, tile, 8, sharing, later)
            assert mem > 4000 or fan_in > 70 or reach_cores > fan_out, (lm.name, tile)
    assert m.layer("a").tiles == (8 if fan_out == 12 else 7)
    # consecutive core ids in topological order
    assert [lm.core_ids[0] for lm in m.layers] == list(
        np.cumsum([0] + [lm.tiles for lm in m.layers[:-1]])
    )
    assert m.cores == sum(lm.tiles for lm in m.layers)
    # per-neuron destination cores: the union over both a->b synapses, plus a->c
    reach = destination_cores(qg, m, "a")
    for n in itertools.product(*map(range, (4, 7, 6))):
        cores = set()
        for s in qg.synapses:
            if s.src == "a":
                for t in itertools.product(*map(range, qg.pop(s.dst).shape)):
                    if ("a", *n) in sources(qg, s, *t):
                        cores.add((s.dst, tile_of(qg.pop(s.dst).shape, chosen[s.dst], t)))
        assert reach[n] == len(cores), n


def test_fan_in_beyond_a_core_is_split_or_refused_naming_layer_and_limit() -> None:
    qg = QuantGraph(
        T=1,
        input=QInput((3, 8, 8), 255),
        populations=[pop("stem", (8, 8, 8)), pop("stage1.lif", (16, 8, 8), 2)],
        synapses=[
            syn("c0", "input", "stem", 8, 3, 3, pad=1),
            syn("c1", "stem", "stage1.lif", 16, 8, 3, pad=1),
        ],
    )
    # one neuron of stage1.lif reads 8 x 9 = 72 axons > 50: two groups of 4 channels (36 each)
    lm = map_graph(qg, make_profile(fan_in_axons=50)).layer("stage1.lif")
    assert [ps.sources for ps in lm.psums] == [{"stem": (0, 4)}, {"stem": (4, 8)}]
    assert max(ps.fan_in_axons_per_tile for ps in lm.psums) <= 50 and lm.fan_in_parts == 2
    # |partial sum| <= 4 channels x 9 taps x |w| 1 x D 4 = 144: 9 signed bits
    assert [ps.bound for ps in lm.psums] == [144, 144] and lm.psums[0].payload_bits == 9
    with pytest.raises(SpikedetError) as info:  # the fewest groups only (the mapper before #8)
        map_graph(qg, make_profile(fan_in_axons=50, message_bits=8), search=False)
    assert "layer stage1.lif: one neuron needs 72 fan-in axons" in info.value.what
    assert "9-bit graded payloads" in info.value.what and "tight carries 8" in info.value.what
    # the grouping search tries more groups: 2 channels per group, |partial sum| <= 72: 8 bits
    lm = map_graph(qg, make_profile(fan_in_axons=50, message_bits=8)).layer("stage1.lif")
    assert lm.grouping["tried"][0] == [1, None] and len(lm.psums) >= 4
    assert max(ps.payload_bits for ps in lm.psums) <= 8
    # refused when no grouping fits: one channel alone sums up to 36 (7 bits); the error is
    # the fewest-groups one (6-bit input so that the input itself still fits the payload)
    qg.input.bits = 6
    with pytest.raises(SpikedetError, match="9-bit graded payloads.*tight carries 6"):
        map_graph(qg, make_profile(fan_in_axons=50, message_bits=6))
    qg.input.bits = 8
    # 72 connections x 8 bits = 576 bits > 500 of memory: also split, 288 bits per group
    prof = make_profile(conv_weight_sharing=False, synaptic_memory=500)
    lm = map_graph(qg, prof, search=False).layer("stage1.lif")
    assert len(lm.psums) == 2 and max(ps.syn_mem_bits_per_tile for ps in lm.psums) <= 500
    best = map_graph(qg, prof).layer("stage1.lif")  # the search: never more cores
    assert best.cores <= lm.cores and best.grouping["tried"][0] == [1, lm.cores]
    # fan-out is not split: one core per neuron, a stem spike reaches the partial sums of its
    # channel's group: 16 channels x 3 x 3 positions = 144 cores > 3: refused
    with pytest.raises(SpikedetError, match="layer stem: one neuron's spikes reach 144 cores"):
        map_graph(qg, make_profile(fan_in_axons=50, neurons_per_core=1, fan_out_cores=3))


def test_chips_count() -> None:
    # 4 x 8 x 8 = 256 neurons at 16 per core -> 16 cores; 5 cores per chip -> 4 chips
    m = map_graph(single_conv_graph(), make_profile(neurons_per_core=16, cores_per_chip=5))
    assert (m.cores, m.chips) == (16, 4)


def test_weight_delay_and_message_precision() -> None:
    qg = branchy_graph()
    qg.synapses[1].weight[0, 0, 0, 0] = 200  # needs 9 signed bits
    with pytest.raises(SpikedetError) as info:
        map_graph(qg, make_profile())
    assert "layer b" in info.value.what and "9 signed bits" in info.value.what
    assert "8-bit weights" in info.value.what
    assert map_graph(qg, make_profile(weight_bits=9)).precision["weight_bits"]["needed"] == 9
    with pytest.raises(SpikedetError, match="8-bit graded input"):
        map_graph(branchy_graph(), load_profile("loihi1"))
    # binary input (1 bit) on a binary-spike core: D=4 spikes cannot be graded, binary works
    qg = branchy_graph()
    qg.input.bits = 1
    m = map_graph(qg, make_profile(message_bits=1))
    assert not m.modes["graded"]["supported"] and m.modes["binary"]["supported"]
    assert map_graph(qg, make_profile(message_bits=3)).modes["graded"]["supported"]


def test_state_bits_and_shape_mismatch() -> None:
    with pytest.raises(SpikedetError, match="24-bit neuron state"):
        map_graph(single_conv_graph(), make_profile(state_bits=16))
    bad = QuantGraph(
        T=1,
        input=QInput((2, 8, 8), 255),
        populations=[pop("a", (4, 7, 7))],
        synapses=[syn("c", "input", "a", 4, 2, 3, pad=1)],
    )
    with pytest.raises(SpikedetError) as info:
        map_graph(bad, make_profile())
    assert info.value.where == "synapse c"
