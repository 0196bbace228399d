"""The chunked checked ``.dat`` decoder (``read_dat_body``): every check at and across chunk
boundaries, event-for-event equality with expelliarmus, and the clamp policy across chunks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from spikedet.data import gen1
from spikedet.data.gen1 import (
    CHUNK_EVENTS,
    EVENT_DTYPE,
    read_dat,
    read_dat_body,
    read_dat_header,
)
from spikedet.data.synth_gen1 import write_dat
from spikedet.errors import SpikedetError

HEADER = ["Data file containing Event2D events", "Version 2", "Height 240", "Width 304"]
CHUNKS = (1, 2, 7, 64, 1000)  # 1000 > the 300-event files: a single short chunk


@pytest.fixture(autouse=True, params=["c", "numpy"])
def decoder(request, monkeypatch):
    """Every test runs with the C chunk decoder and with the numpy passes alone."""
    if request.param == "numpy":
        monkeypatch.setattr(gen1, "_datdecode", None)
    return request.param


def test_the_c_decoder_is_built() -> None:
    """``make setup`` builds spikedet.data._datdecode (setup.py); without it reads fall
    back to numpy silently, so the project's own environments must have it."""
    from spikedet.data import _datdecode

    assert callable(_datdecode.decode)


def test_c_decoder_rejects_mismatched_buffers() -> None:
    from spikedet.data import _datdecode

    with pytest.raises(ValueError):
        _datdecode.decode(np.zeros(16, np.uint8), np.zeros(16, np.uint8), 304, 240, -1, False)
    with pytest.raises(ValueError):
        _datdecode.decode(np.zeros(12, np.uint8), np.zeros(16, np.uint8), 304, 240, -1, False)


def random_raw(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = np.empty(n, [("t", "<u4"), ("w", "<u4")])
    raw["t"] = np.sort(rng.integers(0, 50_000, n))  # many equal neighbours: allowed
    x, y, p = rng.integers(0, 304, n), rng.integers(0, 240, n), rng.integers(0, 2, n)
    raw["w"] = x | (y << 14) | (p << 28)
    return raw


def expected(raw: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(len(raw), EVENT_DTYPE)
    out["t"] = raw["t"] if t is None else t
    out["x"], out["y"], out["p"] = raw["w"] & 0x3FFF, (raw["w"] >> 14) & 0x3FFF, raw["w"] >> 28
    return out


def written(tmp_path: Path, raw: np.ndarray, name: str = "a") -> Path:
    path = tmp_path / f"{name}_td.dat"
    write_dat(path, raw, HEADER)
    return path


def message(path: Path, chunk: int, on_backward: str = "error") -> str:
    with pytest.raises(SpikedetError) as err:
        read_dat_body(read_dat_header(path), on_backward, chunk)
    assert err.value.where == str(path)
    return err.value.what


@pytest.mark.parametrize("chunk", CHUNKS)
def test_every_chunk_size_decodes_like_expelliarmus(tmp_path: Path, chunk: int) -> None:
    from expelliarmus import Wizard

    raw = random_raw(300)
    raw["w"][-1] = 303 | (239 << 14) | (1 << 28)  # the largest valid values, in the last record
    path = written(tmp_path, raw)
    got = read_dat_body(read_dat_header(path), chunk_events=chunk)
    assert got.dtype == EVENT_DTYPE and np.array_equal(got, expected(raw))
    assert np.array_equal(got, Wizard(encoding="dat").read(str(path)))
    # The padding bytes 13-15 are written too: the bytes are deterministic, not leftovers.
    assert got.tobytes() == expected(raw).tobytes()


def test_default_read_is_the_chunked_decoder_on_a_multi_chunk_file(tmp_path: Path) -> None:
    raw = random_raw(2 * CHUNK_EVENTS + 5, seed=1)
    path = written(tmp_path, raw)
    assert np.array_equal(read_dat(path), expected(raw))
    assert np.array_equal(read_dat(path), read_dat(path, backend="expelliarmus"))


def test_one_event_and_no_event(tmp_path: Path) -> None:
    raw = random_raw(1)
    assert np.array_equal(read_dat(written(tmp_path, raw)), expected(raw))
    empty = written(tmp_path, raw[:0], "empty")
    assert read_dat_body(read_dat_header(empty)).shape == (0,)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 128, 299])
def test_backwards_t_inside_and_at_chunk_boundaries(tmp_path: Path, k: int) -> None:
    raw = random_raw(300, seed=2)
    raw["t"] += 10
    raw["t"][k] = raw["t"][k - 1] - 7
    path = written(tmp_path, raw)
    before, after = int(raw["t"][k - 1]), int(raw["t"][k])
    for chunk in (64, 1000):  # event 64 / 128 start a chunk of 64
        assert message(path, chunk) == (
            f"timestamps go backwards at event {k} ({before} -> {after} us)"
        )


