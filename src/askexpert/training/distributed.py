"""Training in several processes: ``torchrun --nproc-per-node N -m askexpert train ...``.

Each global batch is augmented the same way in every process, then split between them (process r
takes images r, r + N, ...), and DistributedDataParallel averages the gradients: the same step as one
process on the whole batch (up to BatchNorm statistics, which each process takes on its share). gloo
on CPUs, NCCL on GPUs (one per process). Process 0 owns the run directory; the others write their
copies into a scratch directory of their own and print nothing. On ``--resume`` process 0 reads the
saved state and hands it to the others (the model's weights through DDP's start-up broadcast).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1


def this_process() -> Rank:
    """Which process this is, from torchrun's environment (one process without it)."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def start(device: torch.device) -> Rank:
    """Join the process group (once) when there are several processes."""
    r = this_process()
    if r.several and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(r.local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return r


def scratch_output_dir() -> Path:
    """Where a process other than 0 writes its copy of the run (nobody reads it; removed at exit)."""
    path = Path(tempfile.mkdtemp(prefix=f"askexpert-rank{this_process().rank}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def share(payload, r: Rank):
    """Process 0's ``payload``, in every process."""
    if not r.several:
        return payload
    box = [payload if r.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def total(values: list[torch.Tensor], r: Rank) -> list[torch.Tensor]:
    """Each tensor summed over the processes."""
    if r.several:
        for v in values:
            dist.all_reduce(v)
    return values
