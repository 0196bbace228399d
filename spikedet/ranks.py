"""Where this process stands among the processes ``torchrun`` started; shared by training
(``spikedet.train.ddp``) and deployment (``spikedet.deploy.distributed``), imports no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessRanks:
    """Rank ``rank`` of ``world_size`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this code created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0
