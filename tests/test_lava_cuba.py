"""The ``lava`` engine with Lava's own LIF (docs/semantics.md §3.8): ``cuba`` populations and the
EMS ``lif`` populations Lava can express run as Lava's ``LIFReset`` (``PyLifResetModelBitAcc``),
netx dense layers as Lava's ``Dense``. Checked against Intel's recordings (tinynet, pilotnet_lif:
lava-nc/lava-dl at d825ac506eb9bb91ea2b945116fb45a40e775451, ``tests/lava/lib/dl/netx/gts``,
copied to ``../shared/conformance/lava-dl-netx``) and against the ``fixed`` engine; the cases Lava's
LIF cannot express are shown with a counterexample computed both ways.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikedet.convert.netx import read_netx
from spikedet.convert.netx_nir import to_quant_graph
from spikedet.deploy.quantize import assign_depths
from spikedet.sim.fixed import FixedEngine
from spikedet.sim.fixed_cuba import CubaState, cuba_step
from spikedet.sim.interface import compare
from spikedet.sim.lava_engine import LavaEngine
from spikedet.sim.lava_lif import lava_lif
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph
from spikedet.sim.randgraph import random_input, random_qgraph

REPO = Path(__file__).resolve().parents[1]
NETX = REPO.parent / "shared" / "conformance" / "lava-dl-netx"
needs_data = pytest.mark.skipif(not NETX.is_dir(), reason=f"conformance data absent ({NETX})")
LAVA_LIF = "lava.proc.lif.models.PyLifResetModelBitAcc"
PILOT_NAMES = ["input", *(f"conv-{k}" for k in range(5)), *(f"fc-{k}" for k in range(4))]


def recording(path: Path) -> np.ndarray:
    """A recording (X, Y, C, N) or (n, N) as int64 [N, C, H, W]."""
    a = np.load(path)
    a = a.transpose(3, 2, 1, 0) if a.ndim == 4 else a.T.reshape(a.shape[1], a.shape[0], 1, 1)
    return a.astype(np.int64)


@needs_data
def test_tinynet_in_the_lava_engine_equals_the_recording(lava_python: Path) -> None:
    """As upstream test_hdf5.py::test_tinynet (reset every 17 steps): output spikes of logical
    steps 0..14 equal output.npy[..., 1:], with every neuron computed by Lava's LIF."""
    qg = to_quant_graph(read_netx(NETX / "tinynet" / "tiny.net"), T=18, reset_interval=17)
    x = np.load(NETX / "tinynet" / "input_bias.npy").transpose(2, 1, 0)[None].astype(np.int64)
    res = LavaEngine(python=str(lava_python)).run(qg, x)
    assert set(res.info["neuron_models"].values()) == {LAVA_LIF}
    out = res.spikes["layer2"][:15, 0, :, 0, 0]
    gt = np.load(NETX / "tinynet" / "output.npy")[0, :, 0, 0, 1:].T
    errors = int(np.abs(out - gt).sum())
    report = compare(FixedEngine().run(qg, x), res)
    print(f"\ntinynet, lava engine: {errors} differences to the recording ({int(gt.sum())} "
          f"spikes), {report['total_mismatches']} to fixed, "
          f"{1e3 * res.info['step_s']:.1f} ms/step")  # fmt: skip
    assert errors == 0 and gt.sum() > 50 and report["total_mismatches"] == 0


