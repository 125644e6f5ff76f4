"""Just enough of ``torch.distributed`` for sharded feature extraction under ``torchrun``.

``torchrun --nproc-per-node N`` (or a SLURM ``srun`` with the same environment variables) starts
N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set.
:func:`init_from_env` joins them into a process group (NCCL on GPUs, gloo on CPUs); the
extraction then gives each rank a slice of the shards still to compute, and rank 0 merges.
Without a process group every helper here is a no-op for a single process.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["rank_and_world", "init_from_env", "shutdown", "broadcast", "all_gather", "on_rank_zero", "local_world_size"]

log = logging.getLogger(__name__)

_TIMEOUT = _dt.timedelta(hours=2)  # a rank may wait this long for the slowest one


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_world_size() -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE`` from torchrun; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment, if there is one.

    Returns ``True`` when this call created the group (the caller then calls :func:`shutdown`),
    ``False`` for a single process or a group that already exists. On CUDA, each process uses
    the GPU of its ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:  # torch says only "invalid device ordinal"
            raise RuntimeError(
                f"this process is local rank {local}, but this machine has {gpus} GPU(s), one per rank: start at most "
                f"{gpus} process(es) per node (torchrun --nproc-per-node {gpus}), or hide the GPUs "
                "(CUDA_VISIBLE_DEVICES=) to run the ranks on the CPU"
            )
        torch.cuda.set_device(local)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def shutdown(*, failed: bool = False) -> None:
    """Leave the process group: after a last barrier, so no rank exits while others still talk.

    With ``failed`` (this rank is leaving on an exception) there is no barrier: the other ranks may
    be waiting in another collective, which a barrier would not match, and the job would hang until
    the group's timeout. This rank leaves at once, and torchrun stops the others when it exits.
    """
    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` (JSON-serialisable) on every rank; the object itself for a single process."""
    rank, world = rank_and_world()
    if world == 1:
        return obj
    device = _device()
    payload = _encode(obj) if rank == 0 else torch.zeros(0, dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    buf = payload.to(device) if rank == 0 else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    return _decode(buf)


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-serialisable), in rank order; ``[obj]`` for a single process. Also a barrier."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    device = _device()
    payload = _encode(obj).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    bufs = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(bufs, padded)
    return [_decode(b[: int(s.item())]) for b, s in zip(bufs, sizes)]


def on_rank_zero(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its (JSON-serialisable) result to every rank.

    An exception on rank 0 is raised there and, as a RuntimeError naming it, on every other rank,
    so no rank is left waiting for a rank that has failed. Also a barrier.
    """
    rank, world = rank_and_world()
    if world == 1:
        return fn()
    failure: BaseException | None = None
    payload: dict[str, Any] | None = None
    if rank == 0:
        try:
            payload = {"result": fn()}
        except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised here
            failure, payload = exc, {"error": f"{type(exc).__name__}: {exc}"}
    payload = broadcast(payload)
    if failure is not None:
        raise failure
    if "error" in payload:
        raise RuntimeError(f"rank 0 failed: {payload['error']}")
    return payload["result"]


def _device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(obj: Any) -> torch.Tensor:
    # JSON rather than torch's object collectives, which pickle.
    return torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)


def _decode(buf: torch.Tensor) -> Any:
    return json.loads(bytes(buf.cpu().numpy().tobytes()).decode("utf-8"))
