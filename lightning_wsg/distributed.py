"""Multi-process helpers: all-gathers with gradients, image-id codes, and cluster detection.

The InfoNCE loss across processes is
:func:`lightning_wsg.contrastive_distillation.gathered_info_nce`, built on these helpers.
Under DDP each process holds ``B_r`` image-sentence pairs. The loss gathers
the region features (padded to the largest ``B`` and ``R`` of all ranks), their masks and a
64-bit code of every image id from every rank, with an all-gather whose backward sums the
gradients of all ranks (so a region feature receives the gradient of every rank that used
it as a negative). Each rank keeps its own sentences as rows; its positives sit at their
global column; columns showing a row's image (another caption of it, on any rank) are
removed from the softmax. The local loss is scaled by ``B_r * world_size / B_total`` so that
DDP's gradient averaging gives exactly the gradient of one process holding all
``B_total`` pairs (the scale is 1 when the ranks hold equal batches).

Without an initialised process group (one process) everything reduces to the local batch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


__all__ = [
    "world_size_and_rank",
    "image_id_codes",
    "all_gather_with_grad",
    "all_gather_padded",
    "gather_sizes",
    "slurm_environment",
]


def world_size_and_rank() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def image_id_codes(image_ids: Sequence[str], device: torch.device | str | None = None) -> Tensor:
    """``[N]`` int64 codes of the ids (BLAKE2b, identical in every process, unlike ``hash``)."""
    codes = [
        int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True)
        for i in image_ids
    ]
    return torch.tensor(codes, dtype=torch.long, device=device)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather into ``[world, ...]``; the backward sums every rank's gradient of this rank's slot."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = world_size_and_rank()
        ctx.rank = rank
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(out, tensor)
        return torch.stack(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            local = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(local, grad.flatten(0, 1))
            return local
        # gloo has no reduce-scatter: sum everything, keep this rank's slot
        dist.all_reduce(grad)
        return grad[ctx.rank]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """``[world, *tensor.shape]``, differentiable: gradients flow back to every rank's input.

    Every rank must pass a tensor of the same shape (see :func:`all_gather_padded`).
    """
    if world_size_and_rank()[0] == 1:
        return tensor[None]
    return _AllGatherWithGrad.apply(tensor)


def _pad_to(tensor: Tensor, shape: Sequence[int], value: float | bool = 0) -> Tensor:
    """Pad ``tensor`` at the end of its leading dims up to ``shape`` (same number of dims)."""
    pad: list[int] = []
    for have, want in reversed(list(zip(tensor.shape, shape))):
        pad += [0, want - have]
    if not any(pad):
        return tensor
    if tensor.dtype == torch.bool:
        return F.pad(tensor.to(torch.uint8), pad, value=int(value)).to(torch.bool)
    return F.pad(tensor, pad, value=value)


def all_gather_padded(tensor: Tensor, sizes: Tensor, with_grad: bool = False, value: float | bool = 0) -> Tensor:
    """Gather ragged tensors from every rank, each padded to the largest size per dim.

    Args:
        tensor: this rank's tensor ``[B_r, X_r, ...]``.
        sizes: ``[world, k]`` the first ``k`` dims of every rank's tensor (``k <= tensor.dim()``).
        with_grad: keep gradients (see :func:`all_gather_with_grad`).
        value: the padding value.

    Returns:
        ``[sum_r B_r, max X_r, ...]``: the ranks' rows in rank order, padding rows removed.
    """
    k = sizes.shape[1]
    target = [int(s) for s in sizes.max(dim=0).values] + list(tensor.shape[k:])
    padded = _pad_to(tensor, target, value)
    if with_grad:
        gathered = all_gather_with_grad(padded)
    else:
        out = [torch.empty_like(padded) for _ in range(sizes.shape[0])]
        dist.all_gather(out, padded.contiguous())
        gathered = torch.stack(out)
    return torch.cat([gathered[r, : int(sizes[r, 0])] for r in range(sizes.shape[0])])


def gather_sizes(*tensors: Tensor) -> Tensor:
    """``[world, n]`` the shapes (first 2 dims of each tensor) of every rank."""
    local = torch.tensor([d for t in tensors for d in t.shape[:2]], dtype=torch.long, device=tensors[0].device)
    out = [torch.empty_like(local) for _ in range(world_size_and_rank()[0])]
    dist.all_gather(out, local)
    return torch.stack(out)


def slurm_environment() -> dict[str, Any] | None:
    """The SLURM job layout from the environment, or ``None`` outside a SLURM step.

    Lightning's ``SLURMEnvironment`` reads the same variables; this is for logs and checks
    (for example that ``trainer.num_nodes`` matches the allocation).

    Returns:
        ``job_id``, ``num_nodes``, ``node_rank``, ``num_tasks``, ``global_rank``,
        ``local_rank`` and ``tasks_per_node`` (``None`` where SLURM did not set it).
    """
    env = os.environ
    if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
        return None

    def num(name: str) -> int | None:
        value = env.get(name, "").split("(")[0].split(",")[0]
        return int(value) if value.isdigit() else None

    return {
        "job_id": env["SLURM_JOB_ID"],
        "num_nodes": num("SLURM_JOB_NUM_NODES") or num("SLURM_NNODES"),
        "node_rank": num("SLURM_NODEID"),
        "num_tasks": num("SLURM_NTASKS"),
        "global_rank": num("SLURM_PROCID"),
        "local_rank": num("SLURM_LOCALID"),
        "tasks_per_node": num("SLURM_NTASKS_PER_NODE"),
    }
