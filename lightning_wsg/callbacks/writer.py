"""The prediction writer of ``lightning predict``: JSON Lines, and optionally pictures.

Example (YAML, see ``cli_configs/predict.yaml``)::

    trainer:
      callbacks+:
        - class_path: lightning_wsg.callbacks.GroundingWriter
          init_args: {output_dir: outputs/predict, top_k: 5, draw: true}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter

from ..data.batch import GroundingBatch
from .drawing import draw_grounding, ground_truth_boxes, loader_dataset, original_image

__all__ = ["GroundingWriter"]

logger = logging.getLogger("lightning_wsg")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "sentence"


class GroundingWriter(BasePredictionWriter):
    """Write ``lightning predict`` results as JSON Lines, and optionally pictures.

    One line per sentence::

        {"image_id": ..., "image": path, "sentence_id": ..., "sentence": ..., "image_size": [w, h],
         "phrases": [{"phrase": ..., "span": [s, e], "box": [x1, y1, x2, y2], "score": ...,
                      "alternatives": [{"box": [...], "score": ...}, ...]}, ...],
         "picture": "pictures/<sentence id>.png"}

    Boxes are corners in original-image pixels (:mod:`lightning_wsg.boxes`).

    Args:
        output_dir: the folder of ``predictions.jsonl`` (``predictions.rank<r>.jsonl`` under
            DDP) and ``pictures/`` (default: ``<run folder>/predictions``).
        top_k: next-best boxes listed per phrase (``alternatives``).
        draw: also write each sentence's picture (PNG).
        picture_size: the longer side of the pictures in pixels.
        max_pictures: draw at most this many pictures per process (``None``: all).
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        top_k: int = 5,
        draw: bool = True,
        picture_size: int = 512,
        max_pictures: int | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.top_k = int(top_k)
        self.draw = draw
        self.picture_size = int(picture_size)
        self.max_pictures = max_pictures
        self.path: Path | None = None
        self.num_written = 0
        self.num_pictures = 0
        self._file = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        pl_module.predict_top_k = self.top_k
        if self.output_dir is None:
            self.output_dir = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.predict_top_k = self.top_k
        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.jsonl"
        self.path = self.output_dir / name
        self._file = self.path.open("w", encoding="utf-8")
        self.num_written = self.num_pictures = 0

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: GroundingBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        dataset = loader_dataset(trainer, "predict", dataloader_idx)
        for i, record in enumerate(prediction):
            record = dict(record)
            image, path = None, None
            image_path = getattr(dataset, "image_path", None)
            if image_path is not None:
                try:
                    path = str(image_path(batch.image_ids[i]))
                except KeyError:
                    path = None
            record["image"] = path
            if self.draw and (self.max_pictures is None or self.num_pictures < self.max_pictures):
                image, _ = original_image(dataset, batch, i)
                picture = draw_grounding(
                    image,
                    record["phrases"],
                    ground_truth_boxes(batch, i),
                    title=record.get("sentence"),
                    size=self.picture_size,
                )
                rel = Path("pictures") / f"{_safe_name(str(record['sentence_id']))}.png"
                (self.output_dir / rel.parent).mkdir(parents=True, exist_ok=True)
                picture.save(self.output_dir / rel)
                record["picture"] = str(rel)
                self.num_pictures += 1
            self._file.write(json.dumps(record) + "\n")
            self.num_written += 1
        self._file.flush()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            logger.info("wrote %d groundings to %s (%d pictures)", self.num_written, self.path, self.num_pictures)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
