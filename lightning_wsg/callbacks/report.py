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
to all others and rank 0 writes the report of the whole split.

Example (YAML, see ``cli_configs/report.yaml``)::

    trainer:
      callbacks+:
        - class_path: lightning_wsg.callbacks.TestReport
          init_args: {output_dir: null, num_gallery: 12}
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import itertools
import logging
from collections.abc import Iterable, Sequence
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
from .drawing import PALETTE, dashed_rectangle, draw_grounding, loader_dataset, original_image

__all__ = ["PhraseRecord", "TestReport", "render_report"]

logger = logging.getLogger("lightning_wsg")

#: edges of the ground-truth box size bins (union box area / image area), fixed so that runs compare
SIZE_EDGES: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
#: the ground-truth boxes' colour in the gallery (the chosen box takes the first phrase colour, red)
GT_COLOUR: tuple[int, int, int] = PALETTE[1]
#: the most phrase types charted (RefCOCO's types are the 80 COCO categories)
MAX_TYPES = 20


@dataclass
class PhraseRecord:
    """One evaluated phrase: how it was grounded and what it was."""

    split: str
    sentence_id: str
    image_id: str
    sentence: str
    span: tuple[int, int]
    phrase: str
    types: list[str]
    correct: bool
    iou: float
    score: float
    box_area: float  # ground-truth union box area / image area
    num_proposals: int
    reachable: bool  # some proposal reaches the IoU threshold (the upper bound)

    @property
    def key(self) -> tuple[str, str, tuple[int, int]]:
        return self.split, self.sentence_id, tuple(self.span)


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


# ------------------------------------------------------------------------------ the page
#: logged metrics in table order, with what they mean (``acc_<type>`` are charted instead)
METRIC_NAMES: dict[str, str] = {
    "acc": "accuracy: IoU >= 0.5 with the union of the ground-truth boxes (primary)",
    "acc_any": "IoU >= 0.5 with any one ground-truth box",
    "pointing": "the chosen box's centre lies in a ground-truth box",
    "recall@1": "a top-1 proposal reaches IoU >= 0.5",
    "recall@5": "a top-5 proposal reaches IoU >= 0.5",
    "recall@10": "a top-10 proposal reaches IoU >= 0.5",
    "upper_bound": "some proposal reaches IoU >= 0.5",
    "num_phrases": "phrases evaluated",
}

_CSS = """
body{margin:0;background:#f4f5f7;color:#1f2933;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:30px 0 12px}
.meta{color:#52606d;font-size:13px;margin:0}.meta b{color:#323f4b;font-weight:600}
.cards{display:flex;gap:14px;margin:18px 0 6px;flex-wrap:wrap}
.card{background:#fff;border-radius:8px;padding:12px 18px;box-shadow:0 1px 2px #0002;min-width:150px}
.card .v{font-size:26px;font-weight:650;color:#1d4f91}.card .l{font-size:12px;color:#616e7c;text-transform:uppercase}
table{border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px #0002}
th,td{padding:6px 14px;text-align:left;border-bottom:1px solid #e4e7eb}th{background:#e8edf4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}td.desc{color:#616e7c;font-size:13px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(500px,1fr));gap:16px}
figure{margin:0}.chart{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px #0002}
.chart figcaption{font-weight:600;margin-bottom:4px}.chart svg{width:100%;height:auto;display:block}
.legend{font-size:13px;color:#52606d;margin:8px 0}.sw{display:inline-block;width:12px;height:12px;
border-radius:2px;vertical-align:-1px;margin:0 5px 0 12px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(248px,1fr));gap:14px}
.item{background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px #0002}
.item img{width:100%;display:block;image-rendering:auto;background:#ddd}
.item figcaption{padding:8px 10px;font-size:13px}.item .ph{font-weight:650;font-size:14px}
.item .sent{color:#52606d;margin:2px 0}.item mark{background:#fde68a;padding:0 1px}
.item .nums{color:#323f4b;font-variant-numeric:tabular-nums}
.ok,.bad{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:650;color:#fff;
margin-right:4px}
.ok{background:#2f855a}.bad{background:#c53030}.empty{color:#616e7c}
footer{color:#7b8794;font-size:12px;margin-top:34px}
"""

_ACC, _BOUND, _GRID, _TEXT = "#2f6db5", "#d5e1f2", "#e4e7eb", "#323f4b"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _share(value: float) -> str:
    return f"{100 * value:g}%"


