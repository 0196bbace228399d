"""`--skip-bad` on `train` and `eval`: a truncated PNG / broken annotation entry (COCO) or a
corrupt .dat / _bbox.npy (Gen1) fails the run with one line naming the file (exit 2) without
the flag; with it the file is left out with one warning line, a count at the end, and mAP is
computed on the remaining images / recordings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spikedet.cli.main import main
from spikedet.data.coco import CocoDetectionSet
from spikedet.train.validation import evaluate_detections, make_dataset, skipping_bad_data

NAMES = ["circle", "square", "triangle"]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _with_boxes(root: Path, split: str) -> list[str]:
    """File names of the split's images that have at least one box, in id order."""
    ann = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    ids = {a["image_id"] for a in ann["annotations"]}
    return [
        im["file_name"] for im in sorted(ann["images"], key=lambda i: i["id"]) if im["id"] in ids
    ]


def _break_annotation_of(root: Path, split: str, file_name: str) -> None:
    """Give one annotation of ``file_name`` an unusable bbox."""
    path = root / "annotations" / f"instances_{split}.json"
    ann = json.loads(path.read_text())
    image_id = next(im["id"] for im in ann["images"] if im["file_name"] == file_name)
    next(a for a in ann["annotations"] if a["image_id"] == image_id)["bbox"] = "oops"
    path.write_text(json.dumps(ann))


def _checkpoint(path: Path, names: list[str], dataset: str) -> Path:
    from spikedet.train.checkpoint import save_checkpoint
    from spikedet.train.models.registry import build_model

    model = build_model("spikeyolo-pico", names=names, T=1).eval()
    state = {"config": model.config, "model": model.state_dict(), "epoch": 0}
    save_checkpoint(path, {**state, "train_config": {"dataset": dataset}})
    return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> dict:
    """A clean COCO root, one with a truncated val PNG (and train PNG), one that also has a
    broken annotation entry of another val image; plus a checkpoint."""
    from spikedet.data.synth_coco import write_synthetic_coco

    base = tmp_path_factory.mktemp("coco")
    clean = base / "clean"
    write_synthetic_coco(clean, n_train=6, n_val=5, seed=5)
    val_files = _with_boxes(clean, "val")
    png = base / "png"
    shutil.copytree(clean, png)
    _truncate(png / "val" / val_files[0])
    _truncate(png / "train" / _with_boxes(clean, "train")[0])
    both = base / "both"
    shutil.copytree(png, both)
    _break_annotation_of(both, "val", val_files[1])
    ckpt = _checkpoint(base / "pico.pt", NAMES, "coco")
    return {"clean": clean, "png": png, "both": both, "val_files": val_files, "ckpt": ckpt}


