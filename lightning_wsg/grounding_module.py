"""The LightningModule: trains a :class:`~lightning_wsg.model.GroundingModel` with its loss.

:class:`GroundingModule` holds the network (:class:`~lightning_wsg.model.GroundingModel`: two
towers of :mod:`lightning_wsg.models`), the training objective
(:class:`~lightning_wsg.contrastive_distillation.ContrastiveDistillationLoss`: InfoNCE plus the
ramped distillation), the optimizer and learning-rate schedule, and the metrics
(:mod:`lightning_wsg.metrics`):

* training: ``loss = InfoNCE + lambda(step) * KL(teacher || student)``;
* validation / test / predict: each phrase takes its highest-scoring proposal; detector
  labels and scores are never read.

A config picks the towers by ``class_path`` (``model.region_encoder``, ``model.phrase_encoder``)
and sets the loss's arguments under ``model.loss`` (``model.loss.teacher``, ``model.loss.tau_sentence``,
...). The constructor arguments are stored in the checkpoint whether the module was built by
the CLI or in Python, so ``GroundingModule.load_from_checkpoint(path)`` rebuilds it without
further arguments; checkpoints of the earlier layout are migrated when loaded
(:mod:`lightning_wsg.migration`).

What the datamodule must know about the model (pixels or features, the feature width,
whether distillation needs labels) is :attr:`reads_images`, :attr:`feature_dim` and
:attr:`needs_labels`, linked into the datamodule by the CLI. What the model must know about
the data comes with it: class probabilities are named by ``batch.class_names``, and a feature
tower's statistics are handed over by the
:class:`~lightning_wsg.callbacks.FeatureStatistics` callback (the CLI adds it).

Example:
    >>> from lightning_wsg.contrastive_distillation import ContrastiveDistillationLoss
    >>> from lightning_wsg.models import PhraseEncoder, RegionEncoder, Teacher
    >>> module = GroundingModule(
    ...     RegionEncoder("resnet18", pretrained=False, hidden_dim=64, embed_dim=32),
    ...     PhraseEncoder("all-MiniLM-L6-v2", hidden_dim=64, embed_dim=32),
    ...     ContrastiveDistillationLoss(Teacher(matching="wordnet")),
    ... )  # doctest: +SKIP
    >>> module.model.ground("dog.jpg", "a [brown dog] jumps over [the fence]")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn

from .contrastive_distillation import ContrastiveDistillationLoss
from .data.batch import GroundingBatch
from .metrics import FLICKR_PHRASE_TYPES, GroundingMetrics, phrase_results
from .migration import LAYOUT, LAYOUT_KEY, migrate_checkpoint
from .model import GroundingModel
from .model_folder import load_weights
from .models import PhraseTower, RegionTower
from .models.towers import plain_values

__all__ = ["GroundingModule", "SentencePredictions", "optimizer_config"]

#: rebuilds a module from the configuration stored in its checkpoint (nested ``class_path``s)
_INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"


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
            (images) or :class:`~lightning_wsg.models.FeatureRegionEncoder` (per-box features).
        phrase_encoder: the phrase tower (:class:`~lightning_wsg.models.PhraseEncoder` or
            :class:`~lightning_wsg.models.LSTMPhraseEncoder`).
        loss: the training objective and all its settings; ``None`` for a module that only
            evaluates or predicts (``fit`` then refuses to start).
        optimizer: builds the optimizer from the trainable parameters (a class such as
            ``torch.optim.Adam`` or a partial of one; in a config ``class_path`` /
            ``init_args``). The reference code: Adam, lr 1e-4, no decay.
        lr_schedule: ``"constant"`` (reference code) or ``"cosine"``: decay to 0 over the
            run's steps (``trainer.estimated_stepping_batches``), updated every step.
        phrase_types: phrase types reported as ``<split>/acc_<type>``.
        weights: a model folder (or its ``model.safetensors``) whose weights replace the
            built network's, strictly (``--model DIR`` on the command line sets it). Not kept
            in checkpoints, which hold the weights themselves.
    """

    #: ``predict_step`` also returns this many next-best boxes per phrase ("alternatives")
    predict_top_k: int = 5

    def __init__(
        self,
        region_encoder: RegionTower,
        phrase_encoder: PhraseTower,
        loss: ContrastiveDistillationLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        phrase_types: Sequence[str] = FLICKR_PHRASE_TYPES,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in ("constant", "cosine"):  # else the error would come at configure_optimizers
            raise ValueError(f"model.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        self.model = GroundingModel(region_encoder, phrase_encoder)
        self.loss = loss
        self._save_hyperparameters()
        self.make_optimizer = optimizer
        self.metrics = nn.ModuleDict()
        if weights is not None:
            load_weights(self.model, weights)

    # ------------------------------------------------------------------ set-up
    def _save_hyperparameters(self) -> None:
        """Store the arguments with the towers as ``class_path`` / ``init_args`` and the loss as
        its plain arguments, so that a checkpoint rebuilds the module without pickled networks
        (``load_from_checkpoint`` instantiates them through Lightning's ``instantiate_module``)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["region_encoder", "phrase_encoder", "loss"])
        stored = {
            **self.model.config(),
            "loss": self.loss.config() if self.loss is not None else None,
            "_instantiator": _INSTANTIATOR,
            "weights": None,  # a checkpoint holds the weights; the folder may be gone when it is loaded
        }
        optimizer = self.hparams.get("optimizer")
        if optimizer is not None and not isinstance(optimizer, (dict, str)):
            stored["optimizer"] = optimizer_config(optimizer)
        for hparams in (self._hparams, self._hparams_initial):
            hparams.update(stored)

    @property
    def reads_images(self) -> bool:
        """Whether the region tower reads pixels (else per-box features): linked to ``data.read_features``."""
        return self.model.reads_images

    @property
    def feature_dim(self) -> int | None:
        """The feature tower's input width (``None`` for an image tower): linked to ``data.feature_dim``."""
        return self.model.feature_dim

    @property
    def needs_labels(self) -> bool:
        """Whether training distils from detector labels: linked to ``data.require_labels``."""
        return self.loss is not None and self.loss.use_kd

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.loss is None:
            raise ValueError(
                "model.loss is not set: training needs a loss (ContrastiveDistillationLoss); "
                "see cli_configs/model/recommended.yaml or paper.yaml"
            )

    def on_fit_start(self) -> None:
        if self.model.region_encoder.needs_preparation:
            raise RuntimeError(
                f"{type(self.model.region_encoder).__name__} needs statistics of the training split's region "
                "features before training: add lightning_wsg.callbacks.FeatureStatistics() to the Trainer's "
                "callbacks (the lightning command adds it), or call region_encoder.prepare(...) yourself"
            )

    def on_train_start(self) -> None:
        # here, not in on_fit_start: estimated_stepping_batches sets up the training loader, and
        # before a checkpoint's loop state is restored that would lose a mid-epoch resume position
        self.loss.set_total_steps(int(self.trainer.estimated_stepping_batches))

    def _metrics_for(self, split: str) -> GroundingMetrics:
        """The metric collection of one evaluation split (created on first use)."""
        if split not in self.metrics:
            self.metrics[split] = GroundingMetrics(phrase_types=self.hparams.phrase_types).to(self.device)
        return self.metrics[split]

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.make_optimizer([p for p in self.parameters() if p.requires_grad])
        if self.hparams.lr_schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----------------------------------------------------------------- forward
    def forward(self, batch: GroundingBatch) -> Tensor:
        """Region-phrase scores ``[B, P, R]`` (:meth:`GroundingModel.forward <lightning_wsg.model.GroundingModel.forward>`)."""
        return self.model(batch)

    def training_step(self, batch: GroundingBatch, batch_idx: int) -> Tensor:
        regions, phrases = self.model.encode(batch)
        terms = self.loss(batch, regions, phrases, self.global_step)
        bs = len(batch)
        self.log("train/loss", terms["loss"], batch_size=bs, prog_bar=True)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=bs)
        return terms["loss"]

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

    def ground(self, image: Any, sentence: str, **kwargs: Any) -> list[dict[str, Any]]:
        """:meth:`GroundingModel.ground <lightning_wsg.model.GroundingModel.ground>` of this module's model."""
        return self.model.ground(image, sentence, **kwargs)

    # ------------------------------------------------------ folders, checkpoints
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GroundingModule:
        """A module (no loss: evaluation and prediction) around a model folder's network, in eval mode."""
        model = GroundingModel.from_pretrained(directory)
        module = cls(model.region_encoder, model.phrase_encoder)
        module.model.image_size = model.image_size
        return module.eval()

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> Path:
        """Write this module's network as a model folder (:meth:`GroundingModel.save_pretrained
        <lightning_wsg.model.GroundingModel.save_pretrained>`)."""
        return self.model.save_pretrained(directory, card)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> GroundingModule:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, migrating a checkpoint of the earlier layout first."""
        from lightning_fabric.utilities.cloud_io import _load as pl_load

        checkpoint = pl_load(checkpoint_path, map_location=kwargs.get("map_location") or "cpu", weights_only=False)
        if migrate_checkpoint(checkpoint):
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            buffer.seek(0)
            checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LAYOUT_KEY] = LAYOUT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        migrate_checkpoint(checkpoint)  # `--ckpt_path` of an earlier layout: weights renamed before they load
        size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size")
        if size is not None:  # ground() resizes images as the training datamodule did
            self.model.image_size = int(size)
