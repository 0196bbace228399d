"""Core mapping: tile counts, per-tile fan-in / memory / fan-out against brute-force sets, limits
that cannot be met, chips, and precision checks. Graphs and profiles are built by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from spikedet.deploy.mapping.mapper import destination_cores, map_graph
from spikedet.deploy.profiles import HardwareProfile, load_profile, parse_profile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph


def make_profile(tmp_path: Path | None = None, core_model=False, **limits) -> HardwareProfile:
    """loihi2 with some figures replaced: keys like neurons_per_core=64 (section found by name).

    Without ``core_model`` its connectivity and partition sections are dropped: the generic
    tile search (every connection per source neuron and weight) is what these tests pin."""
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    data["name"] = "tight"
    if not core_model:
        data.pop("connectivity"), data.pop("partition")
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


# ---- choosing the grouping of fan-in splits ---------------------------------------------------
def two_class_graph(seed: int = 0) -> QuantGraph:
    """cat (8 channels) = [conv3x3(s1) | conv3x3(s2)] (concatenation) + conv1x1(s1) over all 8:
    two split classes, the second one fed by two sources."""
    rng = np.random.default_rng(seed)

    def rsyn(name, src, cout, cin, k, offset=0):
        w = rng.integers(-3, 4, size=(cout, cin, k, k))
        return QSynapse(name, src, "cat", w, (1, 1), (k // 2, k // 2), 1, 0, offset)

    pops = [pop("s1", (16, 6, 6)), pop("s2", (12, 6, 6)), pop("cat", (8, 6, 6), 2)]
    syns = [
        syn("in_s1", "input", "s1", 16, 3, 3, pad=1),
        syn("in_s2", "input", "s2", 12, 3, 3, pad=1),
        rsyn("s1_cat", "s1", 4, 16, 3),
        rsyn("s2_cat", "s2", 4, 12, 3, offset=4),
        rsyn("s1_cat_1x1", "s1", 8, 16, 1),
    ]
    return QuantGraph(T=1, input=QInput((3, 6, 6), 255), populations=pops, synapses=syns)


def split_in_two_graph() -> QuantGraph:
    """stem (8 channels) -> p: one 3x3 conv reading 72 axons per neuron."""
    return QuantGraph(
        T=1,
        input=QInput((3, 12, 12), 255),
        populations=[pop("stem", (8, 12, 12)), pop("p", (6, 12, 12), 2)],
        synapses=[
            syn("c0", "input", "stem", 8, 3, 3, pad=1),
            syn("c1", "stem", "p", 6, 8, 3, pad=1),
        ],
    )


def conv_sum_check(qg: QuantGraph, lm) -> None:
    """The partial sums of a split layer add up to its synapses' exact integer output."""
    from spikedet.sim.fixed import conv_int

    rng = np.random.default_rng(7)
    values = {"input": rng.integers(0, 256, (1, *qg.input.shape))}
    values.update({p.name: rng.integers(0, 5, (1, *p.shape)) for p in qg.populations})
    for s in qg.incoming(lm.name):
        full = conv_int(values[s.src], s)
        o0, o1 = s.out_offset, s.out_offset + s.weight.shape[0]
        total = np.zeros_like(full)
        for ps in lm.psums:
            lo, hi = ps.sources.get(s.src, (0, 0))
            a, b = np.clip(ps.dst_channels, o0, o1) - o0
            w = np.zeros_like(s.weight)
            w[a:b, lo:hi] = s.weight[a:b, lo:hi]
            total += conv_int(values[s.src], QSynapse("x", s.src, s.dst, w, s.stride, s.padding))
        split = np.zeros(qg.pop(lm.name).shape[0], bool)
        for ps in lm.psums:
            split[ps.dst_channels[0] : ps.dst_channels[1]] = True
        rows = split[o0:o1]  # conv outputs of split classes: all their terms are partial sums
        assert np.array_equal(total[:, rows], full[:, rows]), s.name


