"""Callbacks that show the grounding: the prediction writer and validation pictures.

* :class:`GroundingWriter` (``lightning predict``): JSON Lines with, per phrase, the chosen
  box in original-image pixels, its score and the next-best boxes; optionally a PNG per
  sentence with the boxes drawn, one colour per phrase and a legend with the phrase text.
* :class:`GroundingPictures` (validation): a grid of such pictures, predicted boxes solid
  and ground-truth boxes dashed, logged as TensorBoard images when a ``TensorBoardLogger``
  is present, else written as PNG files under the run folder.

Example (YAML, see ``cli_configs/predict.yaml``)::

    trainer:
      callbacks+:
        - class_path: lightning_wsg.callbacks.GroundingWriter
          init_args: {output_dir: outputs/predict, top_k: 5, draw: true}
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

from .data.batch import GroundingBatch
from .data.dataset import IMAGENET_MEAN, IMAGENET_STD
from .metrics import phrase_results

__all__ = ["PALETTE", "GroundingPictures", "GroundingWriter", "draw_grounding", "picture_grid"]

logger = logging.getLogger("lightning_wsg")

#: one colour per phrase (cycled), distinguishable on photos and on each other
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128),
)  # fmt: skip


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour, width: int, dash: int = 6) -> None:
    x1, y1, x2, y2 = box
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = math.hypot(b[0] - a[0], b[1] - a[1])
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            t0, t1 = k / steps, min(1.0, (k + 1) / steps)
            draw.line(
                [
                    (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                    (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1),
                ],
                fill=colour,
                width=width,
            )


def draw_grounding(
    image: Image.Image,
    phrases: Sequence[dict[str, Any]],
    ground_truth: Sequence[Sequence[Sequence[float]] | None] | None = None,
    title: str | None = None,
    size: int = 512,
) -> Image.Image:
    """The image with each phrase's box drawn in its colour and a legend below.

    Args:
        image: the original image (boxes are in its pixels).
        phrases: per phrase ``{"phrase": text, "box": [x1, y1, x2, y2], "score": s}`` (score optional).
        ground_truth: per phrase its ground-truth boxes (drawn dashed), or ``None``.
        title: a line above the legend (the sentence).
        size: the longer side of the drawn image (small images are enlarged).

    Returns:
        A new RGB image: the picture above, the legend (colour, phrase, score) below.
    """
    image = image.convert("RGB")
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = image.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(size / 170))
    font = _font(max(11, size // 32))
    for j, phrase in enumerate(phrases):
        colour = PALETTE[j % len(PALETTE)]
        for gt in (ground_truth[j] if ground_truth is not None and j < len(ground_truth) else None) or []:
            _dashed_rectangle(draw, [v * scale for v in gt], colour, max(1, line - 1))
        x1, y1, x2, y2 = (v * scale for v in phrase["box"])
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=line)
        tag = str(j + 1)
        tx, ty = x1 + line, y1 + line
        bbox = draw.textbbox((tx, ty), tag, font=font)
        draw.rectangle([bbox[0] - 2, bbox[1] - 1, bbox[2] + 2, bbox[3] + 1], fill=colour)
        draw.text((tx, ty), tag, fill=(255, 255, 255), font=font)
    # the legend
    rows = ([title] if title else []) + [
        f"{j + 1}. {p['phrase']}" + (f"  ({p['score']:.2f})" if p.get("score") is not None else "")
        for j, p in enumerate(phrases)
    ]
    if ground_truth is not None:
        rows.append("solid: predicted, dashed: ground truth")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_h = max(probe.textbbox((0, 0), "Ag", font=font)[3] + 6, 14)
    swatch = row_h - 6
    legend = Image.new("RGB", (w, row_h * len(rows) + 8), (255, 255, 255))
    ldraw = ImageDraw.Draw(legend)
    y = 4
    for k, text in enumerate(rows):
        j = k - (1 if title else 0)
        x = 6
        if 0 <= j < len(phrases):
            ldraw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=PALETTE[j % len(PALETTE)])
            x += swatch + 6
        ldraw.text((x, y), _fit(ldraw, text, font, w - x - 4), fill=(0, 0, 0), font=font)
        y += row_h
    out = Image.new("RGB", (w, h + legend.height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(legend, (0, h))
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def picture_grid(pictures: Sequence[Image.Image], columns: int | None = None, pad: int = 4) -> Image.Image:
    """Pictures side by side in rows (white padding)."""
    if not pictures:
        raise ValueError("no pictures")
    columns = columns or math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    cw = max(p.width for p in pictures)
    ch = max(p.height for p in pictures)
    grid = Image.new("RGB", (columns * (cw + pad) + pad, rows * (ch + pad) + pad), (255, 255, 255))
    for k, p in enumerate(pictures):
        r, c = divmod(k, columns)
        grid.paste(p, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return grid


def _dataset(trainer: Trainer, stage: Literal["predict", "validate"], dataloader_idx: int) -> Any:
    loaders = trainer.predict_dataloaders if stage == "predict" else trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
    return getattr(loaders, "dataset", None)


def _original_image(dataset: Any, batch: GroundingBatch, i: int) -> tuple[Image.Image, str | None]:
    """The sample's original image (from its file), else the network input undone."""
    image_path = getattr(dataset, "image_path", None)
    if image_path is not None:
        try:
            path = Path(image_path(batch.image_ids[i]))
            with Image.open(path) as img:
                return img.convert("RGB"), str(path)
        except (KeyError, OSError):
            pass
    x = batch.images[i].detach().float().cpu()
    x = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    img = Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    w, h = (int(v) for v in batch.image_sizes[i].tolist())
    return img.resize((w, h), Image.Resampling.BICUBIC), None


