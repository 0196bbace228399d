"""DDP: torchrun with 2 CPU processes (gloo) trains one epoch; both ranks end with identical
weights, and those are the weights rank 0 saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikedet.train.ddp import DistContext, ShardSampler, state_hash
from spikedet.train.models.registry import build_from_config

TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_shards_cover_the_epoch_order_disjointly():
    for n, world in ((10, 2), (11, 2), (7, 3)):
        shards = [
            ShardSampler(n, DistContext(r, world), seed=5, epoch=2).order() for r in range(world)
        ]
        per_rank = -(-n // world)
        assert all(len(s) == per_rank for s in shards)
        together = [i for k in range(per_rank) for s in shards for i in s[k : k + 1]]
        single = ShardSampler(n, DistContext(), seed=5, epoch=2).order()
        # Interleaving the shards gives back the single-process order (padded by wrapping).
        assert together[:n] == single and sorted(set(together)) == list(range(n))
    a = ShardSampler(10, DistContext(0, 2), seed=5, epoch=2).order()
    assert a != ShardSampler(10, DistContext(0, 2), seed=5, epoch=3).order()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun script missing from the venv")
def test_torchrun_gloo_two_ranks(tmp_path):
    from spikedet.data.synth_coco import write_synthetic_coco

    data, out = tmp_path / "data", tmp_path / "run"
    write_synthetic_coco(data, n_train=16, n_val=8, imgsz=64, seed=3)
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "spikedet.cli.train_cmd",
        "train", "--quiet", "--model", "spikeyolo-pico", "--data", str(data), "--epochs", "1",
        "--batch", "8", "--out", str(out), "--seed", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "(2 process(es))" in done.stdout
    assert done.stdout.count("best val mAP@50") == 1  # only rank 0 reports
    check = json.loads((out / "ddp_check.json").read_text())
    assert check["world_size"] == 2 and len(check["hashes"]) == 2
    assert check["identical"] and check["hashes"][0] == check["hashes"][1]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2  # 8 images per rank, 4 per step
    model, ema = build_from_config(state["config"]), build_from_config(state["config"])
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    assert state_hash(model) + state_hash(ema) == check["hashes"][0]
    assert (out / "results.csv").is_file() and (out / "best.pt").is_file()
