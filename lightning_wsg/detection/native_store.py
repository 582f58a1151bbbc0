"""The native feature store's reader: :class:`NativeDetections`, over the shards that
:mod:`~lightning_wsg.detection.native` writes.

The layout (``features.json``, ``shards/<k>.npy``, ``shards/<k>.probs.npy``, ``shards/<k>.pt``)
is described in :mod:`~lightning_wsg.detection.native`, which also converts sources into it.
This module holds what reading needs (the format's constants, the manifest check, the store),
so that :func:`~lightning_wsg.detection.sources.open_detections` can open a native store
without the converter, which itself opens its sources through ``open_detections``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DetectionFormatError, Detections, DetectionStore, check_class_probs, register_reader

__all__ = ["NATIVE_FORMAT", "NATIVE_MANIFEST", "PROBS_SUFFIX", "SHARDS", "NativeDetections", "read_manifest"]

NATIVE_FORMAT = 1
NATIVE_MANIFEST = "features.json"
#: the folder of the shards, and the name ending of a shard's class probabilities
SHARDS = "shards"
PROBS_SUFFIX = ".probs.npy"


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the native store in ``folder``, checked for its format."""
    path = folder / NATIVE_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DetectionFormatError(
            f"{path}: unreadable native-store manifest ({err}); convert the source again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != NATIVE_FORMAT:
        raise DetectionFormatError(f"{path}: not a format-{NATIVE_FORMAT} native feature store")
    return manifest


@register_reader(lambda path: path.is_dir() and (path / NATIVE_MANIFEST).is_file(), order=20)
class NativeDetections(DetectionStore):
    """A native feature store (its layout: :mod:`~lightning_wsg.detection.native`), read through memory maps.

    ``store[image_id]`` carries ``class_probs`` (``[N, C]`` float32 over ``class_names``) when
    the store was converted from a source whose records carry them, ``None`` otherwise; each
    image's rows are checked when read
    (:func:`~lightning_wsg.detection.base.check_class_probs`).

    Args:
        folder: the store's folder (holding ``features.json``).

    Raises:
        DetectionFormatError: an unreadable or unfinished store, or a manifest whose class
            probabilities disagree with its class names.
    """

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        manifest = read_manifest(folder)
        if not manifest.get("complete"):
            raise DetectionFormatError(
                f"{folder}: an unfinished conversion ({manifest.get('num_shards')} shards planned); run the "
                "converter again to finish it"
            )
        super().__init__(folder, {}, manifest.get("class_names"))
        self.manifest = manifest
        self.feature_dim = int(manifest["feature_dim"])
        probs = manifest.get("class_probs")
        self._probs_width: int | None = int(probs["width"]) if probs else None
        if self._probs_width is not None and self._probs_width != len(self.class_names or []):
            raise DetectionFormatError(
                f"{folder / NATIVE_MANIFEST}: class_probs of width {self._probs_width}, but "
                f"{len(self.class_names or [])} class names: one column per class name; convert the source again"
            )
        self._probs: dict[int, np.ndarray] = {}
        names = list(manifest["label_names"])
        self._where: dict[str, tuple[int, int]] = {}  # image id -> (shard, position in it)
        self._indexes: list[dict[str, Any]] = []
        self._features: dict[int, np.ndarray] = {}
        for k in range(int(manifest["num_shards"])):
            path = folder / SHARDS / f"{k:06d}.pt"
            try:
                index = torch.load(path, weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
                raise DetectionFormatError(f"{path}: unreadable shard index (truncated or corrupt?): {err}") from None
            self._indexes.append(index)
            for n, image_id in enumerate(index["image_ids"]):
                self._where[image_id] = (k, n)
        self._names = np.array([*names, ""], dtype=object)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_features"], state["_probs"] = {}, {}  # each process maps the shards again
        return state

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self):
        return iter(self._where)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._where

    def __getitem__(self, image_id: str) -> Detections:
        k, n = self._where[str(image_id)]
        index = self._indexes[k]
        start, end = int(index["offsets"][n]), int(index["offsets"][n + 1])
        labels = None
        if bool(index["has_labels"][n]):
            labels = self._names[index["labels"][start:end].numpy()].tolist()
        width, height = (int(v) for v in index["image_sizes"][n])
        probs = None
        if self._probs_width is not None:
            probs = torch.from_numpy(self._shard_probs(k)[start:end]).float()
            check_class_probs(probs, str(self._probs_path(k)), str(image_id), self._probs_width)
        return Detections(
            str(image_id),
            index["boxes"][start:end],
            labels,
            index["scores"][start:end],
            probs,
            image_size=(width, height) if width > 0 else None,
        )

    def class_probs_width(self) -> int | None:
        """The width of the stored class probabilities (``None`` when the store has none)."""
        return self._probs_width

    def _probs_path(self, k: int) -> Path:
        return self.path / SHARDS / f"{k:06d}{PROBS_SUFFIX}"

    def _shard_probs(self, k: int) -> np.ndarray:
        """Shard ``k``'s ``[rows, C]`` float16 class probabilities, mapped once and checked for shape."""
        array = self._probs.get(k)
        if array is None:
            path = self._probs_path(k)
            rows = int(self._indexes[k]["offsets"][-1])
            try:
                array = np.load(path, mmap_mode="c")
            except (OSError, ValueError) as err:
                raise DetectionFormatError(
                    f"{path}: unreadable class probabilities (missing, truncated or corrupt?): {err}"
                ) from None
            if array.shape != (rows, self._probs_width) or array.dtype != np.float16:
                raise DetectionFormatError(
                    f"{path}: class probabilities {array.dtype}{list(array.shape)}, but the shard holds {rows} boxes "
                    f"of {self._probs_width} classes (float16); convert the source again"
                )
            self._probs[k] = array
        return array

    def _shard_features(self, k: int) -> np.ndarray:
        array = self._features.get(k)
        if array is None:
            path = self.path / SHARDS / f"{k:06d}.npy"
            try:
                # copy-on-write: a writable view (torch takes it without a warning), never written
                array = self._features[k] = np.load(path, mmap_mode="c")
            except (OSError, ValueError) as err:
                raise DetectionFormatError(f"{path}: unreadable features (truncated or corrupt?): {err}") from None
        return array

    def features(self, image_id: str) -> Tensor:
        k, n = self._where[str(image_id)]
        offsets = self._indexes[k]["offsets"]
        start, end = int(offsets[n]), int(offsets[n + 1])
        # torch's vectorised float16 -> float32 cast: about 10x numpy's astype
        return torch.from_numpy(self._shard_features(k)[start:end]).float()
