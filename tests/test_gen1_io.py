"""Gen1 readers (.dat via expelliarmus and numpy, _bbox.npy both dtypes), generator and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikedet.cli.main import main
from spikedet.data.gen1 import EVENT_DTYPE, DatFile, read_dat, read_dat_header
from spikedet.data.gen1_labels import BBOX_DTYPE, find_recordings, read_bbox
from spikedet.data.synth_gen1 import (
    _make_objects,
    simulate_events,
    write_bbox,
    write_dat,
    write_synthetic_gen1,
)
from spikedet.errors import SpikedetError

GEN1_HEADER = ["Data file containing Event2D events", "Version 2", "Date 2017-04-06 09:57:37",
               "Height 240", "Width 304"]  # fmt: skip
ATIS_HEADER = ["Data file containing N9Chronocam7Event2dE events.", "Version 2",
               "Date 2017-04-06 09:57:37"]  # fmt: skip
BACKENDS = ("expelliarmus", "numpy")


def random_raw(n: int, seed: int = 0, width: int = 304, height: int = 240) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = np.empty(n, [("t", "<u4"), ("w", "<u4")])
    raw["t"] = np.sort(rng.integers(0, 2_000_000, n))
    x, y, p = rng.integers(0, width, n), rng.integers(0, height, n), rng.integers(0, 2, n)
    raw["w"] = x | (y << 14) | (p << 28)
    return raw


def decoded(raw: np.ndarray) -> np.ndarray:
    out = np.empty(len(raw), EVENT_DTYPE)
    out["t"], out["x"] = raw["t"], raw["w"] & 0x3FFF
    out["y"], out["p"] = (raw["w"] >> 14) & 0x3FFF, raw["w"] >> 28
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_dat_reads_back_event_for_event(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(3)
    raw = simulate_events(rng, _make_objects(rng, 0.3), 0.3)
    assert raw.size > 1000 and np.all(np.diff(raw["t"].astype(np.int64)) >= 0)
    path = tmp_path / "a_td.dat"
    write_dat(path, raw, GEN1_HEADER)
    ev = read_dat(path, backend=backend)
    assert ev.dtype == EVENT_DTYPE and np.array_equal(ev, decoded(raw))
    header = read_dat_header(path)
    assert (header.event_type, header.height, header.width, header.n_events) == (
        0,
        240,
        304,
        raw.size,
    )
    assert path.read_bytes()[: header.data_offset] == (
        "".join(f"% {line}\n" for line in GEN1_HEADER).encode() + b"\x00\x08"
    )


def test_expelliarmus_writer_file_reads(tmp_path: Path) -> None:
    from expelliarmus import Wizard

    arr = decoded(random_raw(5000, seed=1))
    path = tmp_path / "written_td.dat"
    Wizard(encoding="dat").save(str(path), arr)
    for backend in BACKENDS:
        assert np.array_equal(read_dat(path, backend=backend), arr)
    win = DatFile(path).window(500_000, 1_000_000)
    assert np.array_equal(win, arr[(arr["t"] >= 500_000) & (arr["t"] < 1_000_000)])


def test_atis_header_defaults_to_304x240(tmp_path: Path) -> None:
    raw = random_raw(300, seed=2)
    raw["w"][-1] = 303 | (239 << 14) | (1 << 28)
    path = tmp_path / "atis_td.dat"
    write_dat(path, raw, ATIS_HEADER)
    header = read_dat_header(path)
    assert (header.height, header.width, len(header.lines)) == (240, 304, 3)
    for backend in BACKENDS:
        assert np.array_equal(read_dat(path, backend=backend), decoded(raw))
    small = tmp_path / "small_td.dat"
    write_dat(small, raw, ATIS_HEADER + ["Width 200"])
    with pytest.raises(SpikedetError, match=r"x >= width 200.*small_td\.dat"):
        read_dat(small)


def test_empty_recording_reads_as_no_events(tmp_path: Path) -> None:
    path = tmp_path / "empty_td.dat"
    write_dat(path, np.zeros(0, [("t", "<u4"), ("w", "<u4")]), GEN1_HEADER)
    for backend in BACKENDS:
        assert read_dat(path, backend=backend).size == 0
    assert len(DatFile(path).window(0, 10**6)) == 0


def _corrupt(tmp_path: Path, kind: str) -> Path:
    raw = random_raw(200, seed=4)
    good = tmp_path / "good_td.dat"
    write_dat(good, raw, GEN1_HEADER)
    data = bytearray(good.read_bytes())
    offset = read_dat_header(good).data_offset
    path = tmp_path / f"{kind}_td.dat"
    if kind == "truncated":
        data = data[:-3]
    elif kind == "header_only":
        data = data[: offset - 2]
    elif kind == "no_header":
        data = data[offset - 2 :]
    elif kind == "wrong_type":
        data[offset - 2] = 5
    elif kind == "wrong_size":
        data[offset - 1] = 16
    else:
        if kind == "backwards":
            raw["t"][120] = raw["t"][119] - 3
        elif kind == "x_outside":
            raw["w"][50] = (raw["w"][50] & ~np.uint32(0x3FFF)) | 304
        elif kind == "y_outside":
            raw["w"][50] = (raw["w"][50] & ~np.uint32(0x3FFF << 14)) | (240 << 14)
        elif kind == "polarity_bits":
            raw["w"][50] |= np.uint32(1 << 30)
        write_dat(path, raw, GEN1_HEADER)
        return path
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a multiple of 8"),
        ("header_only", "header only"),
        ("no_header", "no '%' header"),
        ("wrong_type", "event type 5"),
        ("wrong_size", "event size 16"),
        ("backwards", "backwards at event 120"),
        ("x_outside", "event 50: x >= width 304"),
        ("y_outside", "event 50: y >= height 240"),
        ("polarity_bits", "event 50: polarity bits"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_dat_raises_naming_file(
    tmp_path: Path, kind: str, message: str, backend: str
) -> None:
    path = _corrupt(tmp_path, kind)
    with pytest.raises(SpikedetError) as err:
        read_dat(path, backend=backend)
    assert message in err.value.what and err.value.where == str(path)
    if kind not in ("truncated", "header_only", "no_header", "wrong_type", "wrong_size"):
        with pytest.raises(SpikedetError, match=message):
            DatFile(path).window(0, 3_000_000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_timestamps_clamp_with_warning(tmp_path: Path, backend: str) -> None:
    path = _corrupt(tmp_path, "backwards")
    with pytest.warns(RuntimeWarning, match="clamped"):
        ev = read_dat(path, backend=backend, on_backward="clamp")
    assert ev.size == 200 and np.all(np.diff(ev["t"]) >= 0) and ev["t"].max() < 2**32
    assert ev["t"][120] == ev["t"][119]


def test_bbox_dtypes_normalise_to_same_rows(tmp_path: Path) -> None:
    rows = np.array([(600_000, 1.5, 2.0, 40.0, 30.0, 0, 7, 1.0),
                     (600_000, 10.0, 20.0, 12.0, 50.0, 1, 8, 0.5),
                     (850_000, -3.0, 5.0, 44.0, 33.0, 0, 7, 1.0)], dtype=BBOX_DTYPE)  # fmt: skip
    write_bbox(tmp_path / "a_bbox.npy", rows, "original")
    write_bbox(tmp_path / "b_bbox.npy", rows, "toolbox")
    assert np.load(tmp_path / "a_bbox.npy").dtype.itemsize == 33
    assert np.load(tmp_path / "b_bbox.npy").dtype.itemsize == 40
    for name in ("a", "b"):
        got = read_bbox(tmp_path / f"{name}_bbox.npy")
        assert got.dtype == BBOX_DTYPE and np.array_equal(got, rows)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("missing", "box file not found"),
        ("wrong_dtype", "unexpected box array"),
        ("negative", "row 1: negative box w"),
        ("unsorted", "not sorted by t"),
        ("bad_class", "class_id outside"),
    ],
)
def test_bad_bbox_raises_naming_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / f"{content}_bbox.npy"
    rows = np.array([(600_000, 1.0, 2.0, 40.0, 30.0, 0, 1, 1.0),
                     (700_000, 5.0, 6.0, 20.0, 30.0, 1, 2, 1.0)], dtype=BBOX_DTYPE)  # fmt: skip
    if content == "wrong_dtype":
        np.save(path, np.zeros((2, 6), np.float32))
    elif content != "missing":
        if content == "negative":
            rows["w"][1] = -2.0
        elif content == "unsorted":
            rows["t"] = rows["t"][::-1]
        elif content == "bad_class":
            rows["class_id"][0] = 2
        write_bbox(path, rows, "original")
    with pytest.raises(SpikedetError) as err:
        read_bbox(path)
    assert message in err.value.what and err.value.where == str(path)


def test_pairing_by_stem(tmp_path: Path) -> None:
    write_synthetic_gen1(tmp_path, n_train=2, n_val=0, seconds=0.6, seed=5)
    recs = find_recordings(tmp_path, "train")
    assert [r.stem for r in recs] == sorted(r.stem for r in recs) and len(recs) == 2
    for rec in recs:
        assert rec.dat.name == f"{rec.stem}_td.dat" and rec.bbox.name == f"{rec.stem}_bbox.npy"
    recs[0].bbox.unlink()
    with pytest.raises(SpikedetError, match="partner") as err:
        find_recordings(tmp_path, "train")
    assert recs[0].stem in str(err.value)
    with pytest.raises(SpikedetError, match="split folder"):
        find_recordings(tmp_path, "test")


def test_generator_deterministic_and_real_layout(tmp_path: Path) -> None:
    sums = [
        write_synthetic_gen1(tmp_path / n, 1, 0, 0, 0.7, s)
        for n, s in (("a", 0), ("b", 0), ("c", 1))
    ]
    files = {n: {p.relative_to(tmp_path / n): p.read_bytes() for p in (tmp_path / n).rglob("*.*")}
             for n in "abc"}  # fmt: skip
    assert files["a"] == files["b"] and files["a"] != files["c"]
    assert sums[0]["splits"]["train"]["events"] > 10_000
    for rel in files["a"]:
        assert rel.parts[0] == "train"
        stem = rel.name.rsplit("_", 1)[0]
        parts = stem.split("_")
        assert len(parts) == 4 and int(parts[3]) - int(parts[2]) == 700_000
    rec = find_recordings(tmp_path / "a", "train")[0]
    ev = read_dat(rec.dat)
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}
    labels = read_bbox(rec.bbox)
    assert labels.size and labels["t"].min() > 500_000
    assert np.all(labels["class_confidence"] == 1.0)


def test_cli_synth_gen1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth-gen1", "--out", str(tmp_path), "--train", "1", "--val", "0",
                 "--seconds", "0.6", "--seed", "2"]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip()
    assert line.startswith("synth-gen1: 1 train / 0 val recordings") and "\n" not in line
    assert len(find_recordings(tmp_path, "train")) == 1
    assert main(["data", "synth-gen1", "--out", str(tmp_path), "--seconds", "0.1"]) == 2
    assert "spikedet: error: seconds must be in" in capsys.readouterr().err
