"""Data-parallel training of the downstream models (ClipCap, text tuning, LLaVA) under `accelerate launch`.

The scheme is alignment's (`gmail.align.train`): every process draws the same batch from the
same seeded generator, computes the loss of its share of the rows (`share`), and scales its
loss so that DistributedDataParallel's gradient average equals the one-process gradient of the
whole batch. Parameters stay identical on every process, so each one can run the same
schedule, validation and early-stopping decisions; only the main process writes outputs.
A plain run is a world of one and takes none of these paths.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def share(n: int, rank: int, size: int) -> torch.Tensor:
    """Indices of this rank's rows of an n-row batch (rank, rank + size, ...)."""
    return torch.arange(rank, n, size)


def wrap(model: nn.Module, size: int) -> nn.Module:
    """`model` in DistributedDataParallel when several processes run, else itself.

    Accelerate's `prepare_model` picks the process's device and DDP's options (gloo on CPU,
    NCCL on GPUs) the way `accelerate launch` set them up.
    """
    if size == 1:
        return model
    from accelerate import Accelerator

    device = next(model.parameters()).device
    return Accelerator(cpu=device.type == "cpu").prepare_model(model)


def all_sum(value: torch.Tensor, size: int) -> torch.Tensor:
    """`value` summed over every process (a detached copy; itself in a world of one)."""
    value = value.detach().clone()
    if size > 1:
        torch.distributed.all_reduce(value)
    return value


def broadcast_value(value: float, size: int, device: str | torch.device = "cpu") -> float:
    """Rank 0's `value` on every process, so a decision taken on it (early stopping) is the same everywhere."""
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, 0)
    return float(t.item())
