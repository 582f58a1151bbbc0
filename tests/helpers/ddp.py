"""Two CPU processes (gloo) computing the gathered InfoNCE of their share of a fixed batch, and
:class:`ThreadGroup`, ranks simulated by threads in one process (many splits cheaply).

Kept light (torch and :mod:`lightning_wsg.distributed` only): every spawned process imports it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lightning_wsg.contrastive_distillation import gathered_info_nce

__all__ = [
    "B", "IMAGE_IDS", "SPLITS", "CASES", "HAND_IMAGE_IDS", "inputs", "hand_inputs", "hand_loss", "loss_and_grads",
    "free_port", "run_two_ranks", "ThreadGroup", "NcclThreadGroup",
]  # fmt: skip

B, R, P, D_IN, D = 6, 7, 4, 10, 8
N_REGIONS = [3, 7, 5, 2, 6, 4]
N_PHRASES = [1, 4, 2, 3, 1, 2]
#: "a" is on both ranks for both splits below (and twice on rank 0): cross-rank same-image masking
IMAGE_IDS = ["a", "b", "a", "c", "a", "d"]
SPLITS = ((3, 3), (4, 2))  # pairs per rank; (4, 2) exercises the unequal-batch weighting
CASES = [
    {"symmetric": symmetric, "region_reduce": region_reduce, "phrase_reduce": phrase_reduce}
    for symmetric in (False, True)
    for region_reduce, phrase_reduce in (("max", "sum"), ("logsumexp", "mean"))
]


def inputs() -> dict[str, torch.Tensor]:
    """Fixed raw region/phrase inputs ``[B, R, D_IN]``, ``[B, P, D_IN]`` and ragged masks."""
    g = torch.Generator().manual_seed(0)
    return {
        "regions": torch.randn(B, R, D_IN, generator=g),
        "phrases": torch.randn(B, P, D_IN, generator=g),
        "region_mask": torch.arange(R)[None] < torch.tensor(N_REGIONS)[:, None],
        "phrase_mask": torch.arange(P)[None] < torch.tensor(N_PHRASES)[:, None],
    }


def loss_and_grads(rows: slice, case: dict, gather: bool = True) -> tuple[float, torch.Tensor]:
    """The training loss of the pairs ``rows`` (trimmed to their own max R and P) and its gradients
    w.r.t. the two Linear layers that make the region and phrase features."""
    x = inputs()
    torch.manual_seed(1)
    region_proj, phrase_proj = nn.Linear(D_IN, D), nn.Linear(D_IN, D)
    r_mask, p_mask = x["region_mask"][rows], x["phrase_mask"][rows]
    r_len, p_len = int(r_mask.sum(1).max()), int(p_mask.sum(1).max())  # ragged R, P across ranks
    r_mask, p_mask = r_mask[:, :r_len], p_mask[:, :p_len]
    regions = F.normalize(region_proj(x["regions"][rows, :r_len]), dim=-1) * r_mask[..., None]
    phrases = F.normalize(phrase_proj(x["phrases"][rows, :p_len]), dim=-1) * p_mask[..., None]
    loss = gathered_info_nce(regions, r_mask, phrases, p_mask, IMAGE_IDS[rows], tau=0.5, gather=gather, **case)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for m in (region_proj, phrase_proj) for p in m.parameters()])
    return loss.item(), grads


# A case small enough to score by hand (tests/test_distributed.py works out its loss): 2-d
# features, three pairs, images "a", "b", "a". PAD entries are masked out; were a mask
# ignored, their large dot products would change every score they reach.
_E1, _E2, _D, _PAD = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [5.0, 5.0]
HAND_IMAGE_IDS = ["a", "b", "a"]
HAND_ROWS_PER_RANK = (2, 1)


def hand_inputs() -> dict[str, torch.Tensor]:
    """Regions ``[3, 2, 2]`` (image 1 has one real region) and phrases ``[3, 2, 2]``."""
    return {
        "regions": torch.tensor([[_E1, _E2], [_D, _PAD], [[-1.0, 0.0], _E2]]),
        "region_mask": torch.tensor([[True, True], [True, False], [True, True]]),
        "phrases": torch.tensor([[_E1, _PAD], [_D, _E1], [_E2, _PAD]]),
        "phrase_mask": torch.tensor([[True, False], [True, True], [True, False]]),
    }


def hand_loss(rows: slice, **kwargs) -> float:
    """``gathered_info_nce`` of the hand case's pairs ``rows`` (tau 0.5)."""
    x = hand_inputs()
    return gathered_info_nce(
        x["regions"][rows], x["region_mask"][rows], x["phrases"][rows], x["phrase_mask"][rows],
        HAND_IMAGE_IDS[rows], tau=0.5, **kwargs,
    ).item()  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = []
        for sizes in SPLITS:
            start = sum(sizes[:rank])
            rows = slice(start, start + sizes[rank])
            for case in CASES:
                results.append(loss_and_grads(rows, case))
            results.append(loss_and_grads(rows, CASES[0], gather=False))
        start = sum(HAND_ROWS_PER_RANK[:rank])
        rows = slice(start, start + HAND_ROWS_PER_RANK[rank])
        results.append([hand_loss(rows, symmetric=symmetric) for symmetric in (False, True)])
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_two_ranks(out: Path) -> list[list[tuple[float, torch.Tensor]]]:
    """Per rank, for each split of :data:`SPLITS`: the results of every case, then one without gathering;
    last, the hand case's ``[plain, symmetric]`` losses of the rank's rows."""
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt") for r in range(2)]


