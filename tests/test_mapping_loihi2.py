"""The Loihi 2 core model (spikedet.deploy.mapping.connectivity): each cost term on a small
graph computed by hand, the compiler's partition rule, and the calibration on Intel's table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from spikedet.deploy.mapping.geometry import fitted_weight_bits
from spikedet.deploy.mapping.mapper import map_graph
from spikedet.deploy.profiles import load_profile, parse_profile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

REPO = Path(__file__).resolve().parents[1]
PILOTNET = REPO.parent / "shared" / "conformance" / "lava-dl-netx" / "pilotnet_lif" / "network.net"
INTEL = REPO / "benchmarks" / "data" / "intel_loihi2_tables.json"


def loihi2(**values) -> object:
    """loihi2 with some figure values replaced (``section__key=value``)."""
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    for full, value in values.items():
        section, key = full.split("__")
        data[section][key]["value"] = value
    return parse_profile(data, "test.yaml")


def generic() -> object:
    """loihi2 without its core model: every connection per source neuron and weight."""
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    data.pop("connectivity"), data.pop("partition")
    return parse_profile(data, "generic.yaml")


def lif(name: str, shape: tuple[int, int, int], depth: int = 1) -> QPopulation:
    return QPopulation(name, "lif", shape, theta=2, bias=np.zeros(shape[0]), depth=depth, D=1)


def graph(pops: list[QPopulation], syns: list[QSynapse], inp=(2, 8, 8)) -> QuantGraph:
    return QuantGraph(T=2, input=QInput(inp, 255), populations=pops, synapses=syns)


def conv_graph(cout: int = 40, w: int = 5, cin: int = 2) -> QuantGraph:
    weight = np.full((cout, cin, 3, 3), w, np.int64)  # 3x3, pad 1: a conv over an 8x8 map
    syn = QSynapse("c", "input", "a", weight, (1, 1), (1, 1))
    return graph([lif("a", (cout, 8, 8))], [syn], (cin, 8, 8))


def dense_graph(cout: int = 20, inp=(3, 4, 4)) -> QuantGraph:
    weight = np.ones((cout, *inp), np.int64)  # the kernel covers the map: one position
    return graph([lif("d", (cout, 1, 1))], [QSynapse("w", "input", "d", weight)], inp)


def test_fitted_weight_bits_follow_netx() -> None:
    # netx fits PilotNet's conv1 (-20..18, even) in 5 bits and conv4 (-8..8, even) in 4
    assert fitted_weight_bits(np.array([-20, 18, 4, 2])) == 5
    assert fitted_weight_bits(np.array([-8, 8, -2, 6])) == 4
    assert fitted_weight_bits(np.array([5, -3, 1])) == 4  # |5| needs 3 bits plus sign
    assert fitted_weight_bits(np.zeros(3)) == 1


def test_conv_memory_is_one_kernel_of_packed_rows() -> None:
    # rows = Cin x KH x KW = 18; weight 5 -> 4 bits; 40 outputs x 4 bits = 160 bits = 3 words,
    # plus one header word: 4 words per row -> 72 words of 64 bits, once per core (2560
    # neurons: two cores of 8 x 4 columns, each storing the whole kernel)
    m = map_graph(conv_graph(), load_profile("loihi2"))
    a = m.layer("a")
    assert (a.tiles, a.tile_shape) == (2, (40, 8, 4))
    assert a.syn_mem_bits_per_tile == 18 * 4 * 64
    assert a.syn_mem_bits_total == 2 * 18 * 4 * 64


def test_conv_fan_in_is_population_axons() -> None:
    # 2 input channels x 3x3 windows read up to 128 source neurons, but one conv edge costs
    # conv_axons_per_edge (1) axon on Loihi 2; the generic model counts the source neurons
    assert map_graph(conv_graph(), load_profile("loihi2")).layer("a").fan_in_axons_per_tile == 1
    assert map_graph(conv_graph(), generic()).layer("a").fan_in_axons_per_tile > 2 * 8 * 4


def test_dense_memory_and_axons_per_source_neuron() -> None:
    # 3 x 4 x 4 = 48 source axons; 20 targets x 16 bits = 320 bits = 5 words per axon
    d = map_graph(dense_graph(), load_profile("loihi2")).layer("d")
    assert d.fan_in_axons_per_tile == 48
    assert d.syn_mem_bits_per_tile == 48 * 5 * 64


def test_partition_budget_rounds_tile_width_up_to_a_power_of_two() -> None:
    # 4 x 8 x 40 = 1280 neurons, budget 100: r = 13 parts; 40 / 13 = 3.08 -> width 4 ->
    # ceil(40 / 4) = 10 cores of 128 neurons (over the budget, as Intel's compiler places them)
    weight = np.ones((4, 2, 1, 1), np.int64)
    qg = graph([lif("p", (4, 8, 40))], [QSynapse("c", "input", "p", weight)], (2, 8, 40))
    p = map_graph(qg, loihi2(partition__neurons_lif=100)).layer("p")
    assert (p.tiles, p.tile_shape) == (10, (4, 8, 4))


def test_memory_refines_channel_groups_like_the_compiler() -> None:
    # PilotNet's Dense(100) over 64 x 2 x 20: 2560 axons x ceil(100 / 4) = 64000 words > 12000
    # -> x6 groups (17 neurons: 12800 words, the compiler log's figure) -> x2 -> 9 neurons:
    # 2560 x 3 = 7680 words; ceil(100 / 9) = 12 cores, as Intel's table
    d = map_graph(dense_graph(100, (64, 2, 20)), load_profile("loihi2")).layer("d")
    assert (d.tiles, d.tile_shape) == (12, (9, 1, 1))
    assert d.syn_mem_bits_per_tile == 2560 * 3 * 64


def test_a_layer_no_core_can_hold_is_one_line_naming_layer_and_limit() -> None:
    # one input channel's kernel: 9 rows x 2 words x 64 bits = 1152 bits > 1000: no split fits
    with pytest.raises(SpikedetError) as err:
        map_graph(conv_graph(cout=1, w=1, cin=1), loihi2(core__synaptic_memory=1000))
    text = err.value.one_line()
    assert "layer a" in text and "1000" in text and "\n" not in text


def test_profile_core_model_is_all_or_nothing() -> None:
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    del data["connectivity"]["word_bits"]
    with pytest.raises(SpikedetError, match="connectivity.word_bits: missing"):
        parse_profile(data, "x.yaml")
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    data["partition"]["neurons_spiky"] = dict(data["partition"]["neurons"])
    with pytest.raises(SpikedetError, match="unknown population kind"):
        parse_profile(data, "x.yaml")
    assert load_profile("loihi1").core_model is None
    assert load_profile("loihi2").figure("partition.neurons").status == "derived"


@pytest.mark.skipif(not PILOTNET.is_file(), reason="../shared conformance data absent")
def test_pilotnet_maps_like_intels_compiler_table() -> None:
    from spikedet.convert.netx import read_netx
    from spikedet.convert.netx_nir import to_quant_graph

    table = json.loads(INTEL.read_text())["networks"]["pilotnet_snn"]
    m = map_graph(to_quant_graph(read_netx(PILOTNET), T=16), load_profile("loihi2"))
    assert m.cores == table["total_cores"] == 74
    for ref in table["layers"]:
        lm = m.layer(ref["layer"])
        assert lm.cores == ref["cores"], ref["layer"]
        if ref["tile"] is not None:
            assert list(lm.tile_shape) == ref["tile"], ref["layer"]
    # dense synapse words and conv kernels where the rule is exact (averages, as Intel's)
    for name in ("layer1", "layer2", "layer4", "layer5", "layer7", "layer8"):
        lm, ref = m.layer(name), next(r for r in table["layers"] if r["layer"] == name)
        assert lm.syn_mem_bits_total // 64 // lm.tiles == ref["synapses"], name