@needs_data
def test_pilotnet_lif_in_the_lava_engine_equals_the_recordings(lava_python: Path) -> None:
    """Every layer's spikes at all 24 recorded steps (reset every 17 steps, as the recordings
    were made: see tests/test_netx_conformance.py), dense layers on Lava's Dense; u and v of the
    four dense layers recorded by Lava's Monitor: fc-0..fc-2 equal the recordings (v: 128 at a
    neuron that fired, README (a)), the last layer (which never fires) equals 64 * W * the
    recorded fc-2 spikes of the step before (du = 4095) and the fixed engine."""
    pilot = NETX / "pilotnet_lif"
    qg = to_quant_graph(read_netx(pilot / "network.net"), T=24, reset_interval=17)
    x = np.load(pilot / "image.npy").transpose(2, 1, 0)[None].astype(np.int64)
    dense = [f"layer{i}" for i in (7, 8, 9, 10)]
    res = LavaEngine(python=str(lava_python), record_states=dense).run(qg, x)
    assert set(res.info["neuron_models"].values()) == {LAVA_LIF}
    assert res.info["dense_synapses"] == sorted(f"{name}.dense" for name in dense)
    lines, total, compared = [], 0, 0
    for name, pop in zip(PILOT_NAMES, qg.populations):
        first = pop.depth - 1  # recording index of logical step 0 (test_netx_conformance.py)
        for q in ("s", "u", "v") if pop.name in dense[:3] else ("s",):
            suffix = {"s": "-s" if name == "fc-3" else "", "u": "-u", "v": "-v"}[q]
            rec = recording(pilot / f"{name}{suffix}.npy")
            n = min(qg.T, len(rec) - first)
            ours = res.spikes[pop.name] if q == "s" else res.info["states"][pop.name][q]
            theirs, ours = rec[first : first + n], ours[:n, 0]
            bad = ours != theirs
            if q == "v":  # README (a): the recording holds 128 where a neuron fired
                bad &= ~((theirs == 128) & (res.spikes[pop.name][:n, 0] == 1))
            lines.append(f"{name}.{q} {int(bad.sum())}/{theirs.size}")
            total, compared = total + int(bad.sum()), compared + theirs.size
    last = qg.populations[-1]
    fc2 = recording(pilot / "fc-2.npy").reshape(24, -1)
    implied = (fc2 @ qg.synapses[-1].weight.reshape(1, -1).T) << 6  # u at recording index n + 1
    u_last = res.info["states"][last.name]["u"][:, 0].reshape(-1)
    first = last.depth - 1
    assert np.array_equal(u_last[: 24 - first], implied[first - 1 : 23, 0])
    fixed = FixedEngine(record_states=True).run(qg, x).info["states"]
    for name in dense:
        for q in ("u", "v"):
            assert np.array_equal(res.info["states"][name][q], fixed[name][q]), (name, q)
    print(f"\npilotnet_lif, lava engine, {1e3 * res.info['step_s']:.0f} ms/step, "
          f"compile {res.info['compile_s']:.1f} s: mismatches {', '.join(lines)}")  # fmt: skip
    assert total == 0 and compared > 3_000_000
    assert res.spikes["layer9"].any() and u_last.any()  # fc-3 (vth 131071) never fires


def mixed_graph(rng: np.random.Generator, reset_interval: int) -> QuantGraph:
    """cuba with current decay and per-neuron bias -> I-LIF (ours) and a delayed skip into a
    cuba sum -> a dense cuba layer: Lava's LIF beside our processes in one network."""
    a = QPopulation("a", "cuba", (3, 6, 5), theta=64, D=1, du=1023, dv=512, vth=900,
                    bias=rng.integers(-300, 300, 90), bias_exp=3,
                    reset_interval=reset_interval)  # fmt: skip
    b = QPopulation("b", "ilif", (4, 3, 3), theta=16, bias=rng.integers(-8, 9, 4), D=3, dv=2048)
    every = dict(theta=64, D=1, bias_exp=6, reset_interval=reset_interval)
    c = QPopulation("c", "cuba", (4, 3, 3), du=4095, dv=1024, vth=25,
                    bias=rng.integers(-20, 21, 4), **every)  # fmt: skip
    d = QPopulation("d", "cuba", (5, 1, 1), du=2047, dv=0, vth=30,
                    bias=rng.integers(-10, 11, 5), **every)  # fmt: skip
    syns = [
        QSynapse("a.conv", "input", "a", rng.integers(-3, 4, (3, 2, 3, 3)), padding=(1, 1)),
        QSynapse("b.conv", "a", "b", rng.integers(-9, 10, (4, 3, 3, 3)), stride=(2, 2),
                 padding=(1, 1)),
        QSynapse("c.conv", "b", "c", rng.integers(-6, 7, (4, 4, 3, 3)), padding=(1, 1)),
        QSynapse("c.skip", "a", "c", rng.integers(-6, 7, (4, 3, 1, 1)), stride=(2, 2)),
        QSynapse("d.dense", "c", "d", rng.integers(-12, 13, (5, 4, 3, 3)) * 2),
    ]  # fmt: skip
    pops = [a, b, c, d]
    assign_depths(pops, syns)
    return QuantGraph(T=7, input=QInput((2, 6, 5), 1, 8), populations=pops, synapses=syns)


