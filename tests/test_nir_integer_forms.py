"""The integer forms of docs/semantics.md §4.5 checked in Lava's own arithmetic (lava-nc 0.10.0
``PyLifModelBitAcc`` / ``PyLifResetModelBitAcc``, stepped in ``.venv-lava`` by calling their
``run_spk`` with stand-in ports, as tests/test_cuba_vs_lava.py does):

- a NIR Threshold is NOT memory-less as a CUBA neuron with du = dv = 4095 alone: dv = 4095
  keeps trunc(v / 4096) of v, and a large negative v suppresses the next step's spike
  (counterexample below); with a reset before every step (``LIFReset``, reset_interval 1,
  what the quantizer writes) it is exactly z = [x > θ] on random inputs;
- reset by subtraction (``lava_cuba.PySubtractResetModel``: Lava's model with only
  ``reset_voltage`` replaced) equals ``fixed_cuba`` with reset_mode "subtract", and so does a
  constant current u_bias summed into a_in, on random parameters and inputs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCRIPT = r"""
import json
import numpy as np
from lava.proc.lif.models import PyLifModelBitAcc, PyLifResetModelBitAcc
from spikedet.sim.fixed_cuba import CubaState, cuba_step
from spikedet.sim.lava_cuba import PySubtractResetModel
from spikedet.sim.qgraph import QPopulation

class Port:
    data = None
    def recv(self):
        return self.data
    def send(self, d):
        self.data = d

def model(cls, params, N, du, dv, vth, bias, bias_exp):
    m = cls(params)
    m.a_in, m.s_out = Port(), Port()
    m.u, m.v = np.zeros(N, np.int32), np.zeros(N, np.int32)
    m.du, m.dv, m.vth = du, dv, vth
    m.bias_mant, m.bias_exp = bias.astype(np.int16), np.full(N, bias_exp, np.int16)
    return m

def run(m, a):
    out = []
    for t, a_t in enumerate(a):
        m.time_step = t + 1
        m.a_in.data = np.asarray(a_t, np.int32)
        m.run_spk()
        out.append(np.asarray(m.s_out.data).astype(int).tolist())
    return out

report = {}
# 1. du = dv = 4095 without a reset: v = -2^22 leaves trunc(v / 4096) = -1024 in the next step
vth, zero = 100, np.zeros(1, np.int64)
a = [[-(1 << 16)], [vth + 1]]  # Heaviside of the second step: vth + 1 > vth, a spike
plain = model(PyLifModelBitAcc, {}, 1, 4095, 4095, vth, zero, 0)
report["no_reset"] = run(plain, a)
reset = model(PyLifResetModelBitAcc, {"reset_interval": 1, "reset_offset": 0}, 1, 4095, 4095,
              vth, zero, 0)
report["reset_every_step"] = run(reset, a)
# random inputs: with the reset every step the spikes are exactly [a_t + b > vth]
rng = np.random.default_rng(5)
N, T = 256, 40
bias = rng.integers(-4096, 4096, N)
heaviside_mismatches = 0
m = model(PyLifResetModelBitAcc, {"reset_interval": 1, "reset_offset": 0}, N, 4095, 4095,
          3000, bias, 6)
