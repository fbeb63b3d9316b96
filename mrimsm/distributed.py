"""Run the same training script alone or under ``torchrun``.

:func:`init` reads the environment variables that ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; :func:`rank_info`
parses the first three, for the recon pipeline too; :func:`check_torchrun_env` checks,
before anything else, that a process told ``WORLD_SIZE > 1`` has the rest). Without them it returns a
single-process :class:`DistInfo` and touches nothing. With them it joins the
process group: NCCL when the process drives a GPU, gloo on CPU. Only rank 0 writes
files and prints (``info.is_main``)::

    info = distributed.init("cuda")          # alone or under torchrun
    model = distributed.wrap(model.to(info.device), info)
    ...
    distributed.cleanup()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from mrimsm.errors import MrimsmError
from mrimsm.utils import resolve_device

__all__ = ["DistInfo", "rank_info", "check_torchrun_env", "init", "wrap", "unwrap", "barrier", "all_gather_object",
           "broadcast_object", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_info(environ: Optional[Mapping[str, str]] = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` (``(0, 1, 0)`` when run alone).

    Args:
        environ: the environment to read (default: ``os.environ``).

    Raises:
        MrimsmError: (one line) a value that is not an integer, or ranks that do not fit
        (``0 <= RANK < WORLD_SIZE``, ``LOCAL_RANK >= 0``).
    """
    env = os.environ if environ is None else environ
    values = []
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = env.get(key, default)
        try:
            values.append(int(text))
        except ValueError:
            raise MrimsmError(f"environment variable {key}={text!r} is not an integer") from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world or local < 0:
        raise MrimsmError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


#: What a process group's ``env://`` rendezvous needs besides ``WORLD_SIZE`` (torchrun sets them all).
RENDEZVOUS_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def check_torchrun_env(environ: Optional[Mapping[str, str]] = None) -> None:
    """Check, before any work, that a process that is to join a process group
    (``WORLD_SIZE > 1``) has every variable of :data:`RENDEZVOUS_VARIABLES` and a port
    that is a number: torch's rendezvous otherwise fails with a traceback (or waits).

    Raises:
        MrimsmError: (one line) naming the first missing or bad variable and saying to
        launch with torchrun; also for what :func:`rank_info` refuses.
    """
    env = os.environ if environ is None else environ
    _, world, _ = rank_info(env)
    if world <= 1:
        return
    how = "launch with torchrun (torchrun --nproc_per_node N -m mrimsm ...), which sets it"
    for key in RENDEZVOUS_VARIABLES:
        if not str(env.get(key, "")).strip():
            raise MrimsmError(f"WORLD_SIZE={env.get('WORLD_SIZE')} is set but {key} is not; {how}, "
                              f"or unset WORLD_SIZE to run alone")
    port = str(env["MASTER_PORT"]).strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MrimsmError(f"environment variable MASTER_PORT={port!r} is not a port number (1-65535); {how}")


def init(device: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group if launched by ``torchrun``; otherwise run alone.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (CUDA when available),
            see :func:`mrimsm.utils.resolve_device`. Under torchrun with ``"cuda"``
            each process takes GPU ``LOCAL_RANK``.
        timeout_s: collective timeout.

    Returns:
        the :class:`DistInfo` of this process.
    """
    check_torchrun_env()  # before the device or the rendezvous: one line, not torch's traceback
    rank, world_size, local_rank = rank_info()
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        import datetime

        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank, world_size, local_rank, dev)


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several processes."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_gather_object(obj: Any, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a Python number across ranks."""
    if not info.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def cleanup() -> None:
    """Leave the process group (no-op when running alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
