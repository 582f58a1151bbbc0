"""The detection cache's on-disk store: shard packing, the manifest, and the reader.

:func:`pack_shard` turns detections into one shard's flat arrays, :class:`CachedDetections`
reads a cache folder (memory-mapped shards) as a
:class:`~lightning_wsg.detection.base.DetectionStore`, and the manifest helpers check a
folder against its fingerprint. The writer is :class:`~lightning_wsg.detection.cache.ShardedCache`
(its module docstring describes the layout).

A detector asked for its boxes' features (``box_features: true``) adds them to each shard as
one ``[T, D]`` float16 array, memory-mapped like the native store's; the folder is then a
feature source (``store.feature_dim``, ``store.features(image_id)``) for the feature tower.

Example:
    >>> store = CachedDetections("cache/images-1a2b3c4d/torchvision-0123456789abcdef")  # doctest: +SKIP
    >>> store["1000092795"].boxes.shape  # doctest: +SKIP
    >>> store.features("1000092795").shape  # with box_features: [boxes, D]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DetectionFormatError, Detections, DetectionStore, check_class_probs, register_reader
from .digests import fingerprint

__all__ = ["CACHE_FORMAT", "MANIFEST", "SHARDS", "CachedDetections", "pack_shard", "plan_shards"]

#: bumped when the shard layout changes (part of every fingerprint)
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
SHARDS = "shards"


def pack_shard(detections: Sequence[Detections], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Flatten detections into one shard dict (see the module docstring).

    ``class_names`` (the detector's vocabulary) seeds ``label_names`` so that label indices
    are the detector's class indices; labels outside it are appended. ``class_probs`` (all
    images or none) are stored as float16, one column per class name; rows that are no
    probabilities are refused (:func:`~lightning_wsg.detection.base.check_class_probs`).
    Per-box ``features`` (all images or none) are stored as float16; a value float16 cannot
    hold is an error.
    """
    if not detections:
        raise ValueError("a shard holds at least one image")
    if any(not str(det.image_id) for det in detections):
        raise ValueError("an image id is empty")
    label_names: list[str] = list(class_names) if class_names is not None else []
    label_index = {name: i for i, name in enumerate(label_names)}
    offsets = [0]
    labels: list[int] = []
    has_labels = []
    probs_width = None
    for det in detections:
        det.validate(f"detections of image {det.image_id}")
        offsets.append(offsets[-1] + len(det))
        has_labels.append(det.labels is not None)
        if det.labels is None:
            labels.extend([-1] * len(det))
        else:
            for name in det.labels:
                if name not in label_index:
                    label_index[name] = len(label_names)
                    label_names.append(name)
                labels.append(label_index[name])
        if det.class_probs is not None and len(det):
            width = int(det.class_probs.shape[1])
            if class_names is not None and width != len(class_names):
                raise DetectionFormatError(
                    f"detections of image {det.image_id}: class_probs of width {width}, but the detector names "
                    f"{len(class_names)} classes (class_names): one column per class name"
                )
            if probs_width is not None and width != probs_width:
                raise ValueError(f"image {det.image_id}: class_probs of width {width}, others {probs_width}")
            probs_width = width
    with_probs = [det.class_probs is not None for det in detections]
    if any(with_probs) and not all(with_probs):
        raise ValueError("class_probs must be given for every image of a shard or for none")
    with_features = [det.features is not None for det in detections]
    if any(with_features) and not all(with_features):
        raise ValueError("features must be given for every image of a shard or for none")
    total = offsets[-1]
    boxes = [det.boxes.detach().reshape(-1, 4).float().cpu() for det in detections]
    scores = [det.scores.detach().reshape(-1).float().cpu() for det in detections]
    shard: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "image_ids": _join([str(det.image_id) for det in detections], "image id"),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "boxes": torch.cat(boxes) if total else torch.zeros(0, 4),
        "scores": torch.cat(scores) if total else torch.zeros(0),
        "labels": torch.tensor(labels, dtype=torch.int32),
        "label_names": _join(label_names, "label"),
        "has_labels": torch.tensor(has_labels, dtype=torch.bool),
        "class_names": _join(class_names, "class name") if class_names is not None else None,
        "class_probs": None,
        "features": _pack_features(detections) if all(with_features) else None,
    }
    if all(with_probs):
        width = probs_width if probs_width is not None else (len(class_names) if class_names is not None else 0)
        rows = [det.class_probs.detach().float().cpu().reshape(-1, width) for det in detections]
        shard["class_probs"] = (
            torch.cat(rows).to(torch.float16) if total else torch.zeros(0, width, dtype=torch.float16)
        )
    return shard


def _pack_features(detections: Sequence[Detections]) -> torch.Tensor:
    """The images' ``[N, D]`` features as one ``[T, D]`` float16 array (one width for all)."""
    width = int(detections[0].features.shape[1])
    blocks = []
    for det in detections:
        block = det.features.detach().float().cpu()
        if block.shape[1] != width:
            raise ValueError(
                f"image {det.image_id}: features of width {block.shape[1]}, image {detections[0].image_id}: {width}"
            )
        half = block.to(torch.float16)
        if not torch.isfinite(half).all():
            raise ValueError(
                f"image {det.image_id}: features that float16 cannot hold (|x| > 65504) or that are not finite"
            )
        blocks.append(half)
    return torch.cat(blocks)


