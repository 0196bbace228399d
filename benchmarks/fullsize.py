"""Engine speed at full size (issue 18): the `fixed` engine against the torch model itself.

    .venv/bin/python benchmarks/fullsize.py [--config spikeyolo-n:320:1 ...] [--repeats 5]
                                            [--no-reference] [--out FILE.json]

Per configuration MODEL:IMGSZ:T (random weights, BN statistics randomized so spikes span 0..D,
RepConv chains fused with ``reparameterize()``; batch 1, one thread everywhere):
- one subprocess exports NIR, quantizes for loihi2 and times the fused torch model and the
  fixed engine interleaved in the same process (the machine is shared: load hits both alike),
  best of ``--repeats``; the float reference engine (the NIR graph in torch) best of 2;
- one fresh subprocess per engine runs it once and reports its peak memory (ru_maxrss,
  which includes the interpreter and the loaded graph / model).
Prints the table with ratios and the goal (fixed <= 1.0x the torch model's time) and the load
average (1 min) before and after each configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
DEFAULT = ("spikeyolo-n:320:1", "spikeyolo-s:320:1", "ems-res10-avg:320:5")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _torch_model(name: str, imgsz: int, T: int):
    import torch

    from spikedet.train.models.registry import build_model
    from tests.model_helpers import randomize_bn

    torch.manual_seed(0)
    model = build_model(name, imgsz=imgsz, T=T)
    randomize_bn(model)
    model.eval()
    if hasattr(model, "reparameterize"):
        model.reparameterize()
    return model


def _image(imgsz: int):
    import numpy as np

    return np.random.default_rng(1).random((1, 3, imgsz, imgsz), dtype=np.float32)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def child_time(name: str, imgsz: int, T: int, work: Path, repeats: int, reference: bool) -> dict:
    """Export + quantize, then time torch and fixed interleaved (and the reference)."""
    import numpy as np
    import torch

    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.deploy.nir_read import read_nir
    from spikedet.deploy.quantize import quantize
    from spikedet.sim.fixed import FixedEngine

    torch.set_num_threads(1)
    model = _torch_model(name, imgsz, T)
    nir_path = work / "model.nir"
    write_nir(export_model(model, imgsz), nir_path)
    fg = read_nir(nir_path)
    qg = quantize(fg)
    qg.save(work / "graph.npz")
    x = _image(imgsz)
    x_int = np.rint(x * fg.input_scale).astype(np.int64)
    np.save(work / "x_int.npy", x_int)
    engine = FixedEngine()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        model(xt)  # warm-up (and the fixed engine's first run prepares the graph)
        engine.run(qg, x_int)
        fixed_s, torch_s = [], []
        for _ in range(repeats):  # interleaved: a load spike hits both alike
            fixed_s.append(_best(lambda: engine.run(qg, x_int), 1))
            torch_s.append(_best(lambda: model(xt), 1))
    row = {"fixed_s": min(fixed_s), "torch_s": min(torch_s)}
    if reference:
        from spikedet.sim.reference import ReferenceEngine

        ref = ReferenceEngine(nir_path, device="cpu")
        row["reference_s"] = _best(lambda: ref.run_float(x, T=qg.T, batch=1), 2)
    row["populations"], row["synapses"] = len(qg.populations), len(qg.synapses)
    row["neurons"] = sum(p.size for p in qg.populations)
    return row


def child_memory(kind: str, name: str, imgsz: int, T: int, work: Path) -> dict:
    """One run of one engine in this fresh process: its peak memory."""
    import numpy as np

    if kind == "fixed":
        from spikedet.sim.fixed import FixedEngine
        from spikedet.sim.qgraph import QuantGraph

        FixedEngine().run(QuantGraph.load(work / "graph.npz"), np.load(work / "x_int.npy"))
    elif kind == "torch":
        import torch

        torch.set_num_threads(1)
        with torch.no_grad():
            _torch_model(name, imgsz, T)(torch.from_numpy(_image(imgsz)))
    else:
        import torch

        from spikedet.sim.qgraph import QuantGraph
        from spikedet.sim.reference import ReferenceEngine

        torch.set_num_threads(1)
        steps = QuantGraph.load(work / "graph.npz").T
        ReferenceEngine(work / "model.nir", device="cpu").run_float(_image(imgsz), T=steps, batch=1)
    return {f"{kind}_mb": _peak_mb()}


def _spawn(*args: str) -> dict:
    env = {**os.environ, **ONE_THREAD}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(config: str, repeats: int, reference: bool) -> dict:
    name, imgsz, T = config.split(":")
    row: dict = {"config": f"{name} {imgsz} px T={T}", "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        row.update(_spawn("time", name, imgsz, T, tmp, str(repeats), str(int(reference))))
        for kind in ("fixed", "torch") + (("reference",) if reference else ()):
            row.update(_spawn(kind, name, imgsz, T, tmp))
    row["load_after"] = os.getloadavg()[0]
    return row


def table(rows: list[dict]) -> str:
    head = (
        f"{'configuration':26} {'fixed s':>8} {'torch s':>8} {'ref s':>7} {'fixed/torch':>11} "
        f"{'fixed MB':>9} {'torch MB':>9} {'ref MB':>8} {'load':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ref_s = f"{r['reference_s']:.2f}" if "reference_s" in r else "-"
        ref_mb = f"{r['reference_mb']:.0f}" if "reference_mb" in r else "-"
        ratio = r["fixed_s"] / r["torch_s"]
        lines.append(
            f"{r['config']:26} {r['fixed_s']:>8.3f} {r['torch_s']:>8.3f} {ref_s:>7} "
            f"{ratio:>10.2f}x {r['fixed_mb']:>9.0f} {r['torch_mb']:>9.0f} {ref_mb:>8} "
            f"{r['load_before']:>4.1f}/{r['load_after']:<4.1f}"
        )
    worst = max(r["fixed_s"] / r["torch_s"] for r in rows)
    verdict = "met" if worst <= 1.0 else f"missed by {worst - 1:.0%} at worst"
    lines.append(f"goal fixed <= 1.0x torch model time: {verdict}; 1 thread, batch 1, best of N")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", help="MODEL:IMGSZ:T (repeatable)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        kind, name, imgsz, T, work, *rest = args.child
        if kind == "time":
            row = child_time(name, int(imgsz), int(T), Path(work), int(rest[0]), rest[1] == "1")
        else:
            row = child_memory(kind, name, int(imgsz), int(T), Path(work))
        print(json.dumps(row))
        return 0
    rows = []
    for config in args.config or DEFAULT:
        rows.append(measure(config, args.repeats, args.reference))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
