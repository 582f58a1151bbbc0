"""The on-disk detection cache: sharded, fingerprinted, resumable, safe for many readers.

A detector runs once per image and setting; its output lands here and every later fit,
test and predict reads it through :func:`lightning_wsg.detection.open_detections`.
This module is the writer (:class:`ShardedCache`); the shard format and the reader are in
:mod:`~lightning_wsg.detection.store`, the detector interface in
:mod:`~lightning_wsg.detection.backend`, digests and fingerprints in
:mod:`~lightning_wsg.detection.digests` (their names are importable from here too).

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
``class_names``, returned as float32), optional ``features`` (``[T, D]`` float16: each box's
detector feature, with ``box_features``; the manifest records ``feature_dim``). Shards are
written to a temporary file, flushed to disk and renamed into place (:func:`os.replace`), so
a reader sees a shard whole or not at all; a killed run leaves only complete shards, and the
next run detects only the images no shard holds. Readers map shards into memory (``torch.load(mmap=True)``): DataLoader
workers and ranks share the page cache, and nothing is written after a rename.

The fingerprint is the SHA-256 of the canonical JSON of everything that changes the
output (:meth:`DetectorBackend.settings`: backend, resolved config, checkpoint contents
hash, thresholds, maximum boxes, input size, class-probability and box-feature flags...):
change any of them and a new folder is used; stale detections are never reused. Package versions are
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_path, atomic_write_text
from .backend import DetectorBackend, PrecomputedBackend, keep_top_boxes
from .base import DetectionFormatError, Detections
from .digests import file_digest, fingerprint
from .store import (
    _REDO,
    CACHE_FORMAT,
    MANIFEST,
    SHARDS,
    CachedDetections,
    _check_manifest,
    _parse_manifest,
    _read_manifest,
    _split,
    pack_shard,
    plan_shards,
)

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

_STALE_TEMP_S = 24 * 3600  # a temp file of another host older than this is removed


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
            atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
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
            feature_dim=store.feature_dim,
            updated=_now(),
            counts={"images": len(store), "boxes": int(boxes), "shards": len(store._shards)},
        )
        if versions:
            manifest["versions"] = {**manifest.get("versions", {}), **dict(versions)}
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1))
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
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            torch.save(shard, fh)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it a shard
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
