"""The native feature store: memory-mapped float16 shards with an index, for fast random reads.

A bottom-up TSV decodes base64 per image and an HDF5 file goes through h5py's chunk cache;
both are slow to read in random order. :func:`convert` copies any detections source with
features (:func:`~lightning_wsg.detection.sources.open_detections`) once into this layout::

    <folder>/
      features.json            manifest: format, feature width, shard size, image and shard
                               counts, class names, class_probs (their width, or null), the
                               source (path, size, mtime), dates
      shards/<k>.npy           [rows, dim] float16, the features of the shard's images in order
      shards/<k>.probs.npy     [rows, C] float16, each box's class probabilities over the class
                               names (only when the source's records carry class_probs)
      shards/<k>.pt            the shard's index: image ids, row offsets, boxes, scores,
                               label ids, image sizes

Shard ``k`` holds the source's images ``k * shard_size ...`` in sorted id order; each file is
written to a temporary name, checked against the source (features and class probabilities
equal after the float16 rounding, boxes equal) and renamed into place, the index last. A
killed conversion resumes at the first missing shard; a folder made from another source (or
another shard size) is refused.

Class probabilities are carried when the source has ``class_names`` and its records carry
``class_probs`` (a JSON Lines file with its header, a detection cache made with
``class_probs: true``); the store then gives them as ``Detections.class_probs`` (float32),
and the teacher reads ``t(r, p) = sum_c P(c | r) m(c, p)``. Rows that are no probabilities
(negative or non-finite values, a row summing to more than 1, a width other than the class
names') are refused when written and when read
(:func:`~lightning_wsg.detection.base.check_class_probs`). A source without them gives a
store of top-1 labels and scores only.

:class:`NativeDetections` (:mod:`~lightning_wsg.detection.native_store`) maps the shards
(``numpy.load(mmap_mode="r")``): DataLoader workers share the page cache, and reading an
image's features is one slice and one float32 cast (19,000 images of 100 x 2048 a second on
one core here, ``benchmarks/feature_store.py``).

Example:
    >>> convert("flickr30k_vg.tsv", "flickr30k_vg.native", vocabulary="vg_objects_vocab.txt")  # doctest: +SKIP
    >>> store = open_detections("flickr30k_vg.native")  # a NativeDetections  # doctest: +SKIP
    >>> store.features("1000092795").shape  # doctest: +SKIP
    torch.Size([100, 2048])
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write_text, temp_name
from .base import DetectionFormatError, Detections, DetectionStore, check_class_probs
from .native_store import NATIVE_FORMAT, NATIVE_MANIFEST, PROBS_SUFFIX, SHARDS, NativeDetections, read_manifest
from .sources import open_detections

__all__ = ["NATIVE_FORMAT", "NATIVE_MANIFEST", "NativeDetections", "convert", "write_native"]


logger = logging.getLogger("lightning_wsg")


def _source_identity(path: Path) -> dict[str, Any]:
    """What names a source: its resolved path, size and modification time (folders: their files')."""
    path = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {
        "path": str(path),
        "size": sum(p.stat().st_size for p in files),
        "mtime_ns": max(p.stat().st_mtime_ns for p in files),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _image_probs(store: DetectionStore, det: Detections, width: int | None) -> np.ndarray | None:
    """An image's ``[N, C]`` float16 class probabilities (``None`` when the store carries none), checked."""
    if width is None:
        if det.class_probs is not None and len(det) and store.class_names:  # without names: dropped
            raise DetectionFormatError(
                f"{store.path}: image {det.image_id} carries class_probs but the first image with boxes does not: "
                "a source's records carry them all or none"
            )
        return None
    if not len(det):
        return np.zeros((0, width), np.float16)
    if det.class_probs is None:
        raise DetectionFormatError(
            f"{store.path}: image {det.image_id} carries no class_probs but the other images do: a source's "
            "records carry them all or none"
        )
    probs = det.class_probs.detach().float().cpu()
    if probs.shape[0] != len(det):
        raise DetectionFormatError(
            f"{store.path}: image {det.image_id}: {len(det)} boxes but class_probs of shape {tuple(probs.shape)}"
        )
    check_class_probs(probs, str(store.path), det.image_id, width)
    return probs.numpy().astype(np.float16)


def _write_shard(
    folder: Path,
    k: int,
    store: DetectionStore,
    image_ids: list[str],
    label_names: list[str],
    probs_width: int | None = None,
) -> None:
    """Write shard ``k`` (features, class probabilities, then its index), each under a temporary
    name, checked, renamed."""
    blocks, offsets, boxes, scores, labels, sizes, prob_blocks = [], [0], [], [], [], [], []
    lookup = {name: i for i, name in enumerate(label_names)}
    for image_id in image_ids:
        det = store[image_id]
        feats = store.features(image_id) if len(det) else torch.zeros(0, store.feature_dim)
        if feats.shape != (len(det), store.feature_dim):
            raise DetectionFormatError(
                f"{store.path}: image {image_id}: features {tuple(feats.shape)} for {len(det)} boxes of width "
                f"{store.feature_dim}"
            )
        blocks.append(feats.numpy().astype(np.float16))
        prob_blocks.append(_image_probs(store, det, probs_width))
        offsets.append(offsets[-1] + len(det))
        boxes.append(det.boxes.float())
        scores.append(det.scores.float())
        labels.append(torch.tensor([lookup[x] for x in det.labels] if det.labels is not None else [-1] * len(det)))
        sizes.append(list(det.image_size) if det.image_size is not None else [0, 0])
    features = np.concatenate(blocks) if blocks else np.zeros((0, store.feature_dim), np.float16)
    if not np.isfinite(features).all():
        raise DetectionFormatError(
            f"{store.path}: features of shard {k} overflow float16 (|x| > 65504) or are not finite"
        )
    index = {
        "image_ids": list(image_ids),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "boxes": torch.cat(boxes) if boxes else torch.zeros(0, 4),
        "scores": torch.cat(scores) if scores else torch.zeros(0),
        "labels": torch.cat(labels).to(torch.int32) if labels else torch.zeros(0, dtype=torch.int32),
        "has_labels": torch.tensor([store[i].labels is not None for i in image_ids]),
        "image_sizes": torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2),
    }
    probs = None
    if probs_width is not None:
        probs = np.concatenate(prob_blocks) if prob_blocks else np.zeros((0, probs_width), np.float16)
    shards = folder / SHARDS
    npy, pt, probs_npy = shards / f"{k:06d}.npy", shards / f"{k:06d}.pt", shards / f"{k:06d}{PROBS_SUFFIX}"
    tmp_npy, tmp_pt = temp_name(npy).with_suffix(".npy"), temp_name(pt)
    tmp_probs = temp_name(probs_npy).with_suffix(".npy")
    try:
        np.save(tmp_npy, features)
        if probs is not None:
            np.save(tmp_probs, probs)
        torch.save(index, tmp_pt)
        _check_shard(tmp_npy, tmp_pt, features, index, store)
        if probs is not None and not np.array_equal(np.load(tmp_probs, mmap_mode="r"), probs):
            raise DetectionFormatError(
                f"{store.path}: a written shard ({probs_npy.name}) disagrees with the source when read back"
            )
        os.replace(tmp_npy, npy)
        if probs is not None:
            os.replace(tmp_probs, probs_npy)
        os.replace(tmp_pt, pt)  # the index last: a shard counts once its index is in place
    finally:
        tmp_npy.unlink(missing_ok=True)
        tmp_probs.unlink(missing_ok=True)
        tmp_pt.unlink(missing_ok=True)


def _check_shard(npy: Path, pt: Path, features: np.ndarray, index: dict[str, Any], store: DetectionStore) -> None:
    """The written files read back against what was read from the source."""
    written = torch.load(pt, weights_only=True)
    same = (
        np.array_equal(np.load(npy, mmap_mode="r"), features)
        and written["image_ids"] == index["image_ids"]
        and all(torch.equal(written[k], index[k]) for k in ("offsets", "boxes", "scores", "labels", "image_sizes"))
    )
    if not same:
        raise DetectionFormatError(
            f"{store.path}: a written shard ({npy.name}) disagrees with the source when read back"
        )


def convert(
    source: str | Path,
    folder: str | Path,
    vocabulary: str | Path | None = None,
    shard_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert a detections source with features into a native store (resumable).

    Args:
        source: a bottom-up TSV, an HDF5 file or folder, or anything :func:`open_detections` reads
            that has features.
        folder: the native store to write (created; a finished or partial one is resumed).
        vocabulary: names the TSV's ``objects_id`` (as ``data.vocabulary``).
        shard_size: images per shard.
        progress: called with ``(shards done, shards in all)`` after each shard.

    Returns:
        The folder.

    Raises:
        DetectionFormatError: the source has no features, or the folder holds a conversion of
            another source or shard size.
    """
    source = Path(source)
    store = open_detections(source, vocabulary)
    if store.feature_dim is None:
        raise DetectionFormatError(f"{source}: no per-box features to convert")
    identity = {
        "source": _source_identity(source),
        "vocabulary": str(Path(vocabulary).resolve()) if vocabulary is not None else None,
    }
    return write_native(store, folder, identity, shard_size, progress)


def write_native(
    store: DetectionStore,
    folder: str | Path,
    identity: dict[str, Any],
    shard_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write any store with features as a native store (the body of :func:`convert`).

    ``identity`` names the source in the manifest (a folder written from another identity is
    refused); the other arguments are :func:`convert`'s. When ``store`` has ``class_names`` and
    its records carry ``class_probs`` (``[N, C]`` over the class names), each shard keeps them
    beside its features (``<k>.probs.npy``, float16).

    Raises:
        DetectionFormatError: the folder holds another conversion; an image's features have
            another width or overflow float16; class probabilities that are no probabilities
            (:func:`~lightning_wsg.detection.base.check_class_probs`) or that some images
            carry and others not.
    """
    folder = Path(folder)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    image_ids = sorted(store)
    label_names = sorted({x for i in image_ids for x in (store[i].labels or [])})
    if store.class_names:
        label_names = list(dict.fromkeys([*store.class_names, *label_names]))
    probs_width = store.class_probs_width()
    if probs_width is not None and not store.class_names:
        logger.warning(
            "%s: the records carry class_probs but the source names no classes (class_names) to read them by: "
            "the native store keeps top-1 labels and scores only",
            store.path,
        )
        probs_width = None
    if probs_width is not None and probs_width != len(store.class_names):
        example = next(i for i in image_ids if store[i].class_probs is not None)
        raise DetectionFormatError(
            f"{store.path}: image {example}: class_probs of width {probs_width}, but the store names "
            f"{len(store.class_names)} classes (class_names): one column per class name"
        )
    plan = [image_ids[i : i + shard_size] for i in range(0, len(image_ids), shard_size)]
    settings = {
        "format": NATIVE_FORMAT,
        **identity,
        "feature_dim": store.feature_dim,
        "dtype": "float16",
        "shard_size": shard_size,
        "num_images": len(image_ids),
        "num_shards": len(plan),
        "label_names": label_names,
        "class_names": store.class_names,
        # absent in stores written before class probabilities were kept: read as None
        "class_probs": {"width": probs_width, "dtype": "float16"} if probs_width is not None else None,
    }
    manifest_path = folder / NATIVE_MANIFEST
    if manifest_path.is_file():
        old = read_manifest(folder)
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            raise DetectionFormatError(
                f"{folder}: a native store of another source or setting ({', '.join(changed)} differ); "
                "convert into a new folder or delete this one"
            )
        manifest = old
    else:
        manifest = {**settings, "created": _now(), "complete": False}
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    for k, ids in enumerate(plan):
        if not (folder / SHARDS / f"{k:06d}.pt").is_file():
            _write_shard(folder, k, store, ids, label_names, probs_width)
        if progress is not None:
            progress(k + 1, len(plan))
    manifest.update(complete=True, finished=_now())
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return folder
