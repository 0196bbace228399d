"""Interrupted work: an `export` / `deploy` SIGKILLed right before its output is renamed into
place leaves the previous output byte-identical and no new complete file; a rerun then succeeds,
and the killed run's temp file (its pid gone) is removed by the next write to that target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spikedet.cli.main import main
from spikedet.fileio import KILL_BEFORE_RENAME_ENV, remove_stale_temps, write_text


def _cli_subprocess(*args: str, kill_at: str) -> subprocess.CompletedProcess:
    """The real CLI in a child process that SIGKILLs itself before renaming ``kill_at``."""
    env = {**os.environ, KILL_BEFORE_RENAME_ENV: kill_at}
    cmd = [sys.executable, "-m", "spikedet.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _temps(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.tmp-*"))


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Two checkpoints that differ (seed 0 / seed 1 weights) and a small COCO root."""
    import torch

    from spikedet.data.synth_coco import write_synthetic_coco
    from spikedet.train.checkpoint import save_checkpoint
    from spikedet.train.models.registry import build_model

    root = tmp_path_factory.mktemp("interrupted")
    write_synthetic_coco(root / "coco", n_train=1, n_val=3, seed=2)
    paths = {"coco": root / "coco"}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("spikeyolo-pico", names=["circle", "square", "triangle"], T=1).eval()
        paths[f"ckpt{seed}"] = root / f"pico{seed}.pt"
        state = {"config": model.config, "model": model.state_dict(), "epoch": 0}
        save_checkpoint(paths[f"ckpt{seed}"], state)
    return paths


def test_killed_export_keeps_previous_nir(setup, tmp_path):
    out = tmp_path / "model.nir"
    assert main(["export", "--weights", str(setup["ckpt0"]), "--out", str(out)]) == 0
    before = out.read_bytes()

    killed = _cli_subprocess(
        "export", "--weights", str(setup["ckpt1"]), "--out", str(out), kill_at="model.nir"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert out.read_bytes() == before  # the previous model, untouched
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["model.nir"]
    # The killed run's finished-but-unrenamed temp file is what it left behind, tagged with
    # its pid; that pid is gone now.
    (left,) = _temps(tmp_path, "model.nir")
    assert left.name.startswith(f".model.nir.tmp-{_pid_of(left)}-")
    assert left.stat().st_size > 0

    # A rerun of the same command succeeds, overwrites cleanly and removes the stale temp file.
    assert main(["export", "--weights", str(setup["ckpt1"]), "--out", str(out)]) == 0
    assert out.read_bytes() != before
    assert _temps(tmp_path, "model.nir") == []
    reference = tmp_path / "again" / "model.nir"
    assert main(["export", "--weights", str(setup["ckpt1"]), "--out", str(reference)]) == 0
    first = tmp_path / "first.nir"
    first.write_bytes(before)
    assert _same_graph(out, reference) and not _same_graph(out, first)


def test_killed_deploy_keeps_previous_report(setup, tmp_path):
    out = tmp_path / "deployed"
    nir = {}
    for seed in (0, 1):
        nir[seed] = tmp_path / f"pico{seed}.nir"
        assert (
            main(["export", "--weights", str(setup[f"ckpt{seed}"]), "--out", str(nir[seed])]) == 0
        )
    base = ["--data", str(setup["coco"]), "--engine", "fixed", "--no-reference", "--out", str(out)]
    assert main(["deploy", str(nir[0]), *base]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "report.json" in before and "report.md" in before

    killed = _cli_subprocess("deploy", str(nir[1]), *base, kill_at="report.json")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before  # report.json, report.md and the plots: all from the first run
    assert len(_temps(out, "report.json")) == 1

    assert main(["deploy", str(nir[1]), *base]) == 0
    assert (out / "report.json").read_bytes() != before["report.json"]
    assert str(nir[1]) in (out / "report.json").read_text()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "out.json"
    dead = tmp_path / f".out.json.tmp-{_dead_pid()}-abc123"
    alive = tmp_path / f".out.json.tmp-{os.getpid()}-def456"  # a concurrent live writer
    legacy = tmp_path / ".out.json.tmp-q1w2e3"  # no pid: cannot tell, kept
    other = tmp_path / f".other.json.tmp-{_dead_pid()}-xyz"  # another target's: not ours
    for path in (dead, alive, legacy, other):
        path.write_text("partial")
    write_text(target, "done\n")
    assert target.read_text() == "done\n"
    assert not dead.exists()
    assert alive.exists() and legacy.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "other.json") == [other]
    assert _temps(tmp_path, "out.json") == sorted([alive, legacy])


def test_temp_name_carries_the_pid_and_is_removed_on_error(tmp_path):
    from spikedet.fileio import atomic_path

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin", suffix=".bin") as tmp:
        assert tmp.name.startswith(f".x.bin.tmp-{os.getpid()}-") and tmp.name.endswith(".bin")
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def _pid_of(temp: Path) -> str:
    pid = temp.name.split(".tmp-", 1)[1].split("-", 1)[0]
    assert pid.isdigit() and int(pid) != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    return pid


def _same_graph(a: Path, b: Path) -> bool:
    """Same NIR nodes, edges and parameter arrays (HDF5 bytes may differ by metadata)."""
    import nir
    import numpy as np

    ga, gb = nir.read(a), nir.read(b)
    if sorted(ga.nodes) != sorted(gb.nodes) or sorted(ga.edges) != sorted(gb.edges):
        return False
    for name, node in ga.nodes.items():
        other = gb.nodes[name]
        for key, value in vars(node).items():
            if isinstance(value, np.ndarray) and not np.array_equal(value, vars(other)[key]):
                return False
    return True
