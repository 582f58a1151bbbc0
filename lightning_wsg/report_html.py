"""The test report's page: one self-contained HTML file from the evaluated phrases, without Lightning.

:func:`render_report` turns :class:`PhraseRecord` (one per evaluated phrase), the logged
metrics and the gallery's pictures into the page :class:`~lightning_wsg.callbacks.TestReport`
writes after ``lightning test``:

* the logged metrics, one column per split;
* per split, accuracy by phrase type, by ground-truth box size and by number of proposals
  as bar charts (inline SVG, each bar behind it the share of phrases some proposal reaches);
* a gallery of the worst and the best grounded phrases.

The page fetches nothing: its stylesheet (``report.css``, package data read with
:mod:`importlib.resources`) is inlined and pictures come as data URIs. This module imports
neither Lightning nor torch (an import-linter contract, ``tests/import_contracts.ini``), so a
report can be rendered again from saved records anywhere.

Example:
    >>> page = render_report(records, {"test/acc": 0.71})  # doctest: +SKIP
    >>> Path("report.html").write_text(page, encoding="utf-8")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import html
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .palette import PALETTE

__all__ = [
    "GT_COLOUR",
    "MAX_TYPES",
    "METRIC_NAMES",
    "SIZE_EDGES",
    "PhraseRecord",
    "bar_chart",
    "proposal_rows",
    "render_report",
    "size_rows",
    "stylesheet",
    "type_rows",
]

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


@functools.cache
def stylesheet() -> str:
    """The page's CSS, the package data file ``lightning_wsg/report.css`` (read once)."""
    return resources.files("lightning_wsg").joinpath("report.css").read_text(encoding="utf-8")


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
        f"<title>{_esc(title)}</title><style>\n{stylesheet()}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )
