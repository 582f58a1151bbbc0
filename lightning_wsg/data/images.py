"""The one place images become network inputs.

Training and evaluation samples (:mod:`lightning_wsg.data.dataset`), new images
(:meth:`lightning_wsg.GroundingModel.ground`) and feature extraction
(:mod:`lightning_wsg.features`) all read pixels with :func:`read_pixels` and turn them into a
network input with :func:`image_input`, so the three cannot drift apart (resize to a square,
scale to ``[0, 1]``, ImageNet mean and standard deviation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "image_input", "read_pixels", "read_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_pixels(image: Any) -> Tensor:
    """``[3, H, W]`` uint8 RGB pixels of a path, a PIL image or a tensor.

    A tensor is ``[3, H, W]`` or ``[1, H, W]`` (grey, repeated), uint8 or float in ``[0, 1]``.
    An unreadable file raises ``OSError`` naming it.
    """
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                return TF.pil_to_tensor(img.convert("RGB"))
        except OSError as err:
            raise OSError(f"cannot read image {path}: {err}") from err
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, Tensor):
        pixels = image.detach().cpu()
        if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be [3, H, W], got {tuple(pixels.shape)}")
        pixels = pixels.expand(3, -1, -1)
        if pixels.is_floating_point():
            pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        return pixels
    raise TypeError(f"image must be a path, a PIL image or a tensor, got {type(image).__name__}")


def read_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (no decoding), for a model
    that reads per-box features and no pixels; a missing or unreadable file raises naming it."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def image_input(pixels: Tensor, size: int) -> Tensor:
    """The network input of ``[3, H, W]`` uint8 pixels: ``[3, size, size]`` float32, resized
    (antialiased) and normalised with the ImageNet statistics the backbones were trained with."""
    from torchvision.transforms.v2 import functional as TF

    resized = TF.resize(pixels, [int(size), int(size)], antialias=True)
    return TF.normalize(TF.to_dtype(resized, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))
