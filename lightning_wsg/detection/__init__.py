"""Region proposals and detector outputs: file formats, the on-disk cache, detectors.

Nothing here imports :mod:`lightning_wsg.data`; the datasets read detections through
:func:`open_detections`, the one reading path every source feeds.
"""

from .formats import (
    Detections,
    DetectionFormatError,
    DetectionStore,
    JsonlDetections,
    TsvDetections,
    open_detections,
    read_vocabulary,
    write_jsonl,
)

__all__ = [
    "Detections",
    "DetectionFormatError",
    "DetectionStore",
    "JsonlDetections",
    "TsvDetections",
    "open_detections",
    "read_vocabulary",
    "write_jsonl",
]
