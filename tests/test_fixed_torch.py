"""The ``fixed`` engine's torch kernels (spikedet.sim.fixed_torch) change no number.

int8 GEMMs (spikes as they are, 8-bit pixels as x - 128 with the per-channel correction) and
torch's float32 grouped convs give the reference integers of tests/test_fixed_engine.py's
``ref_conv``; convs outside their conditions (weights beyond int8, sums beyond int32 / 2^24,
signed sources beyond 127) take the numpy path; whole graphs (random ones with every
construct, and exported zoo models) give identical spikes and readouts on both paths; a
saturating or rounding kernel fails the probe and is not used."""

from __future__ import annotations

import numpy as np
import pytest

from spikedet.sim import fixed_torch
from spikedet.sim.fixed import FixedEngine, conv_int
from spikedet.sim.fixed_conv import prepare_conv
from spikedet.sim.fixed_plan import plan_graph
from spikedet.sim.interface import compare
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph
from spikedet.sim.randgraph import random_input, random_qgraph
from tests.test_fixed_engine import hardware_reference, ref_conv

torch = pytest.importorskip("torch")
if not fixed_torch.available():  # SPIKEDET_FIXED_GEMM=numpy, or a kernel that failed the probe
    pytest.skip("the fixed engine's torch kernels are off here", allow_module_level=True)


def _numpy_engine_run(qg, x):
    with fixed_torch.disabled():
        return FixedEngine().run(qg, x)


