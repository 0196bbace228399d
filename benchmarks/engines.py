"""Engine speed (issue 18): the `fixed` engine, the float reference and the torch model at full
size, side by side; ``--lava``: the fixed engine against Lava on small graphs.

    .venv/bin/python benchmarks/engines.py                     # the whole table (long; the 640 px
                                                               # reference needs ~10 GB)
    .venv/bin/python benchmarks/engines.py --config spikeyolo-n:320:1 --threads 1 --repeats 1
    .venv/bin/python benchmarks/engines.py --no-reference-above 320 --threads 1
    .venv/bin/python benchmarks/engines.py --engines fixed,torch --config spikeyolo-s:640:1
    .venv/bin/python benchmarks/engines.py --lava [--quick]

Full size, per configuration MODEL:IMGSZ:T (random weights, BN statistics randomized so spikes
span 0..D; batch 1, one image):
- one subprocess exports the NIR graph and quantizes it for loihi2 (once per configuration);
- per thread count, one subprocess times the engines interleaved (round r runs every engine
  still owed a repeat, so a load spike on the shared machine hits all alike), best of
  ``--repeats`` (the reference: of ``--reference-repeats``):
  ``fixed`` (exact integers), ``torch`` (the model with RepConv chains fused by
  ``reparameterize()``: the network that is exported), ``torch-train`` (the unfused training
  form), ``reference`` (the NIR graph in torch float32 on the CPU);
- per thread count, one fresh subprocess per engine runs it once and reports its peak memory
  (``ru_maxrss``: interpreter, libraries and the loaded graph or model included).
Threads: OMP/OPENBLAS/MKL_NUM_THREADS in the subprocess and ``torch.set_num_threads``.
Printed: one row per configuration and thread count with the ratios to the torch model (time
and memory), the load average (1 min) before/after, then the goals of issue 18 (fixed <= 1.0x
the torch model's time; reference <= 1.2x its time and <= 1.5x its peak memory), met or missed
by how much, for every 1-thread row.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENGINES = ("fixed", "torch", "torch-train", "reference")
DEFAULT_CONFIGS = (
    "spikeyolo-n:320:1",
    "spikeyolo-n:640:1",
    "spikeyolo-s:320:1",
    "spikeyolo-s:640:1",
    "ems-res10-avg:320:5",
)
GOALS = {"fixed_time": 1.0, "reference_time": 1.2, "reference_memory": 1.5}  # x the torch model


# ---- one engine, built from the prepared files (timing and memory children share these) ----


def _torch_model(name: str, imgsz: int, T: int, fused: bool):
    import torch

    from spikedet.train.models.registry import build_model
    from tests.model_helpers import randomize_bn

    torch.manual_seed(0)
    model = build_model(name, imgsz=imgsz, T=T)
    randomize_bn(model)
    model.eval()
    if fused and hasattr(model, "reparameterize"):
        model.reparameterize()
    return model


def _image(imgsz: int) -> np.ndarray:
    return np.random.default_rng(1).random((1, 3, imgsz, imgsz), dtype=np.float32)


def _fixed_engine(threads: int):
    from spikedet.sim.fixed import FixedEngine

    # the engine's own thread knob where it has one; BLAS follows the environment anyway
    if "threads" in inspect.signature(FixedEngine).parameters:
        return FixedEngine(threads=threads)
    return FixedEngine()


def runner(engine: str, name: str, imgsz: int, T: int, work: Path, threads: int):
    """A call running ``engine`` once on the benchmark image (graph or model loaded here)."""
    if engine == "fixed":
        from spikedet.sim.qgraph import QuantGraph

        qg, x_int = QuantGraph.load(work / "graph.npz"), np.load(work / "x_int.npy")
        fixed = _fixed_engine(threads)
        return lambda: fixed.run(qg, x_int)
    import torch

    torch.set_num_threads(threads)
    x = _image(imgsz)
    if engine == "reference":
        from spikedet.sim.reference import ReferenceEngine

        ref = ReferenceEngine(work / "model.nir", device="cpu")
        return lambda: ref.run_float(x, T=T, batch=1)
    model, xt = _torch_model(name, imgsz, T, fused=engine == "torch"), torch.from_numpy(x)

    def forward():
        with torch.no_grad():
            model(xt)

    return forward


def child_prepare(name: str, imgsz: int, T: int, work: Path) -> dict:
    """Export + quantize once: model.nir, graph.npz, x_int.npy in ``work``."""
    from spikedet.convert.nir_export import export_model, write_nir
    from spikedet.deploy.nir_read import read_nir
    from spikedet.deploy.quantize import quantize

    nir_path = work / "model.nir"
    model = _torch_model(name, imgsz, T, fused=True)
    write_nir(export_model(model, imgsz), nir_path)
    fg = read_nir(nir_path)
    qg = quantize(fg)
    qg.save(work / "graph.npz")
    np.save(work / "x_int.npy", np.rint(_image(imgsz) * fg.input_scale).astype(np.int64))
    neurons = sum(p.size for p in qg.populations)
    fusable = hasattr(model, "reparameterize")  # else the training form is the same network
    return {
        "populations": len(qg.populations),
        "synapses": len(qg.synapses),
        "neurons": neurons,
        "fusable": fusable,
    }


def child_time(name: str, imgsz: int, T: int, work: Path, threads: int, plan: dict) -> dict:
    """``plan``: engine -> repeats. Each is warmed up once, then timed in interleaved rounds."""
    calls = {e: runner(e, name, imgsz, T, work, threads) for e in plan}
    for call in calls.values():
        call()  # warm-up (the fixed engine prepares the graph on its first run)
    best: dict[str, float] = {}
    for r in range(max(plan.values())):
        for engine, call in calls.items():
            if r < plan[engine]:
                t0 = time.perf_counter()
                call()
                best[engine] = min(best.get(engine, float("inf")), time.perf_counter() - t0)
    return {f"{e}_s": s for e, s in best.items()}


def _reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) from the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError("no VmHWM in /proc/self/status")


def child_memory(engine: str, name: str, imgsz: int, T: int, work: Path, threads: int) -> dict:
    """Peak memory of one engine in this fresh process: ``{engine}_process_mb``, the whole
    process (construction, fusion, first-run preparation included: ru_maxrss), and
    ``{engine}_mb``, the peak during a second run (what stays resident plus the run's own
    working memory), which the table and the goals use; without a resettable peak count
    (not Linux) both are the process peak."""
    call = runner(engine, name, imgsz, T, work, threads)
    call()
    process_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gc.collect()
    run_mb = process_mb
    if _reset_peak():
        call()
        run_mb = _vm_hwm_mb()
    return {f"{engine}_mb": run_mb, f"{engine}_process_mb": process_mb}


# ---- the parent: subprocesses, rows, table, goals ----


def _spawn(threads: int, *args: str) -> dict:
    env = {**os.environ}
    env |= {k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(threads), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(config: str, args: argparse.Namespace) -> list[dict]:
    """One row per thread count for ``MODEL:IMGSZ:T``."""
    name, imgsz, T = config.split(":")
    engines = [e for e in args.engines if e != "reference" or int(imgsz) <= args.reference_max]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        info = _spawn(1, "prepare", name, imgsz, T, tmp)
        if not info["fusable"]:  # nothing to fuse: torch and torch-train are one network
            engines = [e for e in engines if e != "torch-train"]
        plan = {e: args.reference_repeats if e == "reference" else args.repeats for e in engines}
        for threads in args.threads:
            row = {"config": f"{name} {imgsz} px T={T}", "threads": threads, **info}
            row["load_before"] = os.getloadavg()[0]
            row |= _spawn(threads, "time", name, imgsz, T, tmp, json.dumps(plan))
            for engine in engines:
                row |= _spawn(threads, engine, name, imgsz, T, tmp)
            row["load_after"] = os.getloadavg()[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def ratios(row: dict, base: str = "torch") -> dict:
    """fixed / torch and reference / torch (time, memory); ``base``: ``torch`` (the fused
    model) or ``torch-train`` (its training form)."""
    out = {}
    for key, (num, den) in {
        "fixed_time": ("fixed_s", f"{base}_s"),
        "reference_time": ("reference_s", f"{base}_s"),
        "fixed_memory": ("fixed_mb", f"{base}_mb"),
        "reference_memory": ("reference_mb", f"{base}_mb"),
    }.items():
        if num in row and den in row:
            out[key] = row[num] / row[den]
    return out


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def table(rows: list[dict]) -> str:
    head = (
        f"{'configuration':24} {'thr':>3} {'fixed s':>8} {'torch s':>8} {'train s':>8} "
        f"{'ref s':>7} {'fix/tor':>7} {'ref/tor':>7} {'fixed MB':>8} {'torch MB':>8} "
        f"{'train MB':>8} {'ref MB':>7} {'fix/tor':>7} {'ref/tor':>7} {'load':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        q = ratios(r)
        lines.append(
            f"{r['config']:24} {r['threads']:>3} {_cell(r, 'fixed_s', '.3f'):>8} "
            f"{_cell(r, 'torch_s', '.3f'):>8} {_cell(r, 'torch-train_s', '.3f'):>8} "
            f"{_cell(r, 'reference_s', '.2f'):>7} {_cell(q, 'fixed_time', '.2f'):>7} "
            f"{_cell(q, 'reference_time', '.2f'):>7} {_cell(r, 'fixed_mb', '.0f'):>8} "
            f"{_cell(r, 'torch_mb', '.0f'):>8} {_cell(r, 'torch-train_mb', '.0f'):>8} "
            f"{_cell(r, 'reference_mb', '.0f'):>7} {_cell(q, 'fixed_memory', '.2f'):>7} "
            f"{_cell(q, 'reference_memory', '.2f'):>7} "
            f"{r['load_before']:>4.1f}/{r['load_after']:<4.1f}"
        )
    lines.append(
        "time: best of N, batch 1; MB: peak RSS during a run, in a fresh process per engine "
        "(model / graph resident); ratios to the fused torch model ('train': its unfused form)"
    )
    for r in rows:
        process = ", ".join(
            f"{e} {r[e + '_process_mb']:.0f}" for e in ENGINES if e + "_process_mb" in r
        )
        where = f"{r['config']}, {r['threads']} thread(s)"
        lines.append(f"process peak MB (construction included), {where}: {process}")
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    """Every 1-thread row against the issue's goals (x the fused torch model): met, or missed
    by how much; in brackets the same ratio to the training form, where it was measured."""
    text = {
        "fixed_time": "fixed time",
        "reference_time": "reference time",
        "reference_memory": "reference memory",
    }
    limits = ", ".join(f"{text[k]} <= {v}x" for k, v in GOALS.items())
    lines = [f"goals (1 thread, x the fused torch model; [x its training form]): {limits}"]
    for r in (r for r in rows if r["threads"] == 1):
        q, q_train, parts = ratios(r), ratios(r, "torch-train"), []
        for key, limit in GOALS.items():
            if key not in q:
                parts.append(f"{text[key]} not measured")
                continue
            verdict = "met" if q[key] <= limit else f"missed by {q[key] / limit - 1:.0%}"
            train = f" [{q_train[key]:.2f}x]" if key in q_train else ""
            parts.append(f"{text[key]} {q[key]:.2f}x{train} {verdict}")
        lines.append(f"  {r['config']}: " + "; ".join(parts))
    return "\n".join(lines)


def _child(argv: list[str]) -> int:
    threads, kind, name, imgsz, T, work, *rest = argv
    shape = (name, int(imgsz), int(T), Path(work))
    if kind == "prepare":
        row = child_prepare(*shape)
    elif kind == "time":
        row = child_time(*shape, int(threads), json.loads(rest[0]))
    else:
        row = child_memory(kind, *shape, int(threads))
    print(json.dumps(row))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--config", action="append", help="MODEL:IMGSZ:T (repeatable)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="default: 1 2")
    ap.add_argument(
        "--engines",
        type=lambda s: [e for e in s.split(",") if e],
        default=list(ENGINES),
        help=f"comma-separated subset of {','.join(ENGINES)}",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-repeats", type=int, default=2)
    ap.add_argument(
        "--no-reference-above",
        dest="reference_max",
        type=int,
        default=1 << 30,
        metavar="PX",
        help="skip the float reference on configurations larger than PX",
    )
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    ap.add_argument("--lava", action="store_true", help="fixed vs Lava on small graphs instead")
    ap.add_argument("--quick", action="store_true", help="--lava: T=2 conv net, one repeat")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child)
    if args.lava:
        from engines_lava import lava_main

        return lava_main(args.quick)
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        ap.error(f"unknown engine(s) {unknown}; choose from {ENGINES}")
    if not args.reference:
        args.engines = [e for e in args.engines if e != "reference"]
    rows = [row for config in args.config or DEFAULT_CONFIGS for row in measure(config, args)]
    print(table(rows))
    print(goals(rows))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
