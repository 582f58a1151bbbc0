"""Grounding new images and sentences: input parsing, box-grid proposals, ``ground()``.

Input of ``lightning predict`` (``data.predict_file``) is JSON Lines, one sentence a line::

    {"image": "photos/dog.jpg", "sentence": "a [brown dog] jumps over [the fence]"}
    {"image": "photos/dog.jpg", "sentence": "a brown dog jumps over the fence",
     "phrases": ["brown dog", [4, 6]]}
    {"image": "photos/street.jpg", "sentence": "the red car on the left"}

* phrases are marked with brackets in the sentence, or listed in ``"phrases"`` as strings
  found in the sentence (first occurrence after the previous phrase, word-aligned) or as
  ``[start, end)`` word spans; a sentence with no phrase is one expression spanning it;
* ``"image"`` is relative to the JSONL file's folder (or absolute); ``"image_id"`` is
  optional (default: the file name without extension), the key into a detections source;
* ``"id"`` (optional) names the sentence in the output (default ``<image_id>#<line>``).

Detector-free proposals: :func:`box_grid`, a dense multi-scale grid of boxes.

Example:
    >>> parse_sentence("a [red car] next to [the tree]")
    (['a', 'red', 'car', 'next', 'to', 'the', 'tree'], [(1, 3), (5, 7)])
    >>> box_grid(100, 100, scales=(1.0,), aspect_ratios=(1.0,)).tolist()
    [[0.0, 0.0, 100.0, 100.0]]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .jsonl import read_jsonl

__all__ = [
    "DEFAULT_GRID_ASPECT_RATIOS",
    "DEFAULT_GRID_SCALES",
    "DEFAULT_GRID_STRIDE",
    "PREDICT_SPLIT",
    "PredictFormatError",
    "PredictRecord",
    "box_grid",
    "ground",
    "parse_sentence",
    "read_predict_file",
]

PREDICT_SPLIT = "predict"
DEFAULT_GRID_SCALES: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35, 0.25)
DEFAULT_GRID_ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
DEFAULT_GRID_STRIDE = 0.5

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


class PredictFormatError(ValueError):
    """A prediction input line is malformed; the message names the file and the line."""


def _tokens(text: str) -> list[str]:
    return text.split()


def parse_sentence(
    sentence: str, phrases: Sequence[str | Sequence[int]] | None = None
) -> tuple[list[str], list[tuple[int, int]]]:
    """Words and phrase spans (``end`` exclusive) of a sentence.

    Args:
        sentence: the sentence; phrases may be marked ``[like this]`` (brackets are removed
            from the words).
        phrases: listed phrases instead of brackets: strings found in the sentence (word
            aligned, searched left to right) or ``[start, end]`` word spans.

    Returns:
        ``(words, spans)``; with no marked or listed phrase, one span over all words.

    Raises:
        ValueError: unbalanced brackets, an empty phrase, a phrase not in the sentence, a
            span out of range, or brackets together with listed phrases.
    """
    if sentence.count("[") != sentence.count("]"):
        raise ValueError(f"unbalanced brackets in {sentence!r}")
    words: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for match in _BRACKETS.finditer(sentence):
        words += _tokens(sentence[pos : match.start()])
        inner = _tokens(match.group(1))
        if not inner:
            raise ValueError(f"empty phrase [] in {sentence!r}")
        spans.append((len(words), len(words) + len(inner)))
        words += inner
        pos = match.end()
    words += _tokens(sentence[pos:])
    if "[" in sentence[pos:] or "]" in sentence[pos:] or any("[" in w or "]" in w for w in words):
        raise ValueError(f"nested or unbalanced brackets in {sentence!r}")
    if not words:
        raise ValueError("empty sentence")
    if phrases:
        if spans:
            raise ValueError(f"phrases are both marked with brackets and listed in {sentence!r}")
        start = 0
        for phrase in phrases:
            if isinstance(phrase, str):
                target = _tokens(phrase)
                if not target:
                    raise ValueError(f"empty phrase in the phrases of {sentence!r}")
                found = _find(words, target, start)
                if found is None:
                    found = _find(words, target, 0)
                if found is None:
                    lowered = [w.lower() for w in words]
                    found = _find(lowered, [t.lower() for t in target], 0)
                if found is None:
                    raise ValueError(f"phrase {phrase!r} not found in {sentence!r}")
                spans.append((found, found + len(target)))
                start = found + len(target)
            else:
                s, e = (int(v) for v in phrase)
                if not 0 <= s < e <= len(words):
                    raise ValueError(f"span {[s, e]} out of range for {len(words)} words in {sentence!r}")
                spans.append((s, e))
    if not spans:
        spans = [(0, len(words))]
    return words, spans


def _find(words: list[str], target: list[str], start: int) -> int | None:
    n = len(target)
    for i in range(start, len(words) - n + 1):
        if words[i : i + n] == target:
            return i
    return None


@dataclass(slots=True)
class PredictRecord:
    """One sentence to ground in one image (a parsed input line)."""

    image_id: str
    image: Path
    sentence_id: str
    words: list[str]
    phrase_spans: list[tuple[int, int]]


def read_predict_file(path: str | Path, image_dir: str | Path | None = None) -> list[PredictRecord]:
    """Parse a prediction input file (JSON Lines, see the module docstring).

    Args:
        path: the JSONL file.
        image_dir: relative image paths are taken from here (default: the file's folder).

    Raises:
        FileNotFoundError: the file is missing. :class:`PredictFormatError`: a bad line, or
            two different image files with the same ``image_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction input not found: {path}")
    base = Path(image_dir) if image_dir is not None else path.parent
    records: list[PredictRecord] = []
    files: dict[str, Path] = {}
    seen_ids: set[str] = set()
    for number, obj in read_jsonl(path, PredictFormatError):
        where = f"{path}:{number}"
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("image"), str)
            or not isinstance(obj.get("sentence"), str)
        ):
            raise PredictFormatError(f'{where}: expected {{"image": path, "sentence": text, "phrases": [...]}}')
        image = Path(obj["image"]).expanduser()
        image = image if image.is_absolute() else base / image
        image_id = str(obj.get("image_id") or image.stem)
        if files.setdefault(image_id, image) != image:
            raise PredictFormatError(
                f"{where}: image id {image_id!r} names both {files[image_id]} and {image}; "
                'give the lines an explicit "image_id"'
            )
        try:
            words, spans = parse_sentence(obj["sentence"], obj.get("phrases"))
        except (ValueError, TypeError) as err:
            raise PredictFormatError(f"{where}: {err}") from err
        sentence_id = str(obj.get("id") or f"{image_id}#{number - 1}")
        if sentence_id in seen_ids:
            raise PredictFormatError(f"{where}: duplicate sentence id {sentence_id!r}")
        seen_ids.add(sentence_id)
        records.append(PredictRecord(image_id, image, sentence_id, words, spans))
    if not records:
        raise PredictFormatError(f"{path}: no sentence to ground")
    return records


