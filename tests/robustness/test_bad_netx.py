"""Corrupt or unsupported netx files through the real CLI (``spikedet import netx``): one line
``spikedet: error: <what> (<file>: layer <i> (<type>))``, exit 2, and no NIR file written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.netx_files import small_net_layers, write_net
from tests.robustness.corrupt import Case
from tests.robustness.corrupt_netx import NETX_CASES
from tests.robustness.test_bad_inputs import files_under, ids, refused


@pytest.fixture(scope="module")
def valid_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_net(tmp_path_factory.mktemp("netx") / "small.net", small_net_layers())


@pytest.mark.parametrize("case", NETX_CASES, ids=ids(NETX_CASES))
def test_netx(case: Case, valid_net: Path, tmp_path: Path, capsys) -> None:
    net = tmp_path / "damaged.net"
    net.write_bytes(valid_net.read_bytes())
    expected = case.damage(net) or net.name
    out = tmp_path / "out" / "model.nir"
    line = refused(["import", "netx", str(net), "--out", str(out)], capsys, expected)
    assert net.name in line
    assert files_under(out.parent) == []


def test_valid_net_imports(valid_net: Path, tmp_path: Path) -> None:
    """The undamaged file is accepted (so the cases above fail for their damage alone)."""
    out = tmp_path / "model.nir"
    cmd = [sys.executable, "-m", "spikedet.cli.main", "import", "netx", str(valid_net),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and files_under(tmp_path) == [out]
