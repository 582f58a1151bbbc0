"""Validation pictures: predicted boxes solid and ground-truth boxes dashed, as a grid logged
to TensorBoard (or written as PNG files under the run folder without a TensorBoardLogger)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import Tensor

from ..data.batch import GroundingBatch
from ..metrics import phrase_results
from .drawing import draw_grounding, ground_truth_boxes, loader_dataset, original_image, picture_grid

__all__ = ["GroundingPictures"]

logger = logging.getLogger("lightning_wsg")


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
        dataset = loader_dataset(trainer, "validate", dataloader_idx)
        for i, phrases in enumerate(results):
            if len(self._pictures) >= self.num_images:
                break
            image, _ = original_image(dataset, batch, i)
            self._pictures.append(
                draw_grounding(
                    image, phrases, ground_truth_boxes(batch, i), " ".join(batch.words[i]), self.picture_size
                )
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
