"""Process groups: one process per device, from torchrun's or SLURM's environment.

torchrun (and our local launcher, which starts runs with more than one device under torchrun)
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``. Under SLURM with
one task per GPU, submitit's ``TorchDistributedEnvironment`` derives the same variables from
the SLURM environment (rendezvous on the first node of the job). NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from graftbench.errors import UserError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Only the main process writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _export_slurm_environment() -> None:
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


def setup(device: str = "auto") -> Dist:
    """Join the process group this process belongs to (none for a single process)."""
    _export_slurm_environment()
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is available")
    if cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=rank,
            world_size=world_size,
            device_id=chosen if cuda else None,
        )
    return Dist(rank, local_rank, world_size, chosen)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over processes, in place (a no-op for one process)."""
    if d.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: object, d: Dist) -> list[object]:
    """Every process's ``obj``, in rank order."""
    if not d.distributed:
        return [obj]
    gathered: list[object] = [None] * d.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()
