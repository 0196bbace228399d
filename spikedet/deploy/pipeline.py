"""`spikedet deploy`: NIR file -> quantized graph -> core mapping -> engines -> validation -> report.

Stages (each logs one progress line):
1. read the NIR file (the float contract) and quantize it for the target's precision;
2. map every population onto cores of the target profile (fails naming the layer and limit);
3. run the ``fixed`` engine on the whole split, decode the head readouts (``dfl``: YOLOv8
   distributions, ``anchor``: EMS-YOLO / YOLOv5 anchors) and score mAP;
4. run the float ``reference`` (the NIR graph executed in torch, GPU when present) on the same
   images: per-layer spike agreement, readout error and its mAP;
5. run ``lava`` (if asked) on the first ``samples`` images and compare with ``fixed`` spike for
   spike at every layer and step;
6. count activity, compute energy by the target's figures and the 45 nm model, write the report.

Nothing is written until the report is complete (each report file is renamed into place).
Importing this module does not import torch (the reference engine imports it when it runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikedet.convert.nir_format import graph_input
from spikedet.errors import SpikedetError

ENGINES = ("fixed", "lava", "both")
# NMS IoU per head type when none is given: the families' validation defaults
# (spikedet.train.family.NMS_DEFAULTS, which imports torch, so restated here)
NMS_IOU = {"dfl": 0.7, "anchor": 0.6}


@dataclass
class DeployOptions:
    nir_path: Path
    out: Path
    target: str = "loihi2-sim"
    engine: str = "fixed"
    data: Path | None = None
    dataset: str = "coco"
    split: str = "val"
    samples: int = 2
    batch: int = 32
    workers: int = 1  # processes for the fixed engine (spikedet.deploy.shard)
    ranks: object = None  # torchrun ranks (spikedet.deploy.distributed.Ranks); None: one
    progress: bool = False  # a progress line on stderr (spikedet.deploy.progress)
    reference: bool = True
    conf_thres: float = 0.001
    iou_thres: float | None = None  # None: the head type's default (NMS_IOU)
    # the generic path (spikedet.deploy.generic): an input array instead of a dataset
    input: Path | None = None
    labels: Path | None = None
    dt: float | None = None  # None: graph metadata dt, else assumed (warned)
    reset: str | None = None  # zero / subtract; None: graph metadata, else zero (warned)
    input_scale: float | None = None


def _load_images(opts: DeployOptions, imgsz: int, input_scale: float, T: int, metadata: dict):
    """The evaluation inputs as float (what the torch model saw) and integers (what the chip
    gets): [N, C, H, W] frames for COCO, [T, N, C, H, W] event bins for Gen1 in the
    representation the model was trained on (graph metadata ``spikedet.input``)."""
    if opts.data is None:
        raise SpikedetError(
            "deploy needs --data DIR (a detection dataset) or --input FILE (an input array)",
            "deploy",
        )
    if opts.dataset not in ("coco", "gen1"):
        raise SpikedetError(f"dataset must be coco or gen1, got {opts.dataset!r}", "--dataset")
    if opts.dataset == "coco":
        from spikedet.data.coco import CocoDetectionSet

        ds = CocoDetectionSet.from_root(opts.data, opts.split, imgsz=imgsz, augment=False)
    else:
        from spikedet.data.gen1_dataset import Gen1DetectionSet

        # The graph's T is the number of event bins the model was trained with.
        spec = graph_input(metadata)
        ds = Gen1DetectionSet(
            opts.data, opts.split, T=T, representation=spec["representation"], imgsz=imgsz,
            bins=spec["bins"],
        )  # fmt: skip
    if len(ds) == 0:
        raise SpikedetError(f"no samples in split {opts.split!r}", str(opts.data))
    x = np.stack([ds[i].image for i in range(len(ds))]).astype(np.float32)
    if x.ndim == 5:  # [N, T, C, H, W] -> time first, as the engines take it
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4))
    x_int = np.rint(x * input_scale).astype(np.int64)
    return ds, x, x_int


def _batch_axis(x: np.ndarray) -> int:
    return 1 if x.ndim == 5 else 0


def _take(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of an input array, whichever axis holds the batch."""
    return x[:, start:stop] if _batch_axis(x) else x[start:stop]


def decode_head(
    head: dict, readouts: dict[str, np.ndarray], conf_thres: float, iou_thres: float | None
) -> list[np.ndarray]:
    """Float readout maps -> one [K, 6] (x1, y1, x2, y2, score, cls) array per image, decoded
    as the §2.4 head says: ``dfl`` pairs [box, cls] per stride, ``anchor`` one map of
    na·(nc+5) YOLOv5 logits per stride (``spikedet.anchor_decode``)."""
    iou = NMS_IOU[head["type"]] if iou_thres is None else iou_thres
    if head["type"] == "anchor":
        from spikedet.anchor_decode import postprocess_anchor

        maps = [np.asarray(readouts[name], dtype=np.float32) for name in head["outputs"]]
        anchors = np.asarray(head["anchors"], dtype=np.float64)
        return postprocess_anchor(maps, head["strides"], anchors, conf_thres, iou)
    from spikedet.detection import postprocess

    box_maps = [np.asarray(readouts[box], dtype=np.float32) for box, _ in head["outputs"]]
    cls_maps = [np.asarray(readouts[cls], dtype=np.float32) for _, cls in head["outputs"]]
    return postprocess(box_maps, cls_maps, head["strides"], head["reg_max"], conf_thres, iou)


def _score(ds, head: dict, readouts: dict[str, np.ndarray], opts: DeployOptions) -> dict:
    dets = decode_head(head, readouts, opts.conf_thres, opts.iou_thres)
    if opts.dataset == "gen1":
        from spikedet.metrics.gen1_protocol import collect_detections, evaluate_gen1

        metas = [ds.meta(i) for i in range(len(ds))]
        return evaluate_gen1(ds.labels, collect_detections(metas, dets))
    from spikedet.metrics.coco_map import evaluate

    return evaluate(ds, dets)


def _slice(result, n: int):
    from spikedet.sim.interface import EngineResult

    return EngineResult(
        spikes={k: v[:, :n] for k, v in result.spikes.items()},
        readouts={k: v[:n] for k, v in result.readouts.items()},
        wall_s=result.wall_s,
        engine=result.engine,
    )


