"""lightning_wsg: weakly supervised phrase grounding by contrastive knowledge distillation.

Public names (imported lazily, so that ``python -m lightning_wsg.synthetic`` stays light):

* :class:`GroundingModel`: the network (two towers, their scores, ``ground()``); what a model
  folder holds.
* :class:`ContrastiveDistillationLoss`: the training objective (InfoNCE + ramped distillation).
* :class:`GroundingModule`: the LightningModule (model + loss + optimizer + metrics).
* :class:`Flickr30kEntitiesDataModule`, :class:`RefCOCODataModule`,
  :class:`SyntheticWorldDataModule`: the datamodules; :class:`SentencesFileDataModule`: new
  images and sentences for ``lightning predict``.
* :class:`DetectionCache`: the callback that runs a detector once and caches its output.

Example:
    >>> from lightning_wsg import GroundingModule  # doctest: +SKIP
    >>> model = GroundingModule.load_from_checkpoint("best.ckpt").model  # doctest: +SKIP
    >>> model.ground("dog.jpg", "a [brown dog] jumps over [the fence]")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "GroundingModel": "lightning_wsg.model",
    "ContrastiveDistillationLoss": "lightning_wsg.contrastive_distillation",
    "GroundingModule": "lightning_wsg.grounding_module",
    "Flickr30kEntitiesDataModule": "lightning_wsg.data",
    "RefCOCODataModule": "lightning_wsg.data",
    "SyntheticWorldDataModule": "lightning_wsg.data",
    "GroundingDataModule": "lightning_wsg.data",
    "SentencesFileDataModule": "lightning_wsg.data",
    "DetectionCache": "lightning_wsg.detection",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lightning_wsg' has no attribute {name!r}")
