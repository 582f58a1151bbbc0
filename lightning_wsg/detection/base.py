"""The detection types every source shares, and the table of readers :func:`open_detections` consults.

Every source ends up as a :class:`DetectionStore`, a read-only mapping from image id (a string,
``"1000092795"``) to :class:`Detections`. Boxes are corners in pixels of the original image
(see :mod:`lightning_wsg.boxes`). Sources with per-box features (the feature tower's input)
report their width as ``store.feature_dim`` and give an image's ``[N, dim]`` float32 block by
``store.features(image_id)``, row ``i`` belonging to box ``i``.

Class probabilities (``Detections.class_probs``, ``[N, C]`` over the store's ``class_names``)
are ``P(class | box)`` over the foreground classes: no value negative or non-finite, and each
row sums to at most 1 (:data:`PROBS_SUM_TOLERANCE` above it is allowed for rounding); less than
1 is the background's share, as a softmax over background + classes leaves it
(:func:`check_class_probs`).

This module is the bottom of :mod:`lightning_wsg.detection`: it imports no other module of the
package. Each reader module (:mod:`~lightning_wsg.detection.jsonl`,
:mod:`~lightning_wsg.detection.tsv`, :mod:`~lightning_wsg.detection.hdf5`,
:mod:`~lightning_wsg.detection.native_store`, :mod:`~lightning_wsg.detection.store`) builds on
these types and enters its store class here with :func:`register_reader`;
:func:`~lightning_wsg.detection.sources.open_detections` imports them all and opens a path with
the first reader that accepts it (:func:`registered_readers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "DetectionFormatError",
    "DetectionStore",
    "Detections",
    "PROBS_SUM_TOLERANCE",
    "Reader",
    "check_class_probs",
    "read_vocabulary",
    "register_reader",
    "registered_readers",
]


class DetectionFormatError(ValueError):
    """A detections file is malformed; the message names the file and the record."""


#: How far above 1 a row of class probabilities may sum: rounding in files (1e-5 in JSON Lines)
#: and float16 storage (about 5e-4 of the sum) stay well inside it; per-class sigmoid scores
#: or logits do not.
PROBS_SUM_TOLERANCE = 1e-2


def check_class_probs(probs: Tensor, where: str, image_id: str, width: int | None = None) -> None:
    """Refuse class probabilities that cannot be ``P(class | box)`` over foreground classes.

    Args:
        probs: ``[N, C]`` one row per box.
        where: the file (and line) the rows come from, first in the message.
        image_id: the image they belong to, named in the message.
        width: the number of class names the store indexes them by (``None``: not checked).

    Raises:
        DetectionFormatError: not ``[N, C]``, a width other than ``width``, a negative or
            non-finite value, or a row summing to more than ``1 + PROBS_SUM_TOLERANCE`` (a row
            may sum to less: the rest is the background).
    """
    if probs.ndim != 2:
        raise DetectionFormatError(f"{where}: image {image_id}: class_probs must be [N, C], got {tuple(probs.shape)}")
    if width is not None and probs.shape[1] != width and len(probs):
        raise DetectionFormatError(
            f"{where}: image {image_id}: class_probs of width {probs.shape[1]}, but the store names {width} classes "
            "(class_names): one column per class name"
        )
    if not len(probs):
        return
    values = probs.float()
    sums = values.sum(dim=1)
    # the common case in two reductions (stores check each image they return): NaN fails both
    # comparisons, an infinity one of them
    if bool(values.min() >= 0) and bool(sums.max() <= 1.0 + PROBS_SUM_TOLERANCE):
        return
    finite = torch.isfinite(values)
    if not finite.all():
        box = int((~finite).any(dim=1).nonzero()[0])
        raise DetectionFormatError(f"{where}: image {image_id}: class_probs of box {box} are not finite (nan or inf)")
    if (values < 0).any():
        box = int((values < 0).any(dim=1).nonzero()[0])
        raise DetectionFormatError(
            f"{where}: image {image_id}: negative class_probs on box {box} (min {values[box].min().item():.4g}): "
            "probabilities, not logits"
        )
    if (sums > 1.0 + PROBS_SUM_TOLERANCE).any():
        box = int((sums > 1.0 + PROBS_SUM_TOLERANCE).nonzero()[0])
        raise DetectionFormatError(
            f"{where}: image {image_id}: the class_probs of box {box} sum to {sums[box].item():.4f}, more than 1: a "
            "row is P(class | box) over the foreground classes (the background takes the rest), not per-class "
            "sigmoid scores"
        )


@dataclass
class Detections:
    """The detector's output for one image.

    Attributes:
        image_id: the image id as a string.
        boxes: ``[N, 4]`` float32 corners in original-image pixels.
        labels: ``N`` class names, or ``None`` when the source has no labels.
        scores: ``[N]`` float32 confidences (ones when the source has none).
        class_probs: optional ``[N, C]`` class-probability vectors over the store's
            ``class_names``: each row ``P(class | box)`` over the foreground classes, summing
            to at most 1 (:func:`check_class_probs`).
        image_size: the image's ``(width, height)`` when the source gives it.
        features: optional ``[N, D]`` per-box features a detector returns for the cache
            (stores give theirs by :meth:`DetectionStore.features`, not here).
    """

    image_id: str
    boxes: Tensor
    labels: list[str] | None
    scores: Tensor
    class_probs: Tensor | None = None
    image_size: tuple[int, int] | None = None
    features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def validate(self, where: str) -> None:
        """Raise :class:`DetectionFormatError` naming ``where`` if fields disagree or
        ``class_probs`` are no probabilities (:func:`check_class_probs`)."""
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:  # before len(): a scalar has no length
            raise DetectionFormatError(
                f"{where}: image {self.image_id}: boxes must be [N, 4], got {tuple(self.boxes.shape)}"
            )
        n = len(self)
        if self.labels is not None and len(self.labels) != n:
            raise DetectionFormatError(f"{where}: image {self.image_id}: {n} boxes but {len(self.labels)} labels")
        if self.scores.shape != (n,):
            raise DetectionFormatError(f"{where}: image {self.image_id}: {n} boxes but {self.scores.numel()} scores")
        if self.class_probs is not None and (self.class_probs.ndim != 2 or self.class_probs.shape[0] != n):
            raise DetectionFormatError(
                f"{where}: image {self.image_id}: {n} boxes but class_probs of shape {tuple(self.class_probs.shape)}"
            )
        if self.class_probs is not None:
            check_class_probs(self.class_probs, where, self.image_id)
        if self.features is not None and (self.features.ndim != 2 or self.features.shape[0] != n):
            raise DetectionFormatError(
                f"{where}: image {self.image_id}: {n} boxes but features of shape {tuple(self.features.shape)}"
            )
        if n and not torch.isfinite(self.boxes).all():
            raise DetectionFormatError(f"{where}: image {self.image_id}: non-finite box coordinates")
        if n and ((self.boxes[:, 2] < self.boxes[:, 0]) | (self.boxes[:, 3] < self.boxes[:, 1])).any():
            raise DetectionFormatError(f"{where}: image {self.image_id}: a box has x2 < x1 or y2 < y1")


class DetectionStore(Mapping[str, Detections]):
    """Read-only mapping ``image_id -> Detections`` with the source's class names.

    Attributes:
        class_names: the detector's vocabulary, ``None`` when the source names none; the
            columns of the records' ``class_probs`` when they carry them.
        feature_dim: the width of the source's per-box features, ``None`` when it has none.
    """

    path: Path
    class_names: list[str] | None = None
    feature_dim: int | None = None

    def __init__(self, path: str | Path, records: dict[str, Detections], class_names: list[str] | None = None):
        self.path = Path(path)
        self._records = records
        self.class_names = class_names

    def __getitem__(self, image_id: str) -> Detections:
        return self._records[str(image_id)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, images={len(self)})"

    def class_probs_width(self) -> int | None:
        """The width ``C`` of the records' ``class_probs``, ``None`` when they carry none.

        A store's records carry them all or none (images without boxes aside): the first
        record with boxes, or with an empty ``[0, C]`` block, says.
        """
        for image_id in self:
            det = self[image_id]
            if det.class_probs is not None:
                return int(det.class_probs.shape[1])
            if len(det):
                return None
        return None

    def features(self, image_id: str) -> Tensor:
        """The ``[N, feature_dim]`` float32 features of an image's boxes (row ``i``: box ``i``)."""
        raise DetectionFormatError(
            f"{self.path}: this detections source has no per-box features (the feature tower needs a "
            "bottom-up-attention TSV with its features column, or an HDF5 file of image_features)"
        )


