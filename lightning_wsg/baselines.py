"""Untrained grounding baselines: a random proposal, and the distillation teacher alone.

Both score every proposal of every phrase (``[B, P, R]``, like ``GroundingModule.forward``)
so that they go through the same :class:`~lightning_wsg.metrics.GroundingMetrics` as a
trained model:

* :func:`random_scores`: uniform random scores, i.e. a random proposal per phrase;
* :func:`teacher_scores`: the teacher's ``t(r, p)`` (METHOD.md item 6) from the detector's
  labels and scores; its argmax is the detector's best-scored box among those whose label
  matches the phrase (the first proposal, the detector's top box, when none matches).
  The teacher knows categories, never attributes: this is what distillation starts from.

Example:
    >>> from lightning_wsg.models import Teacher
    >>> metrics = evaluate_scores(loader, lambda b: teacher_scores(Teacher("lexical"), b))  # doctest: +SKIP
    >>> metrics["acc"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from .data.batch import GroundingBatch
from .metrics import FLICKR_PHRASE_TYPES, GroundingMetrics
from .models.teacher import Teacher, phrase_texts

__all__ = ["evaluate_scores", "random_scores", "teacher_scores"]


def random_scores(batch: GroundingBatch, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random scores ``[B, P, R]``: each phrase picks a random real proposal."""
    B, P, R = len(batch), batch.phrase_mask.shape[1], batch.proposal_mask.shape[1]
    return torch.rand(B, P, R, generator=generator)


def teacher_scores(teacher: Teacher, batch: GroundingBatch) -> Tensor:
    """The teacher's scores ``t(r, p)`` ``[B, P, R]`` of a batch (detector labels and scores).

    Args:
        teacher: the distillation teacher (its matching decides which labels fit a phrase).
        batch: a batch whose proposals carry detector labels (or class probabilities).

    Returns:
        ``[B, P, R]`` scores, zero where no label matches the phrase.
    """
    if batch.proposal_labels is None and batch.class_probs is None:
        raise ValueError("the teacher needs detector labels or class probabilities for every proposal")
    scores, _ = teacher(
        phrase_texts(batch.words, batch.phrase_spans),
        batch.proposal_labels,
        batch.proposal_scores,
        batch.proposal_mask,
    )
    return scores


@torch.no_grad()
def evaluate_scores(
    batches: Iterable[GroundingBatch],
    score_fn: Callable[[GroundingBatch], Tensor],
    phrase_types: Sequence[str] = FLICKR_PHRASE_TYPES,
) -> dict[str, float]:
    """Grounding metrics of a scoring function over evaluation batches.

    Args:
        batches: batches with ground truth (a validation or test loader).
        score_fn: maps a batch to ``[B, P, R]`` scores (higher is better).
        phrase_types: the types reported as ``acc_<type>``.

    Returns:
        :meth:`GroundingMetrics.compute` as plain floats (``num_phrases`` too).
    """
    metrics = GroundingMetrics(phrase_types=phrase_types)
    for batch in batches:
        if not batch.has_ground_truth:
            raise ValueError(f"split {batch.split!r}: evaluation batches must carry ground-truth boxes")
        metrics.update(
            score_fn(batch),
            batch.proposals,
            batch.proposal_mask,
            batch.phrase_mask,
            batch.gt_union,
            batch.gt_boxes,
            batch.gt_box_mask,
            batch.phrase_types,
        )
    return {name: float(value) for name, value in metrics.compute().items()}
