"""The dataset shared by every annotation format: entries + images + proposals -> samples.

A concrete dataset family (Flickr30K Entities, RefCOCO...) turns its annotation files into a
list of :class:`GroundingEntry` per split; :class:`GroundingDataset` joins each entry to its
image and its proposals (a :class:`~lightning_wsg.detection.base.DetectionStore`) and
yields :class:`~lightning_wsg.data.batch.GroundingSample`.

Example:
    >>> dataset = GroundingDataset(entries, paths.__getitem__, open_detections("d.jsonl"), "test")  # doctest: +SKIP
    >>> sample = dataset[0]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..boxes import scale_boxes
from ..detection.base import DetectionStore
from .batch import GroundingSample
from .images import IMAGENET_MEAN, IMAGENET_STD, image_input, read_pixels

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GroundingDataset",
    "GroundingEntry",
    "check_images",
    "examples",
    "original_size",
    "top_scored",
]

logger = logging.getLogger("lightning_wsg")

_EXAMPLES = 5  # ids named in a warning or an error


@dataclass(slots=True)
class GroundingEntry:
    """One image-sentence pair as parsed from the annotations (no image, no proposals).

    Attributes:
        image_id: the image id as a string.
        sentence_id: a unique id of the sentence (``"<image_id>#<index>"`` on Flickr,
            index 0-based as in phraseloceval).
        words: the sentence's words.
        phrase_spans: per phrase ``(start, end)`` word indices, ``end`` exclusive.
        phrase_ids: per phrase an id (Flickr chain id, RefCOCO sent id).
        phrase_types: per phrase its types, or ``None``.
        gt_boxes: evaluation entries only: per phrase all ground-truth boxes, ``[K, 4]``
            corners (``K >= 1``); ``None`` for training entries.
        image_size: original ``(width, height)`` from the annotations, or ``None``; when
            given, the image file must have this size.
    """

    image_id: str
    sentence_id: str
    words: list[str]
    phrase_spans: list[tuple[int, int]]
    phrase_ids: list[str]
    phrase_types: list[list[str]] | None = None
    gt_boxes: list[Tensor] | None = None
    image_size: tuple[int, int] | None = None


def examples(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLES])
    return shown + (", ..." if len(ids) > _EXAMPLES else "")


def top_scored(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` (all when fewer), kept in their original order."""
    if len(scores) <= k:
        return torch.arange(len(scores))
    return torch.argsort(scores, descending=True, stable=True)[:k].sort().values


