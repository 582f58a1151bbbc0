"""Untrained grounding baselines (a random proposal, the distillation teacher alone) and
where a scoring goes wrong on the synthetic world.

Both score every proposal of every phrase (``[B, P, R]``, like ``GroundingModule.forward``)
so that they go through the same :class:`~lightning_wsg.metrics.GroundingMetrics` as a
trained model:

* :func:`random_scores`: uniform random scores, i.e. a random proposal per phrase;
* :func:`teacher_scores`: the teacher's ``t(r, p)`` (``docs/method.md``, section 6) from the detector's
  labels and scores; its argmax is the detector's best-scored box among those whose label
  matches the phrase (the first proposal, the detector's top box, when none matches).
  The teacher knows categories, never attributes: this is what distillation starts from.

:func:`error_kinds` sorts each phrase of a synthetic world (whose objects are known, see
:func:`lightning_wsg.synthetic.read_objects`) by outcome: right, unreachable (no proposal
reaches IoU 0.5), another category's object, another object of the phrase's category, the
right object in a loose box, or no object at all.

Example:
    >>> from lightning_wsg.models import Teacher
    >>> metrics = evaluate_scores(loader, lambda b: teacher_scores(Teacher("lexical"), b))  # doctest: +SKIP
    >>> metrics["acc"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .boxes import box_iou
from .data.batch import GroundingBatch
from .metrics import FLICKR_PHRASE_TYPES, GroundingMetrics
from .models.teacher import Teacher, phrase_texts

__all__ = ["ERROR_KINDS", "error_kinds", "evaluate_scores", "random_scores", "teacher_scores"]

#: The outcomes of :func:`error_kinds`, in the order they are tested.
ERROR_KINDS = ("right", "unreachable", "other_category", "same_category", "loose_box", "no_object")


def random_scores(batch: GroundingBatch, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random scores ``[B, P, R]``: each phrase picks a random real proposal."""
    B, P, R = len(batch), batch.phrase_mask.shape[1], batch.proposal_mask.shape[1]
    return torch.rand(B, P, R, generator=generator)


def teacher_scores(teacher: Teacher, batch: GroundingBatch, class_names: list[str] | None = None) -> Tensor:
    """The teacher's scores ``t(r, p)`` ``[B, P, R]`` of a batch (detector labels and scores).

    Args:
        teacher: the distillation teacher (its matching decides which labels fit a phrase).
        batch: a batch whose proposals carry detector labels (or class probabilities).
        class_names: the classes indexing ``batch.class_probs`` (the detections store's); with
            them the teacher reads every box's probabilities, as in training, else the top-1 labels.

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
        class_probs=batch.class_probs if class_names is not None else None,
        class_names=class_names,
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
        metrics.update_batch(score_fn(batch), batch)
    return {name: float(value) for name, value in metrics.compute().items()}


@torch.no_grad()
def error_kinds(
    batches: Iterable[GroundingBatch],
    score_fn: Callable[[GroundingBatch], Tensor],
    objects: Mapping[str, Sequence[Mapping]],
    iou: float = 0.5,
) -> dict[str, float]:
    """Share of the evaluated phrases in each outcome of :data:`ERROR_KINDS`.

    A phrase is ``right`` when its top proposal reaches ``iou`` with the union box (as
    ``acc``), else ``unreachable`` when no proposal does; otherwise the top box is matched to
    the object it overlaps most (IoU >= ``iou``): ``other_category`` (an object of another
    category), ``same_category`` (another object of the phrase's category: an attribute
    mistake), ``loose_box`` (the phrase's own object, but a box too loose for the union box);
    ``no_object`` when it overlaps no object that well.

    Args:
        batches: evaluation batches of the world (with ground truth).
        score_fn: maps a batch to ``[B, P, R]`` scores.
        objects: ``image_id -> objects`` (:func:`lightning_wsg.synthetic.read_objects`);
            a phrase's objects are those whose ``chains`` hold its phrase id.
        iou: the IoU threshold.

    Returns:
        ``{kind: share}`` over :data:`ERROR_KINDS` (summing to 1) plus ``num_phrases``.
    """
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for batch in batches:
        batch.require_ground_truth()
        scores = score_fn(batch).masked_fill(~batch.proposal_mask[:, None, :], float("-inf"))
        top = scores.argmax(dim=-1)  # [B, P]
        counted = batch.phrase_mask & batch.gt_box_mask.any(-1)
        for i, p in counted.nonzero().tolist():
            proposals = batch.proposals[i][batch.proposal_mask[i]]
            gt = batch.gt_union[i, p][None]
            chosen = batch.proposals[i, top[i, p]][None]
            if box_iou(gt, chosen)[0, 0] >= iou:
                counts["right"] += 1
                continue
            if box_iou(gt, proposals).max() < iou:
                counts["unreachable"] += 1
                continue
            image_objects = objects.get(batch.image_ids[i])
            if not image_objects:
                raise KeyError(f"no objects known for image {batch.image_ids[i]!r}")
            overlap = box_iou(chosen, torch.tensor([o["box"] for o in image_objects], dtype=torch.float32))[0]
            j = int(overlap.argmax())
            hit = image_objects[j]
            phrase_id = batch.phrase_ids[i][p]
            own = [o for o in image_objects if phrase_id in {str(c) for c in o["chains"]}]
            if overlap[j] < iou:
                kind = "no_object"
            elif any(hit is o for o in own):
                kind = "loose_box"
            elif hit["category"] in {o["category"] for o in own}:
                kind = "same_category"
            else:
                kind = "other_category"
            counts[kind] += 1
    total = sum(counts.values())
    return {k: v / max(1, total) for k, v in counts.items()} | {"num_phrases": float(total)}
