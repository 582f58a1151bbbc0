"""Samplers and a resumable training loader: one process, DDP, and resumption mid-epoch.

* Training: :class:`ResumableDistributedSampler` shuffles with ``seed + epoch`` (the same
  permutation in every process and after a restart) and gives each rank its share
  (``num_replicas=1`` on one process). :class:`ResumableDataLoader` counts the batches
  consumed in the current epoch and saves that count in Lightning checkpoints (Lightning
  stores the ``state_dict`` of a training loader that has one), so a run resumed from a
  mid-epoch checkpoint goes on with the next batch of the same epoch instead of starting
  the epoch again from its first batch. The skipped batches are never loaded: the sampler
  drops their indices.
* Evaluation under DDP: Lightning's ``UnrepeatedDistributedSampler`` splits the split
  without padding (ranks may differ by one sample), so every phrase is evaluated once and
  the sum-reduced metrics count it once. On one process evaluation keeps the plain
  sequential order.

Both samplers are ``DistributedSampler`` instances, so Lightning does not replace them.

Example:
    >>> sampler = ResumableDistributedSampler(range(10), num_replicas=1, rank=0, seed=0)  # doctest: +SKIP
    >>> loader = ResumableDataLoader(dataset, batch_size=4, sampler=sampler)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sized
from typing import Any

from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, Sampler

__all__ = ["ResumableDistributedSampler", "ResumableDataLoader", "training_sampler", "evaluation_sampler"]

logger = logging.getLogger("lightning_wsg")


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose next iteration can start ``n`` samples in (see :meth:`skip_next`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = 0

    def skip_next(self, n: int) -> None:
        """Let the next iteration (only) leave out its first ``n`` indices of this rank."""
        self._start = max(int(n), 0)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        indices = list(super().__iter__())
        return iter(indices[start:])


class _ResumingIterator:
    """Iterates a :class:`ResumableDataLoader`, counting consumed batches.

    The underlying iterator is made on the first ``next`` (not by ``iter``): Lightning
    calls ``set_epoch`` on the sampler after it asked for the iterator, and worker
    processes would otherwise draw indices of the previous epoch's permutation.
    """

    def __init__(self, loader: ResumableDataLoader, skip: int) -> None:
        self.loader = loader
        self.skip = skip
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> _ResumingIterator:
        return self

    def __next__(self) -> Any:
        if self.iterator is None:
            if self.skip:
                self.loader.sampler.skip_next(self.skip * self.loader.batch_size)
            self.iterator = DataLoader.__iter__(self.loader)
        batch = next(self.iterator)
        self.loader._consumed += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableDistributedSampler` whose position is checkpointed.

    ``state_dict()`` holds the epoch and the number of batches consumed in it (0 once the
    epoch was fully consumed); ``load_state_dict()`` makes the next iteration skip them.
    Lightning calls both (``_Stateful`` loaders) when saving and when resuming a run.
    Takes the arguments of ``DataLoader``. With another sampler (Lightning swaps in its own
    for ``overfit_batches``) or no ``batch_size`` it is a plain ``DataLoader`` that always
    starts an epoch at its first batch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0
        self._resume = 0

    @property
    def resumable(self) -> bool:
        """Whether the position within an epoch can be restored."""
        return isinstance(self.sampler, ResumableDistributedSampler) and self.batch_size is not None

    def __iter__(self) -> Iterator[Any]:
        if not self.resumable:
            return super().__iter__()
        skip, self._resume = self._resume, 0
        self._consumed = skip
        return _ResumingIterator(self, skip)

    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``batches`` consumed in it, and the layout they count in."""
        if not self.resumable:
            return {}
        consumed = self._consumed if self._consumed < len(self) else 0
        return {
            "epoch": self.sampler.epoch,
            "batches": consumed,
            "batch_size": self.batch_size,
            "num_replicas": self.sampler.num_replicas,
            "num_samples": len(self.sampler.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration start after the ``batches`` of ``state``, in its epoch's order."""
        if not self.resumable or not state:
            return
        layout = (self.batch_size, self.sampler.num_replicas, len(self.sampler.dataset))
        saved = (state.get("batch_size"), state.get("num_replicas"), state.get("num_samples"))
        if saved != layout:
            logger.warning(
                "resuming with another batch size, process count or dataset size (saved %s, now %s): "
                "the epoch goes on after the same number of batches, but not at the same samples",
                saved,
                layout,
            )
        self.sampler.set_epoch(int(state.get("epoch", 0)))
        self._resume = min(int(state.get("batches", 0)), len(self))


def _seed() -> int:
    # the seed Lightning's own distributed sampler uses (set by seed_everything)
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def _replicas(trainer: Any) -> tuple[int, int]:
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kwargs:
        return 1, 0
    return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))


def training_sampler(dataset: Sized, trainer: Any = None, shuffle: bool = True) -> ResumableDistributedSampler:
    """This rank's shuffled share of ``dataset`` (the whole of it on one process)."""
    num_replicas, rank = _replicas(trainer)
    return ResumableDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=_seed())


def evaluation_sampler(dataset: Sized, trainer: Any = None) -> Sampler | None:
    """Under DDP an unpadded split of ``dataset`` (each sample once over all ranks); else ``None``."""
    num_replicas, rank = _replicas(trainer)
    if num_replicas == 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
