"""Region proposals and detector outputs: file formats, the on-disk cache, detectors.

Nothing here imports :mod:`lightning_wsg.data`; the datasets read detections through
:func:`open_detections`, the one reading path every source feeds (files and cache folders).
The detectors are reached from the :class:`DetectionCache` callback alone; importing this
package imports neither MMDetection nor a detector model.
"""

from .backend import DetectorBackend, PrecomputedBackend
from .base import DetectionFormatError, Detections, DetectionStore, read_vocabulary
from .cache import ShardedCache
from .callback import DetectionCache
from .digests import file_digest, fingerprint
from .hdf5 import Hdf5Detections
from .jsonl import JsonlDetections, write_jsonl
from .mmdet import MMDetectionBackend
from .sources import open_detections
from .store import CachedDetections
from .torchvision import TorchvisionBackend
from .tsv import TsvDetections

__all__ = [
    "CachedDetections",
    "DetectionCache",
    "DetectionFormatError",
    "DetectionStore",
    "Detections",
    "DetectorBackend",
    "Hdf5Detections",
    "JsonlDetections",
    "MMDetectionBackend",
    "PrecomputedBackend",
    "ShardedCache",
    "TorchvisionBackend",
    "TsvDetections",
    "file_digest",
    "fingerprint",
    "open_detections",
    "read_vocabulary",
    "write_jsonl",
]
