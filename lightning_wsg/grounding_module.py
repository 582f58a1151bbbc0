"""The LightningModule: contrastive knowledge distillation for phrase grounding.

:class:`GroundingModule` wires two towers and a teacher (plain ``nn.Module`` networks of
:mod:`lightning_wsg.models`, passed in) to the losses (:mod:`lightning_wsg.losses`) and
metrics (:mod:`lightning_wsg.metrics`):

* training: ``loss = InfoNCE(image-sentence scores) + lambda(step) * KL(teacher || student)``
  where the teacher matches the detector's class names to the phrases;
  its pieces (``contrastive_loss``, ``distillation_scores``, ``distillation_options``,
  ``current_kd_weight``) are public, so that diagnostics
  (:class:`~lightning_wsg.callbacks.DistillationDiagnostics`) recompute the very same terms;
* validation / test / predict: each phrase takes its highest-scoring proposal; detector
  labels and scores are never read.

The towers are init arguments typed by their base classes, so a config picks them by
``class_path`` (``model.region_encoder``, ``model.phrase_encoder``, ``model.teacher``,
``model.optimizer``). Their constructor arguments are stored in the checkpoint whether the
module was built by the CLI or in Python, so ``GroundingModule.load_from_checkpoint(path)``
rebuilds it without further arguments. A model folder to share (``config.yaml``,
``model.safetensors``, a model card; :mod:`lightning_wsg.model_folder`) is written by
``save_pretrained`` or ``lightning_wsg export`` and read by ``GroundingModule.from_pretrained``.

Example:
    >>> from lightning_wsg.models import PhraseEncoder, RegionEncoder, Teacher
    >>> model = GroundingModule(
    ...     RegionEncoder("resnet18", pretrained=False, hidden_dim=64, embed_dim=32),
    ...     PhraseEncoder("all-MiniLM-L6-v2", hidden_dim=64, embed_dim=32),
    ...     Teacher(matching="wordnet"),
    ... )  # doctest: +SKIP
    >>> scores = model(batch)  # [B, P, R] region-phrase scores  # doctest: +SKIP
    >>> model.ground("dog.jpg", "a [brown dog] jumps over [the fence]")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn

from .boxes import scale_boxes
from .data.batch import GroundingBatch, GroundingSample, collate
from .data.dataset import IMAGENET_MEAN, IMAGENET_STD
from .data.predict_file import PREDICT_SPLIT, parse_sentence
from .detection.grid import box_grid
from .distributed import gathered_info_nce
from .losses import distillation_kl, kd_weight, region_phrase_scores
from .metrics import FLICKR_PHRASE_TYPES, GroundingMetrics, phrase_results
from .model_folder import (
    CONFIG,
    folder_config,
    load_weights,
    read_config,
    trained_image_size,
    weights_file,
    write_folder,
)
from .models import PhraseTower, RegionTower, Teacher, init_config
from .models.towers import plain_values

__all__ = ["GroundingModule"]

#: rebuilds a module from the configuration stored in its checkpoint (nested ``class_path``s)
_INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"
_TOWERS = ("region_encoder", "phrase_encoder", "teacher")


def optimizer_config(optimizer: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of an optimizer class or a ``functools.partial`` of one.

    jsonargparse hands over its own partial (instantiator functions, then the class); the
    class is the first one among the partial's function and positional arguments.
    """
    keywords: dict[str, Any] = {}
    if isinstance(optimizer, functools.partial):
        classes = [f for f in (optimizer.func, *optimizer.args) if isinstance(f, type)]
        keywords = dict(optimizer.keywords)
        optimizer = classes[0] if classes else optimizer
    if not isinstance(optimizer, type):
        raise TypeError(
            f"optimizer {optimizer!r} cannot be stored in a checkpoint: give an optimizer class "
            "(torch.optim.Adam) or functools.partial(torch.optim.Adam, lr=1e-4)"
        )
    return {"class_path": f"{optimizer.__module__}.{optimizer.__qualname__}", "init_args": plain_values(keywords)}


class SentencePredictions(list):
    """``predict_step``'s per-sentence records, carrying the ``[B, P, R]`` scores they were read
    from, so that a writer measuring the predictions (recall@k needs the whole ranking, the
    records keep rounded boxes) does not score the batch a second time."""

    scores: Tensor | None = None

    def with_scores(self, scores: Tensor) -> SentencePredictions:
        self.scores = scores
        return self


