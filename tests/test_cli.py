"""The command-line front: help for every command, one-line errors with exit 2, --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spikedet.cli.main import COMMAND_MODULES, main

SPIKEDET = [sys.executable, "-m", "spikedet.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SPIKEDET, *args], capture_output=True, text=True)


def test_help_lists_commands() -> None:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for module in COMMAND_MODULES:
        name = module.rsplit(".", 1)[1].removesuffix("_cmd").replace("_", "-")
        assert name in out.stdout


def test_console_script_help(core_python: Path) -> None:
    script = core_python.parent / "spikedet"
    if not script.exists():
        pytest.skip("console script not installed in this interpreter's environment")
    assert subprocess.run([str(script), "--help"], capture_output=True).returncode == 0


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_each_command_help(module: str) -> None:
    name = module.rsplit(".", 1)[1].removesuffix("_cmd").replace("_", "-")
    out = run(name, "--help")
    assert out.returncode == 0, out.stderr


def test_unknown_command_is_one_line_exit_2() -> None:
    out = run("frobnicate")
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("spikedet: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr


def test_expected_error_is_one_line_and_debug_shows_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.nir"
    out = run("deploy", str(missing), "--target", "loihi2-sim", "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("spikedet: error:") and str(missing) in out.stderr
    assert not (tmp_path / "o").exists()
    dbg = run("--debug", "deploy", str(missing), "--target", "loihi2-sim")
    assert dbg.returncode == 2 and "Traceback" in dbg.stderr


def test_main_returns_2_on_spikedet_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["report", str(tmp_path / "nothing-here")])
    assert code == 2
    assert capsys.readouterr().err.startswith("spikedet: error:")
