"""Data-parallel training across processes started by torchrun: one model per process, gradients averaged.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Each process trains on its own clips (the step's
clip j comes from rng(seed, step, j); process r takes clips r * per_process ...), and after each
backward the trainable parameters' gradients are averaged over processes with one all-reduce per
bucket. Every process then takes the same optimizer step from the same weights, so the weights
stay identical without being sent; one process with all the clips of a step computes the same
mean gradient. Only the trainable parameters travel (the summary tokens: about 4% of a 2B).

NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU (the tests). Set
GLOO_SOCKET_IFNAME=lo, or MASTER_ADDR=127.0.0.1, to keep a single machine's run on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

_BUCKET_BYTES = 64 << 20


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, logs and outputs."""
        return self.rank == 0


def world_from_env() -> World:
    """This process's place among those torchrun started (one process alone: rank 0 of 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < size:
        raise ValueError(f"RANK {rank} is outside WORLD_SIZE {size}")
    return World(rank, size, local)


def start(world: World, device: str) -> str:
    """Join the process group; returns the device this process trains on."""
    if world.size == 1:
        return device
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def stop(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def average_gradients(params: Iterable[torch.nn.Parameter], world: World) -> None:
    """Replace each parameter's gradient by its mean over the processes (missing ones count as 0)."""
    if world.size == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        start_at = 0
        while start_at < len(grads):
            size, end = 0, start_at
            while end < len(grads):
                n = grads[end].numel() * grads[end].element_size()
                if end > start_at and size + n > _BUCKET_BYTES:
                    break
                size += n
                end += 1
            bucket = grads[start_at:end]
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat.div_(world.size)
            for g, averaged in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                g.copy_(averaged)
            start_at = end


def average_values(values: dict[str, float], world: World) -> dict[str, float]:
    """The mean of each logged value over the processes (every process logs the same figures)."""
    if world.size == 1 or not values:
        return values
    names = sorted(values)
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    t = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {n: float(v) / world.size for n, v in zip(names, t.tolist(), strict=True)}
