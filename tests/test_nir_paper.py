"""Every graph of the NIR paper (../shared/conformance/nir-paper, neuromorphs/NIR @ 7232ada,
written by sinabs, snnTorch, norse, rockpool) deploys end to end with `--input` (README
"NIR primitives"). The files carry no dt: each test states the one it uses and why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikedet.deploy.pipeline import DeployOptions, run_deploy

PAPER = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "nir-paper"
SMALL = ("lif_norse", "lif_rockpool", "two_lif_neurons")


def _file(name: str) -> Path:
    path = PAPER / f"{name}.nir"
    if not path.is_file():
        pytest.skip(f"{path} absent (shared/ conformance data)")
    return path


def _lava_ready() -> bool:
    from spikedet.sim.registry import get_engine

    return bool(get_engine("lava").available()[0])


def _deploy(name: str, x: np.ndarray, tmp: Path, lava: bool = False, **kw) -> dict:
    np.save(tmp / "x.npy", x)
    opts = DeployOptions(
        nir_path=_file(name), out=tmp / "report", input=tmp / "x.npy",
        engine="lava" if lava else "fixed", samples=1, **kw,
    )  # fmt: skip
    return run_deploy(opts, log=lambda _: None)["validation"]


def _events(shape: tuple, seed: int, density: float) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < density).astype(np.uint8)


def test_nmnist_cnn_needs_its_dt(tmp_path: Path, capsys) -> None:
    """sinabs' IF is discrete-time (one step = dt 1, r = 1). Assuming snnTorch's dt = 1e-4, as
    the executor did silently, the float reference leaves the network silent; with --dt 1
    it runs and the integer engines follow it."""
    x = _events((20, 2, 2, 34, 34), seed=0, density=0.15)
    silent = _deploy("cnn_sinabs", x, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "assumed dt = 0.0001 s" in err[0] and "reset = zero" in err[0]
    assert silent["output_total"]["reference"] == 0.0
    lava = _lava_ready()
    v = _deploy("cnn_sinabs", x, tmp_path, lava=lava, dt=1.0, reset="zero")
    assert "dt" not in " ".join(v["conventions"]["assumed"])
    assert v["output_total"]["reference"] > 0
    assert v["reference_vs_fixed"]["overall_spike_agreement"] >= 0.95
    if lava:
        assert v["lava_vs_fixed"]["total_mismatches"] == 0


@pytest.mark.parametrize("name", SMALL)
def test_single_neuron_graphs(name: str, tmp_path: Path) -> None:
    """norse / rockpool / snnTorch LIF tests at snnTorch's dt = 1e-4: exact, fixed = Lava.
    (lif_rockpool fails nir's own type check: its Output is declared (1, 1, 1).)"""
    x = np.zeros((60, 2, 1))
    x[::3, 0, 0] = 1
    x[::2, 1, 0] = 1
    lava = _lava_ready()
    v = _deploy(name, x, tmp_path, lava=lava, dt=1e-4, reset="zero")
    assert v["reference_vs_fixed"]["overall_spike_agreement"] == 1.0
    if lava:
        assert v["lava_vs_fixed"]["total_mismatches"] == 0


def test_two_lif_neurons_leak_drives_the_first(tmp_path: Path) -> None:
    """two_lif_neurons.nir: lif1 has v_leak = 1.2 > v_th = 1, so it fires with no input at all
    (the leak becomes a per-step bias on its synapse)."""
    v = _deploy("two_lif_neurons", np.zeros((400, 1, 1)), tmp_path, dt=1e-4, reset="zero")
    pops = v["reference_vs_fixed"]["populations"]
    assert pops["lif1"]["spikes_reference"] > 0
    assert pops["lif1"]["spikes_integer"] == pops["lif1"]["spikes_reference"]


@pytest.mark.parametrize(
    ("name", "reset", "agreement"),
    # measured (these 4 samples, 8-bit weights): 0.997, 0.998, 0.960; Lava = fixed on each
    [
        ("braille_noDelay_noBias_subtract", "subtract", 0.99),
        ("braille_noDelay_noBias_subtract", "zero", 0.99),
        ("braille_noDelay_bias_zero", "zero", 0.95),
    ],
)
def test_braille_recurrent_cubalif(name: str, reset: str, agreement: float, tmp_path: Path) -> None:
    """The RNNs: CubaLIF with a recurrent Affine/Linear (a self-synapse of lag 1) at snnTorch's
    dt = 1e-4; the subtract variant by subtraction (its name says so; the file cannot), and as
    a second convention reset to zero. bias_zero's Affine biases enter the CubaLIF currents
    every step (u_bias, §4.5), the recurrent one from step 1 as its edge delivers it."""
    x = _events((40, 4, 12), seed=1, density=0.2)
    lava = _lava_ready()
    v = _deploy(name, x, tmp_path, lava=lava, dt=1e-4, reset=reset)
    assert v["conventions"]["reset"] == reset
    assert v["reference_vs_fixed"]["overall_spike_agreement"] >= agreement
    assert v["output_total"]["reference"] > 0
    if lava:
        assert v["lava_vs_fixed"]["total_mismatches"] == 0


def test_braille_bias_is_exact_with_wide_weights() -> None:
    """What is left at 8 bits is weight rounding (lif1's weights reach 13.4, so one weight unit
    is 1/8): with 16-bit weights the integer model of bias_zero, biases included, gives the
    float reference's spikes exactly on 16 samples (moving the current bias to v as its steady
    state, the earlier form, stayed at 0.939 there)."""
    import torch

    from spikedet.convert.nir_torch import NIRExecutor
    from spikedet.deploy.nir_flat import read_any
    from spikedet.deploy.nir_generic import Conventions, parse_generic
    from spikedet.deploy.quantize import quantize
    from spikedet.sim.fixed import FixedEngine

    graph, _ = read_any(_file("braille_noDelay_bias_zero"))
    x = _events((40, 16, 12), seed=1, density=0.2)
    ex = NIRExecutor(graph, device="cpu", dtype=torch.float64, dt=1e-4, reset="zero")
    ref = ex.run(torch.as_tensor(x.astype(np.float64))).spikes
    fg, _ = parse_generic(graph, 40, Conventions(dt=1e-4, reset="zero", input_scale=1.0))
    qg = quantize(fg, max_delay=None, weight_bits=16)
    assert any(p.u_bias.size for p in qg.populations)
    out = FixedEngine().run(qg, x.reshape(40, 16, 12, 1, 1).astype(np.int64))
    for name, spikes in out.spikes.items():
        want = ref[name].numpy().reshape(spikes.shape)
        assert np.array_equal(want, spikes), name
        assert spikes.sum() > 0
