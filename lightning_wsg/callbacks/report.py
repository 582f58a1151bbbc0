"""A self-contained HTML report of a ``lightning test`` run, to open in any browser offline.

:class:`TestReport` collects one record per evaluated phrase during ``lightning test``
(the chosen box's IoU with the ground-truth union box, its score, the phrase's types, the
box's size, the image's number of proposals) and writes ``<output_dir>/report.html``:

* the logged metrics, one column per split;
* per split, accuracy by phrase type, by ground-truth box size and by number of proposals
  as bar charts (inline SVG, each bar behind it the share of phrases some proposal reaches);
* a gallery of the worst and the best grounded phrases, predicted box solid and
  ground-truth boxes dashed (:func:`~lightning_wsg.callbacks.draw_grounding`).

Everything is in the one file (CSS inline, pictures as JPEG data URIs, no script): it
opens without a network. Under DDP every process sends its records and gallery candidates
to all others and rank 0 writes the report of the whole split. The page itself is written by
:func:`~lightning_wsg.report_html.render_report`, which needs no Lightning; this module
collects the records and draws the gallery's pictures.

Example (YAML, see ``cli_configs/report.yaml``)::

    trainer:
      callbacks+:
        - class_path: lightning_wsg.callbacks.TestReport
          init_args: {output_dir: null, num_gallery: 12}
"""

from __future__ import annotations

import base64
import datetime
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import Tensor

from ..boxes import box_iou
from ..data.batch import GroundingBatch
from ..files import atomic_write_text
from ..metrics import GroundingMetrics, predict_boxes

# the page's writer; the names this module does not use stay importable from it (where they were first)
from ..report_html import (  # noqa: F401
    GT_COLOUR,
    MAX_TYPES,
    METRIC_NAMES,
    SIZE_EDGES,
    PhraseRecord,
    bar_chart,
    proposal_rows,
    render_report,
    size_rows,
    type_rows,
)
from .drawing import dashed_rectangle, draw_grounding, loader_dataset, original_image

__all__ = ["PhraseRecord", "TestReport", "render_report"]

logger = logging.getLogger("lightning_wsg")


@dataclass
class _Shot:
    """A gallery candidate: its record and a small copy of its image with the boxes in its pixels."""

    record: PhraseRecord
    picture: Image.Image
    box: list[float]
    gt_boxes: list[list[float]] = field(default_factory=list)

    @property
    def target(self) -> tuple:
        """The referred object: every caption of an image names it again, the gallery shows it once."""
        return self.record.split, self.record.image_id, tuple(tuple(round(v) for v in b) for b in self.gt_boxes)


