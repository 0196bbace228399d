"""NIR written by other tools deploys (docs/semantics.md §4, README "NIR exporters").

For each exporter in the peer environment (.venv-peers, made by `make setup-peers`): the tool
builds a small conv SNN (conv, pooling, flatten, dense, its LIF or IF neuron), runs it on a fixed
binary input and exports it (tests/peers/peer_export.py, a subprocess: the tools never enter
spikedet's env). Here the exported file is deployed end to end, and

- our float reference, under the convention the exporter implies (dt, reset: written by the
  peer script with the reason), equals the tool's own output spikes element for element;
- the integer engines: fixed agrees with the float reference on >= 99 % of all spike values,
  and Lava equals fixed exactly (when the Lava env exists).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PEER_PY = REPO / ".venv-peers" / "bin" / "python"
SCRIPT = REPO / "tests" / "peers" / "peer_export.py"
TOOLS = ("snntorch", "norse", "sinabs")


def _export(tool: str, out: Path) -> dict:
    if not PEER_PY.exists():
        pytest.skip("peer exporters env .venv-peers is absent (make setup-peers)")
    proc = subprocess.run(
        [str(PEER_PY), str(SCRIPT), tool, str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "conventions.json").read_text())


def _reference_output(path: Path, x: np.ndarray, conv: dict) -> np.ndarray:
    import torch

    from spikedet.convert.nir_torch import NIRExecutor
    from spikedet.deploy.nir_flat import read_any

    graph, _ = read_any(path)
    ex = NIRExecutor(graph, device="cpu", dtype=torch.float64, dt=conv["dt"], reset=conv["reset"])
    (out,) = [n for n in ex.names if ex.kinds[n] == "Output"]
    (src,) = ex.forward_in[out]
    return ex.run(torch.from_numpy(x)).spikes[src].numpy()


def _lava_ready() -> bool:
    from spikedet.sim.registry import get_engine

    return bool(get_engine("lava").available()[0])


@pytest.mark.parametrize("tool", TOOLS)
def test_exported_network_matches_the_tool_and_deploys(tool: str, tmp_path: Path) -> None:
    from spikedet.deploy.pipeline import DeployOptions, run_deploy

    conv = _export(tool, tmp_path)
    x = np.load(tmp_path / "input.npy")
    tool_out = np.load(tmp_path / "output.npy")
    assert 0 < tool_out.mean() < 0.9  # the test input drives the output layer, not saturates it
    ref = _reference_output(tmp_path / "model.nir", x, conv).reshape(tool_out.shape)
    assert int(np.count_nonzero(ref != tool_out)) == 0, f"{tool}: float reference != {tool}"

    lava = _lava_ready()
    report = run_deploy(
        DeployOptions(
            nir_path=tmp_path / "model.nir",
            out=tmp_path / "report",
            input=tmp_path / "input.npy",
            dt=conv["dt"],
            reset=conv["reset"],
            engine="lava" if lava else "fixed",
            samples=1,
        ),
        log=lambda _: None,
    )
    v = report["validation"]
    assert v["conventions"]["dt_s"] == conv["dt"] and v["conventions"]["reset"] == "zero"
    assert v["output_total"]["reference"] == float(tool_out.sum())
    assert v["reference_vs_fixed"]["overall_spike_agreement"] >= 0.99
    if lava:
        assert v["lava_vs_fixed"]["total_mismatches"] == 0
    assert (tmp_path / "report" / "report.json").is_file()
