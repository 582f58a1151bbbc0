"""Box conventions: the one module that knows how boxes are written.

Inside the project every box is a float tensor ``[x1, y1, x2, y2]`` in pixels of the
original image, with 0-based corners and ``x2, y2`` exclusive ("corners"). The files we
read use other conventions, converted here and nowhere else:

* Flickr30K Entities XML: 1-based inclusive integers ``xmin..xmax``
  -> ``x1 = xmin - 1, x2 = xmax``.
* COCO / refer ``[x, y, w, h]`` (0-based, ``w`` in pixels) -> ``x2 = x + w``.
* phraseloceval ``[x, y, w, h]``: 1-based ``x`` with ``w = xmax - xmin + 1``
  -> ``x1 = x - 1, x2 = x - 1 + w``.

Because ``x2 - x1 = xmax - xmin + 1``, the plain IoU of two boxes in corners equals
the "+1 pixel" IoU of the same boxes written as inclusive integers, the convention of
the Flickr30K Entities evaluation (phraseloceval). :func:`box_iou` is therefore simply
:func:`torchvision.ops.box_iou`.

Example:
    >>> import torch
    >>> b = xml_to_corners(torch.tensor([[1.0, 1.0, 10.0, 10.0]]))
    >>> b.tolist()
    [[0.0, 0.0, 10.0, 10.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou as _tv_box_iou

__all__ = [
    "xml_to_corners",
    "coco_to_corners",
    "corners_to_coco",
    "phraseloceval_to_corners",
    "corners_to_xywh1",
    "union_box",
    "box_iou",
    "box_centers",
    "points_in_boxes",
    "scale_boxes",
]


def xml_to_corners(boxes: Tensor) -> Tensor:
    """Convert 1-based inclusive ``xmin, ymin, xmax, ymax`` (Flickr XML) to corners."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    out = boxes.clone()
    out[..., 0:2] -= 1.0
    return out


def coco_to_corners(boxes: Tensor) -> Tensor:
    """Convert COCO ``x, y, w, h`` (0-based) to corners."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    out = boxes.clone()
    out[..., 2:4] = boxes[..., 0:2] + boxes[..., 2:4]
    return out


def corners_to_coco(boxes: Tensor) -> Tensor:
    """Inverse of :func:`coco_to_corners`: COCO ``x, y, w, h`` (0-based)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    out = boxes.clone()
    out[..., 2:4] = boxes[..., 2:4] - boxes[..., 0:2]
    return out


def phraseloceval_to_corners(boxes: Tensor) -> Tensor:
    """Convert phraseloceval ``x, y, w, h`` (1-based ``x``, ``w = xmax - xmin + 1``)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    out = boxes.clone()
    out[..., 0:2] = boxes[..., 0:2] - 1.0
    out[..., 2:4] = out[..., 0:2] + boxes[..., 2:4]
    return out


def corners_to_xywh1(boxes: Tensor) -> Tensor:
    """Inverse of :func:`phraseloceval_to_corners` (1-based ``x, y, w, h``)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    out = boxes.clone()
    out[..., 0:2] = boxes[..., 0:2] + 1.0
    out[..., 2:4] = boxes[..., 2:4] - boxes[..., 0:2]
    return out


def union_box(boxes: Tensor) -> Tensor:
    """Smallest box holding all ``boxes`` (``[N, 4]`` with ``N >= 1``) -> ``[4]``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.ndim != 2 or boxes.shape[0] == 0:
        raise ValueError(f"union_box needs a non-empty [N, 4] tensor, got shape {tuple(boxes.shape)}")
    return torch.cat([boxes[:, :2].min(dim=0).values, boxes[:, 2:].max(dim=0).values])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, M]`` of corner boxes (equals the +1 IoU of inclusive boxes)."""
    return _tv_box_iou(boxes1.float(), boxes2.float())


def box_centers(boxes: Tensor) -> Tensor:
    """Centres ``[..., 2]`` of corner boxes."""
    return (boxes[..., 0:2] + boxes[..., 2:4]) / 2.0


def points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Whether each point ``[N, 2]`` lies in each box ``[M, 4]`` -> bool ``[N, M]``.

    A point lies in a box when ``x1 <= x < x2`` and ``y1 <= y < y2`` (exclusive far
    corners, matching the pixel coverage of the inclusive integer box).
    """
    x = points[:, None, 0]
    y = points[:, None, 1]
    return (x >= boxes[None, :, 0]) & (x < boxes[None, :, 2]) & (y >= boxes[None, :, 1]) & (y < boxes[None, :, 3])


def scale_boxes(boxes: Tensor, sx: float, sy: float) -> Tensor:
    """Scale corner boxes by ``sx`` horizontally and ``sy`` vertically."""
    factor = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    return boxes * factor
