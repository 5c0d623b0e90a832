"""Several processes: ``torchrun --nproc-per-node N -m morphable train|fit|evaluate ...``.

torchrun (``python -m torch.distributed.run``) starts N copies of one command, each with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. :func:`init` joins
them into one process group: gloo for tensors on the CPU and, on a machine with CUDA devices, NCCL for
tensors on them (each process then owns GPU ``LOCAL_RANK``, :func:`device`). The backend of a collective
is chosen by the device of its tensors, so nothing here names a device. Every helper is a no-op (rank 0 of
1) in a process that was not started that way, so the single-process code path is the plain one.

Training with N processes (data parallelism, :class:`~morphable.train.trainer.Trainer`):

* every process draws the same global batch ``recipe.batch(step, generator)``: all RNGs are seeded and
  advanced alike, so the checkpoint of rank 0 holds every process's RNG state and ``--resume`` stays
  bit-identical. Each process keeps its part, ``recipe.shard(batch, rank, world)`` (by default
  :func:`shard_batch`, the ``rank``-th of N equal contiguous slices of every tensor). ``batch()`` should
  therefore only draw (indices, poses, lights); loading and rendering belong in ``loss()``, which each
  process runs on its part only;
* the loss runs with torch's RNG forked and seeded from ``(train.seed, step, rank)`` (:func:`rank_rng`):
  dropout masks differ between processes while the shared RNG stream stays in step;
* gradients are averaged over the processes (:func:`average_gradients`), as ``DistributedDataParallel``
  does. For a loss that is a mean over the batch's samples the update then equals one process's update on
  the whole batch, to float rounding; a loss over batch statistics sees each process's part only.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from morphable.errors import MorphableError

TIMEOUT = datetime.timedelta(hours=1)
"""How long a process waits at a collective: validation, image grids, checkpoints and ``finish()`` run on
rank 0 while the others wait at the next one (NCCL's own default is 10 minutes)."""


class DistributedError(MorphableError):
    """The launcher's environment is unusable (bad ``WORLD_SIZE``/``RANK``, more processes than GPUs), or a
    global batch cannot be split evenly over the processes."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in ``0 .. world_size() - 1`` (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 when not set)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0, the process that logs, writes checkpoints and images, and merges reports."""
    return rank() == 0


def device() -> torch.device:
    """The device this process should compute on: GPU ``LOCAL_RANK`` when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def init() -> bool:
    """Join the process group described by torchrun's environment (idempotent).

    Nothing happens when ``WORLD_SIZE`` is unset or 1. The backend is gloo for CPU tensors, plus NCCL for
    CUDA tensors when CUDA is available (this process's current device is then GPU ``LOCAL_RANK``).

    Returns:
        whether this process now runs distributed (``world_size() > 1``).
    Raises:
        DistributedError: ``WORLD_SIZE``/``RANK`` not integers or out of range, ``LOCAL_RANK`` beyond the
            machine's GPUs, or the process group cannot be joined (``MASTER_ADDR`` unset, ...).
    """
    if is_distributed():
        return True
    world, this = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if world <= 1:
        return False
    if not 0 <= this < world:
        raise DistributedError(f"RANK={this} is outside 0..{world - 1} (WORLD_SIZE={world})")
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        if local_rank() >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={local_rank()} but this machine has {torch.cuda.device_count()} "
                                   "GPU(s); start at most that many processes per machine")
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, init_method="env://", world_size=world, rank=this, timeout=TIMEOUT)
    except (ValueError, RuntimeError) as err:  # e.g. MASTER_ADDR unset, the rendezvous unreachable
        raise DistributedError(f"cannot join the {world} processes (WORLD_SIZE={world}, RANK={this}): "
                               f"{str(err).splitlines()[0]}") from None
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other processes after it: what rank 0 builds and caches on
    disk (converted models, synthetic data) the others then read instead of building it again."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard_range(n: int) -> range:
    """This process's contiguous share of ``n`` items: ``range(r·n // N, (r+1)·n // N)`` for rank ``r`` of
    ``N`` (sizes differ by at most one; the ranges of all ranks tile ``range(n)`` in order)."""
    world, this = world_size(), rank()
    return range(this * n // world, (this + 1) * n // world)


def shard_batch(batch: Any, rank: int, world: int, *, where: str = "batch") -> Any:
    """The ``rank``-th of ``world`` equal contiguous slices of every tensor in ``batch`` along its first
    dimension; mappings, lists and tuples are walked, 0-d tensors and other values kept whole.

    Contiguous slices keep item-major layouts together: rows ``b·V .. b·V + V - 1`` of a ``(B·V, ...)``
    tensor (views of item ``b``) land in the same slice as row ``b`` of a ``(B, ...)`` one.

    Raises:
        DistributedError: a tensor's first dimension is not a multiple of ``world`` (named by its path,
            e.g. ``batch['x']``).
    """
    if isinstance(batch, Tensor):
        if batch.ndim == 0:
            return batch
        n = batch.shape[0]
        if n % world:
            raise DistributedError(f"{where} has {n} rows, which {world} processes cannot share evenly; make the "
                                   f"batch size a multiple of {world}")
        size = n // world
        return batch[rank * size:(rank + 1) * size]
    if isinstance(batch, dict):
        return {k: shard_batch(v, rank, world, where=f"{where}[{k!r}]") for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        parts = [shard_batch(v, rank, world, where=f"{where}[{i}]") for i, v in enumerate(batch)]
        return type(batch)(parts) if type(batch) in (list, tuple) else type(batch)(*parts)  # namedtuples too
    return batch


@contextlib.contextmanager
def rank_rng(seed: int, step: int, devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """Inside the block torch's CPU generator (and those of the CUDA ``devices``) are seeded from
    ``(seed, step, rank)``; on leaving, their states are restored. A no-op when not distributed.

    Random draws inside (dropout) then differ between processes and are reproducible per step, while the
    RNG state outside stays equal on every process (rank 0's checkpoint stands for all of them).
    """
    if not is_distributed():
        yield
        return
    words = np.random.SeedSequence([seed % 2**32, step, rank()]).generate_state(2, np.uint32)
    value = int(words[0]) << 32 | int(words[1])
    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in devices if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(value)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(value)
        yield


def average_gradients(params: Sequence[nn.Parameter], ok: bool) -> bool:
    """Average ``p.grad`` over the processes, in place (one all-reduce per device and dtype).

    Args:
        params: the trainable parameters, in the same order on every process.
        ok: whether this process's loss was finite (and ``backward`` ran).
    Returns:
        whether every process's loss was finite; when not, the gradients are left as they are (the step
        is skipped everywhere). A parameter whose gradient is ``None`` on some processes counts as zero
        there; ``None`` on all of them stays ``None``. Not distributed: ``ok``.
    """
    if not is_distributed():
        return ok
    status = torch.tensor([0.0 if ok else 1.0] + [float(p.grad is not None) for p in params], dtype=torch.float64)
    dist.all_reduce(status)
    if status[0] > 0:
        return False
    used = [p for p, n in zip(params, status[1:].tolist()) if n > 0]
    groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
    for p in used:
        groups.setdefault((p.device, p.dtype), []).append(p)
    world = dist.get_world_size()
    for members in groups.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in members])
        dist.all_reduce(flat)
        flat /= world
        for p, part in zip(members, flat.split([p.numel() for p in members])):
            p.grad = part.view_as(p).clone() if p.grad is None else p.grad.copy_(part.view_as(p))
    return True


def average_scalars(values: dict[str, float]) -> dict[str, float]:
    """``values`` averaged over the processes (every process must pass the same keys); not distributed:
    ``values``."""
    if not is_distributed():
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(total)
    mean = dict(zip(keys, (total / dist.get_world_size()).tolist()))
    return {k: mean[k] for k in values}


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every process's ``module`` (as DDP does at the start)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process (pickled between this run's own processes only)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, on every process; ``[value]`` when not distributed.
    Tensors in it (also inside dicts, lists and tuples) arrive on the CPU."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, _to_cpu(value))
    return out


__all__ = ["DistributedError", "average_gradients", "average_scalars", "barrier", "broadcast_module",
           "broadcast_object", "device", "gather_objects", "init", "is_distributed", "is_main", "local_rank",
           "main_first", "rank", "rank_rng", "shard_batch", "shard_range", "world_size"]
