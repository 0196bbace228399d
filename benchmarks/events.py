"""Events benchmark: reading a 5 M-event Gen1 ``.dat`` and binning it into T-bin tensors.

Writes a synthetic random file (sorted t over 60 s, x < 304, y < 240, p in {0, 1}) to a temporary
folder, then times (best of ``--repeat`` runs, one process, so one core):

- expelliarmus ``Wizard(encoding="dat").read`` alone (no checks): the reference speed,
- ``read_dat`` (default: ``read_dat_body``, chunks through our C decoder) with all our checks,
- the same with the numpy passes only (where the C extension was not built),
- ``read_dat`` with the expelliarmus backend and all checks,
- ``read_dat_body`` with other chunk sizes (``--chunks``),
- ``DatFile`` open (header + monotonic t index) and one 250 ms window,
- ``events_to_tensor`` over all events for each representation (T = 5, 304 x 240).

The readers are timed round-robin (repeat r runs every reader once before repeat r + 1), so a
busy shared machine slows all of them alike and the ratios stay comparable.

Usage: ``python benchmarks/events.py [--events 5000000] [--repeat 5] [--chunks 32768,131072]``.
Prints a table with events/s and the ratio to expelliarmus alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spikedet.data import gen1
from spikedet.data.events import REPRESENTATIONS, events_to_tensor
from spikedet.data.gen1 import (
    CHUNK_EVENTS,
    DatFile,
    read_dat,
    read_dat_body,
    read_dat_header,
)
from spikedet.data.synth_gen1 import write_dat

HEADER = ["Data file containing Event2D events", "Version 2", "Date 2017-04-06 09:57:37",
          "Height 240", "Width 304"]  # fmt: skip


def numpy_only(path: Path) -> np.ndarray:
    """``read_dat`` as it runs where the C decoder was not built (the numpy passes alone)."""
    decoder, gen1._datdecode = gen1._datdecode, None
    try:
        return read_dat(path)
    finally:
        gen1._datdecode = decoder


def best_times(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time of each function over ``repeat`` rounds; each round runs all of them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunks", default="", help="extra read_dat_body chunk sizes, e.g. 32768")
    args = parser.parse_args()
    from expelliarmus import Wizard

    rng = np.random.default_rng(0)
    n = args.events
    raw = np.empty(n, [("t", "<u4"), ("w", "<u4")])
    raw["t"] = np.sort(rng.integers(0, 60_000_000, n))
    raw["w"] = (
        rng.integers(0, 304, n) | (rng.integers(0, 240, n) << 14) | (rng.integers(0, 2, n) << 28)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_td.dat"
        write_dat(path, raw, HEADER)
        wizard = Wizard(encoding="dat")
        decoder = "C" if gen1._datdecode is not None else "numpy"
        header = read_dat_header(path)
        ev = read_dat(path)
        assert np.array_equal(ev, wizard.read(str(path)))
        assert np.array_equal(ev, read_dat(path, backend="expelliarmus"))
        readers: dict[str, Callable[[], object]] = {
            "expelliarmus read (no checks)": lambda: wizard.read(str(path)),
            f"read_dat {decoder} chunk={CHUNK_EVENTS} + checks": lambda: read_dat(path),
            "read_dat expelliarmus + checks": lambda: read_dat(path, backend="expelliarmus"),
        }
        if gen1._datdecode is not None:
            readers[f"read_dat numpy passes chunk={CHUNK_EVENTS} + checks"] = lambda: numpy_only(
                path
            )
        for chunk in (int(c) for c in args.chunks.split(",") if c):
            assert np.array_equal(read_dat_body(header, chunk_events=chunk), ev)
            readers[f"read_dat_body chunk={chunk} + checks"] = lambda c=chunk: read_dat_body(
                header, chunk_events=c
            )
        readers["DatFile open (t index + checks)"] = lambda: DatFile(path)
        rows = list(best_times(readers, args.repeat).items())
        dat = DatFile(path)
        window = dat.window(30_000_000, 30_250_000).size
        t_window = best_times({"w": lambda: dat.window(30_000_000, 30_250_000)}, args.repeat)["w"]
        t0, t1 = int(ev["t"][0]), int(ev["t"][-1]) + 1
        binning = {
            f"bin T=5 {rep}": lambda r=rep: events_to_tensor(ev, t0, t1, 5, 240, 304, r)
            for rep in REPRESENTATIONS
        }
        rows += list(best_times(binning, args.repeat).items())
    base = rows[0][1]
    print(f"{n:,} events ({n * 8 / 1e6:.0f} MB), best of {args.repeat}")
    print(f"{'step':40s} {'seconds':>8s} {'Mev/s':>8s} {'vs expelliarmus':>16s}")
    for name, secs in rows:
        print(f"{name:40s} {secs:8.3f} {n / secs / 1e6:8.1f} {base / secs:15.2f}x")
    print(f"{'DatFile.window 250 ms':40s} {t_window:8.4f} {window / t_window / 1e6:8.1f}"
          f"  ({window:,} events)")  # fmt: skip


if __name__ == "__main__":
    main()
