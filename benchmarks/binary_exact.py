"""Binary (spike-driven) vs integer I-LIF inference on spikeyolo-s at full size (640 px).

Checks the claim of docs/semantics.md §1.1 at the size where float32 slot sums stop agreeing:
the re-parameterised spikeyolo-s (random BN statistics so every level 0..4 fires) runs once in
integer mode and once in binary mode (D = 4 thermometer slots per step), both with float32
sums and both with exact sums (``set_spike_mode(..., exact=True)``), and reports how many spikes
and outputs differ. Run: ``.venv/bin/python benchmarks/binary_exact.py [--imgsz 640]``
(about 10 minutes on 2 CPU cores); ``--out FILE`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spikedet.train.models.registry import build_model  # noqa: E402
from spikedet.train.neurons import set_spike_mode  # noqa: E402
from tests.model_helpers import randomize_bn, run_with_spikes  # noqa: E402


def run(model, x, mode: str, exact: bool):
    set_spike_mode(model, mode, exact=exact)
    t0 = time.perf_counter()
    outs, spikes = run_with_spikes(model, x)
    return outs, spikes, time.perf_counter() - t0


def differ(a: dict, b: dict) -> int:
    return sum(int((a[k] != b[k]).sum()) for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("spikeyolo-s", imgsz=args.imgsz)
    randomize_bn(model)
    model.eval().reparameterize()
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(1))
    res = {}
    for exact in (False, True):
        oi, si, ti = run(model, x, "integer", exact)
        ob, sb, tb = run(model, x, "binary", exact)
        same_out = all(torch.equal(p, q) for pi, pb in zip(oi, ob) for p, q in zip(pi, pb))
        key = "exact" if exact else "float32"
        res[key] = {
            "spikes": sum(int(s.numel()) for s in si.values()),
            "differing_spikes": differ(si, sb),
            "outputs_identical": same_out,
            "seconds": {"integer": round(ti, 1), "binary": round(tb, 1)},
        }
        print(key, json.dumps(res[key]), flush=True)
    if args.out is not None:
        from spikedet.fileio import write_json

        write_json(args.out, {"model": "spikeyolo-s", "imgsz": args.imgsz, **res})
    return 0 if res["exact"]["differing_spikes"] == 0 and res["exact"]["outputs_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
