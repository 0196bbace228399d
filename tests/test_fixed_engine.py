"""The ``fixed`` engine against an independent hardware-step simulation (docs/semantics.md §3).

The slow reference below runs HARDWARE steps h = 0 .. max depth + T - 1 one by one: every
synapse delivers what its source emitted 1 + delay steps earlier (kept in per-source emission
histories), populations are idle (state 0, no output, no bias) before their depth, convs are
explicit loops over output channels and kernel offsets, and the neuron uses differently written
but equivalent formulas (threshold count, floor-division decay, a LIF reset by np.where). A
maxpool population pools what its source emitted one step earlier, by loops over output pixels;
upsampling is np.repeat and the channel range a slice. The engine evaluates layer by layer in
logical time; the two must agree bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikedet.errors import SpikedetError
from spikedet.sim.fixed import FixedEngine, conv_int
from spikedet.sim.interface import EngineResult, compare, readout_floats
from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph
from spikedet.sim.randgraph import random_input, random_qgraph
from spikedet.sim.registry import get_engine

LIMIT = (1 << 23) - 1


def ref_conv(x: np.ndarray, syn: QSynapse) -> np.ndarray:
    """Cross-correlation by loops over output channel, input channel and kernel offset (int64)."""
    b, _, h, w = x.shape
    cout, cin_g, kh, kw = syn.weight.shape
    (sh, sw), (ph, pw) = syn.stride, syn.padding
    xp = np.zeros((b, x.shape[1], h + 2 * ph, w + 2 * pw), dtype=np.int64)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((b, cout, ho, wo), dtype=np.int64)
    per_group = cout // syn.groups
    for co in range(cout):
        base = (co // per_group) * cin_g
        for ci in range(cin_g):
            for i in range(kh):
                for j in range(kw):
                    patch = xp[
                        :, base + ci, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw
                    ]
                    out[:, co] += int(syn.weight[co, ci, i, j]) * patch
    return out


def ref_wrap(x: np.ndarray, counter: dict) -> np.ndarray:
    wrapped = np.mod(x + (1 << 23), 1 << 24) - (1 << 23)
    counter["wraps"] += int(np.count_nonzero(wrapped != x))
    return wrapped


def ref_clip(x: np.ndarray, counter: dict) -> np.ndarray:
    counter["clips"] += int(np.count_nonzero(np.abs(x) > LIMIT))
    return np.minimum(np.maximum(x, -LIMIT), LIMIT)


def ref_decay(x: np.ndarray, dv: int) -> np.ndarray:
    """x * (4096 - dv) / 4096 truncated toward zero, via floor division on |x|."""
    keep = 4096 - dv
    return np.where(x >= 0, (x * keep) // 4096, -((-x * keep) // 4096))


def ref_spikes(u: np.ndarray, theta: int, levels: int) -> np.ndarray:
    """#{k in 1..D : u > (k - 1/2) * theta}, compared as 2u > (2k - 1) * theta."""
    return sum((2 * u > (2 * k - 1) * theta).astype(np.int64) for k in range(1, levels + 1))


def ref_maxpool(x: np.ndarray, pop: QPopulation) -> np.ndarray:
    """Max over each window of the zero-padded map, by loops over output pixels."""
    (kh, kw), (sh, sw), (ph, pw) = pop.pool_kernel, pop.pool_stride, pop.pool_padding
    b, c, h, w = x.shape
    xp = np.zeros((b, c, h + 2 * ph, w + 2 * pw), dtype=np.int64)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    out = np.zeros((b, c, *pop.shape[1:]), dtype=np.int64)
    for i in range(pop.shape[1]):
        for j in range(pop.shape[2]):
            out[:, :, i, j] = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].max(axis=(2, 3))
    return out


