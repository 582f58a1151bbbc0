"""The shared datamodule over image-sentence entries and a proposals source.

A concrete datamodule (Flickr30K Entities, RefCOCO...) only turns its annotation files into
a list of :class:`~lightning_wsg.data.dataset.GroundingEntry` per split and says where an
image lives; everything else (datasets, proposals, skipping, loaders) is done here once.

Example:
    >>> dm = Flickr30kEntitiesDataModule(root, image_dir, "proposals.jsonl")  # doctest: +SKIP
    >>> dm.setup("test")  # doctest: +SKIP
    >>> batch = next(iter(dm.test_dataloader()))  # a GroundingBatch  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ..detection.base import DetectionFormatError, DetectionStore, read_vocabulary
from ..detection.sources import open_detections
from .batch import collate
from .dataset import (
    GroundingDataset,
    GroundingEntry,
    check_images,
    examples,
    top_scored,
)
from .images import IMAGENET_MEAN, IMAGENET_STD
from .predict_file import PREDICT_SPLIT
from .samplers import ResumableDataLoader, evaluation_sampler, training_sampler
from .settings import NO_DETECTIONS, check_feature_width, check_loader_settings, check_model_needs, plain_paths

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GroundingDataModule",
    "GroundingDataset",
    "GroundingEntry",
    "top_scored",
    "check_images",
]

logger = logging.getLogger("lightning_wsg")


class GroundingDataModule(pl.LightningDataModule):
    """Base datamodule: a root of annotations, a folder of images, one proposals file.

    A subclass implements :meth:`load_split`, :meth:`image_path` and
    :meth:`known_image_ids`, and may change the split names (``val_splits``,
    ``test_splits``: one loader per split, each batch carries its split name).

    Args:
        root: the annotation folder.
        image_dir: the image folder; may be left out (``None``) when the model's region tower
            reads per-box features from ``detections`` instead of images.
        detections: the proposals file or detection-cache folder (see
            :func:`lightning_wsg.detection.open_detections`); ``None`` when a
            :class:`~lightning_wsg.detection.DetectionCache` callback supplies them (setup then
            parses the splits and waits for :meth:`use_detections`).
        vocabulary: the detector vocabulary (a class-name file, one a line), to name the class
            ids of a TSV; a source whose records carry ``class_probs`` of another width is refused.
        batch_size: samples per batch.
        num_workers: loader worker processes.
        image_size: images are resized to ``image_size x image_size``.
        max_proposals: top-scored proposals kept per image.
        max_phrases: training sentences keep at most this many phrases.
        pin_memory: passed to the loaders.
        persistent_workers: keep workers between epochs (only with ``num_workers > 0``).
        predict_split: a split of the dataset for ``lightning predict`` to ground instead of
            the test splits, the training split included (pseudo-labels,
            :mod:`lightning_wsg.callbacks.pseudo_labels`): every phrase a sentence marks, in file order,
            with its ground-truth boxes where the annotations have them
            (:meth:`load_labelled_split`). Proposals come from ``detections`` as for testing.
            (New images and sentences: :class:`~lightning_wsg.data.SentencesFileDataModule`.)
        verify_images: at set-up, decode every image the stage's splits use (with a progress
            bar) and stop with one error listing the unreadable ones (truncated or corrupt
            files, a size that disagrees with the annotations) before the first epoch, rather
            than in a DataLoader worker hours later. Costs one full read of the images.
        read_features: the model's region tower reads per-box features, not pixels: samples
            carry ``detections``' features and no image (``image_dir`` may then be ``None``;
            without ``image_dir`` features are read whatever this says). The ``lightning`` CLI
            sets it from the model (``not model.reads_images``); in Python, pass it yourself.
        feature_dim: the feature tower's input width (with ``read_features``): a source of
            another width is refused at set-up, naming the file and both widths. Set by the CLI
            from ``model.feature_dim``.
        require_labels: the model distils from the detector's class names: training
            detections without labels are refused at set-up, before the first step. Set by the
            CLI from ``model.needs_labels`` (``model.use_kd``).
    """

    train_split: str = "train"
    val_splits: list[str] = ["val"]
    test_splits: list[str] = ["test"]

    def __init__(
        self,
        root: str | Path,
        image_dir: str | Path | None = None,
        detections: str | Path | None = None,
        vocabulary: str | Path | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 512,
        max_proposals: int = 100,
        max_phrases: int = 16,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        verify_images: bool = False,
        predict_split: str | None = None,
        read_features: bool = False,
        feature_dim: int | None = None,
        require_labels: bool = False,
    ) -> None:
        super().__init__()
        check_loader_settings(
            num_workers,
            batch_size=batch_size,
            image_size=image_size,
            max_proposals=max_proposals,
            max_phrases=max_phrases,
        )  # refused when the run is configured, not at the first batch
        check_model_needs(read_features, feature_dim)
        self.save_hyperparameters()
        plain_paths(self.hparams)
        self.root = Path(root)
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.detections = Path(detections) if detections is not None else None  # None: a DetectionCache supplies them
        self.vocabulary = Path(vocabulary) if vocabulary is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.max_proposals = max_proposals
        self.max_phrases = max_phrases
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.datasets: dict[str, GroundingDataset] = {}
        self._store: DetectionStore | None = None
        self._entries: dict[str, list[GroundingEntry]] = {}  # parsed once per split
        self._supplied_detections: Path | None = None  # set by use_detections
        self.predict_split = predict_split  # lightning predict grounds this split (pseudo-labels)
        self.verify_images = bool(verify_images)
        # what the model needs of the samples: given (by the CLI's links or the caller), never read off the model
        self.read_features = bool(read_features)
        self.feature_dim = int(feature_dim) if feature_dim is not None else None
        self.require_labels = bool(require_labels)

    # -- hooks of a concrete dataset -------------------------------------------------
    def load_split(self, split: str) -> list[GroundingEntry]:
        """Parse a split's entries; training entries (``split == train_split``) carry no boxes."""
        raise NotImplementedError

    def image_path(self, image_id: str) -> Path:
        """The image file of ``image_id``."""
        raise NotImplementedError

    def known_image_ids(self) -> set[str]:
        """Every image id the root knows (detections for any other id are an error)."""
        raise NotImplementedError

    def load_labelled_split(self, split: str) -> list[GroundingEntry]:
        """Parse ``split`` for ``data.predict_split``: every phrase, with its ground-truth boxes
        (``[0, 4]`` where it has none) where the annotations have them, the training split too."""
        raise NotImplementedError(f"{type(self).__name__} cannot ground a dataset split (data.predict_split)")

    # -- shared machinery -------------------------------------------------------------
    @property
    def store(self) -> DetectionStore:
        """The proposals, opened once and checked against :meth:`known_image_ids` and, when
        their records carry class probabilities, against ``vocabulary``."""
        if self._store is None:
            source = self._supplied_detections or self.detections
            if source is None:
                raise RuntimeError(NO_DETECTIONS)
            store = open_detections(source, self.vocabulary)
            known = self.known_image_ids()
            unknown = [image_id for image_id in store if image_id not in known]
            if unknown:
                raise DetectionFormatError(
                    f"{store.path}: {len(unknown)} detection records for images unknown to the dataset "
                    f"at {self.root}: image {examples(unknown)}"
                )
            self._check_vocabulary(store)
            self._store = store
        return self._store

    def _check_vocabulary(self, store: DetectionStore) -> None:
        """Refuse class probabilities of another width than ``vocabulary``'s class names."""
        if self.vocabulary is None:
            return
        width = store.class_probs_width()
        if width is None:
            return
        names = read_vocabulary(self.vocabulary)
        if width != len(names):
            raise DetectionFormatError(
                f"{store.path}: class_probs over {width} classes, but data.vocabulary {self.vocabulary} names "
                f"{len(names)}: the probabilities come from another detector vocabulary; give the vocabulary "
                "they were made with, or leave data.vocabulary out (the source names its own classes)"
            )

    def _check_paths(self) -> None:
        image_dir = self.image_dir if self.reads_images() else None  # a feature tower reads no image
        for what, path in (("dataset root", self.root), ("image folder", image_dir)):
            if path is not None and not path.is_dir():
                raise FileNotFoundError(f"{what} not found: {path}")

    def reads_images(self) -> bool:
        """Whether samples carry images: not with ``read_features``, nor without ``image_dir``."""
        return not self.read_features and self.image_dir is not None

    def _check_features(self, dataset: GroundingDataset, split: str) -> None:
        """Refuse features of another width than the model's, or a source without features."""
        store = dataset.detections
        if store.feature_dim is None:
            raise ValueError(
                f"split {split}: the model reads per-box features (data.read_features, or data.image_dir is not "
                f"given), but "
                f"{store.path} has none: give data.detections a bottom-up-attention TSV with its features column, "
                "an HDF5 file of image_features, a native feature store, or a detection cache made with "
                "box_features: true; or data.image_dir with an image tower"
            )
        check_feature_width(store, self.feature_dim, dataset.entries[0].image_id if dataset.entries else "-")

    def region_features(self, split: str):
        """Each image's kept per-box features ``[R, dim]`` in ``split`` (once per image), for
        statistics such as the feature tower's normalisation."""
        if self.reads_images():  # a feature tower on image samples: its first batch would have no features
            raise ValueError(
                f"the model reads per-box features, but {type(self).__name__} was built to read images: pass "
                "read_features=True (and feature_dim, the tower's width) to the datamodule; the lightning CLI "
                "sets both from the model"
            )
        dataset = self.datasets[split]
        for image_id in dict.fromkeys(entry.image_id for entry in dataset.entries):
            yield dataset.detections.features(image_id)[dataset.kept_proposals(image_id)]

    def _splits_for(self, stage: str | None) -> list[str]:
        if stage == "fit":
            return [self.train_split, *self.val_splits]
        if stage == "validate":
            return list(self.val_splits)
        if stage == "predict" and self.predict_split is not None:
            return [PREDICT_SPLIT]
        if stage in ("test", "predict"):
            return list(self.test_splits)
        return [self.train_split, *self.val_splits, *self.test_splits]

    def build_dataset(self, split: str) -> GroundingDataset:
        """Parse ``split``, drop pairs without proposals, check that the images exist."""
        train = split == self.train_split
        name = self.predict_split if split == PREDICT_SPLIT else split  # samples carry the dataset's split name
        # a plain mapping, not this datamodule's bound method: workers that are spawned
        # (not forked) then receive the paths instead of a pickled datamodule and trainer
        reads_images = self.reads_images()
        paths = self.image_paths(split) if reads_images else {}
        dataset = GroundingDataset(
            self.entries(split),
            paths.__getitem__,
            self.store,
            name,
            image_size=self.image_size,
            max_proposals=self.max_proposals,
            train=train,
            read_images=reads_images,
            read_features=not reads_images and self.store.feature_dim is not None,
        )
        if len(dataset) == 0:
            raise ValueError(f"split {name}: no image-sentence pair left: no image has proposals in {self.store.path}")
        if not reads_images:
            self._check_features(dataset, split)
        used = {e.image_id for e in dataset.entries} if reads_images else set()
        missing = sorted(str(paths[i]) for i in used if not paths[i].is_file())
        if missing:
            raise FileNotFoundError(f"split {name}: {len(missing)} images not found: {examples(missing)}")
        if train:
            self._check_labels_for_distillation(dataset)
        if self.verify_images and reads_images:  # each rank reads its datasets' images; one bar is enough
            check_images(dataset, name, progress=self.trainer is None or self.trainer.is_global_zero)
        return dataset

    def _check_labels_for_distillation(self, dataset: GroundingDataset) -> None:
        """Refuse, before training, a model that distils (``use_kd``) from proposals without labels."""
        if not self.require_labels:
            return
        store = dataset.detections
        unlabelled = [i for i in dict.fromkeys(e.image_id for e in dataset.entries) if store[i].labels is None]
        if unlabelled:
            raise ValueError(
                f"model.loss.use_kd=true distils from the detector's class names, but {store.path} has no labels for "
                f"{len(unlabelled)} training images (e.g. {examples(unlabelled)}): give data.detections with "
                "labels (a bottom-up TSV names its objects_id through data.vocabulary) or set model.loss.use_kd=false"
            )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (each split once)."""
        self._check_paths()
        for split in self._splits_for(stage):
            if self.detections is None:  # parse now, datasets once DetectionCache supplies detections
                self.entries(split)
            elif split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)

    # -- detections supplied by a callback (lightning_wsg.detection.DetectionCache) ----------------
    # DataModule.setup() runs before the callbacks' setup(): the callback asks which images a stage
    # needs (splits_for, image_paths), fills its cache, then calls use_detections().
    def splits_for(self, stage: str | None) -> list[str]:
        """The split names ``stage`` (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``) uses."""
        return self._splits_for(stage)

    def entries(self, split: str) -> list[GroundingEntry]:
        """The parsed entries of ``split`` (parsed on first use, then kept)."""
        if split not in self._entries:
            if split == PREDICT_SPLIT and self.predict_split is not None:
                self._entries[split] = self.load_labelled_split(self.predict_split)
            else:
                self._entries[split] = self.load_split(split)
        return self._entries[split]

    def image_paths(self, split: str) -> dict[str, Path]:
        """``image_id -> image file`` of every image ``split``'s entries use (parsing it once)."""
        if self.image_dir is None:
            raise ValueError(
                f"split {split}: its images are needed (an image tower, a detector, predict), but data.image_dir "
                "is not given"
            )
        image_ids = dict.fromkeys(entry.image_id for entry in self.entries(split))
        return {image_id: Path(self.image_path(image_id)) for image_id in image_ids}

    def use_detections(self, detections: str | Path | DetectionStore, splits: Sequence[str] | None = None) -> None:
        """Read proposals from ``detections`` from now on and rebuild the datasets of ``splits``.

        ``detections`` is a source for :func:`open_detections`, or an opened store (taken as
        is: a view of a shared cache holding just this dataset's images). ``splits`` defaults
        to every split parsed so far; datasets of other splits are dropped (with
        ``data.detections`` null they wait for the next call). Entries are not parsed again.
        """
        if isinstance(detections, DetectionStore):
            self._supplied_detections, self._store = detections.path, detections
        else:
            self._supplied_detections, self._store = Path(detections), None
        splits = list(self._entries) if splits is None else list(splits)
        self.datasets = {}
        for split in splits:
            self.datasets[split] = self.build_dataset(split)

    def _dataloader_factory(self, split: str) -> DataLoader:
        if split not in self.datasets:
            if self.detections is None:
                raise RuntimeError(NO_DETECTIONS)
            raise RuntimeError(f"split {split} is not set up: call setup() first")
        dataset = self.datasets[split]
        train = split == self.train_split
        # a seeded, per-rank, checkpointed training order (resumes mid-epoch); evaluation split
        # without duplicates under DDP
        sampler = training_sampler(dataset, self.trainer) if train else evaluation_sampler(dataset, self.trainer)
        return (ResumableDataLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train and len(sampler) > self.batch_size,
            num_workers=self.num_workers,
            # batches say what their class probabilities' columns are
            collate_fn=functools.partial(collate, class_names=dataset.detections.class_names),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _loaders(self, splits: Sequence[str]) -> DataLoader | list[DataLoader]:
        loaders = [self._dataloader_factory(split) for split in splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def train_dataloader(self) -> DataLoader:
        return self._dataloader_factory(self.train_split)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders(self.val_splits)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders(self.test_splits)

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """``data.predict_split`` (pseudo-labels), else the test splits."""
        return self._loaders(self._splits_for("predict"))
