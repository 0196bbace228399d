"""Activity counts against brute-force loops, energy arithmetic against a hand formula, and the
report files / terminal summary / ``spikedet report`` command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from spikedet.cli.main import main
from spikedet.deploy.energy import count_activity, energy_report
from spikedet.deploy.mapping.mapper import map_graph
from spikedet.deploy.profiles import load_profile
from spikedet.deploy.report import PLOTS, jsonable, load_report, summary_table, write_report
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pop(name, shape, depth, D=4, kind="ilif") -> QPopulation:
    return QPopulation(name, kind, shape, theta=2, bias=np.zeros(shape[0]), depth=depth, D=D)


def syn(name, src, dst, cout, cin_g, k, stride=1, pad=0, groups=1) -> QSynapse:
    w = np.ones((cout, cin_g, k, k), np.int64)
    return QSynapse(name, src, dst, w, (stride, stride), (pad, pad), groups)


def tiny_graph() -> QuantGraph:
    pops = [
        pop("a", (3, 5, 3), 1),
        pop("b", (4, 3, 2), 2, D=2),
        pop("c", (4, 3, 2), 3),
        pop("head", (2, 3, 2), 4, D=0, kind="readout"),
    ]
    syns = [
        syn("in_a", "input", "a", 3, 2, 3, pad=1),
        syn("a_b", "a", "b", 4, 3, 3, stride=2, pad=1),
        syn("b_c", "b", "c", 4, 1, 3, pad=1, groups=4),
        syn("a_c", "a", "c", 4, 3, 2, stride=2, pad=1),
        syn("c_h", "c", "head", 2, 4, 1),
    ]
    return QuantGraph(T=2, input=QInput((2, 5, 3), 255), populations=pops, synapses=syns)


def random_run(qg: QuantGraph, rng: np.random.Generator, B: int):
    spikes = {}
    for p in qg.populations:
        if p.kind == "ilif":
            vals = rng.integers(0, p.D + 1, size=(qg.T, B, *p.shape))
            spikes[p.name] = vals * (rng.random(vals.shape) < 0.4)
    x = rng.integers(0, 256, size=(B, *qg.input.shape)) * (rng.random((B, *qg.input.shape)) < 0.5)
    return spikes, x


def targets_of(qg: QuantGraph, s: QSynapse) -> dict[tuple, list[tuple]]:
    """Brute force: source neuron (c, y, x) -> target neurons it reaches through conv s."""
    _, h_in, w_in = qg.src_shape(s.src)
    cout, cin_g, kh, kw = s.weight.shape
    out: dict[tuple, list] = {}
    for o, y, x in itertools.product(*map(range, qg.pop(s.dst).shape)):
        group = o // (cout // s.groups)
        for c in range(group * cin_g, (group + 1) * cin_g):
            for ky, kx in itertools.product(range(kh), range(kw)):
                iy, ix = y * s.stride[0] - s.padding[0] + ky, x * s.stride[1] - s.padding[1] + kx
                if 0 <= iy < h_in and 0 <= ix < w_in:
                    out.setdefault((c, iy, ix), []).append((o, y, x))
    return out


def test_activity_equals_brute_force_loops() -> None:
    rng = np.random.default_rng(7)
    qg = tiny_graph()
    B, T = 3, qg.T
    spikes, x = random_run(qg, rng, B)
    act = count_activity(qg, spikes, x)
    values = {"input": np.broadcast_to(x[None], (T, *x.shape)), **spikes}
    dv = 4  # the largest D of the graph
    assert act.virtual_steps == dv
    received = {p.name: np.zeros((T, B, *p.shape), np.int64) for p in qg.populations}
    for s in qg.synapses:
        fan = targets_of(qg, s)
        graded = binary = 0
        for t, b in itertools.product(range(T), range(B)):
            for src, tgts in fan.items():
                v = int(values[s.src][t, b][src])
                if s.src == "input":  # graded input: one message, one slot
                    v = int(v != 0)
                graded += len(tgts) * (v > 0)
                binary += len(tgts) * v
                for tgt in tgts:
                    cell = received[s.dst][t, b][tgt]
                    received[s.dst][t, b][tgt] = max(cell, v)
        dense = sum(len(tgts) for tgts in fan.values()) * T * B
        got = act.synapses[s.name]
        assert got.events_graded == graded, s.name
        assert got.events_binary == (graded if s.src == "input" else binary), s.name
        assert got.dense == dense, s.name
        assert got.encoding == (s.src == "input")
    for p in qg.populations:
        a = act.populations[p.name]
        own = spikes.get(p.name, np.zeros((T, B, *p.shape), np.int64))
        active = sum(
            1 for idx in np.ndindex(own.shape) if own[idx] > 0 or received[p.name][idx] > 0
        )
        b_active = sum(
            min(dv, max(int(own[idx]), int(received[p.name][idx]))) for idx in np.ndindex(own.shape)
        )
        assert (a.updates, a.active) == (p.size * T * B, active), p.name
        assert (a.binary_updates, a.binary_active) == (p.size * T * dv * B, b_active), p.name
        assert a.messages == int((own > 0).sum()) and a.units == int(own.sum())
        assert a.firing_rate == pytest.approx(own.sum() / (p.size * T * B))
    # a [T, B, ...] input gives the same counts as the static [B, ...] one
    act5 = count_activity(qg, spikes, np.broadcast_to(x[None], (T, *x.shape)))
    assert act5.to_dict() == act.to_dict()


def test_bad_activity_inputs_raise() -> None:
    qg = tiny_graph()
    spikes, x = random_run(qg, np.random.default_rng(0), 2)
    with pytest.raises(SpikedetError, match="population a"):
        count_activity(qg, {k: v for k, v in spikes.items() if k != "a"}, x)
    with pytest.raises(SpikedetError, match="spikes of b"):
        count_activity(qg, {**spikes, "b": spikes["b"][:, :, :2]}, x)
    with pytest.raises(SpikedetError, match="batch"):
        count_activity(qg, spikes, x[:1])


def hand_graph() -> tuple[QuantGraph, dict, np.ndarray]:
    """input [3, 0] -> a (1x1 conv) -> head (readout); a spikes [2, 0]; T = 1, B = 1, D = 4."""
    qg = QuantGraph(
        T=1,
        input=QInput((1, 1, 2), 255),
        populations=[pop("a", (1, 1, 2), 1), pop("head", (1, 1, 2), 2, D=0, kind="readout")],
        synapses=[syn("in_a", "input", "a", 1, 1, 1), syn("a_h", "a", "head", 1, 1, 1)],
    )
    return qg, {"a": np.array([2, 0]).reshape(1, 1, 1, 1, 2)}, np.array([3, 0]).reshape(1, 1, 1, 2)


def test_energy_arithmetic_equals_hand_formula() -> None:
    qg, spikes, x = hand_graph()
    prof, cmos = load_profile("loihi2"), load_profile("cmos45nm")
    es, ea, ei, em = 23.6, 81.0, 52.0, 1.7
    rep = energy_report(qg, map_graph(qg, prof), count_activity(qg, spikes, x), prof, cmos)
    a, h = rep["layers"]
    # a: 1 input event; neuron 0 received and fired, neuron 1 idle; 1 routed input message.
    # binary: 4 slots per step: neuron 0 active in max(2, 1) = 2 slots, 8 updates in total.
    assert a["energy_graded"]["total_pj"] == pytest.approx(es + ea + ei + em)
    assert a["energy_binary"]["total_pj"] == pytest.approx(es + 2 * ea + 6 * ei + em)
    # head: one graded message (value 2) -> 1 graded event, 2 binary events and messages
    assert h["energy_graded"]["total_pj"] == pytest.approx(es + ea + ei + em)
    assert h["energy_binary"]["total_pj"] == pytest.approx(2 * es + 2 * ea + 6 * ei + 2 * em)
    assert (a["type"], h["type"]) == ("encoding", "readout")
    assert (a["firing_rate"], a["synops_graded"], h["synops_binary"]) == (1.0, 1, 2)
    g, b = rep["modes"]["graded"], rep["modes"]["binary"]
    assert (g["hw_steps"], b["hw_steps"]) == (3, 6)  # max depth 2 + T, and 2 + T*D
    static_step = 232.078 * 1 * 152.8 * 1e3  # mW x chips x us -> pJ (Loihi 2 silicon)
    assert g["energy_static_pj"] == pytest.approx(3 * static_step)
    assert b["energy_static_pj"] == pytest.approx(6 * static_step)
    dyn = 2 * (es + ea + ei + em)
    assert g["energy_total_pj"] == pytest.approx(dyn + 3 * static_step)
    assert g["inferences_per_s"] == pytest.approx(1e6 / (3 * 152.8))
    assert g["power_mw"] == pytest.approx((dyn + 3 * static_step) * 1e-9 / (3 * 152.8e-6))
    assert (
        rep["totals"]["mode"] == "graded"
        and rep["totals"]["energy_total_pj"] == g["energy_total_pj"]
    )
    c = rep["cmos45nm"]
    assert (c["first_layer_macs"], c["acs"]) == (2, 2)  # dense input MACs; binary events of a
    assert c["energy_pj"] == pytest.approx(2 * 4.6 + 2 * 0.9)
    assert c["ann"]["energy_pj"] == pytest.approx(4 * 4.6)
    keys = {(p["profile"], p["key"]) for p in rep["provenance"]}
    assert ("loihi2", "energy.synop") in keys and ("cmos45nm", "energy.mac") in keys
    assert all(p["status"] and p["source"] for p in rep["provenance"])
    assert any("0.75 V" in n for n in rep["profile"]["notices"])


def full_report() -> dict:
    qg = tiny_graph()
    spikes, x = random_run(qg, np.random.default_rng(3), 2)
    prof = load_profile("loihi2")
    rep = energy_report(
        qg, map_graph(qg, prof), count_activity(qg, spikes, x), prof, load_profile("cmos45nm")
    )
    rep["model"], rep["engine"] = "tiny", "fixed"
    rep["validation"] = {
        "images": 2,
        "map": {"deployed_fixed": {"map50": 0.41, "map": 0.22}, "reference_float": {"map50": 0.43}},
        "lava_vs_fixed": {
            "samples": 1,
            "total_mismatches": 0,
            "populations": {
                "a": {"mismatches": 0, "values": 120},
                "b": {"mismatches": 3, "values": 48},
            },
        },
        "timing_s": {"fixed_total": 0.012},
    }
    return rep


def test_write_report_files_and_markdown(tmp_path: Path) -> None:
    rep = full_report()
    written = write_report(tmp_path / "out", rep)
    names = {p.name for p in written}
    assert names == {"report.json", "report.md", *PLOTS}
    for name in PLOTS:
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == jsonable(rep)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| layer | type | shape | neurons | cores |" in md
    for layer in ("a", "b", "c", "head"):
        assert f"\n| {layer} |" in md
    assert "## Validation" in md and "| b | 3 | 48 |" in md and "0.41" in md
    assert "## Graded vs binary deployment" in md and "## Provenance" in md
    assert "0.75 V" in md and "| engine | fixed |" in md
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no stray temporaries


def test_summary_table_and_report_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rep = full_report()
    text = summary_table(rep)
    for ly in rep["layers"]:
        assert f"\n{ly['name']} " in text
    assert "validation:" in text and "total_mismatches=0" in text
    write_report(tmp_path, rep)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == summary_table(load_report(tmp_path)).strip()


def test_report_command_missing_or_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SpikedetError, match="report not found") as info:
        load_report(tmp_path / "none")
    assert "report.json" in info.value.where or "none" in info.value.where
    assert main(["report", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("spikedet: error: report not found")
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(SpikedetError, match="not a spikedet report") as info:
        load_report(tmp_path)
    assert info.value.where == str(bad)


def test_report_shows_fan_in_splits_and_relays(tmp_path: Path) -> None:
    from spikedet.sim.fixed import FixedEngine
    from tests.test_mapping import make_profile
    from tests.test_mapping_constructs import split_graph

    qg = split_graph()
    x = np.random.default_rng(0).integers(0, 256, size=(1, 3, 5, 5))
    act = count_activity(qg, FixedEngine().run(qg, x).spikes, x)
    prof = make_profile(fan_in_axons=256, delay_bits=0)
    rep = energy_report(qg, map_graph(qg, prof), act, prof, load_profile("cmos45nm"))
    write_report(tmp_path, rep)
    md = (tmp_path / "report.md").read_text()
    assert "## Fan-in splits and delay relays" in md and "integer results do not change" in md
    psum_cores = sum(ps["tiles"] for ps in rep["mapping"]["layers"][1]["psums"])
    assert f"| p | {rep['mapping']['layers'][1]['fan_in_parts']} | {psum_cores} |" in md
    assert "| s | s | 1 |" in md  # s's spikes relayed one stage for the skip into q
    t = rep["totals"]
    assert (t["split_layers"], t["psum_cores"], t["extra_latency_steps"]) == (1, psum_cores, 1)
    assert "fan-in splits: 1 layer(s)" in summary_table(load_report(tmp_path))