def hardware_reference(qg: QuantGraph, x: np.ndarray, counter: dict) -> EngineResult:
    """Step-by-step simulation of the pipelined hardware (§3.3)."""
    x = x if x.ndim == 5 else np.broadcast_to(x, (qg.T, *x.shape))
    batch = x.shape[1]
    steps = qg.hw_steps
    emitted: dict[str, list[np.ndarray]] = {"input": []}
    state = {p.name: np.zeros((batch, *p.shape), dtype=np.int64) for p in qg.populations}
    last = {p.name: np.zeros((batch, *p.shape), dtype=np.int64) for p in qg.populations}
    spikes = {
        p.name: np.zeros((qg.T, batch, *p.shape), dtype=np.int64)
        for p in qg.populations
        if p.kind != "readout"
    }
    readouts: dict[str, np.ndarray] = {}
    for p in qg.populations:
        emitted[p.name] = []
    order = list(reversed(qg.populations))  # reading only past emissions makes order irrelevant
    for h in range(steps):
        new: dict[str, np.ndarray] = {}
        new["input"] = x[h] if h < qg.T else np.zeros_like(x[0])
        for p in order:
            zero = np.zeros((batch, *p.shape), dtype=np.int64)
            if h < p.depth:  # idle: the neuron program is not enabled yet
                new[p.name] = zero
                continue
            t = h - p.depth
            if p.kind == "maxpool":  # the pooling synapse: what the source sent one step ago
                new[p.name] = ref_maxpool(emitted[p.src][h - 1], p)
                if t < qg.T:
                    spikes[p.name][t] = new[p.name]
                continue
            current = zero.copy()
            for syn in qg.incoming(p.name):
                sent = h - 1 - syn.delay  # one step of synapse latency plus the delay buffer
                src = (
                    emitted[syn.src][sent]
                    if sent >= 0
                    else np.zeros((batch, *qg.src_shape(syn.src)), dtype=np.int64)
                )
                out = ref_wrap(ref_conv(src, syn), counter)
                out = np.repeat(np.repeat(out, syn.upsample, axis=2), syn.upsample, axis=3)
                current[:, syn.out_offset : syn.out_offset + out.shape[1]] += out
            bias = p.bias[None, :, None, None]
            if p.kind == "readout":
                state[p.name] = ref_clip(state[p.name] + current + bias, counter)
                if t == qg.T - 1:
                    readouts[p.name] = state[p.name].copy()
                new[p.name] = zero
                continue
            if p.kind == "lif":  # hard reset to 0, binary spike above the integer threshold
                reset = np.where(last[p.name] > 0, 0, state[p.name])
                state[p.name] = ref_clip(ref_decay(reset, p.dv) + current + bias, counter)
                last[p.name] = (state[p.name] > p.vth).astype(np.int64)
            else:
                reset = state[p.name] - p.theta * last[p.name]
                state[p.name] = ref_clip(ref_decay(reset, p.dv) + current + bias, counter)
                last[p.name] = ref_spikes(state[p.name], p.theta, p.D)
            if t < qg.T:
                spikes[p.name][t] = last[p.name]
            new[p.name] = last[p.name]
        for name, value in new.items():
            emitted[name].append(value)
    return EngineResult(spikes=spikes, readouts=readouts, wall_s=0.0, engine="hw-reference")


def test_random_graphs_match_hardware_steps() -> None:
    rng = np.random.default_rng(20240611)
    counter = {"wraps": 0, "clips": 0}
    fired = saturated = delayed = 0
    engine = FixedEngine()
    for case in range(60):
        weight_max = 127 if case % 3 else int(rng.choice([1 << 14, 1 << 17]))
        qg = random_qgraph(
            rng,
            n_pops=1 + case % 5,
            T=1 + case % 3,
            size=int(rng.integers(5, 10)),
            channels=(1, 2, 3, 4),
            weight_max=weight_max,
        )
        x = random_input(rng, qg, batch=2, static=case % 4 == 0)
        got = engine.run(qg, x)
        want = hardware_reference(qg, x, counter)
        diff = compare(got, want)
        assert diff["total_mismatches"] == 0, (case, diff["first_mismatch"])
        assert set(got.spikes) == {p.name for p in qg.populations if p.kind == "ilif"}
        assert set(got.readouts) == {p.name for p in qg.populations if p.kind == "readout"}
        for p in qg.populations:
            if p.kind == "ilif":
                fired += int(got.spikes[p.name].sum() > 0)
                saturated += int((got.spikes[p.name] == p.D).any())
        delayed += int(any(s.delay > 0 for s in qg.synapses))
    # the cases exercised what they are meant to: activity, saturation, delays, wrap and clip
    assert fired > 80 and saturated > 40 and delayed == 60
    assert counter["wraps"] > 100 and counter["clips"] > 10, counter