@pytest.mark.parametrize("reset_interval", [0, 3])
def test_cuba_beside_our_processes_matches_fixed(lava_python: Path, reset_interval: int):
    rng = np.random.default_rng(4)
    qg = mixed_graph(rng, reset_interval)
    x = rng.integers(0, 256, (qg.T, 2, *qg.input.shape))  # two samples back to back
    fixed, lava = FixedEngine().run(qg, x), LavaEngine(python=str(lava_python)).run(qg, x)
    report = compare(fixed, lava)
    assert report["total_mismatches"] == 0, report["first_mismatch"]
    assert all(v.any() for v in fixed.spikes.values()), "a silent population tests nothing"
    models = lava.info["neuron_models"]
    assert {models[k] for k in "acd"} == {LAVA_LIF} and models["b"] != LAVA_LIF
    assert lava.info["dense_synapses"] == ["d.dense"]
    if reset_interval:  # the sample period is padded to a multiple of the reset interval
        assert lava.info["steps"] % reset_interval == 0 and lava.info["steps"] >= qg.hw_steps


def test_lava_engine_refusals_name_the_population(lava_python: Path) -> None:
    """States are recorded from Lava's LIF only; a cuba reset offset != 0 needs two phases."""
    from spikedet.errors import SpikedetError

    rng = np.random.default_rng(4)
    qg = mixed_graph(rng, 3)
    x = rng.integers(0, 256, (1, *qg.input.shape))
    with pytest.raises(SpikedetError, match="Lava's LIF only") as err:
        LavaEngine(python=str(lava_python), record_states=["b"]).run(qg, x)
    assert err.value.where == "population b"
    qg.populations[2].reset_offset = 1
    with pytest.raises(SpikedetError, match="reset_offset=1") as err:
        LavaEngine(python=str(lava_python)).run(qg, x)
    assert err.value.where == "population c"


def test_ems_lif_without_leak_runs_on_lavas_lif(lava_python: Path) -> None:
    """randgraph LIF populations with dv = 0 pass §3.8's conditions and run as Lava's LIF; the
    ones with a leak stay our process. Both agree with fixed (0 mismatches)."""
    on_lava = 0
    for seed in (1, 3, 5, 8):
        rng = np.random.default_rng(seed)
        qg = random_qgraph(rng, n_pops=3, T=3, size=8, channels=(2, 3, 4), constructs=True)
        for p in qg.populations:
            if p.kind == "lif":
                p.dv, p.vth = (0, abs(p.vth)) if seed % 2 else (p.dv, p.vth)
        x = random_input(rng, qg, batch=2, static=False)
        fixed, lava = FixedEngine().run(qg, x), LavaEngine(python=str(lava_python)).run(qg, x)
        report = compare(fixed, lava)
        assert report["total_mismatches"] == 0, (seed, report["first_mismatch"])
        for p in qg.populations:
            ok = lava_lif(qg, p)[0] is not None
            assert (lava.info["neuron_models"][p.name] == LAVA_LIF) == ok
            on_lava += ok
    assert on_lava >= 2