a = rng.integers(-(1 << 16), 1 << 16, (T, N))
s = np.asarray(run(m, a))
heaviside_mismatches = int((s != ((a + bias) > 3000)).sum())
report["heaviside_mismatches"] = heaviside_mismatches
report["heaviside_spikes"] = int(s.sum())
# 2. subtract reset and u_bias: Lava (+ our reset_voltage) vs fixed_cuba
values = mismatches = spikes = 0
for k in range(30):
    du, dv = int(rng.integers(0, 4096)), int(rng.choice([0, rng.integers(0, 4096)]))
    vth, bias_exp = int(rng.integers(0, 1 << 12)), int(rng.integers(0, 8))
    bias = rng.integers(-4096, 4096, N)
    u_bias = rng.integers(-(1 << 10), 1 << 10, N)
    m = model(PySubtractResetModel, {"reset_interval": 7, "reset_offset": 1}, N, du, dv, vth,
              bias, bias_exp)
    pop = QPopulation("p", "cuba", (N, 1, 1), theta=64, bias=bias, D=1, du=du, dv=dv, vth=vth,
                      bias_exp=bias_exp, reset_interval=7, reset_offset=0,
                      reset_mode="subtract", u_bias=u_bias)
    state = CubaState.zeros((N, 1, 1))
    a = rng.integers(-(1 << 12), 1 << 12, (T, N))
    for t in range(T):
        m.time_step = t + 1
        m.a_in.data = (a[t] + u_bias).astype(np.int32)  # the InPort's sum with the constant
        m.run_spk()
        ours = cuba_step(state, a[t].reshape(N, 1, 1), pop, t)
        for x, y in ((state.u, m.u), (state.v, m.v), (ours, m.s_out.data)):
            mismatches += int((x.reshape(-1) != np.asarray(y).astype(np.int64)).sum())
            values += N
        spikes += int(np.asarray(m.s_out.data).sum())
report.update(subtract_values=values, subtract_mismatches=mismatches, subtract_spikes=spikes)
print(json.dumps(report))
"""


def test_threshold_and_subtract_reset_in_lavas_arithmetic(
    lava_python: Path, repo_root: Path
) -> None:
    proc = subprocess.run(
        [str(lava_python), "-c", SCRIPT], capture_output=True, text=True, cwd=repo_root,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{report}")
    # without the reset the large negative v of step 0 hides step 1's spike: not memory-less
    assert report["no_reset"] == [[0], [0]]
    assert report["reset_every_step"] == [[0], [1]]
    assert report["heaviside_mismatches"] == 0 and report["heaviside_spikes"] > 1000
    assert report["subtract_mismatches"] == 0 and report["subtract_values"] > 900_000
    assert report["subtract_spikes"] > 1000


def test_cuba_fields_round_trip_and_checks(tmp_path: Path) -> None:
    """reset_mode and u_bias (rows) survive save/load; bad values are refused naming the
    population; a population without them keeps its old header (written only when set)."""
    import numpy as np
    import pytest

    from spikedet.errors import SpikedetError
    from spikedet.sim.qgraph import QInput, QPopulation, QSynapse, QuantGraph

    def pop(name: str = "p", **kw) -> QPopulation:
        args = dict(theta=64, bias=[0, 0], D=1, du=2047, dv=2048, vth=10, kind="cuba")
        return QPopulation(name, shape=(2, 1, 1), **{**args, **kw})

    rows = np.array([[0, 0], [3, -2]])
    qg = QuantGraph(
        T=4, input=QInput((1, 1, 1), 1),
        populations=[pop(reset_mode="subtract", u_bias=rows), pop("r", kind="li", vth=131071)],
        synapses=[QSynapse("s", "input", "p", np.ones((2, 1, 1, 1))),
                  QSynapse("t", "p", "r", np.ones((2, 2, 1, 1)))],
    )  # fmt: skip
    qg.save(tmp_path / "g.npz")
    back = QuantGraph.load(tmp_path / "g.npz")
    assert back.pop("p").reset_mode == "subtract"
    assert np.array_equal(back.pop("p").u_bias, rows) and back.pop("r").kind == "li"
    assert back.pop("r").reset_mode == "zero" and back.pop("r").u_bias.size == 0
    with np.load(tmp_path / "g.npz") as z:
        header = json.loads(str(z["header"]))
    assert not {"reset_mode", "u_bias"} & set(header["populations"][1])
    for bad, what in (
        (dict(reset_mode="halve"), "reset_mode"),
        (dict(u_bias=[1, 2, 3]), "u_bias"),
        (dict(u_bias=[1 << 17, 0]), "2\\^17"),
        (dict(kind="lif", vth=1, reset_mode="subtract"), "fields of cuba"),
    ):
        with pytest.raises(SpikedetError, match=what) as err:
            pop(**bad)
        assert "population p" in str(err.value)