def _eval(capsys, ckpt: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["eval", "--weights", str(ckpt), "--data", str(data), "--json", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_coco_eval_fails_without_flag(coco, capsys):
    code, out, err = _eval(capsys, coco["ckpt"], coco["png"])
    assert code == 2 and out == ""
    assert err.startswith("spikedet: error: cannot read image: truncated file")
    assert coco["val_files"][0] in err and len(err.strip().splitlines()) == 1
    code, _, err = _eval(capsys, coco["ckpt"], coco["both"])  # the annotation is met first
    assert code == 2 and "annotations[" in err and "instances_val.json" in err


def test_coco_eval_skips_with_flag(coco, capsys):
    code, out, err = _eval(capsys, coco["ckpt"], coco["png"], "--skip-bad")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("spikedet: warning: skipped bad file: ")
    assert coco["val_files"][0] in lines[0] and "truncated" in lines[0].lower()
    assert lines[1].startswith("spikedet: warning: skipped 1 bad file: ")
    summary = json.loads(out)
    assert summary["images"] == 4 and len(summary["skipped"]) == 1
    assert np.isfinite(summary["map"]) and np.isfinite(summary["map50"])

    code, out, err = _eval(capsys, coco["ckpt"], coco["both"], "--skip-bad")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "skipped 2 bad files: " in lines[-1]
    assert all(name in lines[-1] for name in coco["val_files"][:2])
    assert "broken annotations[" in err
    assert json.loads(out)["images"] == 3


def test_coco_map_covers_the_remaining_images(coco):
    """Perfect detections of the remaining images score 1.0: the skipped images' boxes are out
    of the ground truth too (control: on the clean set the same detections score less)."""
    ds = make_dataset("coco", str(coco["both"]), "val", 64, False, 0, skip_bad=True)
    assert [Path(f).name for f, _ in ds.skipped] == coco["val_files"][:2]
    remaining = {Path(ds.meta(i)["file"]).name for i in range(len(ds))}
    assert len(remaining) == 3 and remaining.isdisjoint(coco["val_files"][:2])
    perfect = {ds.meta(i)["image_id"]: _gt_dets(ds, i) for i in range(len(ds))}
    assert evaluate_detections(ds, "coco", list(perfect.values()))["map"] == pytest.approx(1.0)
    clean = CocoDetectionSet.from_root(coco["clean"], "val", 64)
    dets = [perfect.get(clean.meta(i)["image_id"], np.zeros((0, 6))) for i in range(len(clean))]
    assert evaluate_detections(clean, "coco", dets)["map"] < 0.9


def _gt_dets(ds, i: int) -> np.ndarray:
    sample = ds[i]
    score = np.ones((len(sample.boxes), 1))
    return np.concatenate([sample.boxes, score, sample.classes[:, None]], axis=1)


def test_coco_train_skip_bad(coco, tmp_path, capsys):
    base = ["train", "--data", str(coco["png"]), "--epochs", "1", "--batch", "4", "--quiet"]
    code = main([*base, "--out", str(tmp_path / "fail")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("spikedet: error: cannot read image: truncated file")
    assert "train" in err and len(err.strip().splitlines()) == 1

    code = main([*base, "--out", str(tmp_path / "ok"), "--skip-bad"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [ln for ln in captured.err.splitlines() if "skipped bad file" in ln]
    assert len(warnings) == 2  # one train image, one val image
    assert "spikedet: warning: skipped 2 bad files: " in captured.err
    assert "best val mAP@50" in captured.out
    assert "skip_bad: true" in (tmp_path / "ok" / "config.yaml").read_text()
    # The policy reaches datasets the trainer builds only inside the block.
    with skipping_bad_data(True) as skipped:
        make_dataset("coco", str(coco["png"]), "val", 64, False, 0)
    assert len(skipped) == 1
    with pytest.raises(Exception, match="truncated"):
        make_dataset("coco", str(coco["png"]), "val", 64, False, 0)[0]


@pytest.fixture(scope="module")
def gen1(tmp_path_factory) -> dict:
    """Three 1 s val recordings: a truncated .dat, a garbage _bbox.npy and a good one."""
    from spikedet.data.gen1_labels import CLASS_NAMES
    from spikedet.data.synth_gen1 import write_synthetic_gen1

    base = tmp_path_factory.mktemp("gen1")
    root = base / "data"
    write_synthetic_gen1(root, n_train=1, n_val=3, seconds=1.0, seed=4)
    dats = sorted((root / "val").glob("*_td.dat"))
    bad_dat = dats[0]
    bad_dat.write_bytes(bad_dat.read_bytes()[:-3])  # no longer whole 8-byte events
    bad_box = Path(str(dats[1]).replace("_td.dat", "_bbox.npy"))
    bad_box.write_bytes(b"\x93NUMPY garbage")
    ckpt = _checkpoint(base / "pico_gen1.pt", list(CLASS_NAMES), "gen1")
    return {"root": root, "bad_dat": bad_dat, "bad_box": bad_box, "good": dats[2], "ckpt": ckpt}


def test_gen1_eval_fails_without_flag(gen1, capsys):
    code, out, err = _eval(capsys, gen1["ckpt"], gen1["root"])
    assert code == 2 and out == ""
    assert err.startswith("spikedet: error: truncated:") and str(gen1["bad_dat"]) in err
    assert len(err.strip().splitlines()) == 1


def test_gen1_eval_skips_with_flag(gen1, capsys):
    code, out, err = _eval(capsys, gen1["ckpt"], gen1["root"], "--skip-bad")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert str(gen1["bad_dat"]) in lines[0] and "truncated" in lines[0]
    assert str(gen1["bad_box"]) in lines[1] and "npy" in lines[1]
    assert lines[2] == (
        f"spikedet: warning: skipped 2 bad files: {gen1['bad_dat']}, {gen1['bad_box']}"
    )
    summary = json.loads(out)
    ds = make_dataset("gen1", str(gen1["root"]), "val", 64, False, 0, 1, skip_bad=True)
    stem = gen1["good"].name[: -len("_td.dat")]
    assert list(ds.labels) == [stem] and {ds.meta(i)["file"] for i in range(len(ds))} == {stem}
    assert summary["images"] == len(ds) > 0 and np.isfinite(summary["map"])
