"""Detector-free proposals: a dense multi-scale grid of boxes over an image.

A proposal source beside the detectors: ``lightning predict`` and ``GroundingModule.ground()``
use it when no detector output is at hand.

Example:
    >>> box_grid(100, 100, scales=(1.0,), aspect_ratios=(1.0,)).tolist()
    [[0.0, 0.0, 100.0, 100.0]]
    >>> len(box_grid(640, 480)) > 100
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_GRID_ASPECT_RATIOS", "DEFAULT_GRID_SCALES", "DEFAULT_GRID_STRIDE", "box_grid"]

DEFAULT_GRID_SCALES: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35, 0.25)
DEFAULT_GRID_ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
DEFAULT_GRID_STRIDE = 0.5


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
