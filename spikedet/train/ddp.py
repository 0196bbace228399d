"""Data-parallel training with PyTorch's DistributedDataParallel, launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``; the process
group is initialised from them (``env://``) with ``gloo`` on CPU and ``nccl`` on CUDA (device
``cuda:LOCAL_RANK``). Without those variables training runs in one process.

Sharding: every rank draws the same epoch order ``randperm(n)`` from a generator seeded with
``seed·1000 + epoch`` (as the single-process loader), pads it by wrapping to a multiple of the
world size and takes every world-size-th index from its rank on (DistributedSampler's scheme), so
each rank runs the same number of batches. ``batch`` is the total batch: each rank uses
``batch / world_size`` samples per step.

BatchNorm: statistics are per process (computed on the local share of the batch) unless
``sync_bn`` is set on CUDA (SyncBatchNorm). DDP broadcasts rank 0's running statistics before
every forward; at the end of each epoch ``broadcast_buffers`` copies rank 0's buffers (model and EMA) to
all ranks so that every rank holds identical weights (parameters already agree: gradients are
all-reduced and every rank applies the same optimizer step). Only rank 0 evaluates and writes.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from spikedet.errors import SpikedetError
from spikedet.ranks import ProcessRanks

DistContext = ProcessRanks  # the training ranks: the one definition training and deploy share


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun describes (env://); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, init_method="env://")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


class ShardSampler(Sampler[int]):
    """This rank's share of the (seed, epoch)-determined order, padded by wrapping."""

    def __init__(self, n: int, ctx: DistContext, seed: int, epoch: int, shuffle: bool = True):
        self.n, self.ctx, self.seed, self.epoch, self.shuffle = n, ctx, seed, epoch, shuffle
        self.per_rank = -(-n // ctx.world_size)

    def order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed * 1000 + self.epoch)
            full = torch.randperm(self.n, generator=generator).tolist()
        else:
            full = list(range(self.n))
        total = self.per_rank * self.ctx.world_size
        padded = (full * (-(-total // max(self.n, 1))))[:total]
        return padded[self.ctx.rank :: self.ctx.world_size]

    def __iter__(self):
        return iter(self.order())

    def __len__(self) -> int:
        return self.per_rank


def sharded_loader(
    dataset: Any, batch: int, ctx: DistContext, seed: int, epoch: int, workers: int
) -> DataLoader:
    """One epoch's loader over this rank's shard (``batch`` is the total over all ranks)."""
    from spikedet.data.loader import collate

    if batch % ctx.world_size:
        raise SpikedetError(
            f"batch {batch} is not divisible by the world size {ctx.world_size}", "train config"
        )
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = ShardSampler(len(dataset), ctx, seed, epoch)
    return DataLoader(
        dataset,
        batch_size=batch // ctx.world_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        drop_last=False,
    )


def wrap_model(
    model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool
) -> nn.Module:
    """DDP around ``model`` (rank 0's initial weights are broadcast by DDP itself)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [ctx.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def broadcast_buffers(modules: list[nn.Module], ctx: DistContext) -> None:
    """Copy rank 0's buffers (BN running statistics, counters) to every rank.

    Parameters are deliberately not broadcast: they agree by construction, and ``state_hash``
    checks that they do.
    """
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def all_reduce_mean(values: dict[str, float], ctx: DistContext, device: torch.device) -> dict:
    """Average per-rank scalars over all ranks (epoch loss means)."""
    if not ctx.enabled or not values:
        return values
    import torch.distributed as dist

    keys = list(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def state_hash(module: nn.Module) -> str:
    """SHA-256 over the names and raw bytes of a module's state (bitwise weight identity)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(
            value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def gather_strings(text: str, ctx: DistContext) -> list[str]:
    """Every rank's ``text`` (on every rank), rank order."""
    if not ctx.enabled:
        return [text]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, text)
    return [str(v) for v in out]
