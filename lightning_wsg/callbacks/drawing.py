"""Pictures of a grounding: boxes drawn on the original image, and the image behind a batch.

Shared by the prediction writer, the validation pictures and the test report: one colour per
phrase, predicted boxes solid, ground-truth boxes dashed, a legend with the phrase text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning import Trainer

from ..data.batch import GroundingBatch
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..palette import PALETTE

__all__ = [
    "PALETTE",
    "dashed_rectangle",
    "draw_grounding",
    "ground_truth_boxes",
    "loader_dataset",
    "original_image",
    "picture_grid",
]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour, width: int, dash: int = 6) -> None:
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
            dashed_rectangle(draw, [v * scale for v in gt], colour, max(1, line - 1))
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


def loader_dataset(trainer: Trainer, stage: Literal["predict", "validate", "test"], dataloader_idx: int) -> Any:
    """The dataset behind a stage's ``dataloader_idx``-th loader (``None`` when there is none)."""
    loaders = {
        "predict": trainer.predict_dataloaders,
        "validate": trainer.val_dataloaders,
        "test": trainer.test_dataloaders,
    }[stage]
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
    return getattr(loaders, "dataset", None)


def original_image(dataset: Any, batch: GroundingBatch, i: int) -> tuple[Image.Image, str | None]:
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


def ground_truth_boxes(batch: GroundingBatch, i: int) -> list[list[list[float]]] | None:
    if batch.gt_boxes is None or batch.gt_box_mask is None:
        return None
    n = len(batch.phrase_spans[i])
    return [batch.gt_boxes[i, j][batch.gt_box_mask[i, j]].tolist() for j in range(n)]
