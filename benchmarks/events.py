"""Events benchmark: reading a 5 M-event Gen1 ``.dat`` and binning it into T-bin tensors.

Writes a synthetic random file (sorted t over 60 s, x < 304, y < 240, p in {0, 1}) to a temporary
folder, then times (best of ``--repeat`` runs, one process, so one core):

- expelliarmus ``Wizard(encoding="dat").read`` alone (no checks),
- ``read_dat`` with the expelliarmus backend and all our checks,
- ``read_dat`` with the numpy memmap backend and all checks,
- ``DatFile`` open (header + monotonic t index) and one 250 ms window,
- ``events_to_tensor`` over all events for each representation (T = 5, 304 x 240).

Usage: ``python benchmarks/events.py [--events 5000000] [--repeat 3]``. Prints a table with
events/s and the ratio to expelliarmus alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spikedet.train.data.events import REPRESENTATIONS, events_to_tensor
from spikedet.train.data.gen1 import DatFile, read_dat
from spikedet.train.data.synth_gen1 import write_dat

HEADER = ["Data file containing Event2D events", "Version 2", "Date 2017-04-06 09:57:37",
          "Height 240", "Width 304"]  # fmt: skip


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
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
        ev = read_dat(path)
        assert np.array_equal(ev, read_dat(path, backend="numpy"))
        rows: list[tuple[str, float]] = [
            (
                "expelliarmus read (no checks)",
                best_time(lambda: wizard.read(str(path)), args.repeat),
            ),
            ("read_dat expelliarmus + checks", best_time(lambda: read_dat(path), args.repeat)),
            (
                "read_dat numpy + checks",
                best_time(lambda: read_dat(path, backend="numpy"), args.repeat),
            ),
            ("DatFile open (t index + checks)", best_time(lambda: DatFile(path), args.repeat)),
        ]
        dat = DatFile(path)
        window = dat.window(30_000_000, 30_250_000).size
        t_window = best_time(lambda: dat.window(30_000_000, 30_250_000), args.repeat)
        t0, t1 = int(ev["t"][0]), int(ev["t"][-1]) + 1
        for rep in REPRESENTATIONS:
            secs = best_time(
                lambda r=rep: events_to_tensor(ev, t0, t1, 5, 240, 304, r), args.repeat
            )
            rows.append((f"bin T=5 {rep}", secs))
    base = rows[0][1]
    print(f"{n:,} events ({n * 8 / 1e6:.0f} MB), best of {args.repeat}")
    print(f"{'step':36s} {'seconds':>8s} {'Mev/s':>8s} {'vs expelliarmus':>16s}")
    for name, secs in rows:
        print(f"{name:36s} {secs:8.3f} {n / secs / 1e6:8.1f} {base / secs:15.2f}x")
    print(f"{'DatFile.window 250 ms':36s} {t_window:8.4f} {window / t_window / 1e6:8.1f}"
          f"  ({window:,} events)")  # fmt: skip


if __name__ == "__main__":
    main()