def _join(names: Sequence[str], what: str) -> str:
    """Names as one newline-joined string: one pickle opcode instead of one per name."""
    bad = [n for n in names if "\n" in n]
    if bad:
        raise ValueError(f"a {what} contains a newline: {bad[0]!r}")
    return "\n".join(names)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return text.split("\n") if text else []


class _Shard:
    """A loaded shard: memory-mapped arrays and per-image offsets."""

    __slots__ = (
        "boxes",
        "class_names",
        "class_probs",
        "features",
        "has_labels",
        "image_ids",
        "labels",
        "offsets",
        "path",
        "scores",
    )

    def __init__(self, path: Path) -> None:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
                raise ValueError(f"not a format-{CACHE_FORMAT} shard")
            self.image_ids: list[str] = _split(data["image_ids"])
            self.offsets: list[int] = data["offsets"].tolist()
            self.boxes: torch.Tensor = data["boxes"]
            self.scores: torch.Tensor = data["scores"]
            # one object array of names for the whole shard (-1, "no label", picks the final "");
            # an image's labels are a slice of it
            names = np.array([*_split(data["label_names"]), ""], dtype=object)
            self.labels: np.ndarray = names[data["labels"].numpy()]
            self.has_labels: list[bool] = data["has_labels"].tolist()
            self.class_probs: torch.Tensor | None = data["class_probs"]
            self.class_names: list[str] | None = _split(data["class_names"])
            self.features: torch.Tensor | None = data.get("features")  # shards of before box_features lack it
            if len(self.offsets) != len(self.image_ids) + 1 or self.offsets[-1] != self.boxes.shape[0]:
                raise ValueError("offsets disagree with the arrays")
            if self.features is not None and (self.features.ndim != 2 or len(self.features) != len(self.boxes)):
                raise ValueError(f"features {tuple(self.features.shape)} for {len(self.boxes)} boxes")
            probs = self.class_probs
            if probs is not None and (probs.ndim != 2 or len(probs) != len(self.boxes)):
                raise ValueError(f"class_probs {tuple(probs.shape)} for {len(self.boxes)} boxes")
        except Exception as err:  # noqa: BLE001 - any unreadable shard is the same error
            raise DetectionFormatError(
                f"{path}: unreadable detection-cache shard ({type(err).__name__}: {err}); delete it and the "
                "next run detects its images again"
            ) from None
        self.path = path

    def get(self, row: int) -> Detections:
        a, b = self.offsets[row], self.offsets[row + 1]
        probs = None
        if self.class_probs is not None:
            probs = self.class_probs[a:b].float()
            # checked when read, image by image: a whole shard's [T, C] is not read at opening
            check_class_probs(probs, str(self.path), self.image_ids[row])
        return Detections(
            self.image_ids[row],
            self.boxes[a:b],
            self.labels[a:b].tolist() if self.has_labels[row] else None,
            self.scores[a:b],
            probs,
        )


