"""Two CPU processes (gloo) computing the gathered InfoNCE of their share of a fixed batch.

Kept light (torch and :mod:`lightning_wsg.distributed` only): every spawned process imports it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lightning_wsg.distributed import gathered_info_nce

__all__ = [
    "B", "IMAGE_IDS", "SPLITS", "CASES", "HAND_IMAGE_IDS", "inputs", "hand_inputs", "hand_loss", "loss_and_grads",
    "free_port", "run_two_ranks",
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
