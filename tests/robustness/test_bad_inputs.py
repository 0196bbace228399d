"""Bad input through the real CLI: one stderr line ``spikedet: error: <what> (<where>)`` naming
the damaged file, exit status 2, no traceback, and no output file left behind.

Every case of ``corrupt.py`` damages a fresh copy of one valid file and runs the command that
reads it in-process (``spikedet.cli.main.main``); a sample goes through ``python -m
spikedet.cli.main`` to check the process-level behaviour (status and stderr of a real process).
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from spikedet.cli.main import main
from tests.robustness import corrupt
from tests.robustness.conftest import Valid
from tests.robustness.corrupt import Case


def ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def refused(argv: list[str], capsys: pytest.CaptureFixture, expected: str) -> str:
    """Run the CLI; assert status 2 and exactly one error line that names ``expected``."""
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr: {err[-800:]}"
    assert len(lines) == 1 and lines[0].startswith("spikedet: error: "), err[-800:]
    assert expected in lines[0], f"{expected!r} not named in: {lines[0]}"
    assert "Traceback" not in err
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def gen1_copy(valid: Valid, tmp: Path, suffix: str) -> tuple[Path, Path]:
    """(dataset root, the val file ending in ``suffix``) of a private copy of the Gen1 set."""
    shutil.copytree(valid.gen1 / "val", tmp / "gen1" / "val")
    return tmp / "gen1", next((tmp / "gen1" / "val").glob(f"*{suffix}"))


def coco_copy(valid: Valid, tmp: Path) -> Path:
    shutil.copytree(valid.coco, tmp / "coco")
    return tmp / "coco"


def eval_gen1(valid: Valid, root: Path) -> list[str]:
    return ["eval", "--weights", str(valid.gen1_ckpt), "--data", str(root), "--dataset", "gen1"]


def eval_coco(weights: Path, root: Path) -> list[str]:
    return ["eval", "--weights", str(weights), "--data", str(root)]


def deploy(nir: Path, data: Path, out: Path, target: str = "loihi2-sim") -> list[str]:
    return ["deploy", str(nir), "--target", target, "--data", str(data), "--engine", "fixed",
            "--no-reference", "--out", str(out)]  # fmt: skip


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", corrupt.DAT_CASES, ids=ids(corrupt.DAT_CASES))
def test_dat(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    root, dat = gen1_copy(valid, tmp_path, "_td.dat")
    expected = case.damage(dat) or dat.name
    refused(eval_gen1(valid, root), capsys, expected)


@pytest.mark.parametrize("case", corrupt.BBOX_CASES, ids=ids(corrupt.BBOX_CASES))
def test_bbox(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    root, boxes = gen1_copy(valid, tmp_path, "_bbox.npy")
    expected = case.damage(boxes) or boxes.name
    refused(eval_gen1(valid, root), capsys, expected)


@pytest.mark.parametrize("case", corrupt.COCO_CASES, ids=ids(corrupt.COCO_CASES))
def test_coco_annotations(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    root = coco_copy(valid, tmp_path)
    ann = root / "annotations" / "instances_val.json"
    expected = case.damage(ann) or ann.name
    refused(eval_coco(valid.coco_ckpt, root), capsys, expected)


@pytest.mark.parametrize("case", corrupt.IMAGE_CASES, ids=ids(corrupt.IMAGE_CASES))
def test_images(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    root = coco_copy(valid, tmp_path)
    image = sorted((root / "val").glob("*.png"))[-1]  # the last one: earlier images decode fine
    expected = case.damage(image) or image.name
    refused(eval_coco(valid.coco_ckpt, root), capsys, expected)


@pytest.mark.parametrize("case", corrupt.WEIGHT_CASES, ids=ids(corrupt.WEIGHT_CASES))
def test_weights_eval_and_export(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "best.pt"
    shutil.copy(valid.coco_ckpt, weights)
    expected = case.damage(weights) or weights.name
    refused(eval_coco(weights, valid.coco), capsys, expected)
    out = tmp_path / "export" / "model.nir"
    refused(["export", "--weights", str(weights), "--out", str(out)], capsys, expected)
    assert files_under(out.parent) == []
    # import-weights reads authors' pickles without running them: refused too, naming the file
    imported = tmp_path / "import" / "best.pt"
    refused(["import-weights", str(weights), "--out", str(imported)], capsys, weights.name)
    assert not imported.parent.exists()
    assert not corrupt.marker_of(weights).exists(), "the pickled code ran"


@pytest.mark.parametrize("case", corrupt.NIR_CASES, ids=ids(corrupt.NIR_CASES))
def test_nir(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    nir_file = tmp_path / "model.nir"
    shutil.copy(valid.nir, nir_file)
    expected = case.damage(nir_file) or nir_file.name
    out = tmp_path / "out"
    refused(deploy(nir_file, valid.coco, out), capsys, expected)
    assert files_under(out) == []


@pytest.mark.parametrize("case", corrupt.PROFILE_CASES, ids=ids(corrupt.PROFILE_CASES))
def test_profile(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    profile = tmp_path / "myboard.yaml"
    shutil.copy(valid.profile, profile)
    expected = case.damage(profile) or profile.name
    out = tmp_path / "out"
    refused(deploy(valid.nir, valid.coco, out, str(profile)), capsys, expected)
    assert files_under(out) == []


@pytest.mark.parametrize("case", corrupt.REPORT_CASES, ids=ids(corrupt.REPORT_CASES))
def test_report(case: Case, valid: Valid, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "deployed"
    shutil.copytree(valid.report_dir, folder)
    report = folder / "report.json"
    expected = case.damage(report) or report.name
    refused(["report", str(folder)], capsys, expected)


# Annotation damage also reaches the commands that write outputs: nothing may appear there.
OUTPUT_CASES = [c for c in corrupt.COCO_CASES if c.id in
                ("no-images", "bbox-len3", "unknown-category", "truncated-json", "missing-image-file")]  # fmt: skip


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=ids(OUTPUT_CASES))
def test_bad_data_leaves_no_deploy_or_train_output(
    case: Case, valid: Valid, tmp_path: Path, capsys
) -> None:
    root = coco_copy(valid, tmp_path)
    expected = case.damage(root / "annotations" / "instances_val.json") or "instances_val.json"
    out = tmp_path / "deploy_out"
    refused(deploy(valid.nir, root, out), capsys, expected)
    assert files_under(out) == []
    shutil.copy(
        root / "annotations" / "instances_val.json", root / "annotations" / "instances_train.json"
    )
    if case.id == "missing-image-file":
        shutil.copy(next((root / "val").glob("*.png")), root / "train" / "gone.png")
    run = tmp_path / "run"
    argv = ["train", "--quiet", "--model", "spikeyolo-pico", "--data", str(root), "--epochs",
            "1", "--batch", "2", "--out", str(run)]  # fmt: skip
    train_expected = "gone.png" if case.id == "missing-image-file" else "instances_train.json"
    refused(argv, capsys, train_expected)
    assert [p.name for p in files_under(run)] == []


# --------------------------------------------------------------------------------------------
# The planted pickle is live (so "the marker never appears" above can fail).


def test_code_pickle_payload_is_live(tmp_path: Path) -> None:
    weights = tmp_path / "evil.pt"
    corrupt.code_pickle(weights)
    marker = corrupt.marker_of(weights)
    pickle.loads(weights.read_bytes())  # what an unsafe loader would do
    assert marker.read_text() == "executed"


def test_boxes_outside_the_frame_are_clipped_not_refused(valid: Valid, tmp_path: Path) -> None:
    """Policy: box rows reaching outside the 304 x 240 frame are clipped (empty ones dropped)
    with a warning naming the file; evaluation goes on."""
    import numpy as np

    root, boxes = gen1_copy(valid, tmp_path, "_bbox.npy")
    arr = np.load(boxes)
    arr["x"][0], arr["w"][0] = 290.0, 60.0  # reaches 46 px past the right edge
    arr["y"][-1] = 500.0  # entirely below the frame
    np.save(boxes, arr)
    with pytest.warns(RuntimeWarning, match=boxes.name):
        assert main(eval_gen1(valid, root) + ["--json"]) == 0


# --------------------------------------------------------------------------------------------
# Process level: a real `python -m spikedet.cli.main` per family.

SUBPROCESS = [("dat", "event-type-1"), ("bbox", "negative-w"), ("coco", "truncated-json"),
              ("image", "truncated-half"), ("weights", "code-pickle"), ("weights", "garbage"),
              ("nir", "no-node-li"), ("nir", "garbage"), ("profile", "missing-energy.synop"),
              ("report", "malformed")]  # fmt: skip


def _case(family: str, case_id: str) -> Case:
    table = {"dat": corrupt.DAT_CASES, "bbox": corrupt.BBOX_CASES, "coco": corrupt.COCO_CASES,
             "image": corrupt.IMAGE_CASES, "weights": corrupt.WEIGHT_CASES,
             "nir": corrupt.NIR_CASES, "profile": corrupt.PROFILE_CASES,
             "report": corrupt.REPORT_CASES}  # fmt: skip
    return next(c for c in table[family] if c.id == case_id)


def _argv(family: str, valid: Valid, tmp: Path) -> tuple[list[str], Path, Path]:
    """(argv, the file to damage, the output folder that must stay empty)."""
    out = tmp / "out"
    if family in ("dat", "bbox"):
        root, target = gen1_copy(valid, tmp, "_td.dat" if family == "dat" else "_bbox.npy")
        return eval_gen1(valid, root), target, out
    if family in ("coco", "image"):
        root = coco_copy(valid, tmp)
        target = (root / "annotations" / "instances_val.json" if family == "coco"
                  else sorted((root / "val").glob("*.png"))[-1])  # fmt: skip
        return eval_coco(valid.coco_ckpt, root), target, out
    if family == "weights":
        target = Path(shutil.copy(valid.coco_ckpt, tmp / "best.pt"))
        return ["export", "--weights", str(target), "--out", str(out / "m.nir")], target, out
    if family == "nir":
        target = Path(shutil.copy(valid.nir, tmp / "model.nir"))
        return deploy(target, valid.coco, out), target, out
    if family == "profile":
        target = Path(shutil.copy(valid.profile, tmp / "board.yaml"))
        return deploy(valid.nir, valid.coco, out, str(target)), target, out
    shutil.copytree(valid.report_dir, tmp / "rep")
    return ["report", str(tmp / "rep")], tmp / "rep" / "report.json", out


@pytest.mark.parametrize("family,case_id", SUBPROCESS, ids=[f"{f}-{c}" for f, c in SUBPROCESS])
def test_subprocess(family: str, case_id: str, valid: Valid, tmp_path: Path) -> None:
    argv, target, out = _argv(family, valid, tmp_path)
    expected = _case(family, case_id).damage(target) or target.name
    proc = subprocess.run(
        [sys.executable, "-m", "spikedet.cli.main", *argv],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-800:]
    assert len(lines) == 1 and lines[0].startswith("spikedet: error: "), proc.stderr[-800:]
    assert expected in lines[0] and "Traceback" not in proc.stderr
    assert files_under(out) == []
    if family == "weights":
        assert not corrupt.marker_of(target).exists()


def test_case_count() -> None:
    """The suite keeps at least 200 generated bad-input cases."""
    tables = [corrupt.DAT_CASES, corrupt.BBOX_CASES, corrupt.COCO_CASES, corrupt.IMAGE_CASES,
              corrupt.WEIGHT_CASES, corrupt.NIR_CASES, corrupt.PROFILE_CASES, corrupt.REPORT_CASES]  # fmt: skip
    assert sum(map(len, tables)) >= 200


# The whole-file readers see every event (the CLI decodes only the label windows).
WHOLE_FILE_CASES = [c for c in corrupt.DAT_CASES if c.id != "other-sensor"]  # a valid 640x480 file


@pytest.mark.parametrize("backend", ["numpy", "expelliarmus"])
@pytest.mark.parametrize("case", WHOLE_FILE_CASES, ids=ids(WHOLE_FILE_CASES))
def test_dat_whole_file_readers(case: Case, backend: str, valid: Valid, tmp_path: Path) -> None:
    from spikedet.data.gen1 import read_dat
    from spikedet.errors import SpikedetError

    _, dat = gen1_copy(valid, tmp_path, "_td.dat")
    case.damage(dat)
    with pytest.raises(SpikedetError) as err:
        read_dat(dat, backend=backend)
    assert dat.name in err.value.one_line()


# Output folders of `data` that cannot be made, and bad settings: refused before any file.
DATA_CASES = [
    ("coco-out-is-file", ["synth-coco", "--out", "{blocker}"], "blocker"),
    ("coco-out-under-file", ["synth-coco", "--out", "{blocker}/sub"], "blocker"),
    ("gen1-out-is-file", ["synth-gen1", "--out", "{blocker}", "--seconds", "0.6"], "blocker"),
    ("gen1-out-under-file", ["synth-gen1", "--out", "{blocker}/a/b"], "blocker"),
    ("coco-imgsz-0", ["synth-coco", "--out", "{new}", "--imgsz", "0"], "synth-coco"),
    ("coco-negative-count", ["synth-coco", "--out", "{new}", "--val", "-2"], "synth-coco"),
    ("gen1-too-short", ["synth-gen1", "--out", "{new}", "--seconds", "0.1"], "newdata"),
    ("gen1-negative-seed", ["synth-gen1", "--out", "{new}", "--seed", "-1"], "newdata"),
]


@pytest.mark.parametrize("case_id,argv,expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_commands(
    case_id: str, argv: list[str], expected: str, tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should go\n")
    names = {"blocker": str(blocker), "new": str(tmp_path / "newdata")}
    args = ["data", *(a.format(**names) for a in argv), "--train", "1"]
    refused(args, capsys, expected)
    assert files_under(tmp_path) == [blocker]
