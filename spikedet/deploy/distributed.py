"""``spikedet deploy`` across machines under ``torchrun``: every rank runs a shard, rank 0 merges.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
With ``WORLD_SIZE`` > 1 the ranks join one process group (``env://``, backend ``gloo``: the
shards are numpy arrays, sent as pickled objects over TCP, on any machine with or without
GPUs). Every rank reads the same graph and dataset and then runs only its share:

- the ``fixed`` engine: rank r takes images ``shard_bounds(n, world)[r]`` (the ``--workers``
  scheme, contiguous and in order), and may split them again over ``--workers`` processes of
  its own. The engine is exact integer arithmetic and every image is independent of the
  others, so the concatenated shards are the one-process spikes and readouts, element for
  element;
- the float ``reference``: rank r takes whole batches. The batches [0, b), [b, 2b), ... of a
  one-process run (b = ``--batch``) are divided by ``shard_bounds(batches, world)``, so each
  batch holds the same images as in one process: float convolutions need not give the same
  bits for an image in a batch of another composition. Across machines with different CPUs
  (or thread counts) float results may still differ in the last bits, and with them a spike
  at a threshold; the integer results cannot.

Merging: each rank sends its results to rank 0 (``gather_object``, spikes in int8 on the way),
which concatenates them in rank order and carries on alone (scores, Lava on its first images,
activity, energy, the report, written atomically); the other ranks write nothing and return.
The gathers wait up to ``TIMEOUT`` for the slowest rank (torchrun ends every rank when one
fails, so a crashed rank does not leave the others waiting).

Importing this module does not import torch: ``torch.distributed`` is imported only when the
environment asks for more than one process, and its absence is then a one-line error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from spikedet.deploy.progress import Progress
from spikedet.deploy.shard import (
    batch_axis,
    merge,
    narrow,
    narrow_array,
    run_fixed,
    shard_bounds,
    take,
)
from spikedet.errors import SpikedetError
from spikedet.ranks import ProcessRanks

TIMEOUT = timedelta(hours=24)  # shards of a long run may finish hours apart on unlike machines
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks(ProcessRanks):
    """This process's place among the deploy ranks (one process: rank 0 of 1)."""

    def label(self, what: str) -> str:
        if not self.enabled:
            return f"[deploy] {what}"
        return f"[deploy] {what}, rank 0 of {self.world_size} (its own shard)"


def world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SpikedetError(f"not an integer: {env['WORLD_SIZE']!r}", "WORLD_SIZE") from None


def from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """Join the process group torchrun describes; one process when WORLD_SIZE is 1 or unset."""
    env = os.environ if environ is None else environ
    world = world_size(env)
    if world <= 1:
        return Ranks()
    missing = [k for k in TORCHRUN_ENV if k not in env]
    if missing:
        raise SpikedetError(
            f"WORLD_SIZE={world} without {', '.join(missing)}: launch with torchrun", "deploy"
        )
    values = {}
    for key in ("RANK", "LOCAL_RANK"):
        try:
            values[key] = int(env[key])
        except ValueError:
            raise SpikedetError(f"not an integer: {env[key]!r}", key) from None
    if not 0 <= values["RANK"] < world:
        raise SpikedetError(f"rank {values['RANK']} outside 0..{world - 1}", "RANK")
    try:
        import torch.distributed as dist
    except ImportError:
        raise SpikedetError(
            f"launched by torchrun with WORLD_SIZE={world}, but torch is not importable here: "
            "the shards are merged over torch.distributed (gloo)",
            "deploy",
        ) from None
    if not dist.is_available():
        raise SpikedetError("this torch build has no torch.distributed", "deploy")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", init_method="env://", timeout=TIMEOUT)
    return Ranks(values["RANK"], world, values["LOCAL_RANK"], owns)


