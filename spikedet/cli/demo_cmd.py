"""`spikedet demo`: the whole pipeline end to end on a tiny SpikeYOLO detector.

data (synthetic COCO, PNG + instances JSON) -> train spikeyolo-pico (I-LIF, D=4) -> export NIR
-> deploy on loihi2-sim with the fixed and Lava engines -> report, then a closing summary.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

# Dataset sizes per mode; the training schedule for each mode lives in
# spikedet.train.trainer.demo_config (measured there).
DATA_SIZES = {True: (400, 60), False: (1500, 150)}
IMGSZ = 64
SEED = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline end to end on a tiny detector (data, train, export, deploy)",
        description=(
            "Generate synthetic COCO data, train spikeyolo-pico, export it to NIR, deploy it on "
            "loihi2-sim with the fixed and Lava engines (compared spike for spike) and write "
            "the hardware report."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--fast", action="store_true", help="small data and schedule (about 2 min)")
    p.add_argument(
        "--engine",
        default="both",
        choices=("fixed", "both"),
        help="both (default): fixed on the val set and Lava on --samples images",
    )
    p.add_argument("--samples", type=int, default=2, help="images run through Lava")
    p.set_defaults(func=run)


def _stage(i: int, n: int, text: str) -> None:
    print(f"\n== [{i}/{n}] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    import nir

    from spikedet.convert.nir_export import export_model, parameter_coverage, write_nir
    from spikedet.data.synth_coco import write_synthetic_coco
    from spikedet.deploy.pipeline import DeployOptions, run_deploy
    from spikedet.fileio import write_json
    from spikedet.train.checkpoint import load_model
    from spikedet.train.trainer import demo_config, train

    out: Path = args.out
    t0 = time.perf_counter()
    n_train, n_val = DATA_SIZES[bool(args.fast)]

    _stage(1, 4, f"data: synthetic COCO, {n_train} train + {n_val} val images at {IMGSZ} px")
    data = out / "data"
    info = write_synthetic_coco(data, n_train=n_train, n_val=n_val, imgsz=IMGSZ, seed=SEED)
    splits = info["splits"]
    print(
        f"wrote {data}: {splits['train']['images']} train / {splits['val']['images']} val images, "
        f"{splits['train']['boxes']} / {splits['val']['boxes']} boxes, classes "
        + ", ".join(c["name"] for c in info["categories"]),
        flush=True,
    )

    cfg = demo_config(fast=bool(args.fast), data=str(data), out=str(out / "train"))
    _stage(2, 4, f"train: {cfg.model}, {cfg.epochs} epochs, batch {cfg.batch} (CPU)")
    result = train(cfg, progress=True)
    print(
        f"best val mAP@50 {result['best_map50']:.3f}, mAP@50:95 {result['best_map']:.3f} "
        f"in {result['seconds']:.0f} s -> {result['best']}",
        flush=True,
    )

    _stage(3, 4, "export: NIR (nir.write, read back with nir.read)")
    model = load_model(result["best"])
    graph = export_model(model, data=asdict(cfg))
    nir_path = out / "model.nir"
    write_nir(graph, nir_path)
    back = nir.read(str(nir_path))
    cover = parameter_coverage(model, back)
    print(
        f"{nir_path}: {len(back.nodes)} nodes, {len(back.edges)} edges, "
        f"{cover['graph_params']} of {cover['folded_params']} folded parameters",
        flush=True,
    )

    _stage(4, 4, f"deploy: loihi2-sim, engine {args.engine}")
    report = run_deploy(
        DeployOptions(
            nir_path=nir_path,
            out=out / "deploy",
            target="loihi2-sim",
            engine=args.engine,
            data=data,
            split="val",
            samples=args.samples,
        )
    )
    summary = _summary(report, result, time.perf_counter() - t0)
    write_json(out / "summary.json", summary)
    print("\n" + _format_summary(summary), flush=True)
    return 0


def _summary(report: dict, train_result: dict, seconds: float) -> dict:
    val = report["validation"]
    lava = val.get("lava_vs_fixed")
    totals = report["totals"]
    return {
        "float_map50": val["map"].get("reference_float", {}).get("map50"),
        "float_map": val["map"].get("reference_float", {}).get("map"),
        "train_best_map50": train_result["best_map50"],
        "deployed_map50": val["map"]["deployed_fixed"]["map50"],
        "deployed_map": val["map"]["deployed_fixed"]["map"],
        "lava_samples": lava["samples"] if lava else 0,
        "lava_spike_mismatches": lava["total_mismatches"] if lava else None,
        "cores": report["mapping"]["cores"],
        "chips": report["mapping"]["chips"],
        "energy_uj_per_inference": totals["energy_total_pj"] / 1e6,
        "dynamic_energy_uj_per_inference": totals["energy_dynamic_pj"] / 1e6,
        "cmos45nm_snn_uj": report["cmos45nm"]["energy_pj"] / 1e6,
        "cmos45nm_ann_uj": report["cmos45nm"]["ann"]["energy_pj"] / 1e6,
        "seconds": round(seconds, 1),
    }


def _format_summary(s: dict) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lava = (
        f"{s['lava_spike_mismatches']} spike mismatches on {s['lava_samples']} sample(s)"
        if s["lava_samples"]
        else "not run"
    )
    return "\n".join(
        [
            "spikedet demo — summary",
            f"  float mAP@50 / mAP@50:95 (reference) : {f(s['float_map50'])} / {f(s['float_map'])}",
            f"  deployed mAP@50 / mAP@50:95 (fixed)  : {f(s['deployed_map50'])} / {f(s['deployed_map'])}",
            f"  Lava vs fixed engine                 : {lava}",
            f"  cores used on loihi2                 : {s['cores']} ({s['chips']} chip(s))",
            f"  energy per inference (loihi2)        : {s['energy_uj_per_inference']:.3f} uJ "
            f"({s['dynamic_energy_uj_per_inference']:.3f} uJ dynamic, the rest static)",
            f"  45 nm model: SNN / equivalent ANN    : {s['cmos45nm_snn_uj']:.3f} / {s['cmos45nm_ann_uj']:.3f} uJ",
            f"  wall time                            : {s['seconds']:.0f} s",
        ]
    )
