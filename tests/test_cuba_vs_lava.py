"""The ``cuba`` arithmetic (``spikedet.sim.fixed_cuba``) against Lava's own code: lava-nc 0.10.0's
``PyLifModelBitAcc`` and ``PyLifResetModelBitAcc`` process-model classes, instantiated in
``.venv-lava`` and stepped by calling their ``run_spk`` with stand-in ports (the runtime does the
same with real channels). Random parameters and inputs cover what Intel's recordings do not:
every decay range (du = 0 and 4094 included), negative states (rounding toward zero), inputs that
make u wrap (|a| up to the 24-bit synapse range), v clipping, any bias exponent, per-neuron bias
mantissas and a periodic reset. Any difference is a bug in our model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCRIPT = r"""
import json, sys
import numpy as np
from lava.proc.lif.models import PyLifModelBitAcc, PyLifResetModelBitAcc
from spikedet.sim.fixed_cuba import CubaState, cuba_step
from spikedet.sim.qgraph import QPopulation

class Port:
    data = None
    def recv(self):
        return self.data
    def send(self, d):
        self.data = d

rng = np.random.default_rng(int(sys.argv[1]))
report = {"configs": 0, "values": 0, "mismatches": 0, "wraps": 0, "clips": 0, "spikes": 0,
          "negative_u": 0, "u_beyond_25_bits": 0}
N, T = 64, 80
for k in range(60):
    du = int(rng.choice([0, 4094, 4095, rng.integers(0, 4096)]))
    dv = int(rng.choice([0, 4095, rng.integers(0, 4096)]))
    vth = int(rng.choice([0, 25, rng.integers(0, 1 << 17)]))
    bias_exp = int(rng.integers(0, 8))
    bias = rng.integers(-4096, 4096, N)
    R = int(rng.choice([0, 0, 3, 7]))
    scale = int(rng.choice([1 << 4, 1 << 12, 1 << 23]))
    a = rng.integers(-scale, scale, (T, N)).clip(-(1 << 23), (1 << 23) - 1).astype(np.int32)
    if R:
        m = PyLifResetModelBitAcc({"reset_interval": R, "reset_offset": 1})
    else:
        m = PyLifModelBitAcc({})
    m.a_in, m.s_out = Port(), Port()
    m.u, m.v = np.zeros(N, np.int32), np.zeros(N, np.int32)
    m.du, m.dv, m.vth = du, dv, vth
    m.bias_mant, m.bias_exp = bias.astype(np.int16), np.full(N, bias_exp, np.int16)
    pop = QPopulation("p", "cuba", (N, 1, 1), theta=64, bias=bias, D=1, du=du, dv=dv, vth=vth,
                      bias_exp=bias_exp, reset_interval=R, reset_offset=0)
    state = CubaState.zeros((N, 1, 1))
    for t in range(T):
        m.time_step = t + 1  # Lava counts from 1; its offset 1 = our logical offset 0
        m.a_in.data = a[t]
        m.run_spk()
        s = cuba_step(state, a[t].astype(np.int64).reshape(N, 1, 1), pop, t)
        for ours, lava in ((state.u, m.u), (state.v, m.v), (s, m.s_out.data)):
            report["mismatches"] += int((ours.reshape(-1) != np.asarray(lava).astype(np.int64)).sum())
            report["values"] += N
        pre = a[t].astype(np.int64) << 6
        report["wraps"] += int((np.abs(pre) >= 1 << 23).sum())
        report["clips"] += int((np.abs(m.v) == (1 << 23) - 1).sum())
        report["spikes"] += int(np.asarray(m.s_out.data).sum())
        report["negative_u"] += int((m.u < 0).sum())
        report["u_beyond_25_bits"] += int((np.abs(m.u.astype(np.int64)) >= 1 << 25).sum())
    report["configs"] += 1
print(json.dumps(report))
"""


def test_cuba_step_equals_lavas_bit_accurate_lif(lava_python: Path, repo_root: Path) -> None:
    for seed in (1, 2, 3, 4):
        proc = subprocess.run(
            [str(lava_python), "-c", SCRIPT, str(seed)],
            capture_output=True,
            text=True,
            cwd=repo_root,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"\nseed {seed}: {report}")
        assert report["mismatches"] == 0, report
        # the random cases really reach the edges
        assert report["wraps"] > 0 and report["clips"] > 0 and report["spikes"] > 0
        assert report["negative_u"] > 0 and report["values"] > 900_000
        assert report["u_beyond_25_bits"] > 0  # the int32 regime of Lava's one-shot wrap