class GroundingModule(LightningModule):
    """Weakly supervised phrase grounding by contrastive knowledge distillation.

    Args:
        region_encoder: the region tower: :class:`~lightning_wsg.models.RegionEncoder`
            (images: timm backbone + RoIAlign + MLP) or
            :class:`~lightning_wsg.models.FeatureRegionEncoder` (precomputed per-box features).
        phrase_encoder: the phrase tower (:class:`~lightning_wsg.models.PhraseEncoder`:
            transformers, token states pooled over each phrase span).
        teacher: class-name / phrase matching of the distillation
            (:class:`~lightning_wsg.models.Teacher`); needed when ``use_kd``.
        optimizer: builds the optimizer from the trainable parameters (a class such as
            ``torch.optim.Adam`` or a partial of one; in a config ``class_path`` /
            ``init_args``). The reference code: Adam, lr 1e-4, no decay.
        tau_sentence: temperature of the image-sentence score (reference code: 0.5).
        phrase_reduce: aggregation of phrase scores into the sentence score.
        region_reduce: aggregation over regions (``"max"`` as the paper, or a soft max).
        symmetric_nce: also let each image pick its sentence.
        tau_student: distillation temperature of the student (on raw cosines).
        tau_teacher: temperature of the mean-subtracted teacher scores.
        kd_top_k: restrict the distillation to the K regions with the highest IoU to the
            student's current top-1 box (``None``: all regions).
        kd_target: ``"teacher"`` (the paper's, ``docs/method.md``: distil towards the teacher's distribution) or
            ``"product"`` (towards the teacher's distribution times the student's, which
            moves mass between classes but leaves the choice inside a class to the student;
            see :func:`~lightning_wsg.losses.distillation_kl`).
        kd_weight_initial: lambda at step 0.
        kd_weight_increment: lambda added every ``kd_weight_every`` steps.
        kd_weight_every: steps between increments.
        kd_weight_max: the largest lambda.
        use_nce: train with the InfoNCE term (ablation switch).
        use_kd: train with the distillation term (ablation switch).
        lr_schedule: ``"constant"`` (reference code) or ``"cosine"``: decay to 0 over the
            run's steps (``trainer.estimated_stepping_batches``), updated every step.
        phrase_types: phrase types reported as ``<split>/acc_<type>``.
        gather_negatives: under DDP, score each sentence against the images of every process
            (all-gathered with gradients; no effect on one process).
        weights: a model folder (or its ``model.safetensors``) whose weights replace the built
            ones, strictly (``--model DIR`` on the command line sets it). Not kept in
            checkpoints, which hold the weights themselves.
    """

    #: ``predict_step`` also returns this many next-best boxes per phrase ("alternatives")
    predict_top_k: int = 5
    #: input size of ``ground()`` (set from the checkpoint's datamodule; ``None``: 512)
    predict_image_size: int | None = None

    def __init__(
        self,
        region_encoder: RegionTower,
        phrase_encoder: PhraseTower,
        teacher: Teacher | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        tau_sentence: float = 0.5,
        phrase_reduce: Literal["sum", "mean"] = "sum",
        region_reduce: Literal["max", "logsumexp"] = "max",
        symmetric_nce: bool = False,
        tau_student: float = 1.0,
        tau_teacher: float = 2.0,
        kd_top_k: int | None = 8,
        kd_target: Literal["teacher", "product"] = "teacher",
        kd_weight_initial: float = 0.001,
        kd_weight_increment: float = 1.0,
        kd_weight_every: int = 500,
        kd_weight_max: float = 3.0,
        use_nce: bool = True,
        use_kd: bool = True,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        phrase_types: Sequence[str] = FLICKR_PHRASE_TYPES,
        gather_negatives: bool = True,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if not (use_nce or use_kd):
            raise ValueError("at least one of use_nce and use_kd must be true")
        if kd_target not in ("teacher", "product"):
            raise ValueError(f"kd_target must be 'teacher' or 'product', got {kd_target!r}")
        if lr_schedule not in ("constant", "cosine"):  # else the error would come at configure_optimizers
            raise ValueError(f"model.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if use_kd and teacher is None:
            raise ValueError(
                "model.use_kd=true needs a teacher: set model.teacher (class_path: lightning_wsg.models.Teacher) "
                "or model.use_kd=false"
            )
        if region_encoder.embed_dim != phrase_encoder.embed_dim:
            raise ValueError(
                f"the towers disagree on the joint space: region_encoder.embed_dim={region_encoder.embed_dim}, "
                f"phrase_encoder.embed_dim={phrase_encoder.embed_dim}"
            )
        self._save_hyperparameters(region_encoder, phrase_encoder, teacher)
        self.region_encoder = region_encoder
        self.phrase_encoder = phrase_encoder
        self.teacher = teacher if use_kd else None  # parameter-free; unused without distillation
        self.make_optimizer = optimizer
        self.metrics = nn.ModuleDict()
        if weights is not None:
            load_weights(self, weights)

    # ------------------------------------------------------------------ set-up
    def _save_hyperparameters(self, *towers: nn.Module | None) -> None:
        """Store the module's arguments with each tower as ``class_path`` / ``init_args``.

        Under LightningCLI ``save_hyperparameters`` receives the parsed config; built in Python
        it receives the objects. Either way the towers are replaced by the arguments they
        recorded (plain values, no pickled network) and the optimizer by its class and
        keywords, and Lightning's ``instantiate_module`` is named to rebuild the nested classes
        at ``load_from_checkpoint``.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=list(_TOWERS))
        stored = {name: init_config(t) if t is not None else None for name, t in zip(_TOWERS, towers)}
        optimizer = self.hparams.get("optimizer")
        if optimizer is not None and not isinstance(optimizer, (dict, str)):
            stored["optimizer"] = optimizer_config(optimizer)
        stored["_instantiator"] = _INSTANTIATOR
        stored["weights"] = None  # a checkpoint holds the weights; the folder may be gone when it is loaded
        for hparams in (self._hparams, self._hparams_initial):
            hparams.update(stored)

    def on_fit_start(self) -> None:
        """Compute what a region tower needs from the training split (feature statistics) once."""
        if not self.region_encoder.needs_preparation:
            return  # done before, or restored from the checkpoint
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "region_features"):
            raise RuntimeError(
                f"{type(self.region_encoder).__name__} needs statistics of the training split's region features, "
                "but the trainer has no lightning_wsg datamodule to read them from"
            )
        self.region_encoder.prepare(datamodule.region_features(datamodule.train_split))

    def _metrics_for(self, split: str) -> GroundingMetrics:
        """The metric collection of one evaluation split (created on first use)."""
        if split not in self.metrics:
            self.metrics[split] = GroundingMetrics(phrase_types=self.hparams.phrase_types).to(self.device)
        return self.metrics[split]

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.make_optimizer([p for p in self.parameters() if p.requires_grad])
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
        return self.region_encoder.encode(batch), self.phrase_encoder.encode(batch)

    def forward(self, batch: GroundingBatch) -> Tensor:
        """Region-phrase scores ``[B, P, R]`` of each sentence against its own image.

        Uses only the images (or given region features), proposal boxes and sentences: never
        detector labels or scores.
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
            losses["nce"] = self.contrastive_loss(batch, regions, phrases)
        if hp.use_kd:
            losses["kd"] = self._distillation(batch, regions, phrases)
            losses["kd_weight"] = torch.tensor(self.current_kd_weight(), device=self.device)
        loss = losses.get("nce", torch.zeros((), device=self.device))
        if hp.use_kd:
            loss = loss + losses["kd_weight"] * losses["kd"]
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def contrastive_loss(self, batch: GroundingBatch, regions: Tensor, phrases: Tensor) -> Tensor:
        """The InfoNCE term of ``training_step`` on the batch's encoded regions and phrases.

        Under DDP it scores against the images of every process (all-gathered, see
        :mod:`lightning_wsg.distributed`), so every process must call it together.
        """
        hp = self.hparams
        return gathered_info_nce(
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

    def current_kd_weight(self) -> float:
        """``lambda`` of the distillation term at the current ``global_step`` (1 without InfoNCE)."""
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
        student, teacher, kd_mask = self.distillation_scores(batch, regions, phrases)
        return distillation_kl(
            student, teacher, batch.proposal_mask, kd_mask, proposals=batch.proposals, **self.distillation_options()
        )

    def distillation_scores(
        self, batch: GroundingBatch, regions: Tensor, phrases: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What the distillation term compares: the student's and the teacher's scores.

        Args:
            batch: the batch (its detector labels, or class probabilities, feed the teacher).
            regions: ``[B, R, D]`` region features of :meth:`encode`.
            phrases: ``[B, P, D]`` phrase features of :meth:`encode`.

        Returns:
            ``(student, teacher, kd_mask)``: ``[B, P, R]`` student scores ``s(r, p)`` (with the
            graph of ``regions`` and ``phrases``), ``[B, P, R]`` teacher scores ``t(r, p)`` (no
            gradient, the student's dtype and device) and ``[B, P]`` bool, the real phrases the
            teacher matched. Pass them with :meth:`distillation_options` to
            :func:`~lightning_wsg.losses.distillation_kl` (the training term) or
            :func:`~lightning_wsg.losses.distillation_distributions`.
        """
        if self.teacher is None:
            raise ValueError("distillation_scores: this module has no teacher (model.use_kd=false)")
        if batch.proposal_labels is None:
            raise ValueError(
                "distillation needs detector labels for every proposal, but this batch has none "
                "(a detections source without labels?); set model.use_kd=false to train without them"
            )
        phrase_texts = [
            [" ".join(words[s:e]) for s, e in spans] for words, spans in zip(batch.words, batch.phrase_spans)
        ]
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
        return student, teacher.to(student), kd_mask

    def distillation_options(self) -> dict[str, Any]:
        """The module's settings of :func:`~lightning_wsg.losses.distillation_kl` (temperatures,
        ``top_k``, ``target``), as keyword arguments."""
        hp = self.hparams
        return {
            "tau_student": hp.tau_student,
            "tau_teacher": hp.tau_teacher,
            "top_k": hp.kd_top_k,
            "target": hp.kd_target,
        }

    def _detector_class_names(self) -> list[str] | None:
        """The class names that index ``batch.class_probs`` (the detections store's)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        store = getattr(datamodule, "store", None) if datamodule is not None else None
        return getattr(store, "class_names", None)

    # -------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: GroundingBatch) -> Tensor:
        batch.require_ground_truth()  # before the forward pass
        scores = self(batch)
        self._metrics_for(batch.split).update_batch(scores, batch)
        return scores

    def validation_step(self, batch: GroundingBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch)

    def test_step(self, batch: GroundingBatch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Update the split's metrics; the ``[B, P, R]`` scores go to callbacks (the test report)."""
        return self._evaluation_step(batch)

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

    def predict_step(self, batch: GroundingBatch, batch_idx: int, dataloader_idx: int = 0) -> SentencePredictions:
        """Per sentence, the chosen box (original pixels) and score of each phrase, plus the
        next-best ``predict_top_k`` boxes ("alternatives"); ``.scores`` holds the batch's scores."""
        scores = self(batch)
        results = phrase_results(
            scores, batch.proposals, batch.proposal_mask, batch.words, batch.phrase_spans, self.predict_top_k
        )
        return SentencePredictions(
            {
                "image_id": batch.image_ids[i],
                "sentence_id": batch.sentence_ids[i],
                "sentence": " ".join(batch.words[i]),
                "image_size": [int(v) for v in batch.image_sizes[i].tolist()],
                "phrases": phrases,
            }
            for i, phrases in enumerate(results)
        ).with_scores(scores)

    # ------------------------------------------------------------- new images
    def ground(
        self,
        image: Any,
        sentence: str,
        proposals: Tensor | Sequence[Sequence[float]] | None = None,
        top_k: int = 5,
        phrases: Sequence[str | Sequence[int]] | None = None,
        image_size: int | None = None,
        grid: dict[str, Any] | None = None,
        features: Tensor | None = None,
    ) -> list[dict[str, Any]]:
        """Ground the phrases of ``sentence`` (``"a [red car] by [the tree]"``, or plain) in ``image``.

        Args:
            image: a path, a PIL image or a ``[3, H, W]`` tensor (uint8, or float in ``[0, 1]``);
                with a feature tower, which reads no pixels, also ``(width, height)``.
            sentence: the sentence, phrases marked with brackets (or a plain expression).
            proposals: ``[R, 4]`` corners in original-image pixels (default: a dense box grid,
                :func:`~lightning_wsg.detection.grid.box_grid`; a feature tower needs them).
            top_k: the chosen box plus up to ``top_k`` next-best alternatives per phrase.
            phrases: listed phrases instead of brackets (see
                :func:`~lightning_wsg.data.predict_file.parse_sentence`).
            image_size: the network input size (default: the training datamodule's, from the
                checkpoint, else 512).
            grid: :func:`~lightning_wsg.detection.grid.box_grid` keyword arguments for the
                default proposals.
            features: ``[R, F]`` per-box features of ``proposals``: the feature tower's input.

        Returns:
            Per phrase ``{"phrase", "span", "box", "score", "alternatives": [{"box", "score"}...]}``,
            boxes in original-image pixels.
        """
        reads_images = self.region_encoder.reads_images
        pixels, (width, height) = _image_pixels(image, need_pixels=reads_images)
        words, spans = parse_sentence(sentence, phrases)
        if not reads_images and (proposals is None or features is None):
            raise ValueError(
                f"{type(self.region_encoder).__name__} reads per-box features, not pixels: give ground() the "
                "proposals and their features"
            )
        boxes = (
            box_grid(width, height, **(grid or {}))
            if proposals is None
            else torch.as_tensor(proposals).float().reshape(-1, 4)
        )
        if len(boxes) == 0:
            raise ValueError("no proposals")
        if features is not None:
            features = torch.as_tensor(features).float()
            if features.ndim != 2 or features.shape[0] != len(boxes):
                raise ValueError(
                    f"features must be [{len(boxes)}, F] for {len(boxes)} proposals, got {tuple(features.shape)}"
                )
        size = int(image_size or self.predict_image_size or 512)
        if pixels is not None:
            from torchvision.transforms.v2 import functional as TF

            tensor = TF.resize(pixels, [size, size], antialias=True)
            tensor = TF.normalize(
                TF.to_dtype(tensor, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD)
            )
        else:
            tensor, size = torch.zeros(3, 1, 1), 1
        sample = GroundingSample(
            split=PREDICT_SPLIT,
            image_id="image",
            sentence_id="image#0",
            image=tensor,
            image_size=(int(width), int(height)),
            words=words,
            phrase_spans=spans,
            proposals=boxes,
            roi_boxes=scale_boxes(boxes, size / width, size / height),
            proposal_scores=torch.zeros(len(boxes)),
            region_features=features,
        )
        batch = collate([sample])
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                scores = self(batch)
        finally:
            self.train(was_training)
        return phrase_results(scores, batch.proposals, batch.proposal_mask, batch.words, batch.phrase_spans, top_k)[0]

    # ------------------------------------------------------------ model folder
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GroundingModule:
        """Build the module of a model folder (``config.yaml`` + ``model.safetensors``), in eval mode.

        ``ground()`` then resizes images to the folder's training input size, as after
        ``load_from_checkpoint``. Nothing is downloaded: the towers' own pretrained weights are
        off in the folder's config.
        """
        from pytorch_lightning.cli import instantiate_module

        doc = read_config(directory)
        weights_file(directory)  # missing weights: said before the towers are built
        config = {**doc["model"], "weights": str(directory)}
        try:
            module = instantiate_module(cls, config)
        except (FileNotFoundError, ValueError):
            raise  # the folder's own errors name their file
        except Exception as err:  # jsonargparse's: say which file holds the configuration
            raise ValueError(f"{Path(directory) / CONFIG}: cannot build the model: {err}") from err
        module.predict_image_size = trained_image_size(doc)
        return module.eval()

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> Path:
        """Write this module as a model folder (see :mod:`lightning_wsg.model_folder`).

        Args:
            directory: the folder (created if missing; its three files are replaced).
            card: the ``README.md`` model card (default: a short one;
                ``lightning_wsg export`` writes one with the run's data and metrics).
        """
        config = folder_config(self.hparams, self.predict_image_size)
        if card is None:
            card = f"# {Path(directory).name}\n\nA lightning_wsg GroundingModule (`GroundingModule.from_pretrained`).\n"
        return write_folder(self, directory, config, card)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # ground() resizes images as the training datamodule did
        size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size")
        if size is not None:
            self.predict_image_size = int(size)

    # ------------------------------------------- what the datamodule must give this model
    @property
    def reads_images(self) -> bool:
        """Whether the region tower reads images (``False``: per-box features, ``data.read_features``)."""
        return bool(self.region_encoder.reads_images)

    @property
    def feature_dim(self) -> int | None:
        """The feature tower's input width (``data.feature_dim``); ``None`` for an image tower."""
        return None if self.reads_images else getattr(self.region_encoder, "feature_dim", None)

    @property
    def needs_labels(self) -> bool:
        """Whether training distils from the detector's labels (``data.require_labels``)."""
        return bool(self.hparams.use_kd)


def _image_pixels(image: Any, need_pixels: bool = True) -> tuple[Tensor | None, tuple[int, int]]:
    """``([3, H, W]`` uint8 or ``None``, ``(width, height))`` of a path, PIL image, tensor or size."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    if isinstance(image, (tuple, list)) and len(image) == 2 and not need_pixels:
        return None, (int(image[0]), int(image[1]))
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            pixels = TF.pil_to_tensor(img.convert("RGB"))
    elif isinstance(image, Image.Image):
        pixels = TF.pil_to_tensor(image.convert("RGB"))
    elif isinstance(image, Tensor):
        pixels = image.detach().cpu()
        if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be [3, H, W], got {tuple(pixels.shape)}")
        pixels = pixels.expand(3, -1, -1)
        if pixels.is_floating_point():
            pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    else:
        raise TypeError(f"image must be a path, a PIL image or a tensor, got {type(image).__name__}")
    height, width = pixels.shape[-2:]
    return (pixels if need_pixels else None), (int(width), int(height))