def box_grid(
    width: float,
    height: float,
    scales: Sequence[float] = DEFAULT_GRID_SCALES,
    aspect_ratios: Sequence[float] = DEFAULT_GRID_ASPECT_RATIOS,
    stride: float = DEFAULT_GRID_STRIDE,
) -> Tensor:
    """A dense multi-scale grid of boxes over a ``width x height`` image (no detector).

    For every scale ``s`` and aspect ratio ``a`` (width / height) a box of
    ``s * sqrt(a) * width`` by ``s / sqrt(a) * height`` pixels (clipped to the image) slides
    over the image with a step of ``stride`` times its size, the last position flush with
    the right / bottom edge. Duplicates are removed; the whole image is always included.

    Returns:
        ``[R, 4]`` float corners in image pixels (:mod:`lightning_wsg.boxes`), ``R >= 1``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0 < stride <= 1:
        raise ValueError(f"stride must be in (0, 1], got {stride}")
    if any(s <= 0 or s > 1 for s in scales) or any(a <= 0 for a in aspect_ratios):
        raise ValueError(f"scales must be in (0, 1] and aspect ratios > 0, got {list(scales)}, {list(aspect_ratios)}")
    boxes = [torch.tensor([[0.0, 0.0, float(width), float(height)]])]
    for s in scales:
        for a in aspect_ratios:
            bw = min(float(width), s * a**0.5 * width)
            bh = min(float(height), s / a**0.5 * height)
            xs = _positions(float(width), bw, stride)
            ys = _positions(float(height), bh, stride)
            x1 = xs[None, :].expand(len(ys), -1).reshape(-1)
            y1 = ys[:, None].expand(-1, len(xs)).reshape(-1)
            boxes.append(torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1))
    out = torch.cat(boxes).float()
    out = torch.unique(out.mul(100).round().div(100), dim=0, sorted=False)
    # a stable order: largest first, then top-left to bottom-right
    area = (out[:, 2] - out[:, 0]) * (out[:, 3] - out[:, 1])
    key = torch.stack([-area, out[:, 1], out[:, 0]], dim=1)
    order = sorted(range(len(out)), key=lambda i: tuple(key[i].tolist()))
    return out[order]


def _positions(extent: float, size: float, stride: float) -> Tensor:
    room = extent - size
    if room <= 1e-6:
        return torch.zeros(1)
    step = stride * size
    n = int(torch.ceil(torch.tensor(room / step)).item())
    return torch.linspace(0.0, room, n + 1)


# ---------------------------------------------------------------------------- ground()
def ground(
    model: Any,
    image: str | Path | Any,
    sentence: str,
    proposals: Tensor | Sequence[Sequence[float]] | None = None,
    top_k: int = 5,
    phrases: Sequence[str | Sequence[int]] | None = None,
    image_size: int | None = None,
    grid: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Ground the phrases of ``sentence`` in ``image`` with a :class:`GroundingModule`.

    Args:
        model: the grounding module.
        image: a path, a PIL image, or a ``[3, H, W]`` tensor (uint8, or float in ``[0, 1]``).
        sentence: the sentence, phrases marked with brackets (or a plain expression).
        proposals: ``[R, 4]`` corners in original-image pixels (default: :func:`box_grid`).
        top_k: the chosen box plus up to ``top_k`` next-best alternatives per phrase.
        phrases: listed phrases instead of brackets (see :func:`parse_sentence`).
        image_size: the network input size (default: the training datamodule's, from the
            checkpoint, else 512).
        grid: :func:`box_grid` keyword arguments for the default proposals.

    Returns:
        Per phrase ``{"phrase", "span", "box", "score", "alternatives": [{"box", "score"}...]}``,
        boxes in original-image pixels.
    """
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from .boxes import scale_boxes
    from .data.base import IMAGENET_MEAN, IMAGENET_STD
    from .data.batch import GroundingSample, collate

    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            pixels = TF.pil_to_tensor(img.convert("RGB"))
    elif isinstance(image, Image.Image):
        pixels = TF.pil_to_tensor(image.convert("RGB"))
    elif isinstance(image, Tensor):
        pixels = image.detach().cpu()
        if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be [3, H, W], got {tuple(pixels.shape)}")
        pixels = pixels.expand(3, -1, -1)
        if pixels.is_floating_point():
            pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    else:
        raise TypeError(f"image must be a path, a PIL image or a tensor, got {type(image).__name__}")
    height, width = pixels.shape[-2:]
    size = int(image_size or getattr(model, "predict_image_size", None) or 512)
    words, spans = parse_sentence(sentence, phrases)
    boxes = (
        box_grid(width, height, **(grid or {}))
        if proposals is None
        else torch.as_tensor(proposals).float().reshape(-1, 4)
    )
    if len(boxes) == 0:
        raise ValueError("no proposals")
    tensor = TF.resize(pixels, [size, size], antialias=True)
    tensor = TF.normalize(TF.to_dtype(tensor, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))
    sample = GroundingSample(
        split=PREDICT_SPLIT,
        image_id="image",
        sentence_id="image#0",
        image=tensor,
        image_size=(int(width), int(height)),
        words=words,
        phrase_spans=spans,
        proposals=boxes,
        roi_boxes=scale_boxes(boxes, size / width, size / height),
        proposal_scores=torch.zeros(len(boxes)),
    )
    batch = collate([sample])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = model.transfer_batch_to_device(batch, model.device, 0)
            scores = model(batch)
    finally:
        model.train(was_training)
    return phrase_results(scores, batch.proposals, batch.proposal_mask, batch.words, batch.phrase_spans, top_k)[0]


def phrase_results(
    scores: Tensor,
    proposals: Tensor,
    proposal_mask: Tensor,
    words: Sequence[Sequence[str]],
    phrase_spans: Sequence[Sequence[tuple[int, int]]],
    top_k: int = 5,
) -> list[list[dict[str, Any]]]:
    """Per sentence, per phrase: the chosen box, its score and the next ``top_k`` boxes."""
    from .metrics import predict_boxes

    top = predict_boxes(scores, proposals, proposal_mask, k=1 + max(0, int(top_k)))
    boxes, values, mask = top.boxes.cpu(), top.scores.float().cpu(), top.mask.cpu()
    out = []
    for i, spans in enumerate(phrase_spans):
        rows = []
        for j, (s, e) in enumerate(spans):
            ranked = [
                {"box": [round(v, 2) for v in boxes[i, j, r].tolist()], "score": round(float(values[i, j, r]), 6)}
                for r in range(boxes.shape[2])
                if mask[i, j, r]
            ]
            rows.append(
                {
                    "phrase": " ".join(words[i][s:e]),
                    "span": [int(s), int(e)],
                    "box": ranked[0]["box"],
                    "score": ranked[0]["score"],
                    "alternatives": ranked[1:],
                }
            )
        out.append(rows)
    return out