_T = TypeVar("_T")


class ThreadGroup:
    """A process group of ``world`` ranks simulated by threads of this process.

    Stands in for ``torch.distributed`` inside :mod:`lightning_wsg.distributed` (patch its ``dist``)
    with the calls that module makes: the rank is the calling thread's, and the collectives
    exchange tensors between the threads as gloo does, with gloo's rule that every rank
    all-gathers a tensor of one shape and dtype. Spawning processes costs seconds per group;
    this lets a property test try many splits of a batch over 2-4 ranks.
    """

    def __init__(self, world: int, timeout: float = 60.0) -> None:
        self.world = world
        self._barrier = threading.Barrier(world, timeout=timeout)
        self._slots: list[torch.Tensor | None] = [None] * world
        self._local = threading.local()

    # -- the torch.distributed calls of lightning_wsg.distributed
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world

    def get_rank(self) -> int:
        return self._local.rank

    def get_backend(self) -> str:
        return "gloo"

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        got = self._exchange(tensor)
        if any(t.shape != tensor.shape or t.dtype != tensor.dtype for t in got):
            raise RuntimeError(f"all_gather of unequal tensors: {[(tuple(t.shape), t.dtype) for t in got]}")
        for o, t in zip(out, got, strict=True):
            o.copy_(t)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        tensor.copy_(torch.stack(self._exchange(tensor)).sum(0))

    # -- running the ranks
    def _exchange(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self._slots[self.get_rank()] = tensor.detach().clone()
        self._barrier.wait()
        got = list(self._slots)
        self._barrier.wait()  # every rank has read the slots before any rank writes the next ones
        return got

    def run(self, fn: Callable[[int], _T]) -> list[_T]:
        """``fn(rank)`` on every rank at once; the results in rank order (the first error is raised)."""
        results: list = [None] * self.world
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            self._local.rank = rank
            try:
                results[rank] = fn(rank)
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                errors.append(error)
                self._barrier.abort()  # the other ranks stop waiting for this one

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


class NcclThreadGroup(ThreadGroup):
    """A :class:`ThreadGroup` that calls itself ``nccl``: it has NCCL's ``reduce_scatter_tensor``
    (which gloo lacks) and records the collectives called, so that a test can tell which path of
    the backward ran. Its ``reduce_scatter_tensor`` reads the input as NCCL does, as one flat buffer
    of ``world`` chunks of the output's size."""

    def __init__(self, world: int, timeout: float = 60.0) -> None:
        super().__init__(world, timeout)
        self.calls: list[str] = []

    def get_backend(self) -> str:
        return "nccl"

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.calls.append("all_reduce")
        super().all_reduce(tensor)

    def reduce_scatter_tensor(self, output: torch.Tensor, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        self.calls.append("reduce_scatter_tensor")
        if input.numel() != output.numel() * self.world:
            raise RuntimeError(f"reduce_scatter_tensor: input of {input.numel()} for an output of {output.numel()}")
        summed = torch.stack(self._exchange(input.contiguous())).sum(0).reshape(self.world, -1)
        output.copy_(summed[self.get_rank()].view_as(output))
