"""Phrase grounding metrics (torchmetrics, sum-reduced states: exact under DDP).

Protocol (``docs/data.md``, "Evaluation protocol"): only real phrases whose
chain has at least one ground-truth box count; the prediction is the top-scoring valid
proposal; it is correct when its IoU with the chain's UNION box is ``>= 0.5``. Boxes are
corners (:mod:`lightning_wsg.boxes`), so plain IoU equals the +1-pixel IoU of phraseloceval.
Also reported: "any box" accuracy, pointing accuracy, recall@k over the ranked proposals,
the upper bound (any proposal reaches the threshold) and accuracy per phrase type.

Example:
    >>> import torch
    >>> metric = GroundingMetrics(ks=(1,))
    >>> proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    >>> gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    >>> metric.update(torch.tensor([[[0.9, 0.1]]]), proposals, torch.ones(1, 2, dtype=torch.bool),
    ...               torch.ones(1, 1, dtype=torch.bool), gt, gt[:, :, None], torch.ones(1, 1, 1, dtype=torch.bool),
    ...               [[["people"]]])
    >>> out = metric.compute()
    >>> out["acc"].item(), out["acc_people"].item(), out["num_phrases"].item()
    (1.0, 1.0, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from .boxes import box_centers, box_iou, points_in_boxes

if TYPE_CHECKING:  # metrics read a batch's fields only; no import of the data package at run time
    from .data.batch import GroundingBatch

__all__ = [
    "FLICKR_PHRASE_TYPES",
    "PhraseOutcomes",
    "TopK",
    "rank_proposals",
    "predict_boxes",
    "phrase_results",
    "GroundingMetrics",
]

FLICKR_PHRASE_TYPES: tuple[str, ...] = (
    "people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other",
)


class TopK(NamedTuple):
    """Top-k proposals per phrase; ``k' = min(k, R)`` columns, best first.

    Unpacks as ``indices, boxes, scores = predict_boxes(...)``.

    Attributes:
        indices: ``[B, P, k']`` proposal indices (long), ``-1`` where there is no k-th real proposal.
        boxes: ``[B, P, k', 4]`` the proposals' corners, zeros where ``indices`` is ``-1``.
        scores: ``[B, P, k']`` their scores (detached), ``-inf`` where ``indices`` is ``-1``.
    """

    indices: Tensor
    boxes: Tensor
    scores: Tensor

    @property
    def mask(self) -> Tensor:
        """``[B, P, k']`` True for real proposals (False when an image has fewer than k)."""
        return self.indices >= 0


def rank_proposals(scores: Tensor, proposal_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Order each phrase's proposals by score, best first, padding always last.

    Args:
        scores: ``[B, P, R]`` region-phrase scores, higher is better (NaN counts as ``-inf``).
        proposal_mask: ``[B, R]`` True for real proposals.

    Returns:
        ``(order, valid)``: ``[B, P, R]`` proposal indices and whether each ranked one is real.
        Ties keep the proposal order (stable sort), so the result is deterministic.
    """
    scores = torch.nan_to_num(scores.detach().float(), nan=float("-inf"))
    valid = proposal_mask.bool()[:, None, :].expand_as(scores)
    order = scores.argsort(dim=-1, descending=True, stable=True)
    # second stable pass on validity: real proposals first, score order kept among them
    second = valid.gather(-1, order).to(torch.uint8).argsort(dim=-1, descending=True, stable=True)
    order = order.gather(-1, second)
    return order, valid.gather(-1, order)


def predict_boxes(scores: Tensor, proposals: Tensor, proposal_mask: Tensor, k: int = 1) -> TopK:
    """Top-k proposals per phrase (padding never picked).

    Args:
        scores: ``[B, P, R]`` region-phrase scores, higher is better.
        proposals: ``[B, R, 4]`` proposal corners.
        proposal_mask: ``[B, R]`` True for real proposals.
        k: how many to keep (clipped to ``R``).

    Returns:
        A :class:`TopK` ``(indices, boxes, scores)``; the prediction is ``boxes[:, :, 0]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order, valid = rank_proposals(scores, proposal_mask)
    idx, mask = order[..., :k], valid[..., :k]
    B, P, kk = idx.shape
    boxes = proposals.gather(1, idx.reshape(B, P * kk, 1).expand(B, P * kk, 4)).reshape(B, P, kk, 4)
    boxes = boxes.masked_fill(~mask[..., None], 0.0)
    top_scores = scores.detach().gather(-1, idx).masked_fill(~mask, float("-inf"))
    return TopK(idx.masked_fill(~mask, -1), boxes, top_scores)


def phrase_results(
    scores: Tensor,
    proposals: Tensor,
    proposal_mask: Tensor,
    words: Sequence[Sequence[str]],
    phrase_spans: Sequence[Sequence[tuple[int, int]]],
    top_k: int = 5,
) -> list[list[dict[str, Any]]]:
    """Per sentence, per phrase: the chosen box, its score and the next ``top_k`` boxes."""
    top = predict_boxes(scores, proposals, proposal_mask, k=1 + max(0, int(top_k)))
    boxes, values, mask = top.boxes.cpu(), top.scores.float().cpu(), top.mask.cpu()
    out = []
    for i, spans in enumerate(phrase_spans):
        rows = []
        for j, (s, e) in enumerate(spans):
            ranked = [
                {"box": [round(v, 2) for v in boxes[i, j, r].tolist()], "score": round(float(values[i, j, r]), 6)}
                for r in range(boxes.shape[2])
                if mask[i, j, r]
            ]
            rows.append(
                {
                    "phrase": " ".join(words[i][s:e]),
                    "span": [int(s), int(e)],
                    "box": ranked[0]["box"],
                    "score": ranked[0]["score"],
                    "alternatives": ranked[1:],
                }
            )
        out.append(rows)
    return out


class PhraseOutcomes(NamedTuple):
    """What each phrase contributes to :class:`GroundingMetrics` (from :meth:`GroundingMetrics.outcomes`).

    Every field is a bool tensor over the phrases, ``[B, P]`` (or flattened ``[N]``), False
    for phrases that do not count (padding, no ground-truth box).

    Attributes:
        counted: the phrase counts (a real phrase with at least one ground-truth box).
        correct: the top proposal reaches the IoU threshold with the union box.
        correct_any: ... with any one ground-truth box.
        pointing: the top proposal's centre lies in a ground-truth box.
        upper_bound: some proposal reaches the threshold with the union box.
        recall: ``[..., len(ks)]``: one of the top k does, per k of the metric.
        types: ``[..., T]``: the phrase has type t of the metric's ``phrase_types``.
    """

    counted: Tensor
    correct: Tensor
    correct_any: Tensor
    pointing: Tensor
    upper_bound: Tensor
    recall: Tensor
    types: Tensor

    def flatten(self) -> PhraseOutcomes:
        """One row per phrase slot: ``[N]`` (``[N, k]``, ``[N, T]``), padding included (uncounted)."""
        n = self.counted.numel()
        return PhraseOutcomes(*(t.reshape(n) for t in self[:5]), self.recall.reshape(n, -1), self.types.reshape(n, -1))

    def select(self, keep: Tensor) -> PhraseOutcomes:
        """Only the phrases where ``keep`` (shaped like ``counted``) is True count."""
        keep = keep.bool().to(self.counted.device)
        return PhraseOutcomes(
            *(t & keep for t in self[:5]), self.recall & keep[..., None], self.types & keep[..., None]
        )

    @staticmethod
    def cat(parts: Sequence[PhraseOutcomes]) -> PhraseOutcomes:
        """Flattened outcomes of several batches, one after another."""
        flat = [p.flatten() for p in parts]
        return PhraseOutcomes(*(torch.cat(field) for field in zip(*flat)))


class GroundingMetrics(Metric):
    """Grounding accuracy, any-box accuracy, pointing, recall@k, upper bound, per-type accuracy.

    All states are sum-reduced counts, so each phrase counts once across DDP processes.

    Args:
        phrase_types: the types reported as ``acc_<type>`` (others are ignored).
        ks: the k of ``recall@k``.
        iou_threshold: a box is correct when its IoU is ``>=`` this.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        phrase_types: Sequence[str] = FLICKR_PHRASE_TYPES,
        ks: Sequence[int] = (1, 5, 10),
        iou_threshold: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.phrase_types = tuple(phrase_types)
        self.ks = tuple(int(k) for k in ks)
        if any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must be distinct positive integers, got {ks}")
        if len(set(self.phrase_types)) != len(self.phrase_types):
            raise ValueError(f"duplicate phrase types in {phrase_types}")
        self.iou_threshold = float(iou_threshold)
        self._type_index = {t: i for i, t in enumerate(self.phrase_types)}
        zero = lambda n=None: torch.zeros(() if n is None else n, dtype=torch.long)  # noqa: E731
        for name in ("total", "correct", "correct_any", "pointing", "upper_bound"):
            self.add_state(name, default=zero(), dist_reduce_fx="sum")
        self.add_state("recall", default=zero(len(self.ks)), dist_reduce_fx="sum")
        self.add_state("type_total", default=zero(len(self.phrase_types)), dist_reduce_fx="sum")
        self.add_state("type_correct", default=zero(len(self.phrase_types)), dist_reduce_fx="sum")

    def _type_matrix(self, phrase_types: list[list[list[str]]], B: int, P: int) -> Tensor:
        """``[B, P, T]`` bool: phrase (b, p) has type t (several types allowed)."""
        out = torch.zeros(B, P, len(self.phrase_types), dtype=torch.bool)
        for b, phrases in enumerate(phrase_types[:B]):
            for p, types in enumerate(phrases[:P]):
                for t in types:
                    i = self._type_index.get(t)
                    if i is not None:
                        out[b, p, i] = True
        return out

    def update_batch(self, scores: Tensor, batch: GroundingBatch) -> None:
        """:meth:`update` with the proposals and ground truth of an evaluation batch.

        Raises:
            ValueError: the batch carries no ground truth (a training batch).
        """
        batch.require_ground_truth()
        self.update(
            scores,
            batch.proposals,
            batch.proposal_mask,
            batch.phrase_mask,
            batch.gt_union,
            batch.gt_boxes,
            batch.gt_box_mask,
            batch.phrase_types,
        )

    def update(self, *args: Any, outcomes: PhraseOutcomes | None = None, **kwargs: Any) -> None:
        """Accumulate one batch: the arguments of :meth:`outcomes`, or ``outcomes`` computed
        before (phrases selected after their batches were scored, see :meth:`PhraseOutcomes.select`)."""
        if outcomes is None:
            outcomes = self.outcomes(*args, **kwargs)
        elif args or kwargs:
            raise TypeError("update() takes either the batch's tensors or outcomes=, not both")
        self._accumulate(outcomes)

    def outcomes(
        self,
        scores: Tensor,
        proposals: Tensor,
        proposal_mask: Tensor,
        phrase_mask: Tensor,
        gt_union: Tensor,
        gt_boxes: Tensor,
        gt_box_mask: Tensor,
        phrase_types: list[list[list[str]]] | None = None,
    ) -> PhraseOutcomes:
        """Each phrase's contribution to the metrics, without accumulating it.

        Args:
            scores: ``[B, P, R]`` region-phrase scores, higher is better.
            proposals: ``[B, R, 4]`` proposal corners.
            proposal_mask: ``[B, R]`` True for real proposals.
            phrase_mask: ``[B, P]`` True for real phrases.
            gt_union: ``[B, P, 4]`` union of each chain's boxes.
            gt_boxes: ``[B, P, K, 4]`` each chain's boxes.
            gt_box_mask: ``[B, P, K]`` True for real boxes; phrases without one are skipped.
            phrase_types: per sample, per phrase, its types (``[["people"], ...]``), or None.
        """
        B, P, R = scores.shape
        K = gt_boxes.shape[2]
        if proposals.shape != (B, R, 4) or proposal_mask.shape != (B, R) or phrase_mask.shape != (B, P):
            raise ValueError(
                f"shape mismatch: scores {tuple(scores.shape)}, proposals {tuple(proposals.shape)}, "
                f"proposal_mask {tuple(proposal_mask.shape)}, phrase_mask {tuple(phrase_mask.shape)}"
            )
        if gt_union.shape != (B, P, 4) or gt_boxes.shape != (B, P, K, 4) or gt_box_mask.shape != (B, P, K):
            raise ValueError(
                f"shape mismatch: gt_union {tuple(gt_union.shape)}, gt_boxes {tuple(gt_boxes.shape)}, "
                f"gt_box_mask {tuple(gt_box_mask.shape)} for scores {tuple(scores.shape)}"
            )
        gt_box_mask = gt_box_mask.bool()
        counted = phrase_mask.bool() & gt_box_mask.any(-1)  # [B, P]
        order, valid = rank_proposals(scores, proposal_mask)  # [B, P, R]
        thr = self.iou_threshold

        # IoU of every proposal with the union box, and of every proposal with every gt box
        iou_union = torch.stack([box_iou(proposals[b], gt_union[b]).T for b in range(B)])  # [B, P, R]
        iou_gt = torch.stack(
            [box_iou(proposals[b], gt_boxes[b].reshape(P * K, 4)).reshape(R, P, K).transpose(0, 1) for b in range(B)]
        )  # [B, P, R, K]
        hits = (iou_union >= thr).gather(-1, order) & valid  # [B, P, R] in rank order

        top = order[..., 0]  # [B, P]
        top_ok = valid[..., 0] & counted
        correct = hits[..., 0] & counted
        top_iou_gt = iou_gt.gather(2, top[:, :, None, None].expand(B, P, 1, K)).squeeze(2)  # [B, P, K]
        correct_any = ((top_iou_gt >= thr) & gt_box_mask).any(-1) & top_ok
        top_boxes = proposals.gather(1, top.reshape(B, P, 1).expand(B, P, 4))  # [B, P, 4]
        centres = box_centers(top_boxes)
        inside = torch.stack(
            [points_in_boxes(centres[b], gt_boxes[b].reshape(P * K, 4)).reshape(P, P, K).diagonal().T for b in range(B)]
        )  # [B, P, K]
        pointing = (inside & gt_box_mask).any(-1) & top_ok
        types = torch.zeros(B, P, len(self.phrase_types), dtype=torch.bool, device=counted.device)
        if phrase_types is not None and self.phrase_types:
            types = self._type_matrix(phrase_types, B, P).to(counted.device) & counted[..., None]  # [B, P, T]
        return PhraseOutcomes(
            counted=counted,
            correct=correct,
            correct_any=correct_any,
            pointing=pointing,
            upper_bound=hits.any(-1) & counted,
            recall=torch.stack([hits[..., :k].any(-1) & counted for k in self.ks], dim=-1),
            types=types,
        )

    def _accumulate(self, o: PhraseOutcomes) -> None:
        self.total += o.counted.sum()
        self.correct += o.correct.sum()
        self.correct_any += o.correct_any.sum()
        self.pointing += o.pointing.sum()
        self.upper_bound += o.upper_bound.sum()
        self.recall += o.recall.reshape(-1, len(self.ks)).sum(0)
        if o.types.shape[-1] == len(self.phrase_types) and self.phrase_types:
            types = o.types.reshape(-1, len(self.phrase_types))
            self.type_total += types.sum(0)
            self.type_correct += (types & o.correct.reshape(-1, 1)).sum(0)

    def compute(self) -> dict[str, Tensor]:
        """Return the metrics; rates are 0 (never NaN) when no phrase was seen.

        Returns:
            ``acc`` (union box, the primary metric), ``acc_any``, ``pointing``, ``recall@<k>`` for
            each k, ``upper_bound``, ``num_phrases`` (long) and ``acc_<type>`` for each type with
            at least one phrase.
        """
        n = self.total.clamp(min=1).float()
        out = {
            "acc": self.correct / n,
            "acc_any": self.correct_any / n,
            "pointing": self.pointing / n,
            **{f"recall@{k}": self.recall[i] / n for i, k in enumerate(self.ks)},
            "upper_bound": self.upper_bound / n,
            "num_phrases": self.total.clone(),
        }
        for i, t in enumerate(self.phrase_types):
            if self.type_total[i] > 0:
                out[f"acc_{t}"] = self.type_correct[i] / self.type_total[i].float()
        return out