@register_reader(lambda path: path.is_dir() and (path / MANIFEST).is_file(), order=10)
class CachedDetections(DetectionStore):
    """A read-only :class:`DetectionStore` over one cache folder (see the module docstring).

    Opening lists the complete shards and maps them into memory; ``store[image_id]``
    slices the shard's arrays (no copy). Shards renamed into place after opening are seen
    after :meth:`refresh`. Pickling (DataLoader workers with ``spawn``) carries the index
    only; each process maps the shards again on first use.

    Args:
        path: the cache folder (the one holding ``manifest.json``).
        only: restrict the store to these image ids (a dataset's view of a cache shared
            with other datasets of the same images, e.g. RefCOCO and RefCOCOg on COCO).

    Attributes:
        feature_dim: the width of the shards' per-box features (``box_features``), ``None``
            when they have none.
    """

    def __init__(self, path: str | Path, only: Iterable[str] | None = None) -> None:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"not a detection-cache folder (no {MANIFEST}): {path}")
        self.manifest: dict[str, Any] = _check_manifest(_read_manifest(manifest_path), manifest_path)
        super().__init__(path, {}, self.manifest.get("class_names"))
        self._shards: dict[str, _Shard] = {}
        self._index: dict[str, tuple[str, int]] = {}
        self._only = {str(i) for i in only} if only is not None else None
        self._width_from: tuple[Path, str] | None = None  # the shard (and an image) the width was read from
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written since opening (complete shards only)."""
        for shard_path in _shard_files(self.path / SHARDS):
            if shard_path.name in self._shards:
                continue
            name = shard_path.name
            shard = self._shards[name] = _Shard(shard_path)
            self._check_feature_width(shard)
            index, only = self._index, self._only
            for row, image_id in enumerate(shard.image_ids):
                if image_id not in index and (
                    only is None or image_id in only
                ):  # an image in two shards (two jobs filling at once): first name wins
                    index[image_id] = (name, row)
            if self.class_names is None and shard.class_names is not None:
                self.class_names = list(shard.class_names)
            self._check_probs_width(shard)

    def _check_feature_width(self, shard: _Shard) -> None:
        """One feature width across the folder's shards, or no features in any."""
        width = int(shard.features.shape[1]) if shard.features is not None else None
        if self._width_from is None:
            self.feature_dim, self._width_from = width, (shard.path, shard.image_ids[0])
        elif width != self.feature_dim:
            path, image_id = self._width_from

            def what(w: int | None) -> str:
                return f"features of width {w}" if w is not None else "no features"

            raise DetectionFormatError(
                f"{shard.path}: {what(width)} (image {shard.image_ids[0]}), but {path} holds "
                f"{what(self.feature_dim)} (image {image_id}): shards of two detector settings in one folder; "
                + _REDO.format(folder=self.path)
            )

    def _check_probs_width(self, shard: _Shard) -> None:
        """A shard's class_probs have one column per class name of the folder."""
        if shard.class_probs is None or self.class_names is None:
            return
        width = int(shard.class_probs.shape[1])
        if width != len(self.class_names):
            raise DetectionFormatError(
                f"{shard.path}: class_probs of width {width} (image {shard.image_ids[0]}), but the folder names "
                f"{len(self.class_names)} classes ({self.path / MANIFEST}): " + _REDO.format(folder=self.path)
            )

    def class_probs_width(self) -> int | None:
        """The width of the shards' ``class_probs`` (``None`` when they carry none)."""
        for name, _ in self._index.values():
            probs = self._shard(name).class_probs
            return int(probs.shape[1]) if probs is not None else None
        return None

    def _shard(self, name: str) -> _Shard:
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = _Shard(self.path / SHARDS / name)
        return shard

    def __getitem__(self, image_id: str) -> Detections:
        name, row = self._index[str(image_id)]
        return self._shard(name).get(row)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._index

    def features(self, image_id: str) -> torch.Tensor:
        """The ``[N, feature_dim]`` float32 features of an image's boxes (row ``i``: box ``i``)."""
        name, row = self._index[str(image_id)]
        shard = self._shard(name)
        if shard.features is None:
            raise DetectionFormatError(
                f"{self.path}: this detection cache holds no per-box features (image {image_id}): set "
                "box_features: true on the DetectionCache's detector backend (a new cache folder) to store them"
            )
        a, b = shard.offsets[row], shard.offsets[row + 1]
        return shard.features[a:b].float()

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def num_shards(self) -> int:
        return len({name for name, _ in self._index.values()})

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = {}  # mapped again in the receiving process
        return state


_REDO = "delete the folder {folder} and the next run with the DetectionCache callback detects its images again"


def _parse_manifest(path: Path) -> dict[str, Any] | str:
    """A cache folder's manifest, or what makes it unreadable."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # a half-written or hand-edited file
        return f"not valid JSON: {err}"
    return manifest if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}, not an object"


def _read_manifest(path: Path) -> dict[str, Any]:
    """A cache folder's manifest; :class:`DetectionFormatError` naming it when unreadable."""
    manifest = _parse_manifest(path)
    if isinstance(manifest, str):
        raise DetectionFormatError(
            f"{path}: unreadable detection-cache manifest ({manifest}); the next run with the DetectionCache "
            f"callback of this detector setting writes it again from its shards, or delete the folder {path.parent}"
        )
    return manifest


def _check_manifest(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """Refuse a manifest whose recorded settings do not hash to its fingerprint.

    The shards were made by the settings the fingerprint names; settings edited afterwards
    would describe a detector that never produced them.
    """
    settings, recorded = manifest.get("settings"), manifest.get("fingerprint")
    if isinstance(settings, dict) and recorded is not None and fingerprint(settings) != recorded:
        raise DetectionFormatError(
            f"{path}: the recorded settings hash to {fingerprint(settings)[:16]}, not to the manifest's fingerprint "
            f"{str(recorded)[:16]}: the manifest was edited by hand, so nothing says which detector made these "
            "shards; " + _REDO.format(folder=path.parent)
        )
    return manifest


def _shard_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".pt" and not p.name.startswith("."))


def plan_shards(image_ids: Sequence[str], shard_size: int, world_size: int = 1) -> list[list[str]]:
    """Split ``image_ids`` into shards of at most ``shard_size`` images, at least one per rank.

    Rank ``r`` takes shards ``r::world_size``; shards are smaller than ``shard_size`` when
    that spreads a few missing images over every rank.
    """
    if shard_size < 1 or world_size < 1:
        raise ValueError(f"shard_size and world_size must be >= 1, got {shard_size}, {world_size}")
    ids = list(image_ids)
    if not ids:
        return []
    size = min(shard_size, max(1, -(-len(ids) // world_size)))
    return [ids[i : i + size] for i in range(0, len(ids), size)]