def read_vocabulary(path: str | Path) -> list[str]:
    """Class names, one per line; a line of comma-separated synonyms is named by the first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    names = [line.strip().split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    if not names or any(not n for n in names):
        raise DetectionFormatError(f"{path}: empty vocabulary line")
    return names


StoreT = TypeVar("StoreT", bound=DetectionStore)


@dataclass(frozen=True)
class Reader:
    """A kind of detections source: which paths it opens, and the store that reads them.

    Attributes:
        accepts: says whether a path (one that exists) is this kind of source.
        store: the :class:`DetectionStore` subclass; built from the path alone, or from the
            path and the vocabulary when ``vocabulary`` is true.
        order: readers are asked in increasing order (a folder may hold the marker files of
            more than one kind: the cache's manifest wins over the native store's, which wins
            over loose HDF5 files).
        vocabulary: whether the store takes the vocabulary file that names the source's labels.
    """

    accepts: Callable[[Path], bool]
    store: type[DetectionStore]
    order: int
    vocabulary: bool = False

    def open(self, path: Path, vocabulary: str | Path | None = None) -> DetectionStore:
        """The store of ``path`` (``vocabulary`` is passed on only to a store that takes one)."""
        return self.store(path, vocabulary) if self.vocabulary else self.store(path)


# keyed by the store's module and name, so that reloading a reader module replaces its entry
_READERS: dict[str, Reader] = {}


def register_reader(
    accepts: Callable[[Path], bool], *, order: int, vocabulary: bool = False
) -> Callable[[type[StoreT]], type[StoreT]]:
    """A class decorator entering a store class in the readers
    :func:`~lightning_wsg.detection.sources.open_detections` asks.

    Args:
        accepts: a predicate on the (existing) path: is it this kind of source?
        order: where the reader is asked among the others (lower first; see :class:`Reader`).
        vocabulary: the store's constructor takes ``(path, vocabulary)`` instead of ``(path)``.

    Returns:
        The decorator; it returns the class unchanged.
    """

    def register(cls: type[StoreT]) -> type[StoreT]:
        _READERS[f"{cls.__module__}.{cls.__qualname__}"] = Reader(accepts, cls, order, vocabulary)
        return cls

    return register


def registered_readers() -> list[Reader]:
    """The registered readers in the order they are asked (readers register when their module is imported)."""
    return sorted(_READERS.values(), key=lambda reader: reader.order)