def test_probe_passes_here_and_rejects_bad_kernels(monkeypatch) -> None:
    assert fixed_torch.available()
    real = torch._int_mm

    def saturating(a, b, out=None):  # int16 pair sums, as u8 x s8 madd without VNNI
        pairs = a.to(torch.int64).reshape(a.shape[0], -1, 1) * b.to(torch.int64).unsqueeze(0)
        k = pairs.shape[1] - pairs.shape[1] % 2
        paired = (pairs[:, :k:2] + pairs[:, 1:k:2]).clamp(-(1 << 15), (1 << 15) - 1)
        total = paired.sum(1) + (pairs[:, k:].sum(1) if k < pairs.shape[1] else 0)
        return total.to(torch.int32)

    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not fixed_torch._probe()
    monkeypatch.setattr(torch, "_int_mm", real)
    real_conv = torch.nn.functional.conv2d

    def bf16(x, w, **kw):  # reduced-precision float math
        return real_conv(x.bfloat16().float(), w.bfloat16().float(), **kw)

    monkeypatch.setattr(torch.nn.functional, "conv2d", bf16)
    assert not fixed_torch._probe()
    monkeypatch.setattr(torch.nn.functional, "conv2d", real_conv)
    monkeypatch.setenv("SPIKEDET_FIXED_GEMM", "numpy")
    assert not fixed_torch._probe()


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "peak"),
    [
        (3, 8, (7, 7), (4, 4), (3, 3), (1, 1), 255),  # pixels: the x - 128 form, padded
        (3, 5, (3, 3), (2, 1), (1, 0), (1, 1), 200),
        (4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 4),  # spikes
        (5, 7, (1, 1), (1, 1), (0, 0), (1, 1), 127),  # 1x1: the input is the columns
        (4, 3, (3, 2), (1, 2), (2, 1), (2, 1), 15),  # dilated
        (2, 4, (1, 1), (2, 2), (0, 0), (1, 1), 255),
    ],
)
def test_int8_conv_is_exact(cin, cout, kernel, stride, padding, dilation, peak) -> None:
    rng = np.random.default_rng(cin * 31 + peak)
    w = rng.integers(-128, 128, (cout, cin, *kernel))
    w[0, 0, 0, 0], w[-1, -1, -1, -1] = -128, 127
    syn = QSynapse("s", "input", "p", w, stride, padding, dilation=dilation)
    x = rng.integers(0, peak + 1, (3, cin, 11, 9))
    x[0, 0], x[1, -1] = peak, 0  # extremes and a silent channel
    conv = prepare_conv(syn, peak)
    assert conv.int8 is not None and conv.matrix is None
    assert conv.int8.offset == (128 if peak > 127 else 0)
    # ref_conv reads no dilation: the same conv through the dilated kernel
    plain = QSynapse("s", "input", "p", syn.dilated_weight(), stride, padding)
    want = ref_conv(x, plain)
    assert np.array_equal(conv_int(x, None, prepared=conv), want)
    out = np.empty(want.shape, np.int32)  # straight into an int32 buffer
    assert np.array_equal(conv_int(x.astype(np.int8 if peak < 128 else np.int64), None,
                                   out=out, prepared=conv), want)  # fmt: skip
    silent = x.copy()
    silent[:, : max(1, cin // 2)] = 0  # channels dropped from the GEMM
    assert np.array_equal(conv_int(silent, None, prepared=conv), ref_conv(silent, plain))


def test_convs_outside_int8_take_the_numpy_path() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, (2, 4, 6, 6))
    wide = QSynapse("s", "a", "p", rng.integers(-200, 200, (3, 4, 3, 3)), padding=(1, 1))
    assert prepare_conv(wide, 4).int8 is None
    assert np.array_equal(conv_int(x, wide), ref_conv(x, wide))
    # |sum| up to 127 * 255 * fan-in >= 2^31: int8 operands, but int32 could overflow
    big = QSynapse("s", "a", "p", np.full((1, 8192, 9, 9), 127))
    assert fixed_torch.int8_conv(big.weight, 1, 255) is None
    signed = rng.integers(-127, 128, (2, 4, 6, 6))  # conv_int without a peak: |x| from data
    assert np.array_equal(conv_int(signed, wide), ref_conv(signed, wide))
    narrow = QSynapse("s", "a", "p", rng.integers(-127, 128, (3, 4, 3, 3)), padding=(1, 1))
    assert prepare_conv(narrow, 127, signed=True).int8 is not None
    assert prepare_conv(narrow, 200, signed=True).int8 is None
    assert np.array_equal(conv_int(signed, narrow), ref_conv(signed, narrow))
    beyond = signed * 2  # |x| up to 254 with negatives: no x - 128 form
    assert np.array_equal(conv_int(beyond, narrow), ref_conv(beyond, narrow))


@pytest.mark.parametrize(
    ("channels", "per", "cin_g", "kernel", "stride", "peak", "weight_max"),
    [
        (6, 1, 1, 7, 1, 4, 127),  # depthwise
        (4, 2, 1, 3, 2, 255, 127),  # depthwise, two outputs per channel, strided
        (3, 2, 2, 3, 1, 15, 127),  # grouped, two input channels per group
        (2, 1, 1, 3, 1, 255, 1 << 17),  # sums beyond 2^24: the numpy kernels
    ],
)
def test_grouped_convs_are_exact(channels, per, cin_g, kernel, stride, peak, weight_max) -> None:
    rng = np.random.default_rng(channels * 7 + per)
    w = rng.integers(-weight_max, weight_max + 1, (channels * per, cin_g, kernel, kernel))
    syn = QSynapse(
        "g", "a", "p", w, (stride, stride), (kernel // 2,) * 2, groups=channels
    )  # fmt: skip
    x = rng.integers(0, peak + 1, (2, channels * cin_g, 10, 13))
    conv = prepare_conv(syn, peak)
    assert (conv.grouped is not None) == (weight_max < 1 << 17)
    assert np.array_equal(conv_int(x, None, prepared=conv), ref_conv(x, syn))


def test_random_graphs_equal_on_both_paths() -> None:
    """Every construct (lif, maxpool, offsets, upsampling, delays, wraps) and T / static
    inputs: the torch kernels and the numpy ones give the same spikes and readouts, and both
    the hardware-step reference's."""
    rng = np.random.default_rng(20261204)
    used = {"int8": 0, "offset": 0, "grouped": 0, "numpy": 0}
    engine = FixedEngine()
    for case in range(16):
        qg = random_qgraph(
            rng, n_pops=1 + case % 4, T=1 + case % 3, size=int(rng.integers(5, 11)),
            channels=(1, 2, 3, 4), weight_max=127 if case % 4 else 1 << 14,
            constructs=case % 2 == 1,
        )  # fmt: skip
        x = random_input(rng, qg, batch=2, static=case % 3 == 0)
        got, want = engine.run(qg, x), _numpy_engine_run(qg, x)
        diff = compare(got, want)
        assert diff["total_mismatches"] == 0, (case, diff["first_mismatch"])
        if case % 4 == 1:
            hw = hardware_reference(qg, x, {"wraps": 0, "clips": 0})
            assert compare(got, hw)["total_mismatches"] == 0, case
        for conv in plan_graph(qg).convs:
            used["int8"] += conv.int8 is not None
            used["offset"] += conv.int8 is not None and conv.int8.offset > 0
            used["grouped"] += conv.grouped is not None
            used["numpy"] += conv.matrix is not None
    assert min(used.values()) > 3, used


@pytest.mark.parametrize(("T", "static"), [(1, True), (2, False)])
def test_stacked_convs_equal_separate_ones(T: int, static: bool) -> None:
    """Convs reading one source through one geometry run as one stacked GEMM (the pixel
    input's x - 128 form included; members placed at offsets, upsampled, read by different
    populations); the same spikes and readouts as the numpy path and the hardware steps."""
    rng = np.random.default_rng(11 + T)

    def pop(name, kind, shape, depth):
        D = 0 if kind == "readout" else 4
        return QPopulation(name, kind, shape, 64, rng.integers(-50, 50, shape[0]), depth=depth,
                           D=D, dv=1024)  # fmt: skip

    def weight(cout, cin, k):
        return rng.integers(-128, 128, (cout, cin, k, k))

    p1 = (1, 1)
    pops = [pop("a", "ilif", (4, 8, 8), 1), pop("b", "ilif", (5, 8, 8), 1),
            pop("c", "ilif", (3, 16, 16), 2), pop("d", "readout", (7, 8, 8), 2)]  # fmt: skip
    syns = [
        QSynapse("in_a", "input", "a", weight(4, 2, 3), padding=p1),
        QSynapse("in_b", "input", "b", weight(5, 2, 3), padding=p1),  # a stack with in_a
        QSynapse("a_c", "a", "c", weight(3, 4, 3), padding=p1, upsample=2),
        QSynapse("a_d0", "a", "d", weight(3, 4, 3), padding=p1),  # a stack with a_c, a_d3
        QSynapse("a_d3", "a", "d", weight(4, 4, 3), padding=p1, out_offset=3),
        QSynapse("b_d", "b", "d", weight(7, 5, 1)),
    ]
    qg = QuantGraph(T=T, input=QInput((2, 8, 8), scale=1), populations=pops, synapses=syns)
    plan = plan_graph(qg)
    assert sorted(len(s.members) for s in plan.stacks) == [2, 3]
    x = rng.integers(0, 256, (2, 2, 8, 8) if static else (T, 2, 2, 8, 8))
    got, want = FixedEngine().run(qg, x), _numpy_engine_run(qg, x)
    assert compare(got, want)["total_mismatches"] == 0, compare(got, want)["first_mismatch"]
    hw = hardware_reference(qg, x, {"wraps": 0, "clips": 0})
    assert compare(got, hw)["total_mismatches"] == 0, compare(got, hw)["first_mismatch"]
    assert got.spikes["c"].any() and got.readouts["d"].any()


@pytest.mark.parametrize(("name", "T"), [("spikeyolo-pico", 1), ("ems-pico-avg", 2)])
def test_zoo_graphs_equal_on_both_paths(name: str, T: int, tmp_path) -> None:
    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.deploy.nir_read import read_nir
    from spikedet.deploy.quantize import quantize
    from spikedet.train.models.registry import build_model
    from tests.model_helpers import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(build_model(name, imgsz=64, T=T)).eval()
    if hasattr(model, "reparameterize"):
        model.reparameterize()
    write_nir(export_model(model, 64), tmp_path / "model.nir")
    qg = quantize(read_nir(tmp_path / "model.nir"))
    x = np.random.default_rng(4).integers(0, 256, (1, *qg.input.shape))
    got, want = FixedEngine().run(qg, x), _numpy_engine_run(qg, x)
    diff = compare(got, want)
    assert diff["total_mismatches"] == 0, diff["first_mismatch"]
    plan = plan_graph(qg)
    assert sum(c.int8 is not None for c in plan.convs) > 10 and plan.stacks
    assert sum(int(v.astype(bool).sum()) for v in got.spikes.values()) > 1000
