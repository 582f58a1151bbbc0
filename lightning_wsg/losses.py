"""Scores and losses of the method (``docs/method.md``, sections 3-8).

* :func:`region_phrase_scores`: ``s(r, p)``, cosines of paired regions and phrases.
* :func:`image_sentence_scores`: ``S(I_j, T_i) = (1 / tau) * reduce_p max_r s(r, p)``
  for every sentence-image pair.
* :func:`info_nce`: the contrastive loss; each sentence's positive image is an explicit
  column index, so the columns may be the images of every rank (gathered features).
* :func:`distillation_distributions`: the teacher's and the student's distributions over
  regions, optionally restricted to the ``K`` regions around the student's top box.
* :func:`distillation_kl`: ``KL(teacher || student)`` of those distributions.
* :func:`kd_weight`: the ramp of the distillation weight.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> regions = F.normalize(torch.randn(2, 5, 8), dim=-1)
    >>> phrases = F.normalize(torch.randn(2, 3, 8), dim=-1)
    >>> r_mask, p_mask = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    >>> S = image_sentence_scores(regions, r_mask, phrases, p_mask)
    >>> loss = info_nce(S, positives=torch.arange(2))
    >>> region_phrase_scores(regions, phrases).shape
    torch.Size([2, 3, 5])
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_iou

__all__ = [
    "DistillationDistributions",
    "region_phrase_scores",
    "image_sentence_scores",
    "info_nce",
    "distillation_distributions",
    "distillation_kl",
    "kd_weight",
]


def region_phrase_scores(region_feats: Tensor, phrase_feats: Tensor) -> Tensor:
    """Scores ``s(r, p)`` of each phrase with each region of its own image.

    Args:
        region_feats: ``[B, R, D]`` L2-normalised region features (so a dot product is a cosine).
        phrase_feats: ``[B, P, D]`` L2-normalised phrase features.

    Returns:
        ``[B, P, R]`` scores (zero where either side is a zero padding row).
    """
    return torch.bmm(phrase_feats, region_feats.transpose(1, 2))


def image_sentence_scores(
    region_feats: Tensor,
    region_mask: Tensor,
    phrase_feats: Tensor,
    phrase_mask: Tensor,
    tau: float = 0.5,
    phrase_reduce: Literal["sum", "mean"] = "sum",
    region_reduce: Literal["max", "logsumexp"] = "max",
    lse_temperature: float = 0.1,
) -> Tensor:
    """Image-sentence scores ``S(I_j, T_i)`` for every sentence ``i`` and image ``j``.

    ``S = (1 / tau) * reduce over valid phrases of (reduce over valid regions of s(r, p))``.
    Padding regions never win the region reduction; padding phrases add nothing.

    Args:
        region_feats: ``[Bi, R, D]`` region features of the images.
        region_mask: ``[Bi, R]`` bool, real regions.
        phrase_feats: ``[Bs, P, D]`` phrase features of the sentences.
        phrase_mask: ``[Bs, P]`` bool, real phrases.
        tau: temperature (the reference multiplies by 2, i.e. ``tau = 0.5``).
        phrase_reduce: ``"sum"`` (reference) or ``"mean"`` over the valid phrases.
        region_reduce: ``"max"`` (reference) or ``"logsumexp"``, the soft maximum
            ``T * log sum_r exp(s / T)`` with ``T = lse_temperature``.
        lse_temperature: temperature of the soft maximum.

    Returns:
        ``[Bs, Bi]`` scores.
    """
    scores = torch.einsum("spd,ird->sipr", phrase_feats, region_feats)  # [Bs, Bi, P, R]
    region_mask = region_mask[None, :, None, :]
    scores = scores.masked_fill(~region_mask, float("-inf"))
    if region_reduce == "max":
        best = scores.max(dim=-1).values
    elif region_reduce == "logsumexp":
        best = lse_temperature * torch.logsumexp(scores / lse_temperature, dim=-1)
    else:
        raise ValueError(f"unknown region_reduce {region_reduce!r}")
    # an image without any real region (never produced by collate) scores 0
    best = best.masked_fill(~region_mask.any(dim=-1), 0.0)  # [Bs, Bi, P]
    best = best * phrase_mask[:, None, :].to(best.dtype)
    total = best.sum(dim=-1)
    if phrase_reduce == "mean":
        total = total / phrase_mask.sum(dim=-1, keepdim=True).clamp(min=1).to(total.dtype)
    elif phrase_reduce != "sum":
        raise ValueError(f"unknown phrase_reduce {phrase_reduce!r}")
    return total / tau


def info_nce(scores: Tensor, positives: Tensor, same_image: Tensor | None = None, symmetric: bool = False) -> Tensor:
    """InfoNCE over image-sentence scores; each sentence must pick its own image.

    Rows are sentences, columns images. The columns may be more than the rows (for
    example the images of every rank after an all-gather): ``positives[i]`` names the
    column of sentence ``i``'s image. Columns holding the same image as the positive
    (another caption's copy of it in the batch) are false negatives and are removed from
    the softmax. ``same_image`` may include the positive column itself: it is never removed.

    Args:
        scores: ``[Bs, Bi]`` logits ``S(I_j, T_i)``.
        positives: ``[Bs]`` long, the column of each sentence's image.
        same_image: optional ``[Bs, Bi]`` bool, ``True`` where column ``j`` shows sentence
            ``i``'s image.
        symmetric: also add the image-to-sentence direction (each positive column picks its
            sentence among the rows; rows describing the same image are removed) and average
            the two directions. With gathered columns only the local rows are candidates.

    Returns:
        Scalar loss, the mean cross-entropy over sentences (and directions).
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    is_positive = torch.zeros_like(scores, dtype=torch.bool)
    is_positive[rows, positives] = True
    if same_image is None:
        same_image = is_positive
    drop = same_image.to(torch.bool) & ~is_positive
    logits = scores.float().masked_fill(drop, float("-inf"))
    loss = F.cross_entropy(logits, positives)
    if not symmetric:
        return loss
    # image -> sentence: column positives[i] picks row i among all rows;
    # shows[i, k]: sentence k describes the image of column positives[i]
    shows = (same_image.to(torch.bool) | is_positive)[:, positives].t()
    others = shows & ~torch.eye(len(rows), dtype=torch.bool, device=scores.device)
    cols = scores.float().t()[positives].masked_fill(others, float("-inf"))
    return (loss + F.cross_entropy(cols, rows)) / 2


class DistillationDistributions(NamedTuple):
    """The two distributions of the distillation term, as :func:`distillation_kl` compares them.

    Attributes:
        log_q: ``[B, P, R]`` float32 log-probabilities of the target ``q`` (the teacher's
            distribution, or teacher times student with ``target="product"``); no gradient;
            ``0`` outside ``valid``.
        log_p: ``[B, P, R]`` float32 log-probabilities of the student ``p`` (attached to the
            student's graph); ``0`` outside ``valid``.
        valid: ``[B, P, R]`` bool, the regions each phrase is distilled over (its image's real
            regions, the ``top_k`` around the student's top box when set); all ``False`` for a
            phrase that takes no part.
        phrases: ``[B, P]`` bool, the phrases that take part (in ``kd_mask`` and with a region).
    """

    log_q: Tensor
    log_p: Tensor
    valid: Tensor
    phrases: Tensor


def distillation_distributions(
    student: Tensor,
    teacher: Tensor,
    proposal_mask: Tensor,
    kd_mask: Tensor,
    tau_student: float = 1.0,
    tau_teacher: float = 2.0,
    top_k: int | None = 8,
    proposals: Tensor | None = None,
    target: Literal["teacher", "product"] = "teacher",
) -> DistillationDistributions:
    """The target ``q`` and the student ``p`` of the distillation, over each phrase's regions.

    The teacher is normalised by subtracting its mean over the valid regions, then
    ``q = softmax(t / tau_teacher)`` (no gradient); the student is
    ``p = softmax(s / tau_student)`` on raw cosines. With ``top_k`` both are restricted to
    the ``top_k`` valid regions with the highest IoU to the student's current top-1 box
    (that box included; ties in IoU are broken by ``torch.topk``) and renormalised there.
    With ``target="product"``, ``q ∝ softmax(t / tau_teacher) * p`` (``p`` detached); see
    :func:`distillation_kl`.

    Args:
        student: ``[B, P, R]`` region-phrase scores ``s(r, p)``.
        teacher: ``[B, P, R]`` teacher scores ``t(r, p)``.
        proposal_mask: ``[B, R]`` bool, real regions.
        kd_mask: ``[B, P]`` bool, phrases that take part (real, with a teacher).
        tau_student: student temperature.
        tau_teacher: teacher temperature.
        top_k: number of regions around the student's top box, or ``None`` for all.
        proposals: ``[B, R, 4]`` proposal boxes, needed when ``top_k`` is set.
        target: ``"teacher"`` or ``"product"`` (see :func:`distillation_kl`).

    Returns:
        A :class:`DistillationDistributions` ``(log_q, log_p, valid, phrases)``.
    """
    B, P, R = student.shape
    valid = proposal_mask[:, None, :].expand(B, P, R).clone()
    if top_k is not None and top_k < R:
        if proposals is None:
            raise ValueError("distillation_kl: top_k needs the proposal boxes")
        with torch.no_grad():
            top1 = student.detach().masked_fill(~valid, float("-inf")).argmax(dim=-1)  # [B, P]
            top_boxes = torch.gather(proposals, 1, top1[..., None].expand(B, P, 4))  # [B, P, 4]
            iou = torch.stack([box_iou(top_boxes[b], proposals[b]) for b in range(B)])  # [B, P, R]
            iou = iou.nan_to_num(0.0).masked_fill(~valid, -1.0)
            keep = iou.topk(top_k, dim=-1).indices
            chosen = torch.zeros_like(valid).scatter_(-1, keep, True)
        valid = valid & chosen
    phrases = kd_mask.to(torch.bool) & valid.any(dim=-1)  # [B, P]
    valid = valid & phrases[..., None]
    empty = ~valid.any(dim=-1, keepdim=True)  # rows left out: give them finite logits

    t = teacher.detach().float()
    t_mean = (t * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)
    t_logits = ((t - t_mean) / tau_teacher).masked_fill(~valid, float("-inf")).masked_fill(empty, 0.0)
    s_logits = (student.float() / tau_student).masked_fill(~valid, float("-inf")).masked_fill(empty, 0.0)
    log_p = F.log_softmax(s_logits, dim=-1).masked_fill(~valid, 0.0)
    if target == "product":  # q ∝ teacher x student: the student's log-probabilities join the logits
        t_logits = t_logits + log_p.detach()
    elif target != "teacher":
        raise ValueError(f"unknown distillation target {target!r} (teacher, product)")
    log_q = F.log_softmax(t_logits, dim=-1).masked_fill(~valid, 0.0)
    return DistillationDistributions(log_q, log_p, valid, phrases)


def distillation_kl(
    student: Tensor,
    teacher: Tensor,
    proposal_mask: Tensor,
    kd_mask: Tensor,
    tau_student: float = 1.0,
    tau_teacher: float = 2.0,
    top_k: int | None = 8,
    proposals: Tensor | None = None,
    target: Literal["teacher", "product"] = "teacher",
) -> Tensor:
    """Distillation loss ``KL(q || p)`` over the regions of each phrase's own image.

    ``q`` and ``p`` are those of :func:`distillation_distributions`: ``q = softmax(t /
    tau_teacher)`` of the mean-subtracted teacher (no gradient), ``p = softmax(s /
    tau_student)`` on raw cosines, both over the phrase's real regions or, with ``top_k``,
    over the ``top_k`` of them around the student's top box.

    ``target="product"`` distils towards the teacher times the student instead,
    ``q ∝ softmax(t / tau_teacher) * p`` (``p`` detached): the teacher re-weights the
    student's own ranking rather than replacing it. Where the teacher is flat (two objects
    of the phrase's class, which it cannot tell apart) the target equals the student and
    adds no pull; where it separates classes, mass moves to the regions of the matching
    class in proportion to the student's preference among them. Its gradient with respect to
    the student's scores equals that of ``-log sum_r w_r p_r`` (``w = exp((t - mean t) /
    tau_teacher)``: the student's expected teacher weight), since both are ``(p - q) /
    tau_student``; its value is ``KL(q || p) = sum_r q_r log w_r - log sum_r w_r p_r``, which
    differs from ``-log sum_r w_r p_r`` by an amount that depends on ``p``, so the logged
    ``train/kd`` is not that quantity. Its weakness: where the student is confidently wrong
    (nearly all of ``p`` on a box of another class), ``q`` is nearly ``p`` and the pull
    vanishes, where the teacher's own target pulls hardest. This is the "teacher that spreads
    its mass over every region of the matching category" of ``docs/method.md`` (section 7), with the spread
    set by the student.

    Args:
        student: ``[B, P, R]`` region-phrase scores ``s(r, p)``.
        teacher: ``[B, P, R]`` teacher scores ``t(r, p)``.
        proposal_mask: ``[B, R]`` bool, real regions.
        kd_mask: ``[B, P]`` bool, phrases that take part (real, with a teacher).
        tau_student: student temperature.
        tau_teacher: teacher temperature.
        top_k: number of regions around the student's top box, or ``None`` for all.
        proposals: ``[B, R, 4]`` proposal boxes, needed when ``top_k`` is set.
        target: ``"teacher"`` (the paper's, ``docs/method.md``: ``q`` is the teacher's distribution) or
            ``"product"`` (``q`` is the teacher's distribution times the student's).

    Returns:
        Scalar loss, the mean KL over the valid phrases; ``0`` (still attached to the
        student's graph) when no phrase is valid.
    """
    d = distillation_distributions(
        student, teacher, proposal_mask, kd_mask, tau_student, tau_teacher, top_k, proposals, target
    )
    kl = (d.log_q.exp() * d.valid * (d.log_q - d.log_p)).sum(dim=-1)  # [B, P]
    count = d.phrases.sum()
    if count == 0:
        return student.sum() * 0.0
    return (kl * d.phrases).sum() / count


def kd_weight(
    step: int, initial: float = 0.001, increment: float = 1.0, every: int = 500, maximum: float = 3.0
) -> float:
    """Distillation weight ``min(initial + increment * floor(step / every), maximum)``.

    The defaults are the reference schedule ``min(0.001 + floor(step / 500), 3.0)``.
    """
    return min(initial + increment * math.floor(step / every), maximum)
