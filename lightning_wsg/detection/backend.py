"""Detector backends: the interface every detector implements, and the precomputed one.

A backend turns ``(image_id, path)`` pairs into :class:`~lightning_wsg.detection.base.Detections`
and names everything that changes its output (:meth:`DetectorBackend.settings`, the cache's
fingerprint). The torchvision and MMDetection backends live in their own files;
:class:`PrecomputedBackend` replays a detections file.

Example:
    >>> backend = PrecomputedBackend("proposals.jsonl")  # doctest: +SKIP
    >>> backend.detect([("1000092795", Path("1000092795.jpg"))])  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .base import Detections, DetectionStore, read_vocabulary
from .digests import file_digest
from .sources import open_detections

__all__ = ["DetectorBackend", "PrecomputedBackend", "keep_top_boxes"]


class DetectorBackend(ABC):
    """A detector: ``(image_id, path)`` pairs in, :class:`Detections` out.

    Construction must be cheap: the model is built in :meth:`load`, which the cache calls
    only when some image lacks detections (test and predict on a filled cache never load
    it). Subclasses set :attr:`name` and implement :meth:`settings`, :meth:`load` and
    :meth:`detect`.

    Attributes:
        name: the backend's name (the cache folder's prefix).
        batch_size: images per :meth:`detect` call.
    """

    name: str = "detector"
    batch_size: int = 1

    @abstractmethod
    def settings(self, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        """Everything that changes the output, as JSON-able values (files by ``digest``)."""

    @abstractmethod
    def load(self, device: torch.device | str | None = None) -> None:
        """Build the model on ``device`` (``None``: the backend's own default)."""

    @abstractmethod
    def detect(self, images: Sequence[tuple[str, Path]]) -> list[Detections]:
        """Detections of each ``(image_id, path)``, in order; called after :meth:`load`."""

    @property
    def class_names(self) -> list[str] | None:
        """The detector's vocabulary (known after :meth:`load`), or ``None``."""
        return None

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has built the model."""
        return getattr(self, "_loaded", False)

    def unload(self) -> None:
        """Free the model (GPU memory goes back to training).

        The default drops ``self._model`` and empties the CUDA cache when ``self._device``
        is a GPU: what a backend that keeps its network there needs.
        """
        self._model = None
        self._loaded = False
        device = getattr(self, "_device", None)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.empty_cache()

    def versions(self) -> dict[str, str]:
        """Versions of the packages the backend uses, for the manifest."""
        return {}


def keep_top_boxes(
    image_id: str,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    nms_iou: float | None,
    max_boxes: int,
    class_probs: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> Detections:
    """A detector's raw output for one image as :class:`Detections`, best boxes first.

    A class-agnostic NMS at ``nms_iou`` (``None``: none) after the detector's own
    per-class NMS, so that one object is not proposed twice under two names, then the
    ``max_boxes`` highest-scoring boxes (ties kept in input order).

    Args:
        image_id: the image's id.
        boxes: ``[N, 4]`` corner boxes.
        scores: ``[N]`` detection scores.
        labels: ``[N]`` class indices into ``class_names``.
        class_names: the detector's vocabulary.
        nms_iou: IoU of the class-agnostic NMS, or ``None``.
        max_boxes: boxes kept.
        class_probs: optional ``[N, C]`` class probabilities of each box.
        features: optional ``[N, D]`` features of each box (kept rows follow their boxes).
    """
    from torchvision.ops import nms

    order = torch.argsort(scores, descending=True, stable=True)
    if nms_iou is not None and len(order):
        order = nms(boxes, scores, nms_iou)  # sorted by score
    order = order[:max_boxes]
    return Detections(
        image_id,
        boxes[order],
        [class_names[j] for j in labels[order].tolist()],
        scores[order],
        class_probs[order] if class_probs is not None else None,
        features=features[order] if features is not None else None,
    )


class PrecomputedBackend(DetectorBackend):
    """Imports a precomputed detections file (JSON Lines or bottom-up TSV) into the cache.

    Images the file lacks are cached with zero boxes (the datasets then skip their pairs
    and log it), so a file is read once per image set, not at every run.

    Args:
        path: the file (see :func:`lightning_wsg.detection.open_detections`).
        vocabulary: a TSV's class vocabulary (for example ``vg_objects_vocab.txt``).
        max_boxes: keep at most this many boxes per image, the top-scored ones
            (``None``: all).
    """

    name = "precomputed"

    def __init__(self, path: str | Path, vocabulary: str | Path | None = None, max_boxes: int | None = None) -> None:
        self.path = Path(path)
        self.vocabulary = Path(vocabulary) if vocabulary is not None else None
        self.max_boxes = max_boxes
        self.batch_size = 256
        self._store: DetectionStore | None = None

    def settings(self, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        return {
            "backend": self.name,
            "file_sha256": digest(self.path),
            "format": self.path.suffix.lower(),
            "vocabulary_sha256": digest(self.vocabulary) if self.vocabulary is not None else None,
            "max_boxes": self.max_boxes,
        }

    def load(self, device: torch.device | str | None = None) -> None:
        self._store = store = open_detections(self.path, self.vocabulary)
        first = next(iter(store.values()), None)
        self._has_labels = first is not None and first.labels is not None
        self._probs_width = None
        if first is not None and first.class_probs is not None:
            self._probs_width = len(store.class_names) if store.class_names else int(first.class_probs.shape[1])
        self._loaded = True

    def unload(self) -> None:
        self._store = None
        self._loaded = False

    @property
    def class_names(self) -> list[str] | None:
        if self._store is not None:
            return self._store.class_names
        return read_vocabulary(self.vocabulary) if self.vocabulary is not None else None

    def detect(self, images: Sequence[tuple[str, Path]]) -> list[Detections]:
        assert self._store is not None, "load() first"
        out = []
        for image_id, _ in images:
            det = self._store.get(image_id)
            if det is None:  # cached as "no boxes": the datasets skip it and say so
                width = self._probs_width
                det = Detections(
                    image_id,
                    torch.zeros(0, 4),
                    [] if self._has_labels else None,
                    torch.zeros(0),
                    torch.zeros(0, width) if width is not None else None,
                )
            elif self.max_boxes is not None and len(det) > self.max_boxes:
                keep = torch.argsort(det.scores, descending=True, stable=True)[: self.max_boxes].sort().values
                det = Detections(
                    det.image_id,
                    det.boxes[keep],
                    [det.labels[i] for i in keep.tolist()] if det.labels is not None else None,
                    det.scores[keep],
                    det.class_probs[keep] if det.class_probs is not None else None,
                )
            out.append(det)
        return out
