"""Synthetic COCO writer, COCO reader (letterbox, augmentation, errors), loader and CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spikedet.data.coco import (
    CocoDetectionSet,
    hflip,
    letterbox,
    scale_jitter,
    to_original,
)
from spikedet.data.synth_coco import write_synthetic_coco
from spikedet.errors import SpikedetError


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_coco(root, n_train=24, n_val=8, imgsz=64, seed=0)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    a, b, c = (
        write_synthetic_coco(tmp_path / n, 6, 3, 64, s) for n, s in (("a", 0), ("b", 0), ("c", 1))
    )
    files_a, files_b, files_c = (_files(tmp_path / n) for n in "abc")
    assert len(files_a) == 6 + 3 + 2
    assert files_a == files_b
    assert {k for k in files_a if files_a[k] != files_c.get(k)}  # another seed changes the data
    assert a["splits"] == b["splits"]
    assert c["root"] == str(tmp_path / "c")


def test_synthetic_json_is_coco(synth: Path) -> None:
    from pycocotools.coco import COCO

    for split, n in (("train", 24), ("val", 8)):
        path = synth / "annotations" / f"instances_{split}.json"
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == n
        ids = sorted(coco.getCatIds())
        assert len(ids) >= 3 and ids != list(range(1, len(ids) + 1))  # non-contiguous, like COCO
        anns = coco.loadAnns(coco.getAnnIds())
        assert len({a["id"] for a in anns}) == len(anns) and min(a["id"] for a in anns) >= 1
        for ann in anns:
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and ann["area"] == w * h and ann["iscrowd"] == 0
            assert 0 <= x and x + w <= img["width"] and 0 <= y and y + h <= img["height"]
            assert (synth / split / img["file_name"]).is_file()
        per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
        assert max(per_image) <= 3
        pixels = np.asarray(Image.open(synth / split / coco.imgs[1]["file_name"]))
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_synthetic_boxes_are_tight(monkeypatch) -> None:
    """Black background, object k filled with grey level 60 + 60·k: each box must be exactly the
    box of the pixels still showing object k (later shapes cover earlier ones)."""
    from spikedet.data import synth_coco

    drawn_so_far: list[int] = []

    def flat_fill(rng, colour, size):
        drawn_so_far.append(1)
        return np.full((size, size, 3), 60.0 * len(drawn_so_far))

    monkeypatch.setattr(synth_coco, "_background", lambda rng, size: np.zeros((size, size, 3)))
    monkeypatch.setattr(synth_coco, "_texture", flat_fill)
    n_boxes = n_overlaps = 0
    for index in range(40):
        drawn_so_far.clear()
        pixels, objects = synth_coco.render_image(np.random.default_rng([9, index]), 64)
        assert len(objects) == len(drawn_so_far)
        for k, obj in enumerate(objects, start=1):
            ys, xs = np.nonzero(pixels[..., 0] == 60 * k)
            tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert obj["bbox"] == [float(v) for v in tight]
            n_boxes += 1
        n_overlaps += len(objects) > 1
    assert n_boxes >= 40 and n_overlaps >= 5


def test_synthetic_shapes_scale_with_image(tmp_path: Path) -> None:
    sizes = {}
    for s in (64, 128):
        write_synthetic_coco(tmp_path / str(s), 40, 0, s, 3)
        anns = json.loads((tmp_path / str(s) / "annotations/instances_train.json").read_text())
        sides = np.array([max(a["bbox"][2:]) for a in anns["annotations"]])
        assert len(sides) >= 40
        sizes[s] = np.median(sides)
    assert 12 <= sizes[64] <= 40
    assert 1.6 < sizes[128] / sizes[64] < 2.4


def test_letterbox_geometry() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    out, ratio, pad = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert ratio == pytest.approx(64 / 60) and pad == (0.0, 16.0)
    assert np.all(out[:16] == 114) and np.all(out[48:] == 114) and not np.all(out[16:48] == 114)
    tall, ratio, pad = letterbox(rng.integers(0, 256, (100, 20, 3), dtype=np.uint8), 50)
    assert ratio == 0.5 and pad == (20.0, 0.0) and np.all(tall[:, :20] == 114)
    same, ratio, pad = letterbox(img[:, :30], 30)
    assert ratio == 1.0 and pad == (0.0, 0.0) and np.array_equal(same, img[:, :30])


def test_to_original_inverts_letterbox() -> None:
    rng = np.random.default_rng(1)
    h, w = 30, 60
    _, ratio, pad = letterbox(np.zeros((h, w, 3), np.uint8), 64)
    meta = {"orig_hw": (h, w), "ratio": ratio, "pad": pad, "image_id": 1}
    xy = rng.uniform(0, [w, h], size=(20, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 10, (20, 2))], axis=1)
    boxes[:, 2:] = np.minimum(boxes[:, 2:], [w, h])
    lb = boxes.copy()
    lb[:, 0::2] = lb[:, 0::2] * ratio + pad[0]
    lb[:, 1::2] = lb[:, 1::2] * ratio + pad[1]
    np.testing.assert_allclose(to_original(lb, meta), boxes, atol=1e-9)
    clipped = to_original(np.array([[-5.0, 0.0, 70.0, 64.0]]), meta)
    np.testing.assert_allclose(clipped, [[0.0, 0.0, w, h]])


def _write_set(root: Path, images: list[np.ndarray], anns: list[dict]) -> Path:
    (root / "img").mkdir(parents=True)
    infos = []
    for k, pixels in enumerate(images, start=1):
        Image.fromarray(pixels).save(root / "img" / f"{k:06d}.png")
        infos.append(
            {
                "id": k,
                "file_name": f"{k:06d}.png",
                "width": pixels.shape[1],
                "height": pixels.shape[0],
            }
        )
    cats = [{"id": 5, "name": "box"}, {"id": 2, "name": "other"}]
    for k, ann in enumerate(anns, start=1):
        ann.setdefault("id", k)
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": infos, "annotations": anns, "categories": cats}))
    return ann_file


def _rect_image(h: int = 40, w: int = 80) -> np.ndarray:
    img = np.full((h, w, 3), 60, np.uint8)
    img[8:28, 6:30] = 250  # box x 6..30, y 8..28
    return img


def test_reader_letterbox_boxes_and_pixels(tmp_path: Path) -> None:
    ann_file = _write_set(
        tmp_path,
        [_rect_image(), np.zeros((40, 80, 3), np.uint8)],
        [
            {"image_id": 1, "category_id": 5, "bbox": [6, 8, 24, 20]},
            {"image_id": 1, "category_id": 2, "bbox": [40, 10, 30, 25], "iscrowd": 1},
        ],
    )
    ds = CocoDetectionSet(tmp_path / "img", ann_file, imgsz=64)
    assert ds.cat_ids == [2, 5] and ds.names == ["other", "box"] and ds.image_ids == [1, 2]
    s = ds[0]
    assert s.image.shape == (3, 64, 64) and s.image.dtype == np.float32
    lb, ratio, pad = letterbox(_rect_image(), 64)
    assert np.array_equal(s.image, lb.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    assert s.meta == {
        "image_id": 1,
        "orig_hw": (40, 80),
        "ratio": 0.8,
        "pad": (0.0, 16.0),
        "file": str(tmp_path / "img" / "000001.png"),
    }
    np.testing.assert_allclose(
        s.boxes, [[6 * 0.8, 8 * 0.8 + 16, 30 * 0.8, 28 * 0.8 + 16]], rtol=1e-6
    )
    assert s.classes.tolist() == [1]  # the crowd box is not a training target
    empty = ds[1]
    assert empty.boxes.shape == (0, 4) and empty.boxes.dtype == np.float32
    assert empty.classes.shape == (0,) and empty.classes.dtype == np.int64
    with pytest.raises(IndexError):
        ds[2]


def test_augmentation_is_deterministic_and_boxes_follow(tmp_path: Path) -> None:
    ann_file = _write_set(
        tmp_path, [_rect_image()], [{"image_id": 1, "category_id": 5, "bbox": [6, 8, 24, 20]}]
    )
    ds = CocoDetectionSet(tmp_path / "img", ann_file, imgsz=64, augment=True, seed=7)
    plain = CocoDetectionSet(tmp_path / "img", ann_file, imgsz=64)[0]
    centres = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        s = ds[0]
        again = CocoDetectionSet(tmp_path / "img", ann_file, imgsz=64, augment=True, seed=7)
        again.set_epoch(epoch)
        t = again[0]
        assert np.array_equal(s.image, t.image) and np.array_equal(s.boxes, t.boxes)
        assert len(s.boxes) == 1
        x1, y1, x2, y2 = s.boxes[0]
        gray = s.image.mean(axis=0)
        inner = gray[int(np.ceil(y1 + 1.5)) : int(y2 - 1.5), int(np.ceil(x1 + 1.5)) : int(x2 - 1.5)]
        assert inner.size and inner.min() > 0.9  # the rectangle is inside the box ...
        ring = np.ones_like(gray, bool)
        ring[
            max(0, int(y1 - 1.5)) : int(np.ceil(y2 + 1.5)),
            max(0, int(x1 - 1.5)) : int(np.ceil(x2 + 1.5)),
        ] = False
        assert gray[ring].max() < 0.5  # ... and nothing bright outside it
        centres.append((x1 + x2) / 2)
    assert min(centres) < 32 < max(centres)  # flipped and unflipped epochs both occurred
    assert not np.array_equal(s.image, plain.image)


def test_flip_and_scale_helpers() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    img[2:4, 1:3] = 255
    out, boxes = hflip(img, np.array([[1.0, 2.0, 3.0, 4.0]]))
    assert np.all(out[2:4, 7:9] == 255) and boxes.tolist() == [[7.0, 2.0, 9.0, 4.0]]
    big, boxes = scale_jitter(img, np.array([[1.0, 2.0, 3.0, 4.0]]), 2.0, (0.0, 0.0))
    assert big.shape == img.shape and boxes.tolist() == [[2.0, 4.0, 6.0, 8.0]]
    small, boxes = scale_jitter(img, np.array([[2.0, 2.0, 4.0, 4.0]]), 0.5, (0.999, 0.0))
    assert small.shape == img.shape and boxes.tolist() == [[6.0, 1.0, 7.0, 2.0]]
    assert np.all(small[5:, :] == 114) and np.all(small[:, :5] == 114)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: "{not json", "malformed JSON"),
        (lambda d: {**d, "images": None}, "missing key 'images'"),
        (lambda d: _ann(d, bbox=[1, 2, 3]), "bbox must be 4 numbers"),
        (lambda d: _ann(d, bbox=[1, 2, -3, 4]), "negative size"),
        (lambda d: _ann(d, category_id=99), "unknown category id 99"),
        (lambda d: _ann(d, image_id=42), "unknown image id 42"),
        (
            lambda d: {**d, "annotations": [{"id": 1, "bbox": [0, 0, 1, 1], "category_id": 5}]},
            "misses key 'image_id'",
        ),
    ],
)
def test_bad_annotation_file(tmp_path: Path, mutate, message: str) -> None:
    ann_file = _write_set(
        tmp_path, [_rect_image()], [{"image_id": 1, "category_id": 5, "bbox": [6, 8, 24, 20]}]
    )
    bad = mutate(json.loads(ann_file.read_text()))
    ann_file.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(SpikedetError, match=message) as err:
        CocoDetectionSet(tmp_path / "img", ann_file)
    assert err.value.where == str(ann_file)


def _ann(data: dict, **change) -> dict:
    return {**data, "annotations": [{**data["annotations"][0], **change}]}


def test_missing_files_and_truncated_image(tmp_path: Path, synth: Path) -> None:
    with pytest.raises(SpikedetError, match="annotation file not found") as err:
        CocoDetectionSet(synth / "val", tmp_path / "nope.json")
    assert "nope.json" in str(err.value)
    with pytest.raises(SpikedetError, match="images directory not found"):
        CocoDetectionSet(tmp_path / "noimg", synth / "annotations/instances_val.json")
    ann_file = _write_set(
        tmp_path, [_rect_image()], [{"image_id": 1, "category_id": 5, "bbox": [6, 8, 24, 20]}]
    )
    png = tmp_path / "img" / "000001.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    ds = CocoDetectionSet(tmp_path / "img", ann_file)
    with pytest.raises(SpikedetError, match="cannot read image: truncated file") as err:
        ds[0]
    assert str(png) in str(err.value)
    png.write_bytes(b"this is not a png")
    with pytest.raises(SpikedetError, match="cannot read image") as err:
        ds[0]
    png.unlink()
    with pytest.raises(SpikedetError, match="not found"):
        CocoDetectionSet(tmp_path / "img", ann_file)


def test_loader_collate_and_seeded_order(synth: Path) -> None:
    import torch

    from spikedet.data.loader import collate, make_loader

    ds = CocoDetectionSet.from_root(synth, "train", imgsz=64, augment=True, seed=3)
    images, targets, metas = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    n = [len(ds[i].boxes) for i in range(3)]
    assert targets.shape == (sum(n), 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == sum(([float(b)] * k for b, k in enumerate(n)), [])
    np.testing.assert_array_equal(targets[: n[0], 2:].numpy(), ds[0].boxes)
    assert [m["image_id"] for m in metas] == ds.image_ids[:3]

    def order(seed: int, epoch: int) -> list[int]:
        return [m["image_id"] for _, _, ms in make_loader(ds, 5, True, seed, epoch) for m in ms]

    first = order(0, 1)
    assert ds.epoch == 1 and sorted(first) == ds.image_ids
    assert first == order(0, 1) and first != order(0, 2) and first != order(1, 1)
    assert [m["image_id"] for _, _, ms in make_loader(ds, 5, False, 0) for m in ms] == ds.image_ids
    batch_a = next(iter(make_loader(ds, 4, True, 0, 5)))
    batch_b = next(iter(make_loader(ds, 4, True, 0, 5)))
    assert torch.equal(batch_a[0], batch_b[0]) and torch.equal(batch_a[1], batch_b[1])


def test_cli_synth_coco(tmp_path: Path, capsys) -> None:
    from spikedet.cli import data_cmd

    parser = argparse.ArgumentParser()
    data_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "data",
            "synth-coco",
            "--out",
            str(tmp_path / "d"),
            "--train",
            "4",
            "--val",
            "2",
            "--seed",
            "5",
        ]
    )
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "4 train / 2 val images" in line and str(tmp_path / "d") in line
    assert len(list((tmp_path / "d" / "train").glob("*.png"))) == 4
    args = parser.parse_args(["data", "synth-coco", "--out", str(tmp_path / "e"), "--imgsz", "8"])
    with pytest.raises(SpikedetError, match="image size"):
        args.func(args)


def test_cli_through_main(tmp_path: Path, capsys, monkeypatch) -> None:
    """The real entry point (only this command registered): success, and errors exit 2."""
    from spikedet.cli import main

    monkeypatch.setattr(main, "COMMAND_MODULES", ("spikedet.cli.data_cmd",))
    assert (
        main.main(
            ["data", "synth-coco", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1"]
        )
        == 0
    )
    assert "2 train / 1 val images" in capsys.readouterr().out
    assert main.main(["data", "synth-coco", "--out", str(tmp_path / "d"), "--seed", "-1"]) == 2
    assert "spikedet: error: seed must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as code:
        main.main(["data"])
    assert code.value.code == 2
