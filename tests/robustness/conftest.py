"""Session fixtures of the bad-input suite: one valid instance of every input kind, built once.

``valid`` holds a synthetic COCO root (4 train / 3 val images), a synthetic Gen1 root (one 1 s
recording per split), a pico checkpoint for each (3 and 2 classes, T = 1, random weights), the
NIR export of the COCO one, a deployment report folder made from it and the built-in loihi2
profile. Each case copies the one file it damages, so the originals stay valid.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Valid:
    coco: Path
    gen1: Path
    coco_ckpt: Path
    gen1_ckpt: Path
    nir: Path
    report_dir: Path
    profile: Path


@pytest.fixture(scope="session")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Valid:
    from spikedet.cli.main import main
    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.data.gen1_labels import CLASS_NAMES
    from spikedet.data.synth_coco import write_synthetic_coco
    from spikedet.data.synth_gen1 import write_synthetic_gen1
    from spikedet.train.checkpoint import save_checkpoint
    from spikedet.train.models.registry import build_model

    root = tmp_path_factory.mktemp("valid")
    write_synthetic_coco(root / "coco", n_train=4, n_val=3, seed=5)
    write_synthetic_gen1(root / "gen1", n_train=1, n_val=1, seconds=1.0, seed=5)
    checkpoints = {}
    for kind, names in (("coco", ["circle", "square", "triangle"]), ("gen1", list(CLASS_NAMES))):
        model = build_model("spikeyolo-pico", names=names, T=1).eval()
        checkpoints[kind] = root / f"{kind}_pico.pt"
        state = {"config": model.config, "model": model.state_dict(), "epoch": 0}
        save_checkpoint(checkpoints[kind], {**state, "train_config": {"dataset": kind}})
        if kind == "coco":
            write_nir(export_model(model), root / "pico.nir")
    report_dir = root / "deployed"
    argv = ["deploy", str(root / "pico.nir"), "--data", str(root / "coco"), "--engine", "fixed",
            "--no-reference", "--out", str(report_dir)]  # fmt: skip
    assert main(argv) == 0
    profile = root / "loihi2.yaml"
    builtin = importlib.resources.files("spikedet.hardware_profiles") / "loihi2.yaml"
    profile.write_text(builtin.read_text(encoding="utf-8"), encoding="utf-8")
    return Valid(root / "coco", root / "gen1", checkpoints["coco"], checkpoints["gen1"],
                 root / "pico.nir", report_dir, profile)  # fmt: skip
