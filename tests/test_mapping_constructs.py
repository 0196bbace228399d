"""Mapping and counting of the format-2 constructs (lif, maxpool, out_offset, upsample), fan-in
splitting and delay relays, against explicit loops over neurons on small hand-built graphs."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from spikedet.deploy.energy import count_activity, energy_report
from spikedet.deploy.mapping.mapper import map_graph
from spikedet.deploy.profiles import load_profile
from spikedet.deploy.quantize import assign_depths
from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine, conv_int
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph
from tests.test_mapping import make_profile

REPO_ROOT = Path(__file__).resolve().parents[1]


def ilif(name, shape, D=3) -> QPopulation:
    return QPopulation(name, "ilif", shape, theta=4, bias=np.zeros(shape[0]), D=D, dv=2048)


def syn(rng, name, src, dst, cout, cin_g, k, stride=1, pad=0, groups=1, offset=0, up=1):
    w = rng.integers(-3, 4, size=(cout, cin_g, k, k))
    return QSynapse(name, src, dst, w, (stride,) * 2, (pad,) * 2, groups, 0, offset, up)


def constructs_graph(seed: int = 0) -> QuantGraph:
    """input -> a (I-LIF) -> m = maxpool3/2(a) -> b (LIF, 1x1 conv) -> cat: channels 0..3 from
    a (3x3), 4..6 from b upsampled x2 (1x1) -> readout; plus a depthwise conv into cat."""
    rng = np.random.default_rng(seed)
    pops = [
        ilif("a", (4, 6, 6)),
        QPopulation(
            "m",
            "maxpool",
            (4, 3, 3),
            theta=0,
            bias=np.zeros(4),
            D=3,
            src="a",
            pool_kernel=(3, 3),
            pool_stride=(2, 2),
            pool_padding=(1, 1),
        ),  # fmt: skip
        QPopulation("b", "lif", (3, 3, 3), theta=4, bias=np.zeros(3), D=1, dv=3072, vth=2),
        ilif("cat", (7, 6, 6), D=2),
        QPopulation("r", "readout", (2, 6, 6), theta=2, bias=np.zeros(2)),
    ]
    syns = [
        syn(rng, "in_a", "input", "a", 4, 2, 3, pad=1),
        syn(rng, "m_b", "m", "b", 3, 4, 1),
        syn(rng, "a_cat", "a", "cat", 4, 4, 3, pad=1),
        syn(rng, "b_cat", "b", "cat", 3, 3, 1, offset=4, up=2),
        syn(rng, "a_cat_dw", "a", "cat", 4, 1, 3, pad=1, groups=4),
        syn(rng, "cat_r", "cat", "r", 2, 7, 1),
    ]
    assign_depths(pops, syns)
    return QuantGraph(T=2, input=QInput((2, 6, 6), 255), populations=pops, synapses=syns)


# ---- brute force: explicit source sets per target neuron --------------------------------------
def sources(qg: QuantGraph, name: str, o: int, y: int, x: int) -> list[tuple]:
    """(edge, source neuron) pairs read by neuron (o, y, x) of ``name`` (max-pool: its window)."""
    p = qg.pop(name)
    out = []
    if p.kind == "maxpool":
        _, h, w = qg.pop(p.src).shape
        for ky, kx in itertools.product(range(p.pool_kernel[0]), range(p.pool_kernel[1])):
            iy = y * p.pool_stride[0] - p.pool_padding[0] + ky
            ix = x * p.pool_stride[1] - p.pool_padding[1] + kx
            if 0 <= iy < h and 0 <= ix < w:
                out.append(("pool", (p.src, o, iy, ix)))
        return out
    for s in qg.incoming(name):
        cout, cin_g, kh, kw = s.weight.shape
        j = o - s.out_offset
        if not 0 <= j < cout:
            continue
        cy, cx, g = y // s.upsample, x // s.upsample, j // (cout // s.groups)
        _, h, w = qg.src_shape(s.src)
        for c in range(g * cin_g, (g + 1) * cin_g):
            for ky, kx in itertools.product(range(kh), range(kw)):
                iy, ix = cy * s.stride[0] - s.padding[0] + ky, cx * s.stride[1] - s.padding[1] + kx
                if 0 <= iy < h and 0 <= ix < w:
                    out.append((s.name, (s.src, c, iy, ix)))
    return out


def brute_tile(qg, name, tile, sharing, dst_tiles) -> tuple[int, int, int, int]:
    """Worst tile's (compartments, memory bits, fan-in axons, fan-out cores) by explicit sets."""
    p = qg.pop(name)
    levels = p.D if p.kind == "maxpool" else 1
    groups: dict[tuple, list] = {}
    for n in itertools.product(*map(range, p.shape)):
        groups.setdefault(tuple(n[i] // tile[i] for i in range(3)), []).append(n)
    reach: dict[tuple, set] = {}
    for q in qg.populations:
        if q.name in dst_tiles:
            for n in itertools.product(*map(range, q.shape)):
                core = (q.name, tuple(n[i] // dst_tiles[q.name][i] for i in range(3)))
                for _, src in sources(qg, q.name, *n):
                    if src[0] == name:
                        reach.setdefault(src[1:], set()).add(core)
    worst = [0, 0, 0, 0]
    for members in groups.values():
        axons, mem, cores = set(), 0, set()
        for n in members:
            pairs = sources(qg, name, *n)
            axons |= {src for _, src in pairs}
            mem += 0 if sharing else len(pairs) * levels * 8
            cores |= reach.get(n, set())
        if sharing:  # kernel slice per (edge, written channel) in the tile, once per core
            for e, _o in {(e, n[0]) for n in members for e, _ in sources(qg, name, *n)}:
                if e == "pool":
                    mem += levels * p.pool_kernel[0] * p.pool_kernel[1] * 8
                else:
                    mem += (
                        int(np.prod(next(s for s in qg.synapses if s.name == e).weight[0].shape))
                        * 8
                    )
        figs = (len(members) * levels, mem, len(axons), len(cores))
        worst = [max(a, b) for a, b in zip(worst, figs)]
    return tuple(worst)


@pytest.mark.parametrize("sharing", [True, False])
def test_constructs_per_tile_figures_equal_brute_force(sharing: bool) -> None:
    qg = constructs_graph()
    prof = make_profile(neurons_per_core=24, fan_in_axons=60, fan_out_cores=16,
                        conv_weight_sharing=sharing, synaptic_memory=3000)  # fmt: skip
    m = map_graph(qg, prof)
    chosen = {lm.name: lm.tile_shape for lm in m.layers}
    assert not m.split_layers and m.hw_depth == m.logical_depth == 5
    for lm in m.layers:
        later = {
            q.name: chosen[q.name]
            for q in qg.populations[qg.populations.index(qg.pop(lm.name)) + 1 :]
        }
        got = (
            lm.neurons_per_tile,
            lm.syn_mem_bits_per_tile,
            lm.fan_in_axons_per_tile,
            lm.fan_out_cores,
        )
        assert got == brute_tile(qg, lm.name, lm.tile_shape, sharing, later), lm.name
        # fewest tiles: no candidate with fewer tiles meets every limit
        for tile in itertools.product(
            *[{math.ceil(n / k) for k in range(1, n + 1)} for n in lm.shape]
        ):
            if math.prod(math.ceil(n / t) for n, t in zip(lm.shape, tile)) < lm.tiles:
                neu, mem, fan, out = brute_tile(qg, lm.name, tile, sharing, later)
                assert neu > 24 or mem > 3000 or fan > 60 or out > 16, (lm.name, tile)
    mp = m.layer("m")  # D = 3 threshold compartments per max-pool neuron
    assert (mp.neurons, mp.compartments) == (36, 108) and mp.neurons_per_tile % 3 == 0


def brute_activity(qg: QuantGraph, values: dict, T: int, B: int) -> dict:
    """Per synapse (graded, binary, dense) events and per population (active, binary active)."""
    dv = max(p.D for p in qg.populations if p.kind != "readout")
    events: dict[str, list[int]] = {}
    active = {}
    for p in qg.populations:
        comp = p.D if p.kind == "maxpool" else 1
        a = ba = 0
        for t, b, n in itertools.product(
            range(T), range(B), itertools.product(*map(range, p.shape))
        ):
            recv = 0
            for e, src in sources(qg, p.name, *n):
                v = int(values[src[0]][t, b][src[1:]])
                v = int(v != 0) if src[0] == "input" else v
                recv = max(recv, v)
                ev = events.setdefault(e if e != "pool" else f"{p.name}.pool", [0, 0, 0])
                if e == "pool":
                    ev[0] += v
                    ev[1] += v
                    ev[2] += p.D
                else:
                    ev[0] += v > 0
                    ev[1] += v if src[0] != "input" else v > 0
                    ev[2] += 1
            own = int(values[p.name][t, b][n]) if p.name in values else 0
            if p.kind == "maxpool":  # level compartments 1..s_M are active, each in one slot
                assert own == recv
                a, ba = a + own, ba + own
            else:
                a += (recv > 0) or (own > 0)
                ba += min(dv, max(recv, own))
        active[p.name] = (a, ba, p.size * comp * T * B, p.size * comp * T * dv * B)
    return {"events": events, "active": active}


def test_constructs_activity_equals_brute_force_loops() -> None:
    qg = constructs_graph()
    rng = np.random.default_rng(1)
    B, T = 2, qg.T
    x = rng.integers(0, 256, size=(B, 2, 6, 6)) * (rng.random((B, 2, 6, 6)) < 0.6)
    spikes = FixedEngine().run(qg, x).spikes
    assert spikes["m"].max() > 0 and spikes["b"].max() == 1  # the graph is really active
    values = {"input": np.broadcast_to(x[None], (T, *x.shape)), **spikes}
    act = count_activity(qg, {k: v for k, v in spikes.items() if k != "m"}, x)  # m derived
    assert np.array_equal(act.sent["m"], spikes["m"])
    brute = brute_activity(qg, values, T, B)
    for name, (graded, binary, dense) in brute["events"].items():
        got = act.synapses[name]
        assert (got.events_graded, got.events_binary, got.dense) == (graded, binary, dense), name
    for p in qg.populations:
        a = act.populations[p.name]
        assert (a.active, a.binary_active, a.updates, a.binary_updates) == brute["active"][p.name]
        assert a.firing_rate == pytest.approx(
            values.get(p.name, np.zeros(1)).sum() / (p.size * T * B)
        )
    assert (
        act.synapses["m.pool"].kind == "pool" and act.synapses["b_cat"].flops_padded == 3 * 3 * 36
    )
    # energy: a max-pool's events and D compartments are charged; not a 45 nm MAC layer
    prof = load_profile("loihi2")
    rep = energy_report(qg, map_graph(qg, prof), act, prof, load_profile("cmos45nm"))
    ly = {x["name"]: x for x in rep["layers"]}
    assert (
        ly["m"]["type"] == "maxpool"
        and ly["m"]["synops_graded"] == brute["events"]["m.pool"][0] / B
    )
    assert ly["m"]["neuron_updates"] == 4 * 9 * 3 * T
    acs = sum(s.events_binary for s in act.synapses.values() if s.kind == "conv" and not s.encoding)
    assert rep["cmos45nm"]["acs"] == acs / B
    dense = sum(s.dense for s in act.synapses.values() if s.kind == "conv")
    assert rep["cmos45nm"]["ann"]["macs"] == dense / B  # a max-pool is no MAC layer
    assert ly["b"]["firing_rate"] == spikes["b"].sum() / (27 * T * B)  # LIF: D = 1


# ---- fan-in splitting ------------------------------------------------------------------------
def split_graph(seed: int = 0, cin: int = 64) -> QuantGraph:
    """input -> s (cin ch) -> p: 3x3 from s (cin x 9 axons per neuron) plus a 1x1 skip from the
    input (3 axons); p -> q; plus a skip s -> q so the split's extra step needs a new delay."""
    rng = np.random.default_rng(seed)
    pops = [ilif("s", (cin, 5, 5)), ilif("p", (6, 5, 5)), ilif("q", (4, 5, 5))]
    syns = [
        syn(rng, "in_s", "input", "s", cin, 3, 3, pad=1),
        syn(rng, "s_p", "s", "p", 6, cin, 3, pad=1),
        syn(rng, "in_p", "input", "p", 6, 3, 1),
        syn(rng, "p_q", "p", "q", 4, 6, 1),
        syn(rng, "s_q", "s", "q", 4, cin, 1),
    ]
    assign_depths(pops, syns)
    return QuantGraph(T=2, input=QInput((3, 5, 5), 255), populations=pops, synapses=syns)


def test_fan_in_split_parts_payload_latency_and_exactness() -> None:
    qg = split_graph()
    prof = make_profile(fan_in_axons=256)  # p needs 64 * 9 + 3 = 579 axons per neuron
    m = map_graph(qg, prof, search=False)  # the fewest groups (the grouping search: below)
    lm = m.layer("p")
    assert m.split_layers == ["p"] and lm.fan_in_parts == len(lm.psums) == 3
    # the groups partition [s channels] + [input channels] exactly, each within the limit
    covered = {"s": [], "input": []}
    for ps in lm.psums:
        for src, (lo, hi) in ps.sources.items():
            covered[src] += list(range(lo, hi))
        assert ps.fan_in_axons_per_tile <= 256 and ps.dst_channels == (0, 6)
    assert sorted(covered["s"]) == list(range(64)) and sorted(covered["input"]) == [0, 1, 2]
    # partial sums of a random run add up to the full synaptic input; the payload bound holds
    rng = np.random.default_rng(2)
    values = {"s": rng.integers(0, 4, (1, 64, 5, 5)), "input": rng.integers(0, 256, (1, 3, 5, 5))}
    for s in qg.incoming("p"):
        parts = []
        for ps in lm.psums:
            lo, hi = ps.sources.get(s.src, (0, 0))
            w = s.weight.copy()
            w[:, :lo] = w[:, hi:] = 0
            parts.append(conv_int(values[s.src], QSynapse("x", s.src, "p", w, s.stride, s.padding)))
        assert np.array_equal(sum(parts), conv_int(values[s.src], s))
    bound = 0
    for ps in lm.psums:  # brute force: max over neurons of Σ |w| x source max in the group
        per_o = np.zeros(6, np.int64)
        for s in qg.incoming("p"):
            lo, hi = ps.sources.get(s.src, (0, 0))
            top = 255 if s.src == "input" else 3
            per_o += np.abs(s.weight[:, lo:hi]).sum(axis=(1, 2, 3)) * top
        assert ps.bound == per_o.max() and ps.payload_bits == int(per_o.max()).bit_length() + 1
        bound = max(bound, ps.bound)
    # the neuron core receives one partial sum per group and neuron
    assert lm.fan_in_axons_per_tile == 3 * math.prod(lm.tile_shape)
    assert lm.cores == lm.tiles + sum(ps.tiles for ps in lm.psums)
    assert m.cores == sum(x.cores for x in m.layers)
    # one extra hardware step from p on; the skip s -> q gets one more step of delay
    assert (m.layer("p").depth, m.layer("q").depth, m.hw_depth) == (3, 4, 4)
    assert m.logical_depth == 3 and m.precision["delay_steps"]["needed"] == 2
    # refusals name the layer and the limit
    with pytest.raises(SpikedetError, match=r"layer p: .*partial sums sends \d+-bit graded"):
        map_graph(qg, make_profile(fan_in_axons=256, message_bits=bound.bit_length()), search=False)
    with pytest.raises(SpikedetError, match="layer s: .*even one input channel needs 9 axons"):
        map_graph(split_graph(cin=2), make_profile(fan_in_axons=8))


def test_split_energy_counts_partial_sums() -> None:
    qg = split_graph()
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(2, 3, 5, 5)) * (rng.random((2, 3, 5, 5)) < 0.3)
    act = count_activity(qg, FixedEngine().run(qg, x).spikes, x)
    prof, cmos = make_profile(fan_in_axons=256), load_profile("cmos45nm")
    m = map_graph(qg, prof)
    split, plain = (
        energy_report(qg, m, act, prof, cmos),
        energy_report(qg, map_graph(qg, make_profile()), act, make_profile(), cmos),
    )
    lp, lq = split["layers"][1], plain["layers"][1]
    # brute force: a partial-sum compartment is active when a source of its group fired in its
    # window (3x3 over its s channels, 1x1 over its input channels)
    sent = {"s": act.sent["s"], "input": act.sent["input"]}
    active = 0
    for ps in m.layer("p").psums:
        for t, b, (_o, y, xx) in itertools.product(
            range(2), range(2), itertools.product(range(6), range(5), range(5))
        ):
            hit = False
            for src, (lo, hi) in ps.sources.items():
                k = 1 if src == "input" else 3
                r = k // 2
                win = sent[src][t, b, lo:hi, max(0, y - r) : y + r + 1, max(0, xx - r) : xx + r + 1]
                hit |= bool((win > 0).any())
            active += hit
    assert lp["psum_messages_graded"] == active / 2
    assert lp["synops_graded"] == lq["synops_graded"] + active / 2
    parts = len(m.layer("p").psums)  # one compartment per group and neuron, every step
    assert lp["neuron_updates"] == lq["neuron_updates"] + parts * 6 * 25 * 2
    assert lp["psum_cores"] == sum(ps.tiles for ps in m.layer("p").psums) > 0
    assert split["modes"]["graded"]["hw_steps"] == plain["modes"]["graded"]["hw_steps"] + 1
    assert split["totals"]["extra_latency_steps"] == 1 and split["totals"]["split_layers"] == 1


def test_delay_relays() -> None:
    """A chain s -> p -> q plus a skip s -> q needs a delay of 1; with 0-bit delays (limit 0)
    the skip reads a relay stage of s (one step late) instead."""
    qg = split_graph()
    m = map_graph(qg, make_profile(delay_bits=0))
    (relay,) = m.layer("s").relays
    (in_relay,) = m.layer("p").relays  # the input -> p skip is relayed too (layer of p)
    assert (relay.source, relay.stage, in_relay.source, m.relay_stages) == ("s", 1, "input", 2)
    assert m.precision["delay_steps"] == {
        "needed": 1,
        "logical": 1,
        "available": 0,
        "after_relays": 0,
    }
    assert relay.fan_in_axons_per_tile == math.prod(relay.tile_shape)  # one axon per neuron
    assert m.layer("s").cores == m.layer("s").tiles + relay.tiles
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(1, 3, 5, 5))
    act = count_activity(qg, FixedEngine().run(qg, x).spikes, x)
    prof = make_profile(delay_bits=0)
    rep = energy_report(qg, m, act, prof, load_profile("cmos45nm"))
    base = energy_report(
        qg, map_graph(qg, make_profile()), act, make_profile(), load_profile("cmos45nm")
    )
    s_act = act.populations["s"]
    # the relay receives and forwards every spike of s: one synop and one active update each
    assert rep["layers"][0]["synops_graded"] == base["layers"][0]["synops_graded"] + s_act.messages
    assert (
        rep["layers"][0]["active_updates"] == base["layers"][0]["active_updates"] + s_act.messages
    )
    assert rep["layers"][0]["relay_cores"] == relay.tiles


def test_synthetic_spikeyolo_n_splits_the_p4_repconv() -> None:
    """benchmarks/mapping.py's spikeyolo-n graph (64 px): the P4 MS_ConvBlock's conv2 reads
    3 x 192 = 576 channels through a fused 3x3 RepConv: 5,184 axons > 4,096 -> 2 groups."""
    spec = importlib.util.spec_from_file_location(
        "bench_mapping", REPO_ROOT / "benchmarks" / "mapping.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    qg = bench.synthetic_spikeyolo("n", 64)
    m = map_graph(qg, load_profile("loihi2"))
    wide = [s for s in qg.synapses if s.weight.shape[1:] == (576, 3, 3)]
    assert wide and all(s.dst in m.split_layers for s in wide)
    assert all(m.layer(s.dst).fan_in_parts >= 2 for s in wide)
    assert bench.summary(m)["cores"] == m.cores and m.chips >= 1
    # the grouping search: every needed split is no worse than its fewest groups, every
    # optional split at least halves its layer's cores, and the whole graph needs fewer cores
    base = map_graph(qg, load_profile("loihi2"), search=False)
    for lm in m.layers:
        g = lm.grouping
        if g and not g["optional"]:
            assert (
                g["tried"][0][0] == 1
                and lm.cores - sum(r.tiles for r in lm.relays) <= (g["tried"][0][1])
            )
        elif g:
            assert 2 * g["cores"] <= g["unsplit_cores"]
    assert m.cores < base.cores and set(base.split_layers) <= set(m.split_layers)