def test_random_construct_graphs_match_hardware_steps() -> None:
    """LIF, maxpool (chained), out_offset and upsample synapses (randgraph constructs=True)."""
    rng = np.random.default_rng(20260301)
    counter = {"wraps": 0, "clips": 0}
    seen = {"lif": 0, "maxpool": 0, "chained": 0, "offset": 0, "upsample": 0, "lif_fired": 0}
    engine = FixedEngine()
    for case in range(30):
        weight_max = 127 if case % 3 else 1 << 14
        qg = random_qgraph(
            rng,
            n_pops=1 + case % 4,
            T=1 + case % 3,
            size=int(rng.integers(4, 11)),
            channels=(1, 2, 3, 4),
            weight_max=weight_max,
            constructs=True,
        )
        x = random_input(rng, qg, batch=2, static=case % 4 == 0)
        got = engine.run(qg, x)
        want = hardware_reference(qg, x, counter)
        diff = compare(got, want)
        assert diff["total_mismatches"] == 0, (case, diff["first_mismatch"])
        assert set(got.spikes) == {p.name for p in qg.populations if p.kind != "readout"}
        kinds = [p.kind for p in qg.populations]
        seen["lif"] += kinds.count("lif")
        seen["maxpool"] += kinds.count("maxpool")
        seen["chained"] += int(kinds.count("maxpool") > 1)
        seen["offset"] += sum(s.out_offset > 0 for s in qg.synapses)
        seen["upsample"] += sum(s.upsample > 1 for s in qg.synapses)
        seen["lif_fired"] += sum(
            int(got.spikes[p.name].any()) for p in qg.populations if p.kind == "lif"
        )
        for p in qg.populations:
            if p.kind == "maxpool":  # depth(src) + 1 and never below the source's spikes
                assert p.depth == qg.pop(p.src).depth + 1
                assert got.spikes[p.name].max() <= got.spikes[p.src].max()
    print(seen, counter)
    assert seen["lif"] > 20 and seen["lif_fired"] > 10 and seen["chained"] > 5
    assert seen["offset"] >= 30 and seen["upsample"] > 20 and counter["wraps"] > 10


def test_max_pool_int_by_hand() -> None:
    from spikedet.sim.fixed import max_pool_int

    pop = QPopulation(
        "m", "maxpool", (1, 2, 2), 0, [0], D=4, src="s",
        pool_kernel=(3, 3), pool_stride=(2, 2), pool_padding=(1, 1),
    )  # fmt: skip
    x = np.array([[0, 1, 0], [4, 0, 2], [0, 3, 0]]).reshape(1, 1, 3, 3)
    # windows rows/cols {-1,0,1} x {-1,0,1} -> 4; {-1,0,1} x {1,2} -> 2 ... (zero padding)
    assert max_pool_int(x, pop).ravel().tolist() == [4, 2, 4, 3]
    assert np.array_equal(max_pool_int(x, pop), ref_maxpool(x, pop))


def test_float_gemm_fallback_to_int64_is_exact() -> None:
    rng = np.random.default_rng(3)
    # |W| * |x| * fan-in above 2^53: float64 would round, the int64 path must not
    weight = rng.integers(-(1 << 44), 1 << 44, size=(3, 2, 3, 3))
    syn = QSynapse("big", "input", "p", weight, stride=(2, 1), padding=(1, 0))
    x = rng.integers(0, 256, size=(2, 2, 7, 6))
    assert np.abs(weight).max() * 255 * 18 > 1 << 53
    assert np.array_equal(conv_int(x, syn), ref_conv(x, syn))
    small = QSynapse(
        "dw", "input", "p", rng.integers(-127, 128, size=(2, 1, 3, 3)), groups=2, padding=(1, 1)
    )
    assert np.array_equal(conv_int(x, small, max_elements=50), ref_conv(x, small))  # chunked