class TestReport(Callback):
    """Write ``report.html`` after ``lightning test``: metrics, accuracy charts, a gallery.

    Args:
        output_dir: the report's folder (default: the run folder, ``trainer.log_dir`` or
            ``trainer.default_root_dir``).
        filename: the report's file name.
        num_gallery: phrases shown among the worst and again among the best grounded.
        thumbnail_size: the longer side of a gallery picture in pixels.
        iou_threshold: a phrase is correct when the chosen box's IoU with the union box is
            ``>=`` this (the metrics' threshold).
        title: the page's heading.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        output_dir: str | Path | None = None,
        filename: str = "report.html",
        num_gallery: int = 12,
        thumbnail_size: int = 224,
        iou_threshold: float = 0.5,
        title: str = "Grounding test report",
    ) -> None:
        if num_gallery < 0 or thumbnail_size < 16:
            raise ValueError(f"num_gallery must be >= 0 and thumbnail_size >= 16, got {num_gallery}, {thumbnail_size}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.filename = filename
        self.num_gallery = int(num_gallery)
        self.thumbnail_size = int(thumbnail_size)
        self.iou_threshold = float(iou_threshold)
        self.title = title
        self.records: list[PhraseRecord] = []
        self._worst: list[tuple[tuple[float, float], _Shot]] = []
        self._best: list[tuple[tuple[float, float], _Shot]] = []
        #: the last report written (``None`` before)
        self.path: Path | None = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.records, self._worst, self._best = [], [], []

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: GroundingBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(batch, GroundingBatch) or not batch.has_ground_truth:
            return
        scores = outputs
        if not isinstance(scores, Tensor) or tuple(scores.shape[:2]) != tuple(batch.phrase_mask.shape):
            scores = pl_module(batch)  # a module whose test_step does not return its scores
        self._collect(batch, scores, loader_dataset(trainer, "test", dataloader_idx))

    def _collect(self, batch: GroundingBatch, scores: Tensor, dataset: Any) -> None:
        top = predict_boxes(scores, batch.proposals, batch.proposal_mask, k=1)
        chosen, chosen_scores = top.boxes[:, :, 0].float().cpu(), top.scores[:, :, 0].float().cpu()
        # which phrases count, are right and are reachable: exactly as the logged metrics say
        outcomes = GroundingMetrics(phrase_types=(), iou_threshold=self.iou_threshold).outcomes(
            scores, batch.proposals, batch.proposal_mask, batch.phrase_mask, batch.gt_union, batch.gt_boxes,
            batch.gt_box_mask,
        )  # fmt: skip
        counted, correct, reach = (t.cpu() for t in (outcomes.counted, outcomes.correct, outcomes.upper_bound))
        num_proposals = batch.proposal_mask.bool().sum(-1).tolist()
        union, gt_boxes, gt_mask = batch.gt_union.float().cpu(), batch.gt_boxes.float().cpu(), batch.gt_box_mask.cpu()
        types = batch.phrase_types or [[[] for _ in spans] for spans in batch.phrase_spans]
        for i, spans in enumerate(batch.phrase_spans):
            width, height = (float(v) for v in batch.image_sizes[i].tolist())
            n = len(spans)
            ious = box_iou(chosen[i, :n], union[i, :n]).diagonal().tolist()
            image = None
            for j, (s, e) in enumerate(spans):
                if not counted[i, j]:
                    continue
                x1, y1, x2, y2 = union[i, j].tolist()
                record = PhraseRecord(
                    split=batch.split,
                    sentence_id=str(batch.sentence_ids[i]),
                    image_id=str(batch.image_ids[i]),
                    sentence=" ".join(batch.words[i]),
                    span=(int(s), int(e)),
                    phrase=" ".join(batch.words[i][s:e]),
                    types=list(types[i][j]),
                    correct=bool(correct[i, j]),
                    iou=float(ious[j]),
                    score=float(chosen_scores[i, j]),
                    box_area=max(0.0, x2 - x1) * max(0.0, y2 - y1) / max(1.0, width * height),
                    num_proposals=int(num_proposals[i]),
                    reachable=bool(reach[i, j]),
                )
                self.records.append(record)
                if self.num_gallery == 0:
                    continue
                worst_key, best_key = (-record.iou, record.score), (record.iou, record.score)
                # the best list keeps twice as many: the phrases also among the worst are dropped later
                if not (
                    _admits(self._worst, worst_key, self.num_gallery)
                    or _admits(self._best, best_key, 2 * self.num_gallery)
                ):
                    continue
                if image is None:
                    image = self._thumbnail(original_image(dataset, batch, i)[0])
                picture, scale = image
                shot = _Shot(
                    record,
                    picture,
                    [v * scale for v in chosen[i, j].tolist()],
                    [[v * scale for v in b] for b in gt_boxes[i, j][gt_mask[i, j].bool()].tolist()],
                )
                _offer(self._worst, worst_key, shot, self.num_gallery)
                _offer(self._best, best_key, shot, 2 * self.num_gallery)

    def _thumbnail(self, image: Image.Image) -> tuple[Image.Image, float]:
        scale = self.thumbnail_size / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.convert("RGB").resize(size, Image.Resampling.BICUBIC), scale

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        records, worst, best = self._gathered(trainer)
        if not trainer.is_global_zero:
            return
        worst_shots = [s for _, s in worst][: self.num_gallery]
        shown = {s.target for s in worst_shots}
        best_shots = [s for _, s in best if s.target not in shown]
        splits = list(dict.fromkeys(r.split for r in records))
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.split("/", 1)[0] in splits and "/" in name
        }
        phrase_types = tuple((getattr(pl_module, "hparams", None) or {}).get("phrase_types") or ())
        page = render_report(
            records,
            metrics,
            [(s.record, self._draw(s)) for s in worst_shots],
            [(s.record, self._draw(s)) for s in best_shots[: self.num_gallery]],
            title=self.title,
            phrase_types=phrase_types,
            details={
                "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else "none (weights as initialised)",
                "model": type(pl_module).__name__,
                "processes": str(trainer.world_size),
                "written": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        )
        folder = self.output_dir or Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.filename
        atomic_write_text(self.path, page)  # a browser never opens a half-written page
        logger.info("wrote the test report of %d phrases to %s", len(records), self.path)

    def _gathered(self, trainer: Trainer) -> tuple[list[PhraseRecord], list, list]:
        """Every process's records and gallery candidates (its own on one process)."""
        parts = [(self.records, self._worst, self._best)]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (self.records, self._worst, self._best))
        records = [r for part in parts for r in part[0]]
        return (
            records,
            _top([c for p in parts for c in p[1]], self.num_gallery),
            _top([c for p in parts for c in p[2]], 2 * self.num_gallery),
        )

    def _draw(self, shot: _Shot) -> str:
        """The shot's picture with its boxes, as a JPEG data URI (a tenth of a PNG's size for photos)."""
        drawn = draw_grounding(
            shot.picture, [{"phrase": shot.record.phrase, "box": shot.box}], size=self.thumbnail_size
        )
        drawn = drawn.crop((0, 0, shot.picture.width, shot.picture.height))  # the legend is the HTML caption
        # the ground truth in a colour of its own: in the phrase's colour it hid under a nearby chosen box
        draw = ImageDraw.Draw(drawn)
        for box in shot.gt_boxes:
            dashed_rectangle(draw, box, GT_COLOUR, max(2, round(self.thumbnail_size / 110)))
        buffer = io.BytesIO()
        drawn.save(buffer, format="JPEG", quality=88)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _admits(shots: list, key: tuple[float, float], capacity: int) -> bool:
    return len(shots) < capacity or key > min(k for k, _ in shots)


def _offer(shots: list, key: tuple[float, float], shot: _Shot, capacity: int) -> None:
    """Keep the ``capacity`` objects with the largest keys, each by its best shot (a short list: a scan suffices)."""
    same = [k for k, (_, s) in enumerate(shots) if s.target == shot.target]
    if same:
        if key > shots[same[0]][0]:
            shots[same[0]] = (key, shot)
        return
    if len(shots) < capacity:
        shots.append((key, shot))
        return
    low = min(range(len(shots)), key=lambda k: shots[k][0])
    if key > shots[low][0]:
        shots[low] = (key, shot)


def _top(shots: list, capacity: int) -> list:
    """The ``capacity`` largest-key shots of distinct objects, largest first (merges the processes' lists)."""
    out, seen = [], set()
    for key, shot in sorted(shots, key=lambda t: t[0], reverse=True):
        if shot.target not in seen:
            seen.add(shot.target)
            out.append((key, shot))
    return out[:capacity]
