"""Data-parallel training on one machine: torchrun's process group, ranks and sums.

``train.processes > 1`` replaces the stage's process by ``torchrun``, which starts that many
copies of the stage; each trains its shard of every batch, and only the first (rank 0)
tracks and writes outputs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import torch


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` of this process in data-parallel training, ``(0, 1)`` alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(*values: torch.Tensor) -> list[float]:
    """Sum scalars over all processes (identity when training alone)."""
    stacked = torch.stack([v.detach().double() for v in values])
    if distributed()[1] > 1:
        on = stacked.cuda() if torch.distributed.get_backend() == "nccl" else stacked
        torch.distributed.all_reduce(on)
        stacked = on.cpu()
    return [float(value) for value in stacked.tolist()]


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def relaunch_with_torchrun(processes: int, module: str, argv: Sequence[str]) -> None:
    """Replace this process by ``torchrun`` running ``processes`` copies of ``module``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", module, *argv]
    print(f"data-parallel training on {processes} processes: {' '.join(command[1:])}",
          flush=True)
    os.execv(sys.executable, command)


@contextlib.contextmanager
def process_group(processes: int, device: torch.device, module: str, argv: Sequence[str]
                  ) -> Iterator[int]:
    """Run the body as one process of ``processes``; yield this process's rank.

    Alone (``processes == 1``) the body runs here as rank 0. Otherwise a process not yet
    started by torchrun is replaced by torchrun running ``module`` with ``argv`` (this call
    does not return), and each process torchrun starts joins the group (NCCL on GPUs, Gloo
    on CPUs) for the body and leaves it afterwards.
    """
    if not launched_by_torchrun():
        if processes > 1:
            relaunch_with_torchrun(processes, module, argv)
        yield 0
        return
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield torch.distributed.get_rank()
    finally:
        torch.distributed.destroy_process_group()