def one_neuron(
    theta: int, D: int, dv: int, weights: list[int], bias: int = 0, readout: bool = False
) -> QuantGraph:
    """input (1,1,1) -> one 1x1 synapse per weight -> a single neuron (optionally -> readout)."""
    syns = [
        QSynapse(f"s{i}", "input", "n", np.full((1, 1, 1, 1), w)) for i, w in enumerate(weights)
    ]
    pops = [
        QPopulation(
            "n",
            "readout" if readout else "ilif",
            (1, 1, 1),
            theta,
            [bias],
            depth=1,
            D=0 if readout else D,
            dv=dv,
        )
    ]
    return QuantGraph(
        T=1, input=QInput((1, 1, 1), scale=1, bits=8), populations=pops, synapses=syns
    )


def run_steps(qg: QuantGraph, inputs: list[int]) -> EngineResult:
    qg.T = len(inputs)
    return FixedEngine().run(qg, np.array(inputs, dtype=np.int64).reshape(-1, 1, 1, 1, 1))


@pytest.mark.parametrize(
    ("u", "expected"),
    # theta = 10: s = #{k : u > 10k - 5}; u = 5 and 15 sit exactly on a threshold (not above)
    [(-7, 0), (0, 0), (5, 0), (6, 1), (15, 1), (16, 2), (35, 3), (36, 4), (200, 4)],
)
def test_threshold_rounding(u: int, expected: int) -> None:
    qg = one_neuron(theta=10, D=4, dv=0, weights=[1], bias=u - 1 if u > 0 else u)
    result = run_steps(qg, [1 if u > 0 else 0])
    assert int(result.spikes["n"][0, 0, 0, 0, 0]) == expected


def test_decay_truncates_toward_zero_and_soft_reset() -> None:
    qg = one_neuron(theta=10, D=4, dv=2048, weights=[1], bias=-7)
    # step 0: u = -7 -> s = 0. step 1: decay(-7) = -(7*2048 >> 12) = -3 (floor would give -4);
    # u = -3 - 7 + 16 = 6 > 5 -> s = 1 (with floor: 5 -> 0). step 2: decay(6 - 10) = -2; u = -2 - 7
    # + 20 = 11 -> s = 1. step 3: decay(11 - 10) = 0 (1*2048 >> 12); u = 0 - 7 + 0 = -7 -> 0.
    result = run_steps(qg, [0, 16, 20, 0])
    assert result.spikes["n"].ravel().tolist() == [0, 1, 1, 0]


def test_wrap24_of_a_synapse_output() -> None:
    # 255 * 2^20 wraps to ((255 * 2^20 + 2^23) mod 2^24) - 2^23 = -2^20: u < 0, no spike
    qg = one_neuron(theta=2, D=1, dv=0, weights=[1 << 20])
    assert run_steps(qg, [255]).spikes["n"].ravel().tolist() == [0]
    # each synapse wraps on its own, the sum does not: 2 * 255 * 19608 = 10,000,080 clips to
    # 2^23 - 1 (wrapping the sum would give -6,777,136)
    ro = one_neuron(theta=2, D=0, dv=0, weights=[19608, 19608], readout=True)
    assert run_steps(ro, [255]).readouts["n"].ravel().tolist() == [LIMIT]
    ro = one_neuron(theta=2, D=0, dv=0, weights=[1 << 20, 1 << 20], readout=True)
    assert run_steps(ro, [255]).readouts["n"].ravel().tolist() == [-(1 << 21)]


def test_clip24_membrane_and_readout() -> None:
    # two synapses of 255 * 31000 = 7,905,000 (< 2^23, no wrap) sum to 15.8M -> clipped to 2^23-1
    qg = one_neuron(theta=1 << 22, D=4, dv=0, weights=[31000, 31000])
    # u = 8388607 -> s = floor((8388607 + 2^21 - 1) / 2^22) = 2 (4 without the clip);
    # next: u = clip(8388607 - 2 * 2^22 + 0) = -1 -> s = 0
    assert run_steps(qg, [255, 0]).spikes["n"].ravel().tolist() == [2, 0]
    ro = one_neuron(theta=2, D=0, dv=0, weights=[-31000, -31000], readout=True)
    result = run_steps(ro, [255, 255])
    assert result.readouts["n"].ravel().tolist() == [-LIMIT]  # symmetric clip, not -2^23
    floats = readout_floats(ro, result)
    assert floats["n"].dtype == np.float32 and floats["n"].item() == pytest.approx(-LIMIT / 4)


