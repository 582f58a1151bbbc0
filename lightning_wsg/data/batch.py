"""Typed samples and batches, and the collate function that pads them.

A :class:`GroundingSample` is one image-sentence pair. Training samples are weak: they
carry the image, the sentence, the phrase spans and the detector's proposals with
labels and scores, never a ground-truth box. Evaluation samples also carry, per phrase,
all ground-truth boxes and the phrase types (the union box is derived in collate).

Boxes are corners in original-image pixels (:mod:`lightning_wsg.boxes`); ``roi_boxes``
are the same proposals in pixels of the resized image tensor, ready for RoIAlign.

Example:
    >>> batch = collate([sample_a, sample_b])  # doctest: +SKIP
    >>> batch.proposals.shape  # [B, R_max, 4]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..boxes import union_box

__all__ = ["GroundingSample", "GroundingBatch", "collate"]


@dataclass
class GroundingSample:
    """One image-sentence pair.

    Attributes:
        split: the split this sample belongs to (``"train"``, ``"val"``, ``"testA"``...).
        image_id: image id as a string.
        sentence_id: a unique id of the sentence (``"<image_id>#<index>"`` on Flickr).
        image: ``[3, H, W]`` normalised image tensor (resized); ``[3, 1, 1]`` zeros when the
            model reads per-box features instead of images.
        image_size: original ``(width, height)``.
        words: the sentence's words (official tokenisation).
        phrase_spans: per phrase, the word span ``(start, end)`` with ``end`` exclusive.
        proposals: ``[R, 4]`` proposal corners in original pixels (``R >= 1``).
        roi_boxes: ``[R, 4]`` the proposals in pixels of ``image``.
        proposal_scores: ``[R]`` detector confidences.
        proposal_labels: ``R`` detector class names, or ``None``.
        class_probs: optional ``[R, C]`` class probabilities.
        region_features: optional ``[R, F]`` precomputed per-box features (the feature tower's input).
        gt_boxes: evaluation only: per phrase a ``[K, 4]`` tensor (``K >= 1``; ``K = 0`` for a
            phrase without a box in a split labelled for pseudo-labels, which no metric counts).
        phrase_types: evaluation only: per phrase its types (``["people"]``).
        phrase_ids: per phrase an id (Flickr chain id, RefCOCO sent id).
    """

    split: str
    image_id: str
    sentence_id: str
    image: Tensor
    image_size: tuple[int, int]
    words: list[str]
    phrase_spans: list[tuple[int, int]]
    proposals: Tensor
    roi_boxes: Tensor
    proposal_scores: Tensor
    proposal_labels: list[str] | None = None
    class_probs: Tensor | None = None
    region_features: Tensor | None = None
    gt_boxes: list[Tensor] | None = None
    phrase_types: list[list[str]] | None = None
    phrase_ids: list[str] = field(default_factory=list)


@dataclass
class GroundingBatch:
    """A padded batch of :class:`GroundingSample` (B samples, P phrases, R proposals).

    Padding is marked by ``phrase_mask`` ``[B, P]`` and ``proposal_mask`` ``[B, R]``;
    ``gt_box_mask`` ``[B, P, K]`` marks real ground-truth boxes. ``class_names`` says what the
    ``C`` columns of ``class_probs`` ``[B, R, C]`` are (the detections source's class names), so
    that a batch is read without asking where it came from; ``None`` without ``class_probs``.
    """

    split: str
    image_ids: list[str]
    sentence_ids: list[str]
    images: Tensor
    image_sizes: Tensor
    words: list[list[str]]
    phrase_spans: list[list[tuple[int, int]]]
    phrase_ids: list[list[str]]
    phrase_mask: Tensor
    proposals: Tensor
    roi_boxes: Tensor
    proposal_mask: Tensor
    proposal_scores: Tensor
    proposal_labels: list[list[str]] | None = None
    class_probs: Tensor | None = None
    class_names: list[str] | None = None
    region_features: Tensor | None = None
    gt_union: Tensor | None = None
    gt_boxes: Tensor | None = None
    gt_box_mask: Tensor | None = None
    phrase_types: list[list[list[str]]] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def has_ground_truth(self) -> bool:
        return self.gt_union is not None

    def require_ground_truth(self) -> None:
        """Raise ``ValueError`` unless the batch carries ground-truth boxes (evaluation needs them)."""
        if not self.has_ground_truth:
            raise ValueError(f"split {self.split!r}: evaluation batches must carry ground-truth boxes")


def _pad_stack(tensors: list[Tensor], length: int, fill: float = 0.0) -> Tensor:
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), fill)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def collate(samples: list[GroundingSample], class_names: list[str] | None = None) -> GroundingBatch:
    """Pad a list of samples into a :class:`GroundingBatch`.

    ``class_names``: what the columns of the samples' ``class_probs`` are (the detections
    store's names; a loader passes them with ``functools.partial(collate, class_names=...)``);
    the batch carries them when its samples carry class probabilities.
    """
    if not samples:
        raise ValueError("collate got an empty list of samples")
    splits = {s.split for s in samples}
    if len(splits) != 1:
        raise ValueError(f"a batch mixes splits {sorted(splits)}")
    for s in samples:
        if s.proposals.shape[0] == 0:
            raise ValueError(f"image {s.image_id}: a sample reached collate without proposals")
        if not s.phrase_spans:
            raise ValueError(f"sentence {s.sentence_id}: a sample reached collate without phrases")
    B = len(samples)
    R = max(s.proposals.shape[0] for s in samples)
    P = max(len(s.phrase_spans) for s in samples)
    proposal_mask = torch.zeros(B, R, dtype=torch.bool)
    phrase_mask = torch.zeros(B, P, dtype=torch.bool)
    for i, s in enumerate(samples):
        proposal_mask[i, : s.proposals.shape[0]] = True
        phrase_mask[i, : len(s.phrase_spans)] = True

    labels = None
    if all(s.proposal_labels is not None for s in samples):
        labels = [list(s.proposal_labels) for s in samples]
    class_probs = names = None
    if all(s.class_probs is not None for s in samples):
        class_probs = _pad_stack([s.class_probs for s in samples], R)
        if class_names is not None:
            names = [str(name) for name in class_names]
            if len(names) != class_probs.shape[-1]:
                raise ValueError(
                    f"class_probs over {class_probs.shape[-1]} classes, but {len(names)} class names "
                    f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): they name other columns"
                )
    region_features = None
    if all(s.region_features is not None for s in samples):
        widths = {s.region_features.shape[-1] for s in samples}
        if len(widths) != 1:
            raise ValueError(f"a batch mixes region features of widths {sorted(widths)}")
        region_features = _pad_stack([s.region_features.float() for s in samples], R)

    gt_union = gt_boxes = gt_box_mask = types = None
    if all(s.gt_boxes is not None for s in samples):
        # a phrase may have no box ([0, 4]: a split labelled for pseudo-labels, where some
        # chains have none); it is padding to the metrics, which count only phrases with one
        K = max(1, *(b.shape[0] for s in samples for b in s.gt_boxes))
        gt_union = torch.zeros(B, P, 4)
        gt_boxes = torch.zeros(B, P, K, 4)
        gt_box_mask = torch.zeros(B, P, K, dtype=torch.bool)
        for i, s in enumerate(samples):
            for j, boxes in enumerate(s.gt_boxes):
                if boxes.shape[0] == 0:
                    continue
                gt_union[i, j] = union_box(boxes)
                gt_boxes[i, j, : boxes.shape[0]] = boxes
                gt_box_mask[i, j, : boxes.shape[0]] = True
        types = [[list(t) for t in (s.phrase_types or [[] for _ in s.phrase_spans])] for s in samples]

    return GroundingBatch(
        split=samples[0].split,
        image_ids=[s.image_id for s in samples],
        sentence_ids=[s.sentence_id for s in samples],
        images=torch.stack([s.image for s in samples]),
        image_sizes=torch.tensor([list(s.image_size) for s in samples], dtype=torch.float32),
        words=[list(s.words) for s in samples],
        phrase_spans=[list(s.phrase_spans) for s in samples],
        phrase_ids=[list(s.phrase_ids) for s in samples],
        phrase_mask=phrase_mask,
        proposals=_pad_stack([s.proposals.float() for s in samples], R),
        roi_boxes=_pad_stack([s.roi_boxes.float() for s in samples], R),
        proposal_mask=proposal_mask,
        proposal_scores=_pad_stack([s.proposal_scores.float() for s in samples], R),
        proposal_labels=labels,
        class_probs=class_probs,
        class_names=names,
        region_features=region_features,
        gt_union=gt_union,
        gt_boxes=gt_boxes,
        gt_box_mask=gt_box_mask,
        phrase_types=types,
    )
