"""``spikedet deploy --workers N`` shards the images over N processes; the report (mAP,
activity, energy, reference agreement) equals the one-process report except for timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from spikedet.cli.main import main  # noqa: E402
from spikedet.deploy.shard import merge, run_fixed, shard_bounds  # noqa: E402
from spikedet.sim.fixed import FixedEngine  # noqa: E402
from spikedet.sim.interface import compare  # noqa: E402
from spikedet.sim.randgraph import random_input, random_qgraph  # noqa: E402


def test_shard_bounds_cover_in_order() -> None:
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)] and shard_bounds(5, 1) == [(0, 5)]


def test_sharded_engine_equals_one_process() -> None:
    rng = np.random.default_rng(11)
    qg = random_qgraph(rng, n_pops=3, T=2, size=6, channels=(2, 3), constructs=True)
    x = random_input(rng, qg, batch=5, static=False)  # [T, B, ...]: batch on axis 1
    one = FixedEngine().run(qg, x)
    two = run_fixed(qg, x, batch=2, workers=2)
    assert compare(one, two)["total_mismatches"] == 0
    assert all(v.dtype == one.spikes[k].dtype for k, v in two.spikes.items())
    assert compare(one, merge([one]))["total_mismatches"] == 0


def _without_timing(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report["validation"].pop("timing_s")
    return report


def test_workers_report_equals_one_process(tmp_path: Path) -> None:
    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.data.synth_coco import write_synthetic_coco
    from spikedet.train.models.registry import build_model
    from tests.model_helpers import randomize

    write_synthetic_coco(tmp_path / "coco", n_train=0, n_val=3, imgsz=64, seed=4)
    nir_path = tmp_path / "pico.nir"
    write_nir(export_model(randomize(build_model("spikeyolo-pico"))), nir_path)
    reports = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        args = ["deploy", str(nir_path), "--data", str(tmp_path / "coco"), "--batch", "1"]
        assert main([*args, "--workers", str(workers), "--out", str(out)]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["validation"]["images"] == 3
    assert "reference_vs_fixed" in reports[0]["validation"]
    assert _without_timing(reports[0]) == _without_timing(reports[1])


def test_bad_workers_is_one_line(tmp_path: Path, capsys) -> None:
    nir_path = tmp_path / "x.nir"
    nir_path.write_text("not used")
    code = main(["deploy", str(nir_path), "--data", str(tmp_path), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "workers" in err[0] and "--workers" in err[0]