@pytest.mark.parametrize(
    "graph, layer, limits",
    [
        (two_class_graph, "cat", {"fan_in_axons": 64}),
        (split_in_two_graph, "p", {"fan_in_axons": 50, "neurons_per_core": 256}),
        (split_in_two_graph, "p", {"conv_weight_sharing": False, "synaptic_memory": 500}),
    ],
)
def test_grouping_search_equals_brute_force_over_candidates(graph, layer, limits) -> None:
    from spikedet.deploy.mapping.geometry import hardware_view
    from spikedet.deploy.mapping.splits import analyse_split, class_groups, multipliers

    qg, prof = graph(), make_profile(**limits)
    split = analyse_split(qg, hardware_view(qg), layer, prof)
    assert split is not None and split.needed
    # every candidate multiplier, mapped on its own (no pruning)
    cores = {}
    for m in multipliers(split):
        forced = map_graph(qg, prof, group_multipliers={layer: m}).layer(layer)
        assert forced.cores == forced.tiles + sum(ps.tiles for ps in forced.psums)
        cores[m] = forced.cores
    fewest = map_graph(qg, prof, search=False).layer(layer)
    assert fewest.cores == cores[1] and fewest.grouping["multiplier"] == 1
    lm = map_graph(qg, prof).layer(layer)
    # the search finds the minimum (its lower-bound pruning is exact): never worse than the
    # fewest groups, ties to the smaller multiplier; what it tried matches the forced maps
    assert lm.cores == min(cores.values()) <= cores[1]
    assert lm.grouping["multiplier"] == min(m for m, c in cores.items() if c == lm.cores)
    assert all(cores[m] == c for m, c in lm.grouping["tried"])
    m = lm.grouping["multiplier"]
    assert lm.grouping["groups"] == len(lm.psums) == sum(class_groups(c, m) for c in split.classes)
    conv_sum_check(qg, lm)
    again = map_graph(qg, prof).layer(layer)  # deterministic
    assert [ps.sources for ps in again.psums] == [ps.sources for ps in lm.psums]


def test_grouping_search_beats_fewest_groups_and_figures_stay_exact() -> None:
    from spikedet.deploy.mapping.mapper import hardware_graph
    from spikedet.deploy.mapping.tiles import grid_figures

    qg, prof = two_class_graph(), make_profile(fan_in_axons=64)
    m, base = map_graph(qg, prof), map_graph(qg, prof, search=False)
    lm, lb = m.layer("cat"), base.layer("cat")
    assert lm.cores < lb.cores and len(lm.psums) > len(lb.psums)
    assert m.hw_depth == base.hw_depth == m.logical_depth + 1  # the grouping adds no latency
    # per-core figures of the neuron tiles on the full hardware graph (one edge per partial sum)
    # equal the search's (merged partial-sum edges)
    hw = hardware_graph(qg, m)
    figs = grid_figures(hw, hw.incoming("cat"), lm.shape, 1, lm.tile_shape, 8, True)
    assert (figs["fan_in"], figs["mem"]) == (lm.fan_in_axons_per_tile, lm.syn_mem_bits_per_tile)
    assert max(ps.fan_in_axons_per_tile for ps in lm.psums) <= 64


def test_optional_split_of_a_layer_that_fits() -> None:
    """p reads 24 channels x 9 = 216 axons <= 256: it fits, but a core then holds one position
    (24 x (h+2)(w+2) <= 256), so 16 x 16 = 256 cores; partial sums of a few channels pack
    whole blocks of positions, and p's neurons then receive one axon per group."""
    qg = QuantGraph(
        T=1,
        input=QInput((3, 16, 16), 255),
        populations=[pop("s", (24, 16, 16)), pop("p", (4, 16, 16), 2)],
        synapses=[
            syn("c0", "input", "s", 24, 3, 3, pad=1),
            syn("c1", "s", "p", 4, 24, 3, pad=1),
        ],
    )
    prof = make_profile(fan_in_axons=256)
    plain = map_graph(qg, prof, search=False)
    assert not plain.split_layers and plain.layer("p").cores == 256
    m = map_graph(qg, prof)
    lm = m.layer("p")
    assert m.split_layers == ["p"] and lm.grouping["optional"]
    assert lm.grouping["unsplit_cores"] == 256 and 2 * lm.cores <= 256
    assert lm.cores == min(c for _, c in lm.grouping["tried"] if c is not None)
    assert m.hw_depth == plain.hw_depth + 1 and lm.extra_steps == 1  # one step of latency
    conv_sum_check(qg, lm)
    # s (27 axons per neuron, 24 x 16 x 16 neurons on few cores) is not split, and a fixed
    # multiplier 1 keeps p whole
    assert m.layer("s").psums == []
    assert map_graph(qg, prof, group_multipliers={"p": 1}).layer("p").cores == 256


def test_unique_rows_matches_numpy() -> None:
    from spikedet.deploy.mapping.tiles import unique_rows

    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = rng.integers(0, 3, size=(int(rng.integers(1, 400)), int(rng.integers(1, 8))))
        got, counts = unique_rows(rows)
        want, want_counts = np.unique(rows, axis=0, return_counts=True)
        assert dict(zip(map(tuple, got), counts)) == dict(zip(map(tuple, want), want_counts))
        assert (np.diff(got[:, 0]) >= 0).all()
