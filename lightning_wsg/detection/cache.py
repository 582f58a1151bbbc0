"""The on-disk detection cache: sharded, fingerprinted, resumable, safe for many readers.

A detector runs once per image and setting; its output lands here and every later fit,
test and predict reads it through :func:`lightning_wsg.detection.open_detections`.

Layout (as :class:`~lightning_wsg.detection.DetectionCache` writes it; one folder per
image collection and detector setting, the latter named by the setting's fingerprint)::

    <cache_dir>/
      digests.json                      content hashes of checkpoints / files, memoised by
                                        (path, size, mtime): big files are hashed once
      <namespace>/                      one image collection (default: the image folder's
                                        name and a hash of its absolute path)
        <backend>-<fingerprint[:16]>/   one detector setting
          manifest.json                 what made it: backend, settings, fingerprint, class
                                        names, package versions, counts, dates
          shards/
            <sha1 of its image ids>.pt  one shard: up to ``shard_size`` images' detections
            .<name>.tmp-<host>-<pid>-*  a shard being written (never read)
          .runs/<run id>/rank<r>.done   DDP: each rank's "my share is written" mark

A shard is a ``torch.save`` dict of flat arrays (see :func:`pack_shard`): ``image_ids``
(newline-joined, as are the name lists: one pickle opcode each),
``offsets`` (``[n + 1]`` int64), ``boxes`` (``[T, 4]`` float32), ``scores`` (``[T]``
float32), ``labels`` (``[T]`` int32 into ``label_names``, ``-1`` when the image has no
labels), ``has_labels`` (``[n]`` bool), optional ``class_probs`` (``[T, C]`` float16 over
``class_names``, returned as float32). Shards are written to a temporary file, flushed to
disk and renamed into place (:func:`os.replace`), so a reader sees a shard whole or not at
all; a killed run leaves only complete shards, and the next run detects only the images no
shard holds. Readers map shards into memory (``torch.load(mmap=True)``): DataLoader
workers and ranks share the page cache, and nothing is written after a rename.

The fingerprint is the SHA-256 of the canonical JSON of everything that changes the
output (:meth:`DetectorBackend.settings`: backend, resolved config, checkpoint contents
hash, thresholds, maximum boxes, input size, class-probability flag...): change any of
them and a new folder is used; stale detections are never reused. Package versions are
recorded in the manifest but are not part of the fingerprint.

Example:
    >>> cache = ShardedCache.for_backend("cache", backend)  # doctest: +SKIP
    >>> missing = cache.missing(image_ids)  # doctest: +SKIP
    >>> cache.fill(backend, {i: paths[i] for i in missing})  # doctest: +SKIP
    >>> store = open_detections(cache.path)  # a CachedDetections  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .formats import DetectionFormatError, Detections, DetectionStore, open_detections, read_vocabulary

__all__ = [
    "CACHE_FORMAT",
    "CachedDetections",
    "DetectorBackend",
    "PrecomputedBackend",
    "ShardedCache",
    "file_digest",
    "fingerprint",
    "keep_top_boxes",
    "pack_shard",
    "plan_shards",
]

logger = logging.getLogger("lightning_wsg")

#: bumped when the shard layout changes (part of every fingerprint)
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
_STALE_TEMP_S = 24 * 3600  # a temp file of another host older than this is removed


# ------------------------------------------------------------------------------- digests
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path, memo: str | Path | None = None) -> str:
    """SHA-256 of a file's contents, memoised by ``(path, size, mtime)``.

    Args:
        path: the file.
        memo: a JSON file keeping digests between runs (a checkpoint of hundreds of MB is
            then hashed once, not at every fit); ``None`` keeps them for this process only.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    memo_key = f"{key[0]}|{key[1]}|{key[2]}"
    table: dict[str, str] = {}
    if memo is not None:
        memo = Path(memo)
        try:
            table = json.loads(memo.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
        if memo_key in table:
            _DIGESTS[key] = table[memo_key]
            return table[memo_key]
    digest = _sha256(path)
    _DIGESTS[key] = digest
    if memo is not None:
        table[memo_key] = digest
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(memo, json.dumps(table, indent=1, sort_keys=True))
        except OSError as err:  # a read-only cache still works
            logger.debug("could not write the digest memo %s: %s", memo, err)
    return digest


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (keys sorted, no whitespace)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _temp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- backends
class DetectorBackend(ABC):
    """A detector: ``(image_id, path)`` pairs in, :class:`Detections` out.

    Construction must be cheap: the model is built in :meth:`load`, which the cache calls
    only when some image lacks detections (test and predict on a filled cache never load
    it). Subclasses set :attr:`name` and implement :meth:`settings`, :meth:`load` and
    :meth:`detect`.

    Attributes:
        name: the backend's name (the cache folder's prefix).
        batch_size: images per :meth:`detect` call.
    """

    name: str = "detector"
    batch_size: int = 1

    @abstractmethod
    def settings(self, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        """Everything that changes the output, as JSON-able values (files by ``digest``)."""

    @abstractmethod
    def load(self, device: torch.device | str | None = None) -> None:
        """Build the model on ``device`` (``None``: the backend's own default)."""

    @abstractmethod
    def detect(self, images: Sequence[tuple[str, Path]]) -> list[Detections]:
        """Detections of each ``(image_id, path)``, in order; called after :meth:`load`."""

    @property
    def class_names(self) -> list[str] | None:
        """The detector's vocabulary (known after :meth:`load`), or ``None``."""
        return None

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has built the model."""
        return getattr(self, "_loaded", False)

    def unload(self) -> None:
        """Free the model (GPU memory goes back to training).

        The default drops ``self._model`` and empties the CUDA cache when ``self._device``
        is a GPU: what a backend that keeps its network there needs.
        """
        self._model = None
        self._loaded = False
        device = getattr(self, "_device", None)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.empty_cache()

    def versions(self) -> dict[str, str]:
        """Versions of the packages the backend uses, for the manifest."""
        return {}


def keep_top_boxes(
    image_id: str,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    nms_iou: float | None,
    max_boxes: int,
    class_probs: torch.Tensor | None = None,
) -> Detections:
    """A detector's raw output for one image as :class:`Detections`, best boxes first.

    A class-agnostic NMS at ``nms_iou`` (``None``: none) after the detector's own
    per-class NMS, so that one object is not proposed twice under two names, then the
    ``max_boxes`` highest-scoring boxes (ties kept in input order).

    Args:
        image_id: the image's id.
        boxes: ``[N, 4]`` corner boxes.
        scores: ``[N]`` detection scores.
        labels: ``[N]`` class indices into ``class_names``.
        class_names: the detector's vocabulary.
        nms_iou: IoU of the class-agnostic NMS, or ``None``.
        max_boxes: boxes kept.
        class_probs: optional ``[N, C]`` class probabilities of each box.
    """
    from torchvision.ops import nms

    order = torch.argsort(scores, descending=True, stable=True)
    if nms_iou is not None and len(order):
        order = nms(boxes, scores, nms_iou)  # sorted by score
    order = order[:max_boxes]
    return Detections(
        image_id,
        boxes[order],
        [class_names[j] for j in labels[order].tolist()],
        scores[order],
        class_probs[order] if class_probs is not None else None,
    )


class PrecomputedBackend(DetectorBackend):
    """Imports a precomputed detections file (JSON Lines or bottom-up TSV) into the cache.

    Images the file lacks are cached with zero boxes (the datasets then skip their pairs
    and log it), so a file is read once per image set, not at every run.

    Args:
        path: the file (see :func:`lightning_wsg.detection.open_detections`).
        vocabulary: a TSV's class vocabulary (for example ``vg_objects_vocab.txt``).
        max_boxes: keep at most this many boxes per image, the top-scored ones
            (``None``: all).
    """

    name = "precomputed"

    def __init__(self, path: str | Path, vocabulary: str | Path | None = None, max_boxes: int | None = None) -> None:
        self.path = Path(path)
        self.vocabulary = Path(vocabulary) if vocabulary is not None else None
        self.max_boxes = max_boxes
        self.batch_size = 256
        self._store: DetectionStore | None = None

    def settings(self, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        return {
            "backend": self.name,
            "file_sha256": digest(self.path),
            "format": self.path.suffix.lower(),
            "vocabulary_sha256": digest(self.vocabulary) if self.vocabulary is not None else None,
            "max_boxes": self.max_boxes,
        }

    def load(self, device: torch.device | str | None = None) -> None:
        self._store = store = open_detections(self.path, self.vocabulary)
        first = next(iter(store.values()), None)
        self._has_labels = first is not None and first.labels is not None
        self._probs_width = None
        if first is not None and first.class_probs is not None:
            self._probs_width = len(store.class_names) if store.class_names else int(first.class_probs.shape[1])
        self._loaded = True

    def unload(self) -> None:
        self._store = None
        self._loaded = False

    @property
    def class_names(self) -> list[str] | None:
        if self._store is not None:
            return self._store.class_names
        return read_vocabulary(self.vocabulary) if self.vocabulary is not None else None

    def detect(self, images: Sequence[tuple[str, Path]]) -> list[Detections]:
        assert self._store is not None, "load() first"
        out = []
        for image_id, _ in images:
            det = self._store.get(image_id)
            if det is None:  # cached as "no boxes": the datasets skip it and say so
                width = self._probs_width
                det = Detections(
                    image_id,
                    torch.zeros(0, 4),
                    [] if self._has_labels else None,
                    torch.zeros(0),
                    torch.zeros(0, width) if width is not None else None,
                )
            elif self.max_boxes is not None and len(det) > self.max_boxes:
                keep = torch.argsort(det.scores, descending=True, stable=True)[: self.max_boxes].sort().values
                det = Detections(
                    det.image_id,
                    det.boxes[keep],
                    [det.labels[i] for i in keep.tolist()] if det.labels is not None else None,
                    det.scores[keep],
                    det.class_probs[keep] if det.class_probs is not None else None,
                )
            out.append(det)
        return out


# --------------------------------------------------------------------------------- shards
def pack_shard(detections: Sequence[Detections], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Flatten detections into one shard dict (see the module docstring).

    ``class_names`` (the detector's vocabulary) seeds ``label_names`` so that label indices
    are the detector's class indices; labels outside it are appended.
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
            if probs_width is not None and width != probs_width:
                raise ValueError(f"image {det.image_id}: class_probs of width {width}, others {probs_width}")
            probs_width = width
    with_probs = [det.class_probs is not None for det in detections]
    if any(with_probs) and not all(with_probs):
        raise ValueError("class_probs must be given for every image of a shard or for none")
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
    }
    if all(with_probs):
        width = probs_width if probs_width is not None else (len(class_names) if class_names is not None else 0)
        rows = [det.class_probs.detach().float().cpu().reshape(-1, width) for det in detections]
        shard["class_probs"] = (
            torch.cat(rows).to(torch.float16) if total else torch.zeros(0, width, dtype=torch.float16)
        )
    return shard


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
            if len(self.offsets) != len(self.image_ids) + 1 or self.offsets[-1] != self.boxes.shape[0]:
                raise ValueError("offsets disagree with the arrays")
        except Exception as err:  # noqa: BLE001 - any unreadable shard is the same error
            raise DetectionFormatError(
                f"{path}: unreadable detection-cache shard ({type(err).__name__}: {err}); delete it and the "
                "next run detects its images again"
            ) from None
        self.path = path

    def get(self, row: int) -> Detections:
        a, b = self.offsets[row], self.offsets[row + 1]
        probs = self.class_probs[a:b].float() if self.class_probs is not None else None
        return Detections(
            self.image_ids[row],
            self.boxes[a:b],
            self.labels[a:b].tolist() if self.has_labels[row] else None,
            self.scores[a:b],
            probs,
        )


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
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written since opening (complete shards only)."""
        for shard_path in _shard_files(self.path / SHARDS):
            if shard_path.name in self._shards:
                continue
            name = shard_path.name
            shard = self._shards[name] = _Shard(shard_path)
            index, only = self._index, self._only
            for row, image_id in enumerate(shard.image_ids):
                if image_id not in index and (
                    only is None or image_id in only
                ):  # an image in two shards (two jobs filling at once): first name wins
                    index[image_id] = (name, row)
            if self.class_names is None and shard.class_names is not None:
                self.class_names = list(shard.class_names)

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


# ---------------------------------------------------------------------------------- cache
def _versions() -> dict[str, str]:
    import numpy
    import torchvision

    from .. import __version__

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "lightning_wsg": __version__,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ShardedCache:
    """One detector setting's cache folder: find what is missing, fill it, describe it.

    Args:
        root: the cache folder shared by every setting (``<root>/<backend>-<fp>/``).
        settings: the backend's :meth:`DetectorBackend.settings`.
        shard_size: images per shard (a killed run loses at most one shard per rank).
    """

    def __init__(self, root: str | Path, settings: Mapping[str, Any], shard_size: int = 512) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.settings = {"cache_format": CACHE_FORMAT, **dict(settings)}
        self.fingerprint = fingerprint(self.settings)
        self.backend_name = str(self.settings.get("backend", "detector"))
        self.path = self.root / f"{self.backend_name}-{self.fingerprint[:16]}"
        self.shard_size = int(shard_size)
        self._store: CachedDetections | None = None

    @classmethod
    def for_backend(cls, root: str | Path, backend: DetectorBackend, shard_size: int = 512) -> ShardedCache:
        """The cache of ``backend``'s current settings (files hashed with a memo in ``root``)."""
        root = Path(root)
        return cls(root, backend.settings(lambda p: file_digest(p, memo=root / "digests.json")), shard_size)

    @property
    def shard_dir(self) -> Path:
        return self.path / SHARDS

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def __repr__(self) -> str:
        return f"ShardedCache({str(self.path)!r})"

    # -- manifest -------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest (``None`` when missing); :class:`DetectionFormatError` when unreadable
        or when its settings do not hash to its fingerprint."""
        if not self.manifest_path.is_file():
            return None
        return _check_manifest(_read_manifest(self.manifest_path), self.manifest_path)

    def ensure_manifest(self, versions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create the folder and its manifest if missing (a manifest marks a cache folder).

        An unreadable manifest is written again from this setting: the folder's name is this
        setting's fingerprint, and the counts come from the shards (:meth:`update_manifest`).
        A readable one that names another fingerprint is an error (the folder was copied or
        edited by hand, so which detector made the shards is unknown).
        """
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        manifest, rebuilt = None, False
        if self.manifest_path.is_file():
            parsed = _parse_manifest(self.manifest_path)
            if isinstance(parsed, str):
                logger.warning(
                    "detection cache: %s is unreadable (%s); writing it again from this setting and the shards",
                    self.manifest_path,
                    parsed,
                )
                rebuilt = True
            else:
                manifest = _check_manifest(parsed, self.manifest_path)
        if manifest is None:
            manifest = {
                "cache_format": CACHE_FORMAT,
                "fingerprint": self.fingerprint,
                "backend": self.backend_name,
                "settings": self.settings,
                "shard_size": self.shard_size,
                "class_names": None,
                "versions": {**_versions(), **dict(versions or {})},
                "created": _now(),
                "updated": _now(),
                "counts": {"images": 0, "boxes": 0, "shards": 0},
            }
            _atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
            if rebuilt:  # counts and class names from the shards already there
                manifest = self.update_manifest()
        elif manifest.get("fingerprint") != self.fingerprint:
            raise DetectionFormatError(
                f"{self.manifest_path}: written for the detector setting with fingerprint "
                f"{str(manifest.get('fingerprint'))[:16]}, but this folder belongs to {self.fingerprint[:16]} "
                f"({self.backend_name}): the folder was copied or edited by hand; " + _REDO.format(folder=self.path)
            )
        return manifest

    def update_manifest(
        self, class_names: Sequence[str] | None = None, versions: Mapping[str, str] | None = None
    ) -> dict:
        """Rewrite the manifest's counts, class names and date from the shards on disk."""
        manifest = self.ensure_manifest()
        store = self.open(refresh=True)
        boxes = 0
        for shard in store._shards.values():
            boxes += shard.offsets[-1]
        names = list(class_names) if class_names is not None else (manifest.get("class_names") or store.class_names)
        manifest.update(
            class_names=names,
            updated=_now(),
            counts={"images": len(store), "boxes": int(boxes), "shards": len(store._shards)},
        )
        if versions:
            manifest["versions"] = {**manifest.get("versions", {}), **dict(versions)}
        _atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
        store.class_names = names
        return manifest

    # -- reading ----------------------------------------------------------------------
    def open(self, refresh: bool = True) -> CachedDetections:
        """The folder as a :class:`CachedDetections` (kept and refreshed between calls)."""
        if self._store is None:
            self._store = CachedDetections(self.path)
        elif refresh:
            self._store.refresh()
        return self._store

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """The ids (in the given order, once each) that no complete shard holds."""
        ids = list(dict.fromkeys(str(i) for i in image_ids))
        if not self.manifest_path.is_file():
            return ids
        store = self.open(refresh=True)
        return [i for i in ids if i not in store]

    # -- writing ----------------------------------------------------------------------
    def shard_path(self, image_ids: Sequence[str]) -> Path:
        """A shard's file, named by the SHA-1 of its image ids (same images, same name)."""
        digest = hashlib.sha1("\n".join(image_ids).encode("utf-8")).hexdigest()[:24]
        return self.shard_dir / f"{digest}.pt"

    def write_shard(self, detections: Sequence[Detections], class_names: Sequence[str] | None = None) -> Path:
        """Write one shard atomically (temporary file, then :func:`os.replace`)."""
        shard = pack_shard(detections, class_names)
        path = self.shard_path(_split(shard["image_ids"]))
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
        try:
            with tmp.open("wb") as fh:
                torch.save(shard, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def remove_stale_temp_files(self) -> int:
        """Remove temporary files of killed writers: this host's dead pids, or over a day old."""
        removed = 0
        if not self.shard_dir.is_dir():
            return 0
        host = socket.gethostname()
        for p in self.shard_dir.iterdir():
            if ".tmp-" not in p.name:
                continue
            stale = False
            rest = p.name.split(".tmp-", 1)[1]
            # rest = <host>-<pid>-<rand>; the host may contain dashes
            parts = rest.rsplit("-", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                stale = not _pid_alive(int(parts[1]))
            else:
                try:
                    stale = time.time() - p.stat().st_mtime > _STALE_TEMP_S
                except FileNotFoundError:
                    continue
            if stale:
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def fill(
        self,
        backend: DetectorBackend,
        images: Mapping[str, str | Path] | Sequence[tuple[str, Path]],
        shards: Sequence[Sequence[str]] | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        description: str = "detecting",
    ) -> int:
        """Run ``backend`` over ``images`` and write their shards; returns images detected.

        Args:
            backend: the detector (loaded here if it is not yet).
            images: ``image_id -> path`` of the images to detect.
            shards: the ids grouped into shards (default: :func:`plan_shards` of ``images``
                with this cache's ``shard_size``); every id must be in ``images``.
            device: where the detector runs.
            progress: show a rich progress bar (images/s, time left).
            description: the bar's label.
        """
        paths = {str(k): Path(v) for k, v in (images.items() if isinstance(images, Mapping) else images)}
        if shards is None:
            shards = plan_shards(list(paths), self.shard_size)
        total = sum(len(s) for s in shards)
        if total == 0:
            return 0
        self.ensure_manifest(backend.versions())
        if not backend.loaded:
            backend.load(device)
        done = 0
        with _progress(progress, description, total) as advance:
            for shard_ids in shards:
                dets: list[Detections] = []
                batch = max(1, int(backend.batch_size))
                for i in range(0, len(shard_ids), batch):
                    chunk = [(image_id, paths[image_id]) for image_id in shard_ids[i : i + batch]]
                    out = backend.detect(chunk)
                    if len(out) != len(chunk):
                        raise RuntimeError(
                            f"{type(backend).__name__}.detect returned {len(out)} results for {len(chunk)} images"
                        )
                    for (image_id, _), det in zip(chunk, out):
                        if str(det.image_id) != image_id:
                            raise RuntimeError(
                                f"{type(backend).__name__}.detect returned image {det.image_id} for {image_id}"
                            )
                    dets.extend(out)
                    advance(len(chunk))
                self.write_shard(dets, backend.class_names)
                done += len(dets)
        return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _progress:
    """A rich progress bar with images/s and time left (or nothing when disabled)."""

    def __init__(self, enabled: bool, description: str, total: int, console: Any = None) -> None:
        self.console = console
        self.enabled = enabled
        self.description = description
        self.total = total
        self._bar = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class _Rate(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                if speed is None and task.elapsed:
                    speed = task.completed / task.elapsed
                return Text("?  images/s" if speed is None else f"{speed:.2f} images/s", style="progress.data.speed")

        self._bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        bar = self._bar
        return lambda n: bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
