"""Open any detections source by its path: the one reading path every source feeds.

The readers (:mod:`~lightning_wsg.detection.jsonl`, :mod:`~lightning_wsg.detection.tsv`,
:mod:`~lightning_wsg.detection.hdf5`, :mod:`~lightning_wsg.detection.native_store`,
:mod:`~lightning_wsg.detection.store`) are imported here, each entering its store class in the
table of :mod:`~lightning_wsg.detection.base` (:func:`~lightning_wsg.detection.base.register_reader`);
:func:`open_detections` asks them in their order and opens the path with the first that accepts
it. The readers import only :mod:`~lightning_wsg.detection.base`, never this module.

Example:
    >>> store = open_detections("proposals.jsonl")  # doctest: +SKIP
    >>> dets = store["1000092795"]  # doctest: +SKIP
    >>> dets.boxes.shape, dets.labels[:2]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

# each reader module registers its store when imported: these imports fill the table
from . import hdf5, jsonl, native_store, tsv  # noqa: F401
from .base import DetectionFormatError, DetectionStore, registered_readers
from .store import MANIFEST

__all__ = ["open_detections"]


def open_detections(path: str | Path, vocabulary: str | Path | None = None) -> DetectionStore:
    """Open any supported detections source by its path.

    ``*.jsonl`` / ``*.json`` -> :class:`~lightning_wsg.detection.jsonl.JsonlDetections`; ``*.tsv`` ->
    :class:`~lightning_wsg.detection.tsv.TsvDetections` (its labels named through ``vocabulary``);
    ``*.h5`` / ``*.hdf5``, or a folder of them ->
    :class:`~lightning_wsg.detection.hdf5.Hdf5Detections`; a native feature store (a folder
    holding ``features.json``) -> :class:`~lightning_wsg.detection.native_store.NativeDetections`; a
    detection-cache folder (one holding ``manifest.json``, written by
    :class:`~lightning_wsg.detection.DetectionCache`) -> :class:`~lightning_wsg.detection.store.CachedDetections`.
    A folder that is more than one of these opens as a detection cache first, then as a native
    store, then as HDF5 files.

    Raises:
        FileNotFoundError: nothing at ``path``.
        DetectionFormatError: no reader accepts the path (a folder of detection caches names them).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"detections not found: {path}")
    for reader in registered_readers():
        if reader.accepts(path):
            return reader.open(path, vocabulary)
    if path.is_dir():
        settings = sorted(p.name for p in path.iterdir() if (p / MANIFEST).is_file())
        if settings:
            raise DetectionFormatError(
                f"{path}: a detection-cache root holding {len(settings)} detector settings; "
                f"point at one of its folders: {', '.join(settings)}"
            )
        raise DetectionFormatError(f"{path}: a folder but not a detection cache (no {MANIFEST})")
    raise DetectionFormatError(f"{path}: unknown detections format (expected .jsonl, .tsv, .h5 or .hdf5)")
