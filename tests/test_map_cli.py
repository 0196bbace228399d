"""``spikedet map``: resources and an energy estimate without a dataset or a simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikedet.cli.main import main
from spikedet.deploy.estimate import estimate, resize
from spikedet.deploy.mapping.mapper import map_graph
from spikedet.deploy.profiles import load_profile
from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

REPO = Path(__file__).resolve().parents[1]
PILOTNET = REPO.parent / "shared" / "conformance" / "lava-dl-netx" / "pilotnet_lif" / "network.net"


def small() -> QuantGraph:
    pop = QPopulation("a", "lif", (4, 8, 8), theta=2, bias=np.zeros(4), depth=1, D=1)
    weight = np.ones((4, 2, 3, 3), np.int64)
    syn = QSynapse("c", "input", "a", weight, (1, 1), (1, 1))
    return QuantGraph(T=2, input=QInput((2, 8, 8), 255), populations=[pop], synapses=[syn])


def test_estimate_counts_by_hand() -> None:
    # connections: 4 outputs read each of 2 input channels (8 reader pairs); a 3x3 pad-1
    # window over 8 rows covers 3 x 8 - 2 = 22 (row, tap) pairs, likewise columns:
    # 8 x 22 x 22 = 3872 per step; the graded input counts fully: synops = 3872 x T (2)
    qg = small()
    profile = load_profile("loihi2")
    m = map_graph(qg, profile)
    est = estimate(qg, m, profile, {}, 0.25, False)
    assert est["synops"] == 3872 * 2
    assert est["updates"] == 4 * 64 * 2
    assert est["messages"] == 0  # nothing reads "a": no destination cores
    steps = m.hw_depth + 2
    assert est["hw_steps"] == steps
    assert est["energy_static_pj"] == pytest.approx(232.078 * 152.8 * steps * 1e3)
    dyn = 7744 * profile.e_synop_pj + 512 * profile.e_neuron_active_pj
    assert est["dynamic_pj"] == pytest.approx(dyn)


def test_resize_follows_the_conv_arithmetic() -> None:
    big = resize(small(), 32)
    assert big.input.shape == (2, 32, 32) and big.pop("a").shape == (4, 32, 32)
    with pytest.raises(SpikedetError, match="imgsz"):
        resize(small(), 0)


@pytest.mark.skipif(not PILOTNET.is_file(), reason="../shared conformance data absent")
def test_map_command_on_a_netx_file(capsys) -> None:
    assert main(["map", str(PILOTNET), "--target", "loihi2"]) == 0
    out = capsys.readouterr().out
    assert "74 cores on 1 chip(s)" in out and "ASSUMED" in out
    assert main(["map", str(PILOTNET), "--target", "loihi2", "--json", "--rate", "0.2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cores"] == 74 and data["estimate"]["rate"] == 0.2
    assert {r["binds"] for r in data["layers"]} <= {
        "neurons", "synaptic memory", "fan-in axons", "fan-out cores",
    }  # fmt: skip


def test_map_command_reads_measured_rates(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"energy": {"layers": [{"name": "a", "firing_rate": 0.5}]}}))
    from spikedet.cli.map_cmd import read_rates

    assert read_rates(str(report)) == {"a": 0.5}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SpikedetError, match="firing rates"):
        read_rates(str(bad))


def test_map_command_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["map", str(tmp_path / "missing.nir"), "--target", "loihi2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spikedet: error: model file not found") and "\n" not in err
    assert main(["map", str(tmp_path / "missing.nir"), "--target", "cmos45nm"]) == 2
    assert "not a mappable target" in capsys.readouterr().err


def test_map_command_bad_netx_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.net"
    bad.write_bytes(b"not an hdf5 file")
    assert main(["map", str(bad), "--target", "loihi2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spikedet: error:") and "broken.net" in err and "\n" not in err
