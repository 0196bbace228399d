"""The ``fixed`` engine over a detection split in batches, optionally sharded over N processes
(``spikedet deploy --workers N``).

The images are cut into N contiguous shards, in order; each worker (a ``spawn``ed process:
no state inherited from the parent) gets the quantized graph once and runs its shard in
batches, as one process would. The engine is exact integer arithmetic and every image is
independent of the others, so a shard's spikes and readouts are those of the same images in
a one-process run; concatenated in shard order they are the one-process result, element for
element, and everything computed from them (detections, mAP, activity and energy counts)
is equal too. Spikes travel back in the narrowest integer type that holds them (they are
0..D) and get the engine's own dtype back on arrival. The merged ``wall_s`` is the elapsed time of the
whole sharded run. Each worker adds its finished images to one shared counter after every
batch, which the parent reads for the progress line (``spikedet.deploy.progress``).

Importing this module does not import torch.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from spikedet.errors import SpikedetError
from spikedet.sim.interface import EngineResult
from spikedet.sim.qgraph import QuantGraph

_GRAPH: dict[str, Any] = {}  # a worker's graph, engine and image counter, set by _init_worker


def batch_axis(x: np.ndarray) -> int:
    """Frames [N, C, H, W] batch on axis 0, event bins [T, N, C, H, W] on axis 1."""
    return 1 if x.ndim == 5 else 0


def take(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of an input array, whichever axis holds the batch."""
    return x[:, start:stop] if batch_axis(x) else x[start:stop]


def shard_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """``workers`` contiguous ranges covering 0..n in order, sizes differing by at most one
    (fewer when n < workers: no empty shard)."""
    parts = max(1, min(workers, n))
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def merge(
    parts: list[EngineResult], wall_s: float | None = None, dtypes: dict | None = None
) -> EngineResult:
    """Results of consecutive image ranges -> one result (batch axes concatenated in order;
    spikes of population k as ``dtypes[k]`` when given)."""
    spikes = {k: np.concatenate([p.spikes[k] for p in parts], axis=1) for k in parts[0].spikes}
    for k, dtype in (dtypes or {}).items():
        spikes[k] = spikes[k].astype(dtype, copy=False)
    readouts = {
        k: np.concatenate([p.readouts[k] for p in parts], axis=0) for k in parts[0].readouts
    }
    wall = sum(p.wall_s for p in parts) if wall_s is None else wall_s
    return EngineResult(spikes=spikes, readouts=readouts, wall_s=wall, engine=parts[0].engine)


def run_batched(
    engine: Any,
    qg: QuantGraph,
    x_int: np.ndarray,
    batch: int,
    done: Callable[[int], None] | None = None,
) -> EngineResult:
    """Run an engine over the images in batches and concatenate along the batch axis;
    ``done(k)`` is told after each batch of ``k`` images."""
    n = x_int.shape[batch_axis(x_int)]
    parts = []
    for i in range(0, n, batch):
        part = take(x_int, i, i + batch)
        parts.append(engine.run(qg, part))
        if done is not None:
            done(part.shape[batch_axis(part)])
    return merge(parts)


def narrow_array(s: np.ndarray) -> np.ndarray:
    """Integers in the smallest dtype that holds their values (int8, int16 or their own)."""
    top = max(int(s.max(initial=0)), -int(s.min(initial=0)))
    dtype = np.int8 if top < 1 << 7 else np.int16 if top < 1 << 15 else s.dtype
    return s.astype(dtype, copy=False)


def narrow(result: EngineResult) -> EngineResult:
    """Spikes in the smallest integer dtype that holds their values (for the trip back), their
    own dtypes in ``info["dtypes"]``."""
    spikes, dtypes = {}, {}
    for name, s in result.spikes.items():
        spikes[name], dtypes[name] = narrow_array(s), s.dtype.str
    return EngineResult(spikes, result.readouts, result.wall_s, result.engine, {"dtypes": dtypes})


def _init_worker(qg: QuantGraph, counter: Any) -> None:
    from spikedet.sim.registry import get_engine

    _GRAPH["qg"], _GRAPH["engine"], _GRAPH["counter"] = qg, get_engine("fixed"), counter


def _count(k: int) -> None:
    counter = _GRAPH["counter"]
    with counter.get_lock():
        counter.value += k


def _run_shard(args: tuple[np.ndarray, int]) -> EngineResult:
    x, batch = args
    return narrow(run_batched(_GRAPH["engine"], _GRAPH["qg"], x, batch, _count))


def run_fixed(
    qg: QuantGraph, x_int: np.ndarray, batch: int, workers: int = 1, progress: Any = None
) -> EngineResult:
    """The fixed engine over every image of ``x_int``, in ``workers`` processes;
    ``progress.update(done)`` (a ``spikedet.deploy.progress.Progress``) follows the images
    finished by all of them together."""
    if workers < 1:
        raise SpikedetError(f"workers must be >= 1, got {workers}", "--workers")
    if batch < 1:
        raise SpikedetError(f"batch must be >= 1, got {batch}", "--batch")
    n = x_int.shape[batch_axis(x_int)]
    bounds = shard_bounds(n, workers)
    if len(bounds) == 1:
        from spikedet.sim.registry import get_engine

        total = [0]

        def done(k: int) -> None:
            total[0] += k
            if progress is not None:
                progress.update(total[0])

        return run_batched(get_engine("fixed"), qg, x_int, batch, done)
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)  # images finished, over all workers
    with ctx.Pool(len(bounds), initializer=_init_worker, initargs=(qg, counter)) as pool:
        pending = pool.map_async(_run_shard, [(take(x_int, a, b), batch) for a, b in bounds])
        while True:  # the shared count, read a few times a second, until every shard is in
            pending.wait(0.25)
            if progress is not None:
                progress.update(counter.value)
            if pending.ready():
                break
        parts = pending.get()
    return merge(parts, wall_s=time.perf_counter() - start, dtypes=parts[0].info["dtypes"])