@pytest.mark.parametrize("name", ["braille_noDelay_noBias_subtract", "braille_noDelay_bias_zero"])
def test_recurrent_cubalif_runs_on_lavas_lif(lava_python: Path, tmp_path: Path, name: str):
    """The NIR paper's Braille RNNs (neuromorphs/NIR, CubaLIF with a recurrent Affine: a cuba
    self-synapse of lag 1): the deploy pipeline's Lava run equals fixed, neurons on Lava's LIF."""
    from spikedet.deploy.pipeline import DeployOptions, run_deploy

    paper = REPO.parent / "shared" / "conformance" / "nir-paper"
    files = sorted(paper.rglob(f"{name}.nir")) if paper.is_dir() else []
    if not files:
        pytest.skip(f"{name}.nir absent ({paper})")
    x = (np.random.default_rng(1).random((40, 4, 12)) < 0.2).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    opts = DeployOptions(nir_path=files[0], out=tmp_path / "r", input=tmp_path / "x.npy",
                         engine="lava", samples=1, dt=1e-4, reset="zero")  # fmt: skip
    report = run_deploy(opts, log=lambda _: None)["validation"]["lava_vs_fixed"]
    values = sum(p["values"] for p in report["populations"].values())
    print(f"\n{name}: lava vs fixed {report['total_mismatches']} mismatches of {values}")
    assert report["total_mismatches"] == 0 and values > 1000


# ---- what Lava's LIF cannot express (counterexamples, docs/semantics.md §3.8) ---------------
def lava_lif_spikes(a: list[int], vth: int, dv: int, bias: int = 0) -> list[int]:
    """Lava's bit-accurate LIF (fixed_cuba replicates PyLifModelBitAcc, checked against Intel's
    recordings) with the EMS mapping du = 4095, bias_exp 6."""
    pop = QPopulation("p", "cuba", (1, 1, 1), theta=64, bias=[bias], D=1, du=4095, dv=dv,
                      vth=vth, bias_exp=6)  # fmt: skip
    state = CubaState.zeros((1, 1, 1, 1))
    return [int(cuba_step(state, np.array(v), pop, t).sum()) for t, v in enumerate(a)]


def ems_lif_spikes(a: list[int], vth: int, dv: int, bias: int = 0) -> list[int]:
    """Our EMS LIF (§3.2) through the fixed engine's recurrence."""
    from spikedet.sim.fixed import run_population

    pop = QPopulation("p", "lif", (1, 1, 1), theta=4, bias=[bias], D=1, dv=dv, vth=vth)
    current = np.array(a, np.int64).reshape(-1, 1, 1, 1, 1)
    return [int(s) for s in run_population(pop, current).reshape(-1)]


def test_ems_lif_with_leak_is_not_lavas_lif() -> None:
    """beta = 0.25 (dv = 3072), V_th = 0.5 at theta = 4 (vth = 2), inputs 1 then 2: ours truncates
    decay(1) to 0 and stays at 2 (no spike); Lava keeps v = 64 -> 16 and fires at 16 + 128 > 128."""
    assert ems_lif_spikes([1, 2], vth=2, dv=3072) == [0, 0]
    assert lava_lif_spikes([1, 2], vth=2, dv=3072) == [0, 1]
    rng = np.random.default_rng(0)  # without a leak the two are one model
    for _ in range(50):
        a = rng.integers(-20, 30, 12).tolist()
        vth, bias = int(rng.integers(0, 40)), int(rng.integers(-5, 6))
        assert ems_lif_spikes(a, vth, 0, bias) == lava_lif_spikes(a, vth, 0, bias)


def test_ilif_is_not_lavas_lif() -> None:
    """I-LIF theta = 4, D = 4, input 10: graded spike 2 and soft reset to u - 8 = 2; Lava's LIF
    can only send 1 and reset to 0 (its spike is binary, its reset hard)."""
    from spikedet.sim.fixed import run_population

    pop = QPopulation("p", "ilif", (1, 1, 1), theta=4, bias=[0], D=4, dv=0)
    spikes = run_population(pop, np.array([10, 0, 0], np.int64).reshape(-1, 1, 1, 1, 1))
    assert spikes.reshape(-1).tolist() == [2, 0, 0]  # u: 10 -> 10 - 2 * 4 = 2 -> 2
    assert lava_lif_spikes([10, 0, 0], vth=1, dv=0) == [1, 0, 0]
    qg = QuantGraph(3, QInput((1, 1, 1), 1), [pop],
                    [QSynapse("s", "input", "p", np.ones((1, 1, 1, 1)))])  # fmt: skip
    assert lava_lif(qg, pop)[0] is None and "no Lava LIF form" in lava_lif(qg, pop)[1]