def _rgb(colour: Sequence[int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in colour)


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(rows: Sequence[tuple[str, int, int, int]], chart: str, caption: str) -> str:
    """A horizontal bar chart (inline SVG) of accuracy per group.

    Args:
        rows: per group ``(label, phrases, correct, reachable)``; ``reachable`` is drawn as a
            light bar behind the accuracy (the group's upper bound).
        chart: the chart's name (``data-chart`` attribute).
        caption: the heading above it.
    """
    label_w, bar_w, value_w, row_h, top = 150, 300, 130, 26, 22
    width, height = label_w + bar_w + value_w, top + row_h * len(rows) + 6
    parts = [
        (
            f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{_esc(caption)}" font-family="system-ui,DejaVu Sans,sans-serif" font-size="12">'
        )
    ]
    for tick in (0, 25, 50, 75, 100):
        x = label_w + bar_w * tick / 100
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 4}" stroke="{_GRID}"/>')
        parts.append(f'<text x="{x:.1f}" y="{top - 8}" text-anchor="middle" fill="#7b8794">{tick}%</text>')
    for k, (label, n, correct, reachable) in enumerate(rows):
        y = top + k * row_h
        acc, bound = correct / max(1, n), reachable / max(1, n)
        short = label if len(label) <= 22 else label[:21] + "\u2026"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" fill="{_TEXT}">'
            f"<title>{_esc(label)}</title>{_esc(short)}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w * bound:.1f}" height="{row_h - 8}" fill="{_BOUND}" rx="2"/>'
        )
        parts.append(
            f'<rect class="bar" data-n="{n}" x="{label_w}" y="{y + 6}" width="{bar_w * acc:.1f}" '
            f'height="{row_h - 12}" fill="{_ACC}" rx="2"/>'
        )
        parts.append(
            f'<text x="{label_w + bar_w + 8}" y="{y + 17}" fill="{_TEXT}"><tspan font-weight="600">{_pct(acc)}'
            f'</tspan><tspan fill="#7b8794"> of {n}</tspan></text>'
        )
    parts.append("</svg>")
    head = f'<figure class="chart" data-chart="{_esc(chart)}"><figcaption>{_esc(caption)}</figcaption>'
    return head + "".join(parts) + "</figure>"