def run_deploy(opts: DeployOptions, log: Callable[[str], None] = print) -> dict:
    """Run the whole deploy stage and write ``opts.out/report.{json,md}`` plus plots."""
    from spikedet.deploy.distributed import run_fixed_ranked, run_reference_ranked, serve_rank
    from spikedet.deploy.energy import count_activity, energy_report
    from spikedet.deploy.mapping.mapper import map_graph
    from spikedet.deploy.nir_read import check_head, read_nir
    from spikedet.deploy.profiles import load_profile, resolve_target
    from spikedet.deploy.quantize import quantize
    from spikedet.deploy.report import finish_report
    from spikedet.sim.interface import compare, readout_floats
    from spikedet.sim.registry import available_engine

    if opts.engine not in ENGINES:
        raise SpikedetError(f"unknown engine {opts.engine!r}; choose one of {ENGINES}", "--engine")
    if opts.workers < 1:
        raise SpikedetError(f"workers must be >= 1, got {opts.workers}", "--workers")
    nir_path = Path(opts.nir_path)
    if not nir_path.is_file():
        raise SpikedetError("NIR file not found", str(nir_path))
    if opts.input is not None:  # any NIR network on an input array (docs/semantics.md §4)
        if opts.workers != 1:
            raise SpikedetError("--workers applies to a detection dataset (--data)", "--workers")
        from spikedet.deploy.generic import run_generic_deploy

        return run_generic_deploy(opts, log)
    if opts.labels is not None:
        raise SpikedetError("--labels goes with --input", "--labels")
    profile = resolve_target(opts.target)
    cmos = load_profile("cmos45nm")
    # Ask for Lava up front: an unavailable engine is an error, never a silent fallback.
    lava = available_engine("lava") if opts.engine in ("lava", "both") else None

    t0 = time.perf_counter()
    fg = read_nir(nir_path)
    check_head(fg, str(nir_path))
    # no delay limit here: the mapper relays delays beyond the target's delay_bits (§3.3)
    qg = quantize(
        fg,
        weight_bits=int(profile.weight_bits),
        state_bits=int(profile.state_bits),
        max_delay=None,
    )
    log(
        f"[deploy] {nir_path.name}: {len(qg.populations)} populations, {len(qg.synapses)} "
        f"synapses, T={qg.T}, quantized to {profile.weight_bits}-bit weights"
    )
    mapping = map_graph(qg, profile)
    log(f"[deploy] mapped onto {profile.name}: {mapping.cores} cores on {mapping.chips} chip(s)")

    imgsz = int(fg.head["imgsz"])
    ds, x_float, x_int = _load_images(opts, imgsz, fg.input_scale, qg.T, fg.metadata)
    n_samples = x_int.shape[_batch_axis(x_int)]
    fixed_res = run_fixed_ranked(qg, x_int, opts)  # exact in any sharding; None off rank 0
    if fixed_res is None:  # a torchrun rank other than 0: its shards go to rank 0, no report
        return serve_rank(nir_path, x_float, opts)
    fixed_map = _score(ds, fg.head, readout_floats(qg, fixed_res), opts)
    log(
        f"[deploy] fixed engine: {n_samples} images in {fixed_res.wall_s:.2f} s, "
        f"mAP@50 {fixed_map['map50']:.3f}, mAP@50:95 {fixed_map['map']:.3f}"
    )
    validation: dict = {
        "images": int(n_samples),
        "dataset": {"path": str(opts.data), "split": opts.split, "kind": opts.dataset},
        "map": {"deployed_fixed": fixed_map},
        "timing_s": {"fixed_total": round(fixed_res.wall_s, 4)},
    }

    if opts.reference:
        from spikedet.sim.reference import agreement

        t_ref = time.perf_counter()
        ref, ref_spikes, ref_readouts = run_reference_ranked(nir_path, x_float, opts)
        validation["timing_s"]["reference_total"] = round(time.perf_counter() - t_ref, 4)
        ref_map = _score(ds, fg.head, ref_readouts, opts)
        validation["map"]["reference_float"] = ref_map
        validation["map"]["difference"] = {
            k: round(fixed_map[k] - ref_map[k], 6) for k in ("map50", "map")
        }
        validation["reference_vs_fixed"] = agreement(qg, ref_spikes, fixed_res, ref_readouts)
        log(
            f"[deploy] reference (float, {getattr(ref, 'device', 'cpu')}): mAP@50 "
            f"{ref_map['map50']:.3f}, mAP@50:95 {ref_map['map']:.3f}; spike agreement "
            f"{validation['reference_vs_fixed'].get('overall_spike_agreement', float('nan')):.4f}"
        )

    if lava is not None:
        n = max(1, min(opts.samples, n_samples))
        log(f"[deploy] lava engine (Loihi2SimCfg, fixed_pt): {n} sample(s), {qg.hw_steps} steps")
        lava_res = lava.run(qg, _take(x_int, 0, n))
        cmp = compare(_slice(fixed_res, n), lava_res)
        validation["lava_vs_fixed"] = {"samples": n, **cmp}
        validation["timing_s"]["lava_total"] = round(lava_res.wall_s, 4)
        validation["timing_s"]["fixed_per_sample"] = round(fixed_res.wall_s / n_samples, 6)
        validation["timing_s"]["lava_per_sample"] = round(lava_res.wall_s / n, 4)
        log(
            f"[deploy] lava vs fixed: {cmp['total_mismatches']} spike mismatches over "
            f"{len(cmp['populations'])} populations x {qg.T} step(s) x {n} sample(s)"
        )

    activity = count_activity(qg, fixed_res.spikes, x_int)
    report = energy_report(qg, mapping, activity, profile, cmos)
    model = fg.metadata.get("spikedet.model", nir_path.stem)
    meta = {"model": model, "target": opts.target, "engine": opts.engine, "nir": str(nir_path)}
    return finish_report(opts.out, report, meta, validation, t0, log)
