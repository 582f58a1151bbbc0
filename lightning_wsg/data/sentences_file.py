"""New images and sentences from a JSON Lines file: the datamodule of ``lightning predict``.

Grounding images no dataset knows needs no annotation folder, no split and no training
setting, so it is a datamodule of its own rather than options of every dataset's. Each line
of the file names an image and a sentence (format: :mod:`lightning_wsg.data.predict_file`);
proposals come from a dense multi-scale box grid (no detector) or from ``detections`` (a
proposals file, or the detection cache a :class:`~lightning_wsg.detection.DetectionCache`
callback fills for these images).

Example::

    lightning predict --config cli_configs/demo.yaml --config cli_configs/predict.yaml \\
        --ckpt_path outputs/demo/checkpoints/best.ckpt --data.sentences_file inputs.jsonl

    >>> dm = SentencesFileDataModule("inputs.jsonl", image_size=128)  # doctest: +SKIP
    >>> trainer.predict(model, datamodule=dm)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ..detection.base import DetectionStore
from ..detection.grid import DEFAULT_GRID_ASPECT_RATIOS, DEFAULT_GRID_SCALES, DEFAULT_GRID_STRIDE
from ..detection.sources import open_detections
from .batch import collate
from .predict import PredictDataset
from .predict_file import PREDICT_SPLIT, PredictRecord, read_predict_file
from .samplers import evaluation_sampler
from .settings import NO_DETECTIONS, check_feature_width, check_loader_settings, check_model_needs, plain_paths

__all__ = ["SentencesFileDataModule"]


class SentencesFileDataModule(pl.LightningDataModule):
    """Sentences to ground in new images, for ``lightning predict`` (split ``"predict"``).

    Args:
        sentences_file: the JSON Lines file (image paths relative to its folder).
        proposals: ``"grid"`` (a dense multi-scale box grid, no detector) or ``"detections"``
            (``detections`` or the detection cache; images it lacks fall back to the grid).
        detections: the proposals file or detection-cache folder, records keyed by the image
            ids of the file; ``None`` with ``proposals: grid`` or a ``DetectionCache`` callback.
        vocabulary: names the class ids of a TSV ``detections``.
        grid_scales: box sizes of the grid, as fractions of the image side.
        grid_aspect_ratios: box aspect ratios (width / height) of the grid.
        grid_stride: grid step as a fraction of the box size.
        batch_size: sentences per batch.
        num_workers: loader worker processes.
        image_size: images are resized to ``image_size x image_size`` (the training size).
        max_proposals: with detections, the top-scored proposals kept per image.
        pin_memory: passed to the loader.
        persistent_workers: keep workers between runs (only with ``num_workers > 0``).
        read_features: the model reads per-box features, not pixels: every image then needs
            its boxes and features in ``detections`` (``proposals: detections``). Set by the
            ``lightning`` CLI from the model.
        feature_dim: the feature tower's width; features of another width are refused.
        require_labels: accepted so that the CLI's link from the model applies; nothing is
            trained here, so labels are never required.

    Raises:
        ValueError: an unknown ``proposals``, bad sizes, ``feature_dim`` without
            ``read_features``, or a feature model with the box grid (a grid box has no features).
    """

    def __init__(
        self,
        sentences_file: str | Path,
        proposals: Literal["grid", "detections"] = "grid",
        detections: str | Path | None = None,
        vocabulary: str | Path | None = None,
        grid_scales: Sequence[float] = DEFAULT_GRID_SCALES,
        grid_aspect_ratios: Sequence[float] = DEFAULT_GRID_ASPECT_RATIOS,
        grid_stride: float = DEFAULT_GRID_STRIDE,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 512,
        max_proposals: int = 100,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        read_features: bool = False,
        feature_dim: int | None = None,
        require_labels: bool = False,
    ) -> None:
        super().__init__()
        check_loader_settings(num_workers, batch_size=batch_size, image_size=image_size, max_proposals=max_proposals)
        check_model_needs(read_features, feature_dim)
        if proposals not in ("grid", "detections"):
            raise ValueError(f"data.proposals must be 'grid' or 'detections', got {proposals!r}")
        if read_features and proposals == "grid":
            raise ValueError(
                "the model reads per-box features: ground with data.proposals=detections and a data.detections "
                "source holding the new images' boxes and features (not the box grid)"
            )
        self.save_hyperparameters()
        plain_paths(self.hparams)
        self.sentences_file = Path(sentences_file)
        self.proposals = proposals
        self.detections = Path(detections) if detections is not None else None  # None: grid, or a DetectionCache
        self.vocabulary = Path(vocabulary) if vocabulary is not None else None
        self.grid = {
            "scales": tuple(grid_scales),
            "aspect_ratios": tuple(grid_aspect_ratios),
            "stride": float(grid_stride),
        }
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.max_proposals = max_proposals
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.read_features = bool(read_features)
        self.feature_dim = int(feature_dim) if feature_dim is not None else None
        self.require_labels = bool(require_labels)
        self.dataset: PredictDataset | None = None
        self._records: list[PredictRecord] | None = None
        self._store: DetectionStore | None = None  # supplied by use_detections

    @property
    def image_dir(self) -> Path:
        """The sentences file's folder: where relative image paths start, and the image
        collection a ``DetectionCache`` names its cache after."""
        return self.sentences_file.parent

    def records(self) -> list[PredictRecord]:
        """The file's lines, parsed once; every image they name must exist."""
        if self._records is None:
            records = read_predict_file(self.sentences_file)
            missing = sorted({str(r.image) for r in records if not Path(r.image).is_file()})
            if missing:
                raise FileNotFoundError(
                    f"{self.sentences_file} (data.sentences_file): {len(missing)} images to ground not found: "
                    f"{', '.join(missing[:5])}"
                )
            self._records = records
        return self._records

    # -- the datamodule API of DetectionCache (splits_for, image_paths, use_detections) ----
    def splits_for(self, stage: str | None) -> list[str]:
        """One split, ``"predict"``, whatever the stage."""
        return [PREDICT_SPLIT]

    def image_paths(self, split: str = PREDICT_SPLIT) -> dict[str, Path]:
        """``image_id -> image file`` of every image to ground."""
        return {r.image_id: Path(r.image) for r in self.records()}

    def use_detections(self, detections: str | Path | DetectionStore, splits: Sequence[str] | None = None) -> None:
        """Read proposals (and features) from ``detections`` from now on (``splits``: unused,
        there is one)."""
        if not isinstance(detections, DetectionStore):
            detections = open_detections(detections, self.vocabulary)
        self._store = detections
        self.dataset = self._build()

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Parse the file; build the dataset unless a ``DetectionCache`` will supply the boxes."""
        if stage not in (None, "predict"):
            raise ValueError(
                f"{type(self).__name__} grounds new images for lightning predict; it has nothing to {stage} "
                "(train and evaluate with a dataset's datamodule)"
            )
        if self.dataset is not None:
            return
        if self.proposals == "detections" and self.detections is None:
            self.records()  # a DetectionCache callback supplies the boxes (use_detections)
        else:
            self.dataset = self._build()

    def _build(self) -> PredictDataset:
        store = None
        if self.proposals == "detections":
            store = self._store
            if store is None:
                if self.detections is None:
                    raise RuntimeError(NO_DETECTIONS)
                store = open_detections(self.detections, self.vocabulary)  # not checked against the file's ids
            if self.read_features and store.feature_dim is not None:
                check_feature_width(store, self.feature_dim, next(iter(store), "-"))
        try:
            return PredictDataset(
                self.records(),
                image_size=self.image_size,
                detections=store,
                max_proposals=self.max_proposals,
                grid=self.grid,
                read_features=self.read_features,
            )
        except FileNotFoundError as err:  # name the file that lists them
            raise FileNotFoundError(f"{self.sentences_file} (data.sentences_file): {err}") from None

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            if self.proposals == "detections" and self.detections is None:
                raise RuntimeError(NO_DETECTIONS)
            raise RuntimeError("the sentences are not set up: call setup() first")
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=evaluation_sampler(self.dataset, self.trainer),
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )
