"""Process-group plumbing for ``torchrun``: rank/world from the environment, gathers, gradient averaging.

One process (no ``WORLD_SIZE`` or 1) uses none of this and needs no process group. Under torchrun the
backend is NCCL on CUDA and gloo on CPU. Gradients are averaged by hand after backward instead of through
``DistributedDataParallel``: a step runs the encoder several times (queries, then documents) before one
backward, which DDP's reducer does not expect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where collective buffers live: cuda for NCCL, cpu for gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device_kind: str) -> DistEnv:
    """Join the torchrun process group if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if device_kind == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    comm = f"cuda:{local}" if device_kind == "cuda" else "cpu"
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, comm)


def shutdown(env: DistEnv, clean: bool = True) -> None:
    """Leave the process group. The barrier first matters for gloo: a rank that tears its pairs down while
    a peer is still inside its last collective makes that peer abort (``terminate called without an
    active exception``), which failed CI once. After an error (``clean=False``) the peers may never reach
    the barrier, so it is skipped."""
    if env.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def gather_with_grad(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate every rank's ``x`` (same shape everywhere) along dim 0, keeping the autograd path
    back to each rank's own slice (the backward sums the gradients all ranks computed for it)."""
    if not env.enabled:
        return x
    return _GatherWithGrad.apply(x.contiguous())  # (world * n, ...)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for the whole gathered tensor and keeps this
    rank's rows (the same maths as ``torch.distributed.nn.all_gather``, which now warns it is deprecated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(x: np.ndarray, env: DistEnv) -> np.ndarray:
    """Concatenate unequal row blocks from every rank (no gradient), in rank order."""
    if not env.enabled:
        return x
    dev = env.comm_device
    t = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(env.world)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=dev))
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(env.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu().numpy()


def broadcast_array(x: np.ndarray | None, dtype: np.dtype, ndim: int, env: DistEnv) -> np.ndarray:
    """Rank 0's array on every rank (others pass None)."""
    assert x is not None or not env.is_main
    if not env.enabled:
        return x  # type: ignore[return-value]
    dev = env.comm_device
    shape = torch.tensor(list(x.shape) if env.is_main else [0] * ndim, dtype=torch.long, device=dev)
    dist.broadcast(shape, 0)
    if env.is_main:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    else:
        t = torch.zeros(tuple(shape.tolist()), dtype=_torch_dtype(dtype), device=dev)
    dist.broadcast(t, 0)
    return t.cpu().numpy().astype(dtype, copy=False)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype)).dtype


def average_gradients(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """All-reduce the gradients as one flat buffer and divide by the world size."""
    if not env.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # (total,)
    dist.all_reduce(flat)
    flat /= env.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_finite(value: float, env: DistEnv) -> bool:
    """True when the value is finite on every rank (so every rank stops together on NaN)."""
    bad = torch.tensor([0.0 if np.isfinite(value) else 1.0], device=env.comm_device)
    if env.enabled:
        dist.all_reduce(bad)
    return bool(bad.item() == 0)