def _ground_truth(batch: GroundingBatch, i: int) -> list[list[list[float]]] | None:
    if batch.gt_boxes is None or batch.gt_box_mask is None:
        return None
    n = len(batch.phrase_spans[i])
    return [batch.gt_boxes[i, j][batch.gt_box_mask[i, j]].tolist() for j in range(n)]


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
        dataset = _dataset(trainer, "predict", dataloader_idx)
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
                image, _ = _original_image(dataset, batch, i)
                picture = draw_grounding(
                    image,
                    record["phrases"],
                    _ground_truth(batch, i),
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


class GroundingPictures(Callback):
    """Log a grid of validation pictures: predicted boxes (solid) and ground truth (dashed).

    Drawn from the first ``num_images`` samples of the first validation loader, every
    ``every_n_epochs`` epochs (not during the sanity check). Logged with
    ``add_image(tag, ...)`` to every ``TensorBoardLogger``; without one, written to
    ``<run folder>/pictures/<tag>_epoch<E>_step<S>.png``.

    Args:
        num_images: pictures in the grid.
        every_n_epochs: log every this many epochs.
        picture_size: the longer side of each picture.
        tag: the image name (TensorBoard tag, file prefix).
    """

    def __init__(
        self, num_images: int = 8, every_n_epochs: int = 1, picture_size: int = 256, tag: str = "val_grounding"
    ):
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("num_images and every_n_epochs must be >= 1")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.picture_size = int(picture_size)
        self.tag = tag
        self._pictures: list[Image.Image] = []
        #: the last PNG written (``None`` when logged to TensorBoard or not yet)
        self.last_path: Path | None = None

    def _active(self, trainer: Trainer) -> bool:
        return (
            not trainer.sanity_checking and trainer.is_global_zero and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pictures = []

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: GroundingBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0 or len(self._pictures) >= self.num_images or not self._active(trainer):
            return
        scores: Tensor = pl_module(batch)
        results = phrase_results(scores, batch.proposals, batch.proposal_mask, batch.words, batch.phrase_spans, top_k=0)
        dataset = _dataset(trainer, "validate", dataloader_idx)
        for i, phrases in enumerate(results):
            if len(self._pictures) >= self.num_images:
                break
            image, _ = _original_image(dataset, batch, i)
            self._pictures.append(
                draw_grounding(image, phrases, _ground_truth(batch, i), " ".join(batch.words[i]), self.picture_size)
            )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._pictures or not self._active(trainer):
            return
        from pytorch_lightning.loggers import TensorBoardLogger

        grid = picture_grid(self._pictures)
        self._pictures = []
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for lg in tensorboards:
            lg.experiment.add_image(self.tag, np.asarray(grid), global_step=trainer.global_step, dataformats="HWC")
        if not tensorboards:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "pictures"
            folder.mkdir(parents=True, exist_ok=True)
            self.last_path = folder / f"{self.tag}_epoch{trainer.current_epoch:03d}_step{trainer.global_step}.png"
            grid.save(self.last_path)
