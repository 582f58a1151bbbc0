"""The prediction dataset: new images and sentences, no ground truth (split ``"predict"``).

Proposals come from a detections source (a proposals file, or the detection cache that a
:class:`~lightning_wsg.detection.DetectionCache` callback filled for these images) or,
detector-free, from a dense multi-scale box grid (:func:`lightning_wsg.detection.grid.box_grid`).

Example:
    >>> records = read_predict_file("inputs.jsonl")  # doctest: +SKIP
    >>> dataset = PredictDataset(records, image_size=128)  # box-grid proposals  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..detection.base import DetectionStore
from ..detection.grid import box_grid
from .batch import GroundingSample
from .dataset import GroundingDataset, GroundingEntry, top_scored
from .images import read_size
from .predict_file import PREDICT_SPLIT, PredictRecord

__all__ = ["PredictDataset"]

logger = logging.getLogger("lightning_wsg")


class PredictDataset(GroundingDataset):
    """Sentences to ground in images never seen in training, as :class:`GroundingSample`.

    Args:
        records: the parsed input lines (:func:`lightning_wsg.data.predict_file.read_predict_file`).
        image_size: images are resized to ``image_size x image_size``.
        detections: the proposals source, or ``None`` for the box grid. Images missing
            from it fall back to the box grid (with a warning).
        max_proposals: with detections, the top-scored proposals kept per image.
        grid: keyword arguments of :func:`lightning_wsg.detection.grid.box_grid`.
        split: the split name carried by the samples.
        read_features: attach the detections' per-box features (a model that reads them and
            no image); every image then needs its boxes and features in ``detections``.
    """

    def __init__(
        self,
        records: Sequence[PredictRecord],
        image_size: int = 512,
        detections: DetectionStore | None = None,
        max_proposals: int = 100,
        grid: dict[str, Any] | None = None,
        split: str = PREDICT_SPLIT,
        read_features: bool = False,
    ) -> None:
        if image_size < 1 or max_proposals < 1:
            raise ValueError(f"image_size and max_proposals must be >= 1, got {image_size}, {max_proposals}")
        self.records = list(records)
        self.paths = {r.image_id: Path(r.image) for r in self.records}
        self.image_path = self.paths.__getitem__
        self.detections = detections
        self.split = split
        self.image_size = int(image_size)
        self.max_proposals = int(max_proposals)
        self.grid = dict(grid or {})
        self.train = False
        self.skipped_ids: list[str] = []
        self.entries = [
            GroundingEntry(
                r.image_id,
                r.sentence_id,
                list(r.words),
                list(r.phrase_spans),
                [str(j) for j in range(len(r.phrase_spans))],
            )
            for r in self.records
        ]
        missing = sorted(str(p) for p in set(self.paths.values()) if not p.is_file())
        if missing:
            raise FileNotFoundError(f"{len(missing)} images to ground not found: {', '.join(missing[:5])}")
        self.read_features = read_features
        self.grid_ids: list[str] = []
        if read_features:
            if detections is None or detections.feature_dim is None:
                where = detections.path if detections is not None else "no detections source"
                raise ValueError(f"{where}: no per-box features to ground the new images with")
            lacking = [i for i in self.paths if detections.get(i) is None or len(detections[i]) == 0]
            if lacking:
                raise ValueError(
                    f"{detections.path}: no boxes and features for {len(lacking)} images to ground "
                    f"(e.g. {', '.join(lacking[:5])})"
                )
        elif detections is not None:
            self.grid_ids = [i for i in self.paths if detections.get(i) is None or len(detections[i]) == 0]
            if self.grid_ids:
                logger.warning(
                    "predict: %d of %d images have no proposals in %s; they use the box grid (e.g. %s)",
                    len(self.grid_ids),
                    len(self.paths),
                    detections.path,
                    ", ".join(self.grid_ids[:5]),
                )

    def image_paths(self) -> dict[str, Path]:
        """``image_id -> image file`` of every image to ground."""
        return dict(self.paths)

    def proposals(self, image_id: str, width: int, height: int) -> torch.Tensor:
        """``[R, 4]`` proposal corners of an image (original pixels)."""
        dets = self.detections.get(image_id) if self.detections is not None else None
        if dets is None or len(dets) == 0:
            return box_grid(width, height, **self.grid)
        return dets.boxes[top_scored(dets.scores, self.max_proposals)].float()

    def __getitem__(self, index: int) -> GroundingSample:
        entry = self.entries[index]
        if self.read_features:
            dets = self.detections[entry.image_id]
            keep = top_scored(dets.scores, self.max_proposals)
            size = read_size(self.paths[entry.image_id])  # the header only: no pixel is read
            return self.make_sample(
                entry,
                torch.zeros(3, 1, 1),
                size,
                dets.boxes[keep].float(),
                proposal_scores=torch.zeros(len(keep)),
                region_features=self.detections.features(entry.image_id)[keep],
            )
        image, size = self.load_image(entry)
        proposals = self.proposals(entry.image_id, *size)
        return self.make_sample(entry, image, size, proposals, proposal_scores=torch.zeros(len(proposals)))