def _tally(groups: Iterable[tuple[str, PhraseRecord]], order: Sequence[str]) -> list[tuple[str, int, int, int]]:
    counts: dict[str, list[int]] = {}
    for label, r in groups:
        c = counts.setdefault(label, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + r.correct, c[2] + r.reachable
    return [(label, *counts[label]) for label in order if label in counts]


def type_rows(records: Sequence[PhraseRecord], known: Sequence[str] = ()) -> list[tuple[str, int, int, int]]:
    """Accuracy per phrase type (a phrase with several types counts in each, as the metrics do)."""
    groups = [(t, r) for r in records for t in (r.types or ["(no type)"])]
    frequent = sorted({t for t, _ in groups}, key=lambda t: (-sum(1 for g, _ in groups if g == t), t))
    order = [t for t in known if t in frequent] + [t for t in frequent if t not in known]
    return _tally(groups, order[:MAX_TYPES])


def size_rows(records: Sequence[PhraseRecord]) -> list[tuple[str, int, int, int]]:
    """Accuracy per ground-truth union box size (share of the image's area)."""
    labels = [f"< {_share(SIZE_EDGES[0])}"]
    labels += [f"{_share(a)}\u2013{_share(b)}" for a, b in itertools.pairwise(SIZE_EDGES)]
    labels += [f"\u2265 {_share(SIZE_EDGES[-1])}"]
    groups = [(labels[sum(r.box_area >= e for e in SIZE_EDGES)], r) for r in records]
    return _tally(groups, labels)


def proposal_rows(records: Sequence[PhraseRecord], max_bars: int = 8) -> list[tuple[str, int, int, int]]:
    """Accuracy per number of proposals in the image: one bar per count, or ranges of equal share."""
    counts = sorted(r.num_proposals for r in records)
    values = sorted(set(counts))
    if len(values) <= max_bars:
        return _tally(((str(r.num_proposals), r) for r in records), [str(v) for v in values])
    lows = sorted({counts[(k * len(counts)) // 6] for k in range(6)})
    bins = [(lo, (lows[k + 1] - 1) if k + 1 < len(lows) else values[-1]) for k, lo in enumerate(lows)]
    labels = [str(lo) if lo == hi else f"{lo}\u2013{hi}" for lo, hi in bins]
    groups = [(labels[max(k for k, (lo, _) in enumerate(bins) if r.num_proposals >= lo)], r) for r in records]
    return _tally(groups, labels)


def _metric_table(metrics: dict[str, float], splits: Sequence[str]) -> str:
    names = list(dict.fromkeys(n.split("/", 1)[1] for n in metrics))
    names = [n for n in METRIC_NAMES if n in names] + [
        n for n in names if n not in METRIC_NAMES and not n.startswith("acc_")
    ]
    if not names:
        return '<p class="empty">No metric was logged.</p>'
    head = "".join(f"<th>{_esc(s)}</th>" for s in splits)
    rows = []
    for name in names:
        cells = []
        for split in splits:
            value = metrics.get(f"{split}/{name}")
            text = "" if value is None else (f"{int(value):,}" if name == "num_phrases" else _pct(value))
            cells.append(f'<td class="num">{text}</td>')
        rows.append(
            f'<tr class="metric" data-metric="{_esc(name)}"><td>{_esc(name)}</td>{"".join(cells)}'
            f'<td class="desc">{_esc(METRIC_NAMES.get(name, ""))}</td></tr>'
        )
    return f'<table id="metric-table"><tr><th>metric</th>{head}<th></th></tr>{"".join(rows)}</table>'


def _gallery_item(record: PhraseRecord, picture: str, kind: str) -> str:
    words = record.sentence.split(" ")
    s, e = record.span
    sentence = " ".join([*map(_esc, words[:s]), f"<mark>{_esc(' '.join(words[s:e]))}</mark>", *map(_esc, words[e:])])
    badge = '<span class="ok">correct</span>' if record.correct else '<span class="bad">wrong</span>'
    types = ", ".join(record.types) or "no type"
    return (
        f'<figure class="item" data-kind="{kind}" data-iou="{record.iou:.4f}" data-correct="{int(record.correct)}">'
        f'<img src="{picture}" alt="{_esc(record.phrase)}">'
        f'<figcaption><div class="ph">{badge}{_esc(record.phrase)}</div><div class="sent">{sentence}</div>'
        f'<div class="nums">IoU {record.iou:.2f} &middot; score {record.score:.2f} &middot; {_esc(types)}</div>'
        f'<div class="nums">{record.num_proposals} proposals &middot; box {_pct(record.box_area)} of the image'
        f" &middot; {_esc(record.split)} {_esc(record.image_id)}</div></figcaption></figure>"
    )


def render_report(
    records: Sequence[PhraseRecord],
    metrics: dict[str, float],
    worst: Sequence[tuple[PhraseRecord, str]] = (),
    best: Sequence[tuple[PhraseRecord, str]] = (),
    title: str = "Grounding test report",
    phrase_types: Sequence[str] = (),
    details: dict[str, str] | None = None,
) -> str:
    """The report page: one HTML string that fetches nothing.

    Args:
        records: every evaluated phrase.
        metrics: logged metrics, ``"<split>/<name>"`` -> value.
        worst: the worst grounded phrases, each with its picture (an image URI, a data URI
            for a self-contained page), worst first.
        best: the best grounded phrases, best first.
        title: the page's heading.
        phrase_types: the known phrase types in chart order (others follow by frequency).
        details: run information shown under the heading (checkpoint, model...).
    """
    splits = list(dict.fromkeys(r.split for r in records))
    n = len(records)
    correct = sum(r.correct for r in records)
    reachable = sum(r.reachable for r in records)
    meta = " &middot; ".join(f"{_esc(k)} <b>{_esc(v)}</b>" for k, v in (details or {}).items())
    cards = [
        ("phrases", f'<span id="num-phrases" data-count="{n}">{n:,}</span>'),
        ("images", f"{len({(r.split, r.image_id) for r in records}):,}"),
        ("sentences", f"{len({(r.split, r.sentence_id) for r in records}):,}"),
        ("accuracy", _pct(correct / max(1, n))),
        ("upper bound", _pct(reachable / max(1, n))),
    ]
    body = [
        f'<header><h1>{_esc(title)}</h1><p class="meta">{meta}</p></header>',
        '<section id="summary" class="cards">'
        + "".join(f'<div class="card"><div class="v">{v}</div><div class="l">{_esc(k)}</div></div>' for k, v in cards)
        + "</section>",
        f'<section id="metrics"><h2>Metrics</h2>{_metric_table(metrics, splits)}</section>',
    ]
    legend = (
        f'<p class="legend"><span class="sw" style="background:{_ACC}"></span>accuracy (IoU &ge; 0.5 with the union '
        f'box)<span class="sw" style="background:{_BOUND}"></span>upper bound: some proposal reaches IoU &ge; 0.5</p>'
    )
    for split in splits:
        rows = [r for r in records if r.split == split]
        charts = [
            bar_chart(type_rows(rows, phrase_types), "type", "Accuracy by phrase type"),
            bar_chart(size_rows(rows), "size", "Accuracy by ground-truth box size (share of the image area)"),
            bar_chart(proposal_rows(rows), "proposals", "Accuracy by number of proposals in the image"),
        ]
        body.append(
            f'<section class="split" data-split="{_esc(split)}"><h2>Where {_esc(split)} succeeds and fails '
            f'<span class="meta">({len(rows):,} phrases)</span></h2>{legend}<div class="charts">{"".join(charts)}'
            "</div></section>"
        )
    for kind, heading, shots in (
        ("worst", "Worst grounded phrases (lowest IoU; among equals, the most confident)", worst),
        ("best", "Best grounded phrases (highest IoU)", best),
    ):
        items = "".join(_gallery_item(r, picture, kind) for r, picture in shots)
        body.append(
            f'<section id="{kind}"><h2>{_esc(heading)}</h2>'
            f'<p class="legend"><span class="sw" style="background:{_rgb(PALETTE[0])}"></span>solid: the chosen box'
            f'<span class="sw" style="background:{_rgb(GT_COLOUR)}"></span>dashed: the ground-truth boxes '
            "(one picture per referred object)</p>"
            f'<div class="gallery" data-kind="{kind}">{items or "<p class=empty>none</p>"}</div></section>'
        )
    body.append("<footer>Written by lightning_wsg.callbacks.TestReport after lightning test.</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )
