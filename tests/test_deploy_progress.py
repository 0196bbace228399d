"""The deploy progress line: its figures, a terminal's one redrawn line, plain occasional lines
elsewhere, and the images of all ``--workers`` processes counted together."""

from __future__ import annotations

import io

import numpy as np

from spikedet.deploy.progress import Progress, rate_line
from spikedet.deploy.shard import run_fixed
from spikedet.sim.randgraph import random_input, random_qgraph


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rate_line_figures() -> None:
    assert rate_line("fixed", 0, 400, 0.0) == "fixed: 0/400 images (0.0 %)"
    assert rate_line("fixed", 100, 400, 50.0) == (
        "fixed: 100/400 images (25.0 %), 2 images/s, 2:30 left"
    )
    assert (
        rate_line("ref", 400, 400, 200.0)
        == "ref: 400/400 images (100.0 %), 2 images/s, 3:20 in all"
    )
    assert rate_line("x", 1, 3, 0.8).endswith("1.25 images/s, 0:02 left")
    assert rate_line("x", 1, 10_000, 1.0).endswith("1 images/s, 2:46:39 left")


def test_plain_lines_are_occasional_and_clean() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress("fixed", 100, stream=out, clock=clock, plain_every_s=30.0)
    for done in range(1, 71):  # one image a second for 70 s
        clock.t += 1.0
        bar.update(done)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [rate_line("fixed", 30, 100, 30.0), rate_line("fixed", 60, 100, 60.0)]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    short = io.StringIO()
    with Progress("fixed", 5, stream=short, clock=Clock()) as quick:
        quick.update(5)
    assert short.getvalue() == ""  # a short run writes nothing off a terminal


def test_terminal_line_is_redrawn_then_ended() -> None:
    clock, out = Clock(), Terminal()
    with Progress("fixed", 4, stream=out, clock=clock) as bar:
        for done in range(1, 5):
            clock.t += 0.5
            bar.update(done)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 5  # four redraws and the final figures
    assert text.rstrip("\n").split("\r")[-1] == rate_line("fixed", 4, 4, 2.0) + "\x1b[K"


def test_disabled_writes_nothing() -> None:
    clock, out = Clock(), Terminal()
    with Progress("fixed", 4, enabled=False, stream=out, clock=clock) as bar:
        clock.t += 100
        bar.update(4)
    assert out.getvalue() == ""


class Record:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def update(self, done: int) -> None:
        self.seen.append(done)


def test_progress_counts_images_of_all_workers() -> None:
    rng = np.random.default_rng(3)
    qg = random_qgraph(rng, n_pops=2, T=2, size=6, channels=(2, 3))
    x = random_input(rng, qg, batch=5, static=False)
    for workers in (1, 2):
        seen = Record()
        run_fixed(qg, x, batch=2, workers=workers, progress=seen)
        assert seen.seen and seen.seen[-1] == 5 and seen.seen == sorted(seen.seen)
        if workers == 1:
            assert seen.seen == [2, 4, 5]  # after each batch
