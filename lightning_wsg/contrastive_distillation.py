"""The training objective: InfoNCE plus ramped knowledge distillation, as one ``nn.Module``.

``loss = InfoNCE(image-sentence scores) + lambda(step) * KL(teacher || student)``
(``docs/method.md``): :class:`ContrastiveDistillationLoss` owns every setting of it: the
sentence temperature and aggregation, the cross-process gather of InfoNCE's negatives, the
teacher, the distillation target, temperatures and top-K, and the ramp of ``lambda``. The
scores and divergences themselves are the plain functions of :mod:`lightning_wsg.losses`;
the gathers are :mod:`lightning_wsg.distributed`'s.

The ramp ``lambda = min(initial + increment * floor(step / every), maximum)`` counts
``every`` as a fraction of the run by default (``kd_weight_unit="run"``: ``every`` times
``trainer.estimated_stepping_batches``, so it means the same on a small or a large dataset
and on one or eight processes). The reference code's absolute count (``kd_weight_unit="steps"``,
``every=500``) stays available: ``cli_configs/model/paper.yaml``.

Example:
    >>> from lightning_wsg.models import Teacher
    >>> loss = ContrastiveDistillationLoss(Teacher(matching="lexical"), kd_weight_every=0.1)
    >>> loss.set_total_steps(1000)
    >>> loss.kd_weight(250)  # floor(250 / 100) increments
    2.001
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, final

import torch
from torch import Tensor, nn

from .distributed import all_gather_padded, gather_sizes, image_id_codes, world_size_and_rank
from .losses import distillation_kl, image_sentence_scores, info_nce, kd_weight, region_phrase_scores
from .models.teacher import Teacher
from .models.towers import RecordsInitArgs, init_config, plain_values

__all__ = ["REFERENCE_RAMP_FRACTION", "ContrastiveDistillationLoss", "gathered_info_nce"]

#: the reference code's ramp step (500) as a fraction of its Flickr30K run (27,900 steps)
REFERENCE_RAMP_FRACTION = 500 / 27900

def gathered_info_nce(
    regions: Tensor,
    region_mask: Tensor,
    phrases: Tensor,
    phrase_mask: Tensor,
    image_ids: Sequence[str],
    tau: float = 0.5,
    phrase_reduce: Literal["sum", "mean"] = "sum",
    region_reduce: Literal["max", "logsumexp"] = "max",
    symmetric: bool = False,
    gather: bool = True,
) -> Tensor:
    """InfoNCE of each local sentence against the images of every rank (the training loss).

    Args:
        regions: ``[B, R, D]`` this rank's region features (one image per pair).
        region_mask: ``[B, R]`` bool, real regions.
        phrases: ``[B, P, D]`` this rank's phrase features.
        phrase_mask: ``[B, P]`` bool, real phrases.
        image_ids: the ``B`` image ids (to mask other captions of the same image).
        tau, phrase_reduce, region_reduce: see :func:`lightning_wsg.losses.image_sentence_scores`.
        symmetric: also let each local image pick its sentence among the sentences of every
            rank (the phrases are then gathered too).
        gather: use the other ranks' images as negatives; ``False`` (or one process) keeps
            the local batch only.

    Returns:
        Scalar loss. With ``gather`` under DDP, the mean over ranks of the returned losses
        equals the one-process loss over all pairs, and so do the DDP-averaged gradients.
    """
    world, rank = world_size_and_rank()
    device = regions.device
    codes = image_id_codes(image_ids, device)
    bs = regions.shape[0]
    if not gather or world == 1:
        positives = torch.arange(bs, device=device)
        same = codes[:, None] == codes[None, :]
        scores = image_sentence_scores(
            regions,
            region_mask,
            phrases,
            phrase_mask,
            tau=tau,
            phrase_reduce=phrase_reduce,
            region_reduce=region_reduce,
        )
        return info_nce(scores, positives, same, symmetric=symmetric)

    sizes = gather_sizes(regions, phrases)  # [world, 4]: B, R, B, P
    counts = sizes[:, 0]
    offset = int(counts[:rank].sum())
    total = int(counts.sum())
    all_regions = all_gather_padded(regions, sizes[:, :2], with_grad=True)
    all_region_mask = all_gather_padded(region_mask.to(torch.uint8), sizes[:, :2]).to(torch.bool)
    all_codes = all_gather_padded(codes, sizes[:, :1])
    positives = torch.arange(bs, device=device) + offset
    same = codes[:, None] == all_codes[None, :]  # [B, total]: local row's image in global column
    scores = image_sentence_scores(
        all_regions,
        all_region_mask,
        phrases,
        phrase_mask,
        tau=tau,
        phrase_reduce=phrase_reduce,
        region_reduce=region_reduce,
    )  # [B, total]
    loss = info_nce(scores, positives, same)
    if symmetric:
        all_phrases = all_gather_padded(phrases, sizes[:, 2:], with_grad=True)
        all_phrase_mask = all_gather_padded(phrase_mask.to(torch.uint8), sizes[:, 2:]).to(torch.bool)
        # local images as rows, every rank's sentences as columns; a row's positive is its own pair
        images_scores = image_sentence_scores(
            regions,
            region_mask,
            all_phrases,
            all_phrase_mask,
            tau=tau,
            phrase_reduce=phrase_reduce,
            region_reduce=region_reduce,
        ).t()  # [B, total]
        loss = (loss + info_nce(images_scores, positives, same)) / 2
    # DDP averages gradients over ranks: weight each rank by its share of the pairs
    return loss * (bs * world / total)



@final  # a config sets its arguments directly (model.loss.tau_sentence), no class_path
class ContrastiveDistillationLoss(RecordsInitArgs, nn.Module):
    """InfoNCE over image-sentence scores plus ``lambda(step)`` times the distillation KL.

    Args:
        teacher: class-name / phrase matching of the distillation
            (:class:`~lightning_wsg.models.Teacher`); needed when ``use_kd``.
        tau_sentence: temperature of the image-sentence score (reference code: 0.5).
        phrase_reduce: aggregation of phrase scores into the sentence score.
        region_reduce: aggregation over regions (``"max"`` as the paper, or a soft max).
        symmetric_nce: also let each image pick its sentence.
        gather_negatives: under DDP, score each sentence against the images of every process
            (all-gathered with gradients; no effect on one process).
        use_nce: train with the InfoNCE term (ablation switch).
        use_kd: train with the distillation term (ablation switch).
        kd_target: ``"teacher"`` (the paper's: distil towards the teacher's distribution) or
            ``"product"`` (towards the teacher's distribution times the student's; see
            :func:`~lightning_wsg.losses.distillation_kl`).
        tau_student: distillation temperature of the student (on raw cosines).
        tau_teacher: temperature of the mean-subtracted teacher scores.
        kd_top_k: restrict the distillation to the K regions with the highest IoU to the
            student's current top-1 box (``None``: all regions).
        kd_weight_initial: lambda at step 0.
        kd_weight_increment: lambda added every ``kd_weight_every``.
        kd_weight_every: the ramp's step: a fraction of the run's optimizer steps in
            ``(0, 1]`` (``kd_weight_unit="run"``), or a whole number of steps (``"steps"``).
        kd_weight_unit: ``"run"`` (default) or ``"steps"`` (the reference code's 500).
        kd_weight_max: the largest lambda.
    """

    def __init__(
        self,
        teacher: Teacher | None = None,
        tau_sentence: float = 0.5,
        phrase_reduce: Literal["sum", "mean"] = "sum",
        region_reduce: Literal["max", "logsumexp"] = "max",
        symmetric_nce: bool = False,
        gather_negatives: bool = True,
        use_nce: bool = True,
        use_kd: bool = True,
        kd_target: Literal["teacher", "product"] = "teacher",
        tau_student: float = 1.0,
        tau_teacher: float = 2.0,
        kd_top_k: int | None = 8,
        kd_weight_initial: float = 0.001,
        kd_weight_increment: float = 1.0,
        kd_weight_every: float = REFERENCE_RAMP_FRACTION,
        kd_weight_unit: Literal["run", "steps"] = "run",
        kd_weight_max: float = 3.0,
    ) -> None:
        super().__init__()
        _check_settings(locals())
        self.teacher = teacher if use_kd else None  # parameter-free; unused without distillation
        self.tau_sentence = float(tau_sentence)
        self.phrase_reduce = phrase_reduce
        self.region_reduce = region_reduce
        self.symmetric_nce = bool(symmetric_nce)
        self.gather_negatives = bool(gather_negatives)
        self.use_nce = bool(use_nce)
        self.use_kd = bool(use_kd)
        self.kd_target = kd_target
        self.tau_student = float(tau_student)
        self.tau_teacher = float(tau_teacher)
        self.kd_top_k = None if kd_top_k is None else int(kd_top_k)
        self.ramp = {
            "initial": float(kd_weight_initial),
            "increment": float(kd_weight_increment),
            "every": kd_weight_every,
            "unit": kd_weight_unit,
            "maximum": float(kd_weight_max),
        }
        self.total_steps: int | None = None

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as plain values, the teacher as ``class_path`` / ``init_args``
        (what a checkpoint stores to rebuild this loss)."""
        args = dict(self._init_args)  # recorded by RecordsInitArgs
        teacher = args.pop("teacher")
        return {"teacher": init_config(teacher) if teacher is not None else None, **plain_values(args)}

    # ------------------------------------------------------------------ ramp
    def set_total_steps(self, total: int) -> None:
        """The run's optimizer steps (``trainer.estimated_stepping_batches``): the ramp's scale."""
        self.total_steps = max(1, int(total))

    def ramp_steps(self) -> int:
        """The ramp's step in optimizer steps."""
        every, unit = self.ramp["every"], self.ramp["unit"]
        if unit == "steps":
            return int(every)
        if self.total_steps is None:
            raise RuntimeError(
                "model.loss.kd_weight_unit='run' needs the run's length: call set_total_steps(total) "
                "(GroundingModule does, from trainer.estimated_stepping_batches)"
            )
        return max(1, round(every * self.total_steps))

    def kd_weight(self, step: int) -> float:
        """``lambda`` at optimizer step ``step`` (1 without InfoNCE: nothing to ramp against)."""
        if not self.use_nce:
            return 1.0
        r = self.ramp
        return kd_weight(step, r["initial"], r["increment"], self.ramp_steps(), r["maximum"])

    # ---------------------------------------------------------------- terms
    def contrastive(self, batch: Any, regions: Tensor, phrases: Tensor) -> Tensor:
        """The InfoNCE term on the batch's encoded regions and phrases.

        Under DDP it scores against the images of every process (all-gathered), so every
        process must call it together.
        """
        return gathered_info_nce(
            regions,
            batch.proposal_mask,
            phrases,
            batch.phrase_mask,
            batch.image_ids,
            tau=self.tau_sentence,
            phrase_reduce=self.phrase_reduce,
            region_reduce=self.region_reduce,
            symmetric=self.symmetric_nce,
            gather=self.gather_negatives,
        )

    def distillation_scores(self, batch: Any, regions: Tensor, phrases: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the distillation term compares: the student's and the teacher's scores.

        Args:
            batch: the batch (its detector labels, or class probabilities named by
                ``batch.class_names``, feed the teacher).
            regions: ``[B, R, D]`` region features.
            phrases: ``[B, P, D]`` phrase features.

        Returns:
            ``(student, teacher, kd_mask)``: ``[B, P, R]`` student scores (with the graph of
            ``regions`` and ``phrases``), ``[B, P, R]`` teacher scores (no gradient, the
            student's dtype and device) and ``[B, P]`` bool, the real phrases the teacher
            matched. With :meth:`distillation_options` they are the arguments of
            :func:`~lightning_wsg.losses.distillation_kl` and
            :func:`~lightning_wsg.losses.distillation_distributions`.
        """
        if self.teacher is None:
            raise ValueError("distillation_scores: this loss has no teacher (model.loss.use_kd=false)")
        if batch.proposal_labels is None:
            raise ValueError(
                "distillation needs detector labels for every proposal, but this batch has none "
                "(a detections source without labels?); set model.loss.use_kd=false to train without them"
            )
        phrase_texts = [
            [" ".join(words[s:e]) for s, e in spans] for words, spans in zip(batch.words, batch.phrase_spans)
        ]
        class_names = getattr(batch, "class_names", None)
        class_probs = batch.class_probs if class_names is not None else None  # t = sum_c P(c|r) m(c, p)
        with torch.no_grad():
            teacher, kd_mask = self.teacher(
                phrase_texts,
                batch.proposal_labels,
                batch.proposal_scores,
                batch.proposal_mask,
                class_probs=class_probs,
                class_names=class_names,
            )
        kd_mask = kd_mask.to(regions.device) & batch.phrase_mask
        student = region_phrase_scores(regions, phrases)
        return student, teacher.to(student), kd_mask

    def distillation_options(self) -> dict[str, Any]:
        """Temperatures, ``top_k`` and ``target`` as keyword arguments of
        :func:`~lightning_wsg.losses.distillation_kl`."""
        return {
            "tau_student": self.tau_student,
            "tau_teacher": self.tau_teacher,
            "top_k": self.kd_top_k,
            "target": self.kd_target,
        }

    def distillation(self, batch: Any, regions: Tensor, phrases: Tensor) -> Tensor:
        """The distillation term ``KL(teacher || student)`` of the batch."""
        student, teacher, kd_mask = self.distillation_scores(batch, regions, phrases)
        return distillation_kl(
            student, teacher, batch.proposal_mask, kd_mask, proposals=batch.proposals, **self.distillation_options()
        )

    def forward(self, batch: Any, regions: Tensor, phrases: Tensor, step: int) -> dict[str, Tensor]:
        """The loss at optimizer step ``step``: ``{"loss", "nce"?, "kd"?, "kd_weight"?}``."""
        terms: dict[str, Tensor] = {}
        if self.use_nce:
            terms["nce"] = self.contrastive(batch, regions, phrases)
        loss = terms.get("nce", regions.new_zeros(()))
        if self.use_kd:
            terms["kd"] = self.distillation(batch, regions, phrases)
            terms["kd_weight"] = torch.tensor(self.kd_weight(step), device=regions.device)
            loss = loss + terms["kd_weight"] * terms["kd"]
        return {"loss": loss, **terms}


def _check_settings(args: dict[str, Any]) -> None:
    """Refuse settings that cannot work when the run is configured, naming the config key."""

    def refuse(key: str, why: str) -> None:
        raise ValueError(f"model.loss.{key}={args[key]!r}: {why}")

    if not (args["use_nce"] or args["use_kd"]):
        raise ValueError("model.loss: at least one of use_nce and use_kd must be true")
    if args["use_kd"] and args["teacher"] is None:
        raise ValueError(
            "model.loss.use_kd=true needs a teacher: set model.loss.teacher "
            "(class_path: lightning_wsg.models.Teacher) or model.loss.use_kd=false"
        )
    choices = {
        "phrase_reduce": ("sum", "mean"),
        "region_reduce": ("max", "logsumexp"),
        "kd_target": ("teacher", "product"),
        "kd_weight_unit": ("run", "steps"),
    }
    for key, allowed in choices.items():
        if args[key] not in allowed:
            refuse(key, f"must be one of {', '.join(allowed)}")
    for key in ("tau_sentence", "tau_student", "tau_teacher"):
        if not args[key] > 0:
            refuse(key, "a temperature must be > 0")
    if args["kd_top_k"] is not None and int(args["kd_top_k"]) < 1:
        refuse("kd_top_k", "must be >= 1 (or null: every region)")
    every = args["kd_weight_every"]
    if args["kd_weight_unit"] == "run" and not 0 < every <= 1:
        refuse("kd_weight_every", "with kd_weight_unit='run' it is a fraction of the run in (0, 1]")
    if args["kd_weight_unit"] == "steps" and (every < 1 or every != int(every)):
        refuse("kd_weight_every", "with kd_weight_unit='steps' it is a whole number of steps >= 1")
