"""The detection formats' former home: every name it held, re-exported from where it lives now.

* :mod:`~lightning_wsg.detection.base`: :class:`Detections`, :class:`DetectionStore`,
  :class:`DetectionFormatError`, :func:`check_class_probs`, :data:`PROBS_SUM_TOLERANCE`,
  :func:`read_vocabulary`;
* :mod:`~lightning_wsg.detection.jsonl`: the project's JSON Lines format
  (:class:`JsonlDetections`, :func:`write_jsonl`);
* :mod:`~lightning_wsg.detection.tsv`: bottom-up-attention TSV (:class:`TsvDetections`,
  :func:`write_tsv`);
* :mod:`~lightning_wsg.detection.sources`: :func:`open_detections`.

Code in the package imports those modules; this one stays for callers of
``lightning_wsg.detection.formats`` and sits above them all (it imports
:mod:`~lightning_wsg.detection.sources`).
"""

from __future__ import annotations

from .base import (
    PROBS_SUM_TOLERANCE,
    DetectionFormatError,
    Detections,
    DetectionStore,
    check_class_probs,
    read_vocabulary,
)
from .jsonl import JsonlDetections, write_jsonl
from .sources import open_detections
from .tsv import TsvDetections, write_tsv

__all__ = [
    "DetectionFormatError",
    "DetectionStore",
    "Detections",
    "JsonlDetections",
    "PROBS_SUM_TOLERANCE",
    "TsvDetections",
    "check_class_probs",
    "open_detections",
    "read_vocabulary",
    "write_jsonl",
    "write_tsv",
]
