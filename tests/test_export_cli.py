"""`spikedet export`: checkpoint -> NIR (+ ONNX), all or nothing, one-line errors (exit 2)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from spikedet.cli import main as cli_main
from spikedet.convert.nir_export import parameter_coverage
from spikedet.convert.nir_torch import NIRExecutor, load_nir
from spikedet.convert.onnx_export import run_onnx
from spikedet.train.checkpoint import load_model, save_checkpoint
from spikedet.train.models.registry import build_model
from tests.model_helpers import randomize

EXPORT_MODULE = "spikedet.cli.export_cmd"


def checkpoint(path: Path, name: str, seed: int = 0, **overrides: int) -> Path:
    """A checkpoint in the trainer's format (config + state dict) of a randomized model."""
    model = randomize(build_model(name, **overrides), seed)
    save_checkpoint(path, {"config": model.config, "model": model.state_dict(), "epoch": 0})
    return path


def spikedet(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the real CLI entry point with the export command registered."""
    if EXPORT_MODULE not in cli_main.COMMAND_MODULES:  # until the lead registers it in main.py
        monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, EXPORT_MODULE))
    return cli_main.main(list(args))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def pico_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", "spikeyolo-pico", 11, T=2)


def test_export_pico_nir_and_onnx(
    pico_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out, onnx_path = tmp_path / "model.nir", tmp_path / "sub" / "model.onnx"
    code = spikedet(
        monkeypatch, "export", "--weights", str(pico_ckpt), "--out", str(out),
        "--onnx", str(onnx_path),
    )  # fmt: skip
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(printed) == 2, printed
    model = load_model(pico_ckpt)
    graph = load_nir(out)
    coverage = parameter_coverage(model, graph)
    assert coverage["covered"]
    n = coverage["folded_params"]
    # every conv keeps its weight and gets one bias per output channel (BN γ, β, μ, σ folded)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert n == sum(c.weight.numel() + c.out_channels for c in convs)
    assert printed[0].startswith(f"{out}: NIR, {len(graph.nodes)} nodes, {len(graph.edges)} edges")
    assert f"{n} of {n} folded parameters in the graph (spikeyolo-pico)" in printed[0]
    match = re.search(r"max \|diff\| vs torch (\S+) on 2 random images", printed[1])
    assert printed[1].startswith(f"{onnx_path}: ONNX opset 17, 4 outputs") and match
    assert float(match.group(1)) <= 1e-4
    assert graph.metadata["spikedet.T"] == 2
    # the NIR file runs in the reference executor and reproduces the float model
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    readouts = NIRExecutor(graph, device="cpu").run(x).readouts
    for k, (box, cls) in enumerate(expected):
        assert torch.allclose(readouts[f"head.{k}.box"], box, atol=1e-4)
        assert torch.allclose(readouts[f"head.{k}.cls"], cls, atol=1e-4)
    # the ONNX file has the dynamic batch axis
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    got = run_onnx(onnx_path, torch.cat([x, x, x]))
    assert got["head.0.cls"].shape == (3, 3, 8, 8)
    assert files_in(tmp_path) == ["model.nir", "sub"] and files_in(tmp_path / "sub") == [
        "model.onnx"
    ]


def test_imgsz_option_changes_the_graph(pico_ckpt: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "m128.nir"
    assert spikedet(monkeypatch, "export", "--weights", str(pico_ckpt), "--out", str(out),
                    "--imgsz", "128") == 0  # fmt: skip
    assert len(capsys.readouterr().out.strip().splitlines()) == 1  # no ONNX line
    assert list(load_nir(out).nodes["input"].input_type["input"]) == [3, 128, 128]
    assert spikedet(monkeypatch, "export", "--weights", str(pico_ckpt), "--out", str(out),
                    "--imgsz", "100") == 2  # fmt: skip
    assert "not a multiple" in capsys.readouterr().err


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spikedet: error: "), err
    return err[0]


def test_bad_weights_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = tmp_path / "out" / "m.nir"
    missing = tmp_path / "missing.pt"
    assert spikedet(monkeypatch, "export", "--weights", str(missing), "--out", str(out)) == 2
    assert "checkpoint file not found" in one_line_error(capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a torch checkpoint")
    assert spikedet(monkeypatch, "export", "--weights", str(junk), "--out", str(out)) == 2
    assert str(junk) in one_line_error(capsys)
    not_ours = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    assert spikedet(monkeypatch, "export", "--weights", str(not_ours), "--out", str(out)) == 2
    assert "not a spikedet checkpoint" in one_line_error(capsys)
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [("spikeyolo-v8-pico", {"T": 2}, "max pooling"), ("ems-pico", {"imgsz": 96}, "3x3 map")],
)
def test_unexportable_model_leaves_no_file(
    name: str,
    overrides: dict,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    ckpt = checkpoint(tmp_path / "ckpt" / "best.pt", name, **overrides)
    outdir = tmp_path / "out"
    args = ["--out", str(outdir / "m.nir"), "--onnx", str(outdir / "m.onnx")]
    assert spikedet(monkeypatch, "export", "--weights", str(ckpt), *args) == 2
    assert message in one_line_error(capsys)
    assert not outdir.exists() or not list(outdir.iterdir())


def test_onnx_failure_keeps_previous_files(
    pico_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A failure after the NIR file was written (here the onnxruntime check) commits nothing."""
    import spikedet.convert.onnx_export as onnx_export

    out, onnx_path = tmp_path / "m.nir", tmp_path / "m.onnx"
    out.write_text("previous")
    monkeypatch.setattr(onnx_export, "check_onnx", lambda model, path, x: 0.5)
    code = spikedet(monkeypatch, "export", "--weights", str(pico_ckpt), "--out", str(out),
                    "--onnx", str(onnx_path))  # fmt: skip
    assert code == 2 and "differs from torch by 0.5" in one_line_error(capsys)
    assert files_in(tmp_path) == ["m.nir"] and out.read_text() == "previous"


def test_console_one_line_error(tmp_path: Path) -> None:
    """Through a fresh interpreter, as the lead will wire it into COMMAND_MODULES."""
    code = (
        "import sys; from spikedet.cli import main as m; "
        f"m.COMMAND_MODULES = tuple(dict.fromkeys((*m.COMMAND_MODULES, {EXPORT_MODULE!r}))); "
        "sys.exit(m.main(sys.argv[1:]))"
    )
    missing = tmp_path / "nope.pt"
    proc = subprocess.run(
        [sys.executable, "-c", code, "export", "--weights", str(missing), "--out", "x.nir"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"spikedet: error: checkpoint file not found ({missing})"
    assert not (tmp_path / "x.nir").exists()
    helped = subprocess.run(
        [sys.executable, "-c", code, "export", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "--onnx" in helped.stdout
