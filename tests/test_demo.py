"""`spikedet demo --fast`: the walking skeleton, end to end through every stage (real data files,
training, NIR export, mapping, the fixed and Lava engines, the report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nir
import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, lava_python: Path):
    out = tmp_path_factory.mktemp("demo") / "run"
    env = dict(os.environ, SPIKEDET_LAVA_PYTHON=str(lava_python))
    proc = subprocess.run(
        [sys.executable, "-m", "spikedet.cli.main", "demo", "--fast", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_writes_every_stage(demo_run) -> None:
    out, _ = demo_run
    assert len(list((out / "data" / "train").glob("*.png"))) > 0
    for name in ("instances_train.json", "instances_val.json"):
        assert (out / "data" / "annotations" / name).is_file()
    assert (out / "train" / "best.pt").is_file() and (out / "train" / "last.pt").is_file()
    graph = nir.read(str(out / "model.nir"))
    assert any(type(n).__name__ == "LI" for n in graph.nodes.values())
    for name in ("report.json", "report.md", "energy_per_layer.png"):
        assert (out / "deploy" / name).is_file()


def test_demo_engines_agree_and_report_energy(demo_run) -> None:
    out, proc = demo_run
    report = json.loads((out / "deploy" / "report.json").read_text())
    lava = report["validation"]["lava_vs_fixed"]
    assert lava["samples"] == 2
    assert lava["total_mismatches"] == 0
    assert len(lava["populations"]) == sum(
        1 for layer in report["layers"] if layer["type"] != "readout"
    )
    assert report["mapping"]["cores"] >= len(report["layers"])
    assert report["totals"]["energy_total_pj"] > report["totals"]["energy_dynamic_pj"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lava_spike_mismatches"] == 0
    assert summary["deployed_map50"] is not None
    assert "summary" in proc.stdout and "Lava vs fixed engine" in proc.stdout


def test_demo_learns_something(demo_run) -> None:
    out, _ = demo_run
    summary = json.loads((out / "summary.json").read_text())
    # The fast schedule is short, but a detector that learned nothing scores ~0.
    assert summary["train_best_map50"] > 0.05
    assert summary["float_map50"] > 0.05