def test_backwards_at_the_default_chunk_boundary_via_read_dat(tmp_path: Path) -> None:
    raw = random_raw(CHUNK_EVENTS + 10, seed=3)
    raw["t"] += 5
    raw["t"][CHUNK_EVENTS] = raw["t"][CHUNK_EVENTS - 1] - 1
    path = written(tmp_path, raw)
    with pytest.raises(SpikedetError, match=f"backwards at event {CHUNK_EVENTS} "):
        read_dat(path)


@pytest.mark.parametrize("chunk", [3, 64, 1000])
def test_clamp_across_chunks_is_the_running_maximum(tmp_path: Path, chunk: int) -> None:
    raw = random_raw(300, seed=4)
    raw["t"] += 1000
    raw["t"][64] = 3  # a deep drop at a chunk start: later chunks start below the running max
    raw["t"][150] = raw["t"][149] - 1  # a second, later step: no second warning
    path = written(tmp_path, raw)
    with pytest.warns(RuntimeWarning, match=r"backwards at event 64 .*clamped") as caught:
        got = read_dat_body(read_dat_header(path), "clamp", chunk)
    assert len(caught) == 1
    assert np.array_equal(got, expected(raw, np.maximum.accumulate(raw["t"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.array_equal(got, read_dat(path, backend="expelliarmus", on_backward="clamp"))


def corrupt(raw: np.ndarray, kind: str, k: int) -> str:
    """Damage event k; return the expected message."""
    w = raw["w"]
    if kind == "polarity":
        w[k] |= np.uint32(1 << 30)
        return f"event {k}: polarity bits 29-31 set (p = {int(w[k] >> 28)})"
    if kind == "polarity_bit_31":
        w[k] |= np.uint32(1 << 31)
        return f"event {k}: polarity bits 29-31 set (p = {int(w[k] >> 28)})"
    if kind == "x":
        w[k] = (w[k] & ~np.uint32(0x3FFF)) | 304
        return f"event {k}: x >= width 304 (x = 304)"
    if kind == "x_max":
        w[k] |= np.uint32(0x3FFF)
        return f"event {k}: x >= width 304 (x = 16383)"
    w[k] = (w[k] & ~np.uint32(0x3FFF << 14)) | np.uint32(240 << 14)
    return f"event {k}: y >= height 240 (y = 240)"


@pytest.mark.parametrize("kind", ["polarity", "polarity_bit_31", "x", "x_max", "y"])
@pytest.mark.parametrize("k", [0, 63, 64, 299])
def test_bad_bits_and_coordinates_name_the_event(tmp_path: Path, kind: str, k: int) -> None:
    raw = random_raw(300, seed=5)
    want = corrupt(raw, kind, k)
    path = written(tmp_path, raw)
    for chunk in (7, 64, 1000):
        assert message(path, chunk) == want
    with pytest.raises(SpikedetError) as err:  # the expelliarmus path names the same event
        read_dat(path, backend="expelliarmus")
    assert err.value.what == want


def test_first_bad_event_in_file_order_then_p_x_y(tmp_path: Path) -> None:
    raw = random_raw(300, seed=6)
    corrupt(raw, "y", 250)  # later in the file: not reported
    corrupt(raw, "x", 70)
    want = corrupt(raw, "polarity", 70)  # same event as the x fault: polarity first
    path = written(tmp_path, raw)
    for chunk in (64, 1000):
        assert message(path, chunk) == want
    assert "event 70: polarity" in message(path, 1)


def test_header_height_and_width_bound_the_coordinates(tmp_path: Path) -> None:
    raw = random_raw(200, seed=7)
    raw["w"] = (raw["w"] & ~np.uint32(0x0FFF_FFFF)) | np.uint32(99 | (49 << 14))
    path = tmp_path / "small_td.dat"
    write_dat(path, raw, ["Height 50", "Width 100"])
    assert np.array_equal(read_dat(path), expected(raw))
    raw["w"][120] += np.uint32(1 << 14)  # y = 50
    write_dat(path, raw, ["Height 50", "Width 100"])
    assert message(path, 64) == "event 120: y >= height 50 (y = 50)"


def test_truncated_body_is_refused(tmp_path: Path) -> None:
    path = written(tmp_path, random_raw(300, seed=8))
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(SpikedetError, match="not a multiple of 8"):
        read_dat(path)
    # A file cut by whole records after its header was read (changed on disk while reading).
    path.write_bytes(data)
    header = read_dat_header(path)
    path.write_bytes(data[:-16])
    with pytest.raises(SpikedetError, match=r"got shorter while reading") as err:
        read_dat_body(header, chunk_events=64)
    assert err.value.where == str(path)


def test_bad_arguments(tmp_path: Path) -> None:
    path = written(tmp_path, random_raw(10))
    with pytest.raises(SpikedetError, match="unknown backend"):
        read_dat(path, backend="fast")
    with pytest.raises(SpikedetError, match="on_backward"):
        read_dat_body(read_dat_header(path), on_backward="ignore")
