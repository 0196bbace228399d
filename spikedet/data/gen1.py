"""Prophesee Gen1 events: ``<stem>_td.dat`` files (no torch; boxes are in ``gen1_labels``).

``.dat`` layout (Prophesee's "DAT File Format" documentation and
prophesee-ai/prophesee-automotive-dataset-toolbox @ c09d34a, ``src/io/dat_events_tools.py``):
ASCII header lines starting with ``%`` (``% Height``/``% Width`` optional, default 240 x 304), then 2 bytes (event type 0 or
12, event size 8), then little-endian records ``uint32 t_us, uint32 w`` with
``x = w & 0x3FFF``, ``y = (w >> 14) & 0x3FFF``, ``p = (w >> 28) & 1`` and bits 29-31 zero.

Readers, all returning ``EVENT_DTYPE`` (expelliarmus' own output layout) and all checking the
header, the type/size bytes, a body length that is a multiple of 8, p in {0, 1} (bits 29-31
zero), x < width, y < height and non-decreasing timestamps, raising ``SpikedetError`` naming the
file and the first bad event:
- ``read_dat(path)``: ``read_dat_body`` (default, the fastest): chunks decoded and checked in one
  pass by our C extension ``_datdecode`` (setup.py), or by numpy passes where it was not built,
- ``read_dat(path, backend="expelliarmus")``: expelliarmus' C decoder, then the same checks,
- ``DatFile(path).window(t0, t1)``: memmap access to a time window.

Backward timestamps: expelliarmus treats a backward step as a 32-bit overflow and adds 2^32 µs to
every later event. Gen1 files last 60 s (a real wrap needs 71.6 min), so any decoded t >= 2^32,
or any decrease in the raw uint32 column, is a backward step. Policy: refuse by default
(``on_backward="error"``); ``on_backward="clamp"`` replaces t by its running maximum of the raw
column (what RVT does) and emits a ``RuntimeWarning``.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikedet.errors import SpikedetError

try:  # the one-pass C decoder (setup.py); without a compiler the numpy passes do the same
    from spikedet.data import _datdecode
except ImportError:  # pragma: no cover - depends on the install
    _datdecode = None

SENSOR_HW = (240, 304)  # Gen1 ATIS (height, width); the default when the header has none
EVENT_DTYPE = np.dtype({"names": ["t", "x", "y", "p"], "formats": ["<i8", "<i2", "<i2", "u1"],
                        "offsets": [0, 8, 10, 12], "itemsize": 16})  # fmt: skip
RAW_DTYPE = np.dtype([("t", "<u4"), ("w", "<u4")])
_VALID_TYPES = (0, 12)  # Event2D (Gen1/ATIS) and EventCD (Metavision)
_MAX_HEADER_BYTES = 1 << 16
# Records decoded per pass of read_dat_body (benchmarks/events.py, 5 M events, vs expelliarmus
# alone): the C decoder 16k 1.12-1.16x, 256k 1.08-1.10x. The numpy fallback costs ~1 us per
# call, and its ~40 B/event of buffers should stay in L2: 16k 0.88x, 64k 0.71-0.75x on a machine
# with 2 MB of L2 per core (16k 0.96x, 64k 1.01-1.06x on another).
CHUNK_EVENTS = 1 << 14
_X_AND_HIGH_BITS = np.uint32(0xE000_3FFF)  # x plus bits 29-31: over `width` if either is bad
_Y_AT_16 = np.uint32(0x3FFF_0000)  # y after w << 2: already in place for the x | y << 16 word


@dataclass(frozen=True)
class DatHeader:
    """What the header of a ``.dat`` file declares; ``data_offset`` is the first event byte."""

    path: str
    lines: tuple[str, ...]
    event_type: int
    event_size: int
    height: int
    width: int
    data_offset: int
    n_events: int


def read_dat_header(path: str | os.PathLike) -> DatHeader:
    """Parse and check the header, the type/size bytes and the body length (one read of <=64 KiB)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpikedetError("event file not found", where)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(min(size, _MAX_HEADER_BYTES))
    lines: list[str] = []
    pos = 0
    while pos < len(head) and head[pos : pos + 1] == b"%":
        end = head.find(b"\n", pos)
        if end < 0:
            raise SpikedetError("file ends inside the header (header only, no events)", where)
        lines.append(head[pos + 1 : end].decode("latin-1").strip())
        pos = end + 1
    if not lines:
        raise SpikedetError("no '%' header line: not a .dat event file", where)
    if pos + 2 > size:
        raise SpikedetError("header only: the event type/size bytes are missing", where)
    event_type, event_size = head[pos], head[pos + 1]
    if event_type not in _VALID_TYPES:
        raise SpikedetError(f"event type {event_type}, expected 0 (Event2D) or 12 (CD)", where)
    if event_size != 8:
        raise SpikedetError(f"event size {event_size} bytes, expected 8", where)
    body = size - pos - 2
    if body % 8:
        raise SpikedetError(f"truncated: {body} event bytes is not a multiple of 8", where)
    height, width = SENSOR_HW
    for line in lines:
        key, _, value = line.partition(" ")
        if key.lower() in ("height", "width"):
            try:
                number = int(value.strip())
            except ValueError:
                raise SpikedetError(f"bad header line '% {line}'", where) from None
            if not 0 < number <= 0x4000:
                raise SpikedetError(f"{key} {number} outside 1..16384", where)
            height, width = (number, width) if key.lower() == "height" else (height, number)
    return DatHeader(where, tuple(lines), event_type, event_size, height, width, pos + 2, body // 8)


def _check_policy(backend: str, on_backward: str) -> None:
    if backend not in ("numpy", "expelliarmus"):
        raise SpikedetError(f"unknown backend '{backend}'", "read_dat")
    if on_backward not in ("error", "clamp"):
        raise SpikedetError(
            f"on_backward must be 'error' or 'clamp', got '{on_backward}'", "read_dat"
        )


def _backward_step(header: DatHeader, k: int, before: int, after: int, on_backward: str) -> None:
    """Report the first backward step (event k): raise, or warn that t gets clamped."""
    msg = f"timestamps go backwards at event {k} ({before} -> {after} us)"
    if on_backward != "clamp":
        raise SpikedetError(msg, header.path)
    warnings.warn(f"{msg}; clamped to the running maximum ({header.path})", RuntimeWarning, 3)


def _backward(header: DatHeader, raw_t: np.ndarray, on_backward: str) -> np.ndarray | None:
    """Apply the backward-timestamp policy; return clamped int64 times or None if monotonic."""
    bad = np.flatnonzero(raw_t[1:] < raw_t[:-1])
    if bad.size == 0:
        return None
    k = int(bad[0]) + 1
    _backward_step(header, k, int(raw_t[k - 1]), int(raw_t[k]), on_backward)
    return np.maximum.accumulate(raw_t).astype(np.int64)


def _raise_first_bad(
    header: DatHeader, x: np.ndarray, y: np.ndarray, nibble: np.ndarray, first_index: int
) -> None:
    """Raise for the first event (file order) with bits 29-31 set, x >= width or y >= height.

    ``nibble`` is w >> 28 (expelliarmus' p column). Several faults at one event: p, x, y.
    """
    faults = (
        (nibble >= 2, "polarity bits 29-31 set", "p", nibble),
        (x >= header.width, f"x >= width {header.width}", "x", x),
        (y >= header.height, f"y >= height {header.height}", "y", y),
    )
    firsts = [int(np.argmax(mask)) if mask.any() else len(mask) for mask, *_ in faults]
    k = min(firsts)
    if k < len(x):
        _, what, field, column = faults[firsts.index(k)]
        msg = f"event {k + first_index}: {what} ({field} = {int(column[k])})"
        raise SpikedetError(msg, header.path)


def _check_decoded(header: DatHeader, ev: np.ndarray, first_index: int = 0) -> None:
    """p in {0, 1} (expelliarmus returns the whole bit 28-31 nibble), x < width, y < height."""
    if ev.size and (
        int(ev["p"].max()) >= 2
        or int(ev["x"].max()) >= header.width
        or int(ev["y"].max()) >= header.height
    ):
        _raise_first_bad(header, ev["x"], ev["y"], ev["p"], first_index)


def raw_events(header: DatHeader) -> np.ndarray:
    """Read-only memmap of the raw ``(t, w)`` uint32 records (empty array when no events)."""
    if header.n_events == 0:
        return np.zeros(0, RAW_DTYPE)
    return np.memmap(header.path, RAW_DTYPE, "r", header.data_offset, (header.n_events,))


def decode_raw(raw: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """Raw ``(t, w)`` records -> ``EVENT_DTYPE``; ``p`` keeps bits 28-31 so bad bits stay visible."""
    out = np.empty(len(raw), EVENT_DTYPE)
    w = np.ascontiguousarray(raw["w"])
    out["t"] = raw["t"] if t is None else t
    out["x"] = w & 0x3FFF
    out["y"] = (w >> 14) & 0x3FFF
    out["p"] = w >> 28
    return out


def read_dat(
    path: str | os.PathLike, backend: str = "numpy", on_backward: str = "error"
) -> np.ndarray:
    """Read and check a whole ``.dat`` file -> ``EVENT_DTYPE`` [N] (t int64 µs, x, y, p).

    ``backend``: ``"numpy"`` (``read_dat_body``, chunked, the default) or ``"expelliarmus"`` (C
    decoder, then the checks). A header with the type/size bytes but no events gives [0].
    """
    _check_policy(backend, on_backward)
    header = read_dat_header(path)
    if backend == "numpy" and sys.byteorder == "little":  # its word views assume little-endian
        return read_dat_body(header, on_backward)
    if header.n_events == 0:
        return np.zeros(0, EVENT_DTYPE)
    if backend == "numpy":
        raw = raw_events(header)
        ev = decode_raw(raw, _backward(header, raw["t"], on_backward))
    else:
        ev = _read_expelliarmus(header)
        # Each backward step adds 2^32 to all later events, so one look at the last t tells.
        if int(ev["t"][-1]) >= 1 << 32:
            clamped = _backward(header, raw_events(header)["t"], on_backward)
            if clamped is None:  # a genuine 32-bit wrap: > 71.6 min, not a Gen1 recording
                raise SpikedetError("timestamps wrap past 2^32 us (not supported)", header.path)
            ev["t"] = clamped
    _check_decoded(header, ev)
    return ev


def read_dat_body(
    header: DatHeader, on_backward: str = "error", chunk_events: int = CHUNK_EVENTS
) -> np.ndarray:
    """Decode and check every event of a file whose header was read -> ``EVENT_DTYPE`` [N].

    One pass over the file in chunks of ``chunk_events`` records read into one reused buffer, so
    each chunk is decoded and checked while it is in cache (full-array passes are memory-bound).
    ``_datdecode.decode`` does a chunk in one C loop; when it found a bad record, or when it
    was not built, the numpy passes below do the chunk and raise or warn. Per chunk, viewing
    the buffer as uint64 at byte offsets 0 and 4 and casting to uint32 gives the t and w
    columns in one contiguous pass each. Checks: t[i] >= t[i-1] (across chunks too),
    ``w & 0xE0003FFF < width`` (x inside and bits 29-31 clear, so p = w >> 28 is 0 or 1) and
    ``(w << 2) & 0x3FFF0000 < height << 16`` (y inside). Output rows are written as uint32 words
    ``[t, 0, x | y << 16, p]``: EVENT_DTYPE's little-endian layout, its 3 padding bytes zero.
    """
    _check_policy("numpy", on_backward)
    n = header.n_events
    out = np.empty(n, EVENT_DTYPE)
    if n == 0:
        return out
    size = max(1, min(int(chunk_events), n))
    words = out.view(np.uint32).reshape(n, 4)
    t_out = out.view(np.uint64).reshape(n, 2)[:, 0]
    buffer = np.zeros(8 * size + 8, np.uint8)  # +8: the w view's last element reads 4 bytes on
    t_words, w_words = buffer[: 8 * size].view(np.uint64), buffer[4 : 8 * size + 4].view(np.uint64)
    t, w, low = (np.empty(size, np.uint32) for _ in range(3))
    order, where = _TimeOrder(header, on_backward, size), header.path
    try:
        fh = open(where, "rb", buffering=0)
    except OSError as err:
        raise SpikedetError(f"cannot read: {err.strerror}", where) from None
    with fh:
        fh.seek(header.data_offset)
        for lo in range(0, n, size):
            k = min(size, n - lo)
            if k < size:  # the last, shorter chunk
                t_words, w_words, t, w, low = t_words[:k], w_words[:k], t[:k], w[:k], low[:k]
            if fh.readinto(memoryview(buffer)[: 8 * k]) != 8 * k:  # short only at the end
                raise SpikedetError("file got shorter while reading (changed on disk?)", where)
            if _datdecode is not None:  # one C pass; on a bad record the numpy code below
                fault, run_max = _datdecode.decode(  # redoes the chunk and raises or warns
                    buffer[: 8 * k], words[lo : lo + k], header.width, header.height,
                    order.run_max, order.clamping,
                )  # fmt: skip
                if not fault:
                    order.last_raw, order.run_max = (
                        int(buffer[8 * k - 8 : 8 * k - 4].view("<u4")[0]),
                        run_max,
                    )
                    continue
            np.copyto(t, t_words, casting="unsafe")  # low halves of the uint64s: t
            np.copyto(w, w_words, casting="unsafe")  # w (the next record's t is cut off)
            order.check(t, lo)
            np.copyto(t_out[lo : lo + k], t)
            np.bitwise_and(w, _X_AND_HIGH_BITS, out=low)
            bad = np.maximum.reduce(low) >= header.width
            block = words[lo : lo + k]
            np.right_shift(w, 28, out=t)  # p, into t's now free buffer: a shift into a strided
            np.copyto(block[:, 3], t)  # output is a slow loop, a shift + plain copy is not
            np.left_shift(w, 2, out=w)
            np.bitwise_and(w, _Y_AT_16, out=w)
            if bad or np.maximum.reduce(w) >= header.height << 16:
                raw_w = buffer[: 8 * k].view("<u4")[1::2]
                _raise_first_bad(header, raw_w & 0x3FFF, (raw_w >> 14) & 0x3FFF, raw_w >> 28, lo)
            np.bitwise_or(low, w, out=block[:, 2])
    return out


class _TimeOrder:
    """The t check of ``read_dat_body`` across chunks: t[i] >= t[i-1] on the raw column.

    The first decrease raises (``on_backward="error"``) or warns once (``"clamp"``); when
    clamping, every chunk's t becomes the running maximum of the raw column so far.
    """

    def __init__(self, header: DatHeader, on_backward: str, size: int):
        self.header, self.on_backward = header, on_backward
        self.back = np.empty(max(size - 1, 0), bool)
        self.last_raw = self.run_max = -1  # raw t of the previous event; largest raw t so far
        self.clamping = False

    def check(self, t: np.ndarray, first_index: int) -> None:
        """Check the chunk ``t`` (events ``first_index...``); clamp it in place if so decided."""
        back = self.back[: len(t) - 1]
        np.less(t[1:], t[:-1], out=back)
        first_raw, end_raw = int(t[0]), int(t[-1])
        if np.count_nonzero(back) or first_raw < self.run_max:
            if not self.clamping:  # the file's first backward step: raise or warn once
                j = -1 if first_raw < self.last_raw else int(np.argmax(back))
                before = self.last_raw if j < 0 else int(t[j])
                k = first_index + j + 1
                _backward_step(self.header, k, before, int(t[j + 1]), self.on_backward)
                self.clamping = True
            np.maximum.accumulate(t, out=t)
            np.maximum(t, max(self.run_max, 0), out=t)
        self.last_raw, self.run_max = end_raw, int(t[-1])


def _read_expelliarmus(header: DatHeader) -> np.ndarray:
    try:
        from expelliarmus import Wizard
    except ImportError:
        raise SpikedetError(
            "expelliarmus is not installed; use backend='numpy'", header.path
        ) from None

    if Path(header.path).suffix != ".dat":
        raise SpikedetError(
            "expelliarmus needs a '.dat' file name; use backend='numpy'", header.path
        )
    ev = Wizard(encoding="dat").read(header.path)
    if ev is None or len(ev) != header.n_events:  # None: it could not find the events at all
        got = "nothing" if ev is None else f"{len(ev)} events"
        raise SpikedetError(f"expelliarmus read {got}, expected {header.n_events}", header.path)
    if ev.dtype != EVENT_DTYPE:
        ev = ev.astype(EVENT_DTYPE)
    return ev


class DatFile:
    """Windowed access to one ``.dat`` file: the header is checked on open, the raw t column is
    cached (4 bytes per event, checked for monotonicity once) and ``window(t0, t1)`` decodes only
    the events with ``t0 <= t < t1`` (checked for polarity bits and coordinates)."""

    def __init__(self, path: str | os.PathLike, on_backward: str = "error"):
        self.header = read_dat_header(path)
        self._raw = raw_events(self.header)
        times = np.ascontiguousarray(self._raw["t"])
        clamped = _backward(self.header, times, on_backward)
        self.t = times.astype(np.int64) if clamped is None else clamped

    def __len__(self) -> int:
        return self.header.n_events

    def window(self, t0: int, t1: int) -> np.ndarray:
        """Events with ``t0 <= t < t1`` as ``EVENT_DTYPE``."""
        lo, hi = np.searchsorted(self.t, [t0, t1], side="left")
        ev = decode_raw(self._raw[lo:hi], self.t[lo:hi])
        _check_decoded(self.header, ev, int(lo))
        return ev