def test_compare_and_get_engine() -> None:
    rng = np.random.default_rng(1)
    qg = random_qgraph(rng, n_pops=2, T=2)
    x = random_input(rng, qg, batch=2)
    a = get_engine("fixed").run(qg, x)
    b = FixedEngine().run(qg, x)
    assert compare(a, b)["total_mismatches"] == 0 and compare(a, b)["first_mismatch"] is None
    b.spikes["p0"][1, 0, 0, 0, 0] += 1
    report = compare(a, b)
    assert report["total_mismatches"] == 1
    assert report["populations"]["p0"] == {"mismatches": 1, "values": a.spikes["p0"].size}
    assert report["first_mismatch"].startswith("population p0 at index (1, 0, 0, 0, 0)")
    with pytest.raises(SpikedetError, match="unknown engine"):
        get_engine("nope")
    assert get_engine("fixed").available()[0]


def test_bad_input_is_rejected() -> None:
    qg = random_qgraph(np.random.default_rng(2), n_pops=1, T=2)
    good = random_input(np.random.default_rng(2), qg, batch=1)
    with pytest.raises(SpikedetError, match="shape"):
        FixedEngine().run(qg, good[:, :, :, :-1])
    with pytest.raises(SpikedetError, match="8-bit"):
        FixedEngine().run(qg, good + 256)
    with pytest.raises(SpikedetError, match="integers"):
        FixedEngine().run(qg, good.astype(np.float32))


def test_format1_npz_still_loads(tmp_path: Path) -> None:
    """A QuantGraph written before the new fields (header format 1) loads with defaults."""
    from spikedet.sim.randgraph import random_qgraph

    qg = random_qgraph(np.random.default_rng(4), n_pops=2)
    qg.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    header["format"] = 1
    for p in header["populations"]:
        for key in ("vth", "src", "pool_kernel", "pool_stride", "pool_padding"):
            del p[key]
    for s in header["synapses"]:
        del s["out_offset"], s["upsample"]
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "old.npz", **arrays)
    old = QuantGraph.load(tmp_path / "old.npz")
    assert [s.upsample for s in old.synapses] == [1] * len(qg.synapses)
    assert [p.depth for p in old.populations] == [p.depth for p in qg.populations]


@pytest.mark.parametrize("kind", ["ilif", "lif"])
@pytest.mark.parametrize("dv", [0, 2048, 3072, 3584, 4095])
def test_int32_recurrence_equals_int64(kind: str, dv: int) -> None:
    """The int32 neuron loop (shift decay) gives the int64 loop's spikes, clips included."""
    from spikedet.sim.fixed import run_population, state_dtype

    rng = np.random.default_rng(dv)
    pop = QPopulation(
        "p", kind, (3, 5, 7), theta=4096, bias=rng.integers(-9000, 9000, 3), D=4 if kind == "ilif" else 1,
        dv=dv, vth=2048 if kind == "lif" else 0,
    )  # fmt: skip
    bound = 2 << 23  # two incoming 24-bit terms
    current = rng.integers(-bound, bound, (6, 2, 3, 5, 7))
    assert state_dtype(pop, bound) is np.int32 and state_dtype(pop, None) is np.int64
    wide = run_population(pop, current)
    narrow = run_population(pop, current, current_bound=bound)
    assert np.array_equal(wide, narrow) and 0 < wide.mean() < pop.D
    odd = QPopulation("q", kind, (1, 1, 1), theta=2, bias=[0], D=pop.D, dv=1024)
    assert state_dtype(odd, bound) is np.int64  # 4096 - 1024 = 3072: a product, not a shift
