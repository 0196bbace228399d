"""Event representations (against slow loop references) and Gen1DetectionSet samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikedet.data.coco import to_original
from spikedet.data.events import events_to_tensor
from spikedet.data.gen1 import EVENT_DTYPE, read_dat
from spikedet.data.gen1_dataset import Gen1DetectionSet, last_per_track
from spikedet.data.gen1_labels import BBOX_DTYPE, find_recordings, read_bbox
from spikedet.data.synth_gen1 import write_bbox, write_synthetic_gen1
from spikedet.errors import SpikedetError


def random_events(n: int, seed: int, h: int, w: int, t_max: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, t_max, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n)
    return ev


def slow_reference(ev, t0, t1, steps, h, w, rep, bins):
    """One event at a time, straight from the definitions in events.py's docstring."""
    c = {"polarity3": 3, "counts2": 2, "histogram": 2 * bins}[rep]
    out = np.zeros((steps, c, h, w), np.float64)
    if rep == "polarity3":
        out[:] = 127.0
    for t, x, y, p in zip(ev["t"].tolist(), ev["x"].tolist(), ev["y"].tolist(), ev["p"].tolist()):
        if not t0 <= t < t1:
            continue
        frac = (t - t0) / (t1 - t0)
        b = int(np.floor(frac * steps + 1e-12))
        if rep == "polarity3":
            out[b, :, y, x] = 255.0 if p else 0.0
        elif rep == "counts2":
            out[b, p, y, x] += 1
        else:
            g = (t - t0) * steps * bins // (t1 - t0)
            out[g // bins, p * bins + g % bins, y, x] += 1
    if rep == "histogram":
        out = out.clip(max=10)
    return out


@pytest.mark.parametrize("rep", ["polarity3", "counts2", "histogram"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_representations_match_loop_reference(rep: str, seed: int) -> None:
    h, w, steps, bins = 5, 7, 3, 4
    # Many events on few pixels: repeated pixels (last-wins, clipping at 10) get exercised.
    ev = random_events(12_000, seed, h, w, 10_000)
    t0, t1 = 1_000, 9_001
    got = events_to_tensor(ev, t0, t1, steps, h, w, rep, bins)
    assert (
        got.dtype == np.float32
        and got.shape == slow_reference(ev, t0, t1, steps, h, w, rep, bins).shape
    )
    np.testing.assert_array_equal(got, slow_reference(ev, t0, t1, steps, h, w, rep, bins))
    if rep == "histogram":
        assert got.max() == 10


def test_representation_errors() -> None:
    ev = random_events(10, 0, 4, 4, 100)
    with pytest.raises(SpikedetError, match="unknown representation 'voxel'"):
        events_to_tensor(ev, 0, 100, 2, 4, 4, "voxel")
    with pytest.raises(SpikedetError, match="outside the 3x4 frame"):
        events_to_tensor(ev, 0, 100, 2, 4, 3, "counts2")
    with pytest.raises(SpikedetError, match="t_end > t_start"):
        events_to_tensor(ev, 100, 100, 2, 4, 4)


@pytest.fixture(scope="module", params=["original", "toolbox"])
def gen1_root(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"gen1_{request.param}")
    write_synthetic_gen1(root, n_train=1, n_val=1, seconds=1.0, seed=0, bbox_dtype=request.param)
    return root


@pytest.mark.parametrize("rep", ["polarity3", "counts2", "histogram"])
def test_samples_from_both_bbox_dtypes(gen1_root: Path, rep: str) -> None:
    ds = Gen1DetectionSet(gen1_root, "train", T=5, representation=rep, imgsz=320)
    rec = find_recordings(gen1_root, "train")[0]
    labels, events = read_bbox(rec.bbox), read_dat(rec.dat)
    assert len(ds) == np.unique(labels["t"]).size > 0
    sample = ds[len(ds) - 1]
    c = {"polarity3": 3, "counts2": 2, "histogram": 20}[rep]
    assert sample.image.shape == (5, c, 320, 320) and sample.image.dtype == np.float32
    meta = sample.meta
    t = meta["t_us"]
    assert meta["file"] == rec.stem and meta["orig_hw"] == (240, 304) and meta["pad"] == (0.0, 33.0)
    pad = 127 / 255 if rep == "polarity3" else 0.0
    assert np.all(sample.image[:, :, :33] == np.float32(pad)) and np.all(
        sample.image[:, :, -34:] == np.float32(pad)
    )
    in_window = (events["t"] >= t - 250_000) & (events["t"] < t)
    raw = ds.events_tensor(len(ds) - 1)
    if rep == "counts2":
        assert raw.sum() == in_window.sum() > 0
        # Per-bin counts follow the 50 ms bins.
        for b in range(5):
            lo, hi = t - 250_000 + 50_000 * b, t - 250_000 + 50_000 * (b + 1)
            assert raw[b].sum() == ((events["t"] >= lo) & (events["t"] < hi)).sum()
    elif rep == "polarity3":
        assert set(np.unique(sample.image).tolist()) <= {0.0, np.float32(127 / 255), 1.0}
    rows = labels[labels["t"] == t]
    assert sample.boxes.shape == (len(rows), 4) and sample.boxes.dtype == np.float32
    assert sample.classes.dtype == np.int64
    np.testing.assert_array_equal(
        np.sort(sample.classes), np.sort(rows["class_id"].astype(np.int64))
    )
    back = to_original(sample.boxes, meta)
    expect = np.stack([rows["x"], rows["y"], rows["x"] + rows["w"], rows["y"] + rows["h"]], 1)
    expect[:, 0::2] = expect[:, 0::2].clip(0, 304)
    expect[:, 1::2] = expect[:, 1::2].clip(0, 240)
    np.testing.assert_allclose(np.sort(back, 0), np.sort(expect, 0), atol=1e-3)


def test_last_instance_per_track_clipping_and_flip(tmp_path: Path) -> None:
    write_synthetic_gen1(tmp_path, n_train=1, n_val=0, seconds=0.7, seed=1)
    rec = find_recordings(tmp_path, "train")[0]
    rows = np.array([(600_000, 10.0, 10.0, 40.0, 30.0, 0, 1, 1.0),
                     (600_000, 50.0, 60.0, 20.0, 40.0, 1, 2, 1.0),
                     (600_000, 12.0, 14.0, 42.0, 32.0, 0, 1, 1.0),   # repeats track 1: wins
                     (600_000, 290.0, -5.0, 30.0, 30.0, 0, 3, 1.0),  # clipped to x 290..304
                     (600_000, 310.0, 10.0, 20.0, 20.0, 0, 4, 1.0)],  # outside: dropped
                    dtype=BBOX_DTYPE)  # fmt: skip
    assert last_per_track(rows)["track_id"].tolist() == [2, 1, 3, 4]
    write_bbox(rec.bbox, rows, "toolbox")
    with pytest.warns(RuntimeWarning, match="2 of 5 boxes reach outside"):
        ds = Gen1DetectionSet(tmp_path, "train", T=2, window_us=100_000, imgsz=64)
    sample = ds[0]
    back = to_original(sample.boxes, sample.meta)
    np.testing.assert_allclose(
        back, [[50, 60, 70, 100], [12, 14, 54, 46], [290, 0, 304, 25]], atol=1e-4
    )
    assert sample.classes.tolist() == [1, 0, 0]
    with pytest.warns(RuntimeWarning, match="outside the 304x240 frame"):
        aug = Gen1DetectionSet(tmp_path, "train", T=2, window_us=100_000, imgsz=64, augment=True)
    flips = []
    for epoch in range(8):
        aug.set_epoch(epoch)
        s = aug[0]
        flipped = not np.array_equal(s.image, sample.image)
        flips.append(flipped)
        if flipped:
            np.testing.assert_array_equal(s.image, sample.image[..., ::-1])
            np.testing.assert_allclose(s.boxes[:, [0, 2]], 64 - sample.boxes[:, [2, 0]], atol=1e-5)
        np.testing.assert_array_equal(aug[0].image, s.image)  # same (seed, epoch, index) -> same
    assert any(flips) and not all(flips)


def test_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(SpikedetError, match="split folder"):
        Gen1DetectionSet(tmp_path, "train")
    write_synthetic_gen1(tmp_path, n_train=1, n_val=0, seconds=0.6, seed=2)
    with pytest.raises(SpikedetError, match="unknown representation"):
        Gen1DetectionSet(tmp_path, "train", representation="frames")
    with pytest.raises(SpikedetError, match="need T >= 1"):
        Gen1DetectionSet(tmp_path, "train", T=0)