class GroundingDataset(Dataset[GroundingSample]):
    """Image-sentence pairs with the detector's proposals, as :class:`GroundingSample`.

    Entries whose image has no proposals (absent from ``detections`` or zero boxes) are
    skipped; the count is logged once (``num_skipped``, ``skipped_ids`` keep it).

    Args:
        entries: the split's entries.
        image_path: maps an image id to its file.
        detections: the proposals store.
        split: the split name carried by every sample.
        image_size: images are resized to ``image_size x image_size``.
        max_proposals: keep at most this many proposals per image, the top-scored ones
            (kept in file order).
        train: training samples carry no ground truth (``gt_boxes`` and
            ``phrase_types`` are ``None``).
        read_images: read each sample's image; ``False`` for a model that reads per-box
            features instead (the sample's image is then a ``[3, 1, 1]`` placeholder).
        read_features: attach the store's per-box features (``region_features``).
    """

    def __init__(
        self,
        entries: Sequence[GroundingEntry],
        image_path: Callable[[str], Path],
        detections: DetectionStore,
        split: str,
        image_size: int = 512,
        max_proposals: int = 100,
        train: bool = False,
        read_images: bool = True,
        read_features: bool = False,
    ) -> None:
        if image_size < 1 or max_proposals < 1:
            raise ValueError(f"image_size and max_proposals must be >= 1, got {image_size}, {max_proposals}")
        if read_features and detections.feature_dim is None:
            raise ValueError(f"{detections.path}: the detections source has no per-box features")
        self.read_images = read_images
        self.read_features = read_features
        self.image_path = image_path
        self.detections = detections
        self.split = split
        self.image_size = int(image_size)
        self.max_proposals = int(max_proposals)
        self.train = train
        self.entries: list[GroundingEntry] = []
        self.skipped_ids: list[str] = []
        for entry in entries:
            dets = detections.get(entry.image_id)
            if dets is None or len(dets) == 0:
                self.skipped_ids.append(entry.sentence_id)
            else:
                self.entries.append(entry)
        if self.skipped_ids:
            logger.warning(
                "split %s: skipped %d of %d image-sentence pairs whose image has no proposals in %s (e.g. %s)",
                split,
                len(self.skipped_ids),
                len(entries),
                detections.path,
                examples(self.skipped_ids),
            )

    @property
    def num_skipped(self) -> int:
        """How many entries were left out for want of proposals."""
        return len(self.skipped_ids)

    def __len__(self) -> int:
        return len(self.entries)

    def load_image(self, entry: GroundingEntry) -> tuple[Tensor, tuple[int, int]]:
        """Read, resize and normalise an entry's image -> ``([3, S, S], (width, height))``.

        A missing or unreadable file raises naming it; a size other than the annotations' is
        refused (the boxes would not fit the picture).
        """
        path = Path(self.image_path(entry.image_id))
        pixels = read_pixels(path)
        size = (int(pixels.shape[-1]), int(pixels.shape[-2]))
        if entry.image_size is not None and tuple(entry.image_size) != size:
            raise ValueError(f"image {path} is {size[0]}x{size[1]}, the annotations say {entry.image_size}")
        return image_input(pixels, self.image_size), size

    def make_sample(
        self, entry: GroundingEntry, image: Tensor, size: tuple[int, int], proposals: Tensor, **fields
    ) -> GroundingSample:
        """A :class:`GroundingSample` of ``entry``: its image (``size`` = original width,
        height), its proposals in original pixels (their ``roi_boxes`` follow the resize) and
        any further ``fields`` (scores, labels, ground truth)."""
        width, height = size
        return GroundingSample(
            split=self.split,
            image_id=entry.image_id,
            sentence_id=entry.sentence_id,
            image=image,
            image_size=(width, height),
            words=list(entry.words),
            phrase_spans=list(entry.phrase_spans),
            proposals=proposals,
            roi_boxes=scale_boxes(proposals, self.image_size / width, self.image_size / height),
            phrase_ids=list(entry.phrase_ids),
            **fields,
        )

    def kept_proposals(self, image_id: str) -> Tensor:
        """Indices of the proposals an image's samples keep (the top-scored ``max_proposals``)."""
        return top_scored(self.detections[image_id].scores, self.max_proposals)

    def __getitem__(self, index: int) -> GroundingSample:
        entry = self.entries[index]
        dets = self.detections[entry.image_id]
        keep = top_scored(dets.scores, self.max_proposals)
        if self.read_images:
            image, size = self.load_image(entry)
        else:
            image, size = torch.zeros(3, 1, 1), original_size(entry, dets)
        features = None
        if self.read_features:
            features = self.detections.features(entry.image_id)
            if features.shape[0] != len(dets):
                raise ValueError(
                    f"{self.detections.path}: image {entry.image_id}: {features.shape[0]} feature rows for "
                    f"{len(dets)} boxes"
                )
            features = features[keep]
        return self.make_sample(
            entry,
            image,
            size,
            dets.boxes[keep].float(),
            proposal_scores=dets.scores[keep].float(),
            proposal_labels=[dets.labels[i] for i in keep.tolist()] if dets.labels is not None else None,
            class_probs=dets.class_probs[keep] if dets.class_probs is not None else None,
            region_features=features,
            gt_boxes=None if self.train else entry.gt_boxes,
            phrase_types=None if self.train else entry.phrase_types,
        )


def original_size(entry: GroundingEntry, dets) -> tuple[int, int]:
    """An image's ``(width, height)`` without reading it: from the annotations, the detections
    source, or else the extent of its boxes."""
    if entry.image_size is not None:
        return tuple(entry.image_size)
    if getattr(dets, "image_size", None) is not None:
        return tuple(dets.image_size)
    extent = dets.boxes[:, 2:].max(dim=0).values.ceil().clamp(min=1)
    return int(extent[0]), int(extent[1])


def check_images(dataset: GroundingDataset, split: str, progress: bool = True) -> None:
    """Decode every image of ``dataset`` once; one error names all that cannot be used.

    Checks what :meth:`GroundingDataset.load_image` would meet in a worker: a file that does
    not decode to the end (a truncated JPEG, garbage) and a size other than the annotations'.

    Raises:
        OSError: naming the split, the count and each bad file with its problem.
    """
    sizes: dict[str, tuple[int, int] | None] = {}
    for entry in dataset.entries:
        if sizes.get(entry.image_id) is None:
            sizes[entry.image_id] = tuple(entry.image_size) if entry.image_size is not None else None
    bad: list[str] = []
    with _Progress(progress, f"verifying images ({split})", len(sizes)) as advance:
        for image_id, expected in sizes.items():
            path = Path(dataset.image_path(image_id))
            try:
                with Image.open(path) as img:
                    img.load()  # decodes everything: a truncated file fails here, not at open
                    size = img.size
            except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
                bad.append(f"{path}: {type(err).__name__}: {err}")
            else:
                if expected is not None and size != expected:
                    bad.append(f"{path}: {size[0]}x{size[1]}, the annotations say {expected[0]}x{expected[1]}")
            advance(1)
    if bad:
        shown = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        raise OSError(
            f"split {split}: {len(bad)} of {len(sizes)} images cannot be used (data.verify_images):\n  {shown}"
        )
    logger.info("split %s: all %d images decode (data.verify_images)", split, len(sizes))


class _Progress:
    """A rich progress bar (images, rate, time left), or nothing."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self._bar = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (BarColumn(), MofNCompleteColumn(), TextColumn("left"), TimeRemainingColumn())
        self._bar = bar = Progress(TextColumn("{task.description}"), *columns)
        bar.__enter__()
        task = bar.add_task(self.description, total=self.total)
        return lambda n: bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