def close(ranks: Ranks) -> None:
    """Leave the process group (only if ``from_env`` created it)."""
    if ranks.enabled and ranks.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def gather(ranks: Ranks, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, rank order; None on the other ranks."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * ranks.world_size if ranks.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def image_range(ranks: Ranks, n: int) -> tuple[int, int]:
    """This rank's images for the fixed engine (empty when n < world size)."""
    bounds = shard_bounds(n, ranks.world_size)
    return bounds[ranks.rank] if ranks.rank < len(bounds) else (n, n)


def batch_range(ranks: Ranks, n: int, batch: int) -> tuple[int, int]:
    """This rank's images for the reference: whole batches of a one-process run."""
    lo, hi = image_range(ranks, -(-n // batch))
    return min(lo * batch, n), min(hi * batch, n)


def run_fixed_ranked(qg: Any, x_int: np.ndarray, opts: Any) -> Any:
    """The fixed engine's result over all images on rank 0; None on the other ranks (after
    sending their shard)."""
    ranks = opts.ranks or Ranks()
    n = x_int.shape[batch_axis(x_int)]
    if not ranks.enabled:
        with Progress(ranks.label("fixed engine"), n, opts.progress) as bar:
            return run_fixed(qg, x_int, opts.batch, opts.workers, bar)
    start = time.perf_counter()
    lo, hi = image_range(ranks, n)
    part = None
    if hi > lo:
        show = opts.progress and ranks.is_main
        with Progress(ranks.label("fixed engine"), hi - lo, show) as bar:
            part = narrow(run_fixed(qg, take(x_int, lo, hi), opts.batch, opts.workers, bar))
    parts = gather(ranks, part)
    if parts is None:
        return None
    parts = [p for p in parts if p is not None]
    return merge(parts, wall_s=time.perf_counter() - start, dtypes=parts[0].info["dtypes"])


def _reference_device(ranks: Ranks) -> str | None:
    """One GPU per local rank when there are GPUs; None (the engine's default) otherwise."""
    if not ranks.enabled:
        return None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{ranks.local_rank % count}" if count else "cpu"


def run_reference_ranked(nir_path: Any, x_float: np.ndarray, opts: Any) -> tuple | None:
    """(engine, spikes, readouts) of the float reference over all images on rank 0, in
    batches of ``opts.batch``; None on the other ranks (after sending their batches)."""
    from spikedet.sim.reference import ReferenceEngine

    ranks = opts.ranks or Ranks()
    ref = ReferenceEngine(nir_path, device=_reference_device(ranks))
    n, batch = x_float.shape[batch_axis(x_float)], max(1, opts.batch)
    lo, hi = batch_range(ranks, n, batch) if ranks.enabled else (0, n)
    spikes: dict[str, list[np.ndarray]] = {}
    reads: dict[str, list[np.ndarray]] = {}
    with Progress(ranks.label("reference"), hi - lo, opts.progress and ranks.is_main) as bar:
        for start in range(lo, hi, batch):
            s, r = ref.run_float(take(x_float, start, min(start + batch, hi)), batch=batch)
            for name, value in s.items():  # 0..D: int8 on the way to rank 0
                spikes.setdefault(name, []).append(narrow_array(value) if ranks.enabled else value)
            for name, value in r.items():
                reads.setdefault(name, []).append(value)
            bar.update(min(start + batch, hi) - lo)
    mine = (spikes, reads) if hi > lo else None
    parts = gather(ranks, mine) if ranks.enabled else [mine]
    if parts is None:
        return None
    parts = [p for p in parts if p is not None]
    out_spikes = {
        k: np.concatenate([a for p in parts for a in p[0][k]], axis=1).astype(np.int64, copy=False)
        for k in parts[0][0]
    }
    out_reads = {
        k: np.concatenate([a for p in parts for a in p[1][k]], axis=0) for k in parts[0][1]
    }
    return ref, out_spikes, out_reads


def serve_rank(nir_path: Any, x_float: np.ndarray, opts: Any) -> dict:
    """The rest of a rank other than 0, once its fixed shard is sent: its reference batches
    (when the reference runs). It writes nothing; the report is rank 0's."""
    if opts.reference:
        run_reference_ranked(nir_path, x_float, opts)
    return {}
