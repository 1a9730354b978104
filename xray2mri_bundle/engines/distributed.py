"""torchrun + DistributedDataParallel helpers (NCCL on GPUs, gloo on CPU).

Every function is a no-op in a plain single-process run, so the same bundle configs work with and without
``torchrun``: ``configs/multi_gpu_train.json`` only switches ``distributed`` on and picks the device per rank.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "barrier",
    "broadcast_object",
    "cleanup",
    "ddp_wrap",
    "distributed_sampler",
    "init_distributed",
    "is_distributed",
    "is_rank0",
    "local_device",
    "rank",
    "unwrap",
    "world_size",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group (e.g. under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    """True on the process that logs, validates samples and writes checkpoints."""
    return rank() == 0


def local_device(prefer_cuda: bool = True) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is available (and preferred), else CPU."""
    if prefer_cuda and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(enabled: bool = True, backend: str | None = None) -> bool:
    """Join the ``torchrun`` process group once (idempotent); return whether the run is distributed.

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise (CPU tests). Without the torchrun
    environment (``WORLD_SIZE`` unset) or with ``enabled=False`` nothing happens.
    """
    if not enabled or is_distributed():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "MASTER_ADDR" not in os.environ:
        logger.info("distributed requested but no torchrun environment found: running in one process")
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend)
    logger.info("joined process group: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def cleanup() -> None:
    """Leave the process group (at the very end of a run)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank, so that decisions taken from files agree across ranks."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def ddp_wrap(model: nn.Module, device: torch.device | str | None = None, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` inside a process group, ``model`` itself otherwise.

    ``kwargs`` go to DDP (e.g. ``find_unused_parameters=True`` when some conditions are dropped for a whole
    batch). DDP broadcasts rank 0's weights at construction, so every rank starts from the same state.
    """
    if not is_distributed():
        return model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP (or DataParallel) wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def distributed_sampler(dataset: Dataset, shuffle: bool = True, seed: int = 0) -> DistributedSampler | None:
    """A ``DistributedSampler`` over ``dataset`` inside a process group, None otherwise.

    Pass the result as the DataLoader's ``sampler`` and ``shuffle=@... is None`` so that a single-process run
    still shuffles; MONAI's workflows call ``set_epoch`` on it at every epoch.
    """
    if not is_distributed():
        return None
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed)
