"""``spikedet deploy --workers N`` shards the images over N processes, and under ``torchrun``
over ranks (gloo), each of which may use ``--workers`` again; the report (mAP, activity,
energy, reference agreement) equals the one-process report except for timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def pico_case(tmp_path_factory) -> tuple[Path, list[str], dict]:
    """(folder, the deploy arguments, the one-process report) of a random pico on 3 images."""
    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.data.synth_coco import write_synthetic_coco
    from spikedet.train.models.registry import build_model
    from tests.model_helpers import randomize

    tmp = tmp_path_factory.mktemp("pico")
    write_synthetic_coco(tmp / "coco", n_train=0, n_val=3, imgsz=64, seed=4)
    nir_path = tmp / "pico.nir"
    write_nir(export_model(randomize(build_model("spikeyolo-pico"))), nir_path)
    args = ["deploy", str(nir_path), "--data", str(tmp / "coco"), "--batch", "1"]
    assert main([*args, "--workers", "1", "--out", str(tmp / "w1")]) == 0
    return tmp, args, json.loads((tmp / "w1" / "report.json").read_text())


def test_workers_report_equals_one_process(pico_case, capsys) -> None:
    tmp, args, one = pico_case
    capsys.readouterr()
    assert main([*args, "--workers", "2", "--out", str(tmp / "w2")]) == 0
    err = capsys.readouterr().err  # progress on (the default), stderr not a terminal
    assert "\r" not in err and "\x1b" not in err and "images/s" not in err
    two = json.loads((tmp / "w2" / "report.json").read_text())
    assert one["validation"]["images"] == 3
    assert "reference_vs_fixed" in one["validation"]
    assert _without_timing(one) == _without_timing(two)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun script missing from the venv")
def test_torchrun_ranks_report_equals_one_process(pico_case) -> None:
    # 2 ranks on gloo, rank 0 with 2 worker processes: fixed images [0, 2) on rank 0 (one per
    # worker) and [2, 3) on rank 1; reference batches of 1 split the same way.
    tmp, args, one = pico_case
    out = tmp / "ranks"
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "spikedet.cli.main", *args,
        "--workers", "2", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("report written") == 1  # rank 0 reports, rank 1 writes nothing
    merged = json.loads((out / "report.json").read_text())
    assert _without_timing(merged) == _without_timing(one)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".md")) == [
        "report.json",
        "report.md",
    ]


def _torchrun_env(monkeypatch, world: int = 2) -> None:
    env = {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_torchrun_without_torch_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    _torchrun_env(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)  # import fails as without torch
    nir_path = tmp_path / "x.nir"
    nir_path.write_text("not used")
    code = main(["deploy", str(nir_path), "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "torch is not importable" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_torchrun_environment_errors_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    nir_path = tmp_path / "x.nir"
    nir_path.write_text("not used")
    _torchrun_env(monkeypatch)
    code = main(["deploy", str(nir_path), "--input", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--input" in err[0], err
    monkeypatch.delenv("MASTER_PORT")
    code = main(["deploy", str(nir_path), "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MASTER_PORT" in err[0], err
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("RANK", "5")
    code = main(["deploy", str(nir_path), "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "RANK" in err[0], err


def test_rank_ranges_cover_in_order() -> None:
    from spikedet.deploy.distributed import Ranks, batch_range, image_range

    ranks = [Ranks(r, 3) for r in range(3)]
    assert [image_range(r, 7) for r in ranks] == [(0, 3), (3, 5), (5, 7)]
    assert [image_range(r, 2) for r in ranks] == [(0, 1), (1, 2), (2, 2)]
    # whole batches of 4: 10 images = batches [0,4) [4,8) [8,10)
    assert [batch_range(r, 10, 4) for r in ranks] == [(0, 4), (4, 8), (8, 10)]
    assert [batch_range(r, 9, 4) for r in (Ranks(0, 2), Ranks(1, 2))] == [(0, 8), (8, 9)]
    assert [batch_range(r, 3, 4) for r in (Ranks(0, 2), Ranks(1, 2))] == [(0, 3), (3, 3)]


def test_bad_workers_is_one_line(tmp_path: Path, capsys) -> None:
    nir_path = tmp_path / "x.nir"
    nir_path.write_text("not used")
    code = main(["deploy", str(nir_path), "--data", str(tmp_path), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "workers" in err[0] and "--workers" in err[0]
