"""A progress line for ``deploy`` over a dataset: images done, images/s and the time left.

On a terminal the line is redrawn in place (carriage return, at most every ``redraw_s``) and
ended with a newline when the run is over. Anywhere else (a log file, a pipe, CI) a plain line
is written at most every ``plain_every_s`` seconds, so short runs write nothing and long ones a
line now and then, never a control character. The rate is images done over the elapsed time
since the first image started: ``rate = done / (t - t0)``, ``left = (total - done) / rate``.

Importing this module does not import torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate_line(label: str, done: int, total: int, elapsed_s: float) -> str:
    """``fixed: 120/5000 images (2.4 %), 3.41 images/s, 23:51 left`` (the rate and the time left
    once something is done)."""
    pct = 100.0 * done / total if total else 100.0
    head = f"{label}: {done}/{total} images ({pct:.1f} %)"
    if done <= 0 or elapsed_s <= 0:
        return head
    rate = done / elapsed_s
    tail = f"{rate:.3g} images/s"
    if done < total:
        tail += f", {_duration((total - done) / rate)} left"
    else:
        tail += f", {_duration(elapsed_s)} in all"
    return f"{head}, {tail}"


class Progress:
    """``update(done)`` as images finish; ``close()`` at the end (also as a context manager)."""

    def __init__(
        self,
        label: str,
        total: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        redraw_s: float = 0.2,
        plain_every_s: float = 30.0,
    ) -> None:
        self.label, self.total, self.enabled = label, int(total), enabled
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = redraw_s if self.tty else plain_every_s
        self.t0 = clock()
        self.done = 0
        self._last = self.t0  # when the last line was written
        self._drawn = False

    def update(self, done: int) -> None:
        """``done`` images are finished in all (not an increment: workers report totals)."""
        self.done = min(int(done), self.total)
        now = self.clock()
        if self.enabled and now - self._last >= self.every:
            self._write(now)

    def _write(self, now: float) -> None:
        line = rate_line(self.label, self.done, self.total, now - self.t0)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = now

    def close(self) -> None:
        """A terminal gets the final figures and a newline; elsewhere nothing more is written."""
        if self.enabled and self.tty:
            self._write(self.clock())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
