"""Region features in the HDF5 layout of the BAN / MAF Flickr30K pipelines.

One ``<name>.hdf5`` (or ``.h5``) per split, with its index ``<name>_imgid2idx.pkl`` beside it
(a pickled ``{image_id: row of pos_boxes}``):

* ``image_features``: ``[num_boxes_total, dim]`` per-box features, the boxes of all images
  one after the other;
* ``image_bb``: ``[num_boxes_total, 4]`` box corners ``x1, y1, x2, y2`` in image pixels;
* ``spatial_features`` (optional): ``[num_boxes_total, 6]`` corners divided by the image's
  width and height, then the relative width and height (the image size is read from it);
* ``pos_boxes``: ``[num_images, 2]`` the first and one-past-the-last row of each image.

The fixed-size variant (``image_features`` ``[num_images, K, dim]``, ``image_bb``
``[num_images, K, 4]``, no ``pos_boxes``) is read too. A folder of such files is one store
(each image in one file only). Boxes are read when the store opens; features one image at a
time (:meth:`Hdf5Detections.features`), so the file is never held in memory. There are no
detector labels in this layout: distillation needs a labelled source.

Example:
    >>> store = Hdf5Detections("flickr30k/train.hdf5")  # reads train_imgid2idx.pkl  # doctest: +SKIP
    >>> store.features("1000092795").shape  # doctest: +SKIP
    torch.Size([31, 2048])
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DetectionFormatError, Detections, DetectionStore, register_reader

__all__ = ["HDF5_SUFFIXES", "Hdf5Detections", "index_path", "write_hdf5"]

HDF5_SUFFIXES = (".h5", ".hdf5")


def index_path(path: Path) -> Path:
    """The ``<stem>_imgid2idx.pkl`` index beside an HDF5 file."""
    return path.with_name(f"{path.stem}_imgid2idx.pkl")


def _h5py():
    try:
        import h5py
    except ImportError as err:  # a dependency of the package; say so if an environment lacks it
        raise ImportError("reading HDF5 region features needs h5py (pip install h5py)") from err
    return h5py


def _is_hdf5_source(path: Path) -> bool:
    """An HDF5 file, or a folder holding one (asked after the cache's and the native store's markers)."""
    if path.is_dir():
        return any(p.suffix.lower() in HDF5_SUFFIXES for p in path.iterdir())
    return path.suffix.lower() in HDF5_SUFFIXES


@register_reader(_is_hdf5_source, order=30)
class Hdf5Detections(DetectionStore):
    """Boxes and per-box features from BAN / MAF-style HDF5 files (see the module docstring).

    Args:
        path: one ``.hdf5`` / ``.h5`` file, or a folder of them (each with its index).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in HDF5_SUFFIXES)
            if not files:
                raise DetectionFormatError(f"{path}: a folder without .h5 / .hdf5 files")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"detections not found: {path}")
        records: dict[str, Detections] = {}
        self._rows: dict[str, tuple[int, int, int]] = {}  # image id -> (file, first row, end row or -1)
        self._files = files
        dims: dict[int, Path] = {}
        for number, file in enumerate(files):
            dim = self._read(number, file, records)
            dims.setdefault(dim, file)
        if len(dims) > 1:
            (d0, f0), (d1, f1) = list(dims.items())[:2]
            raise DetectionFormatError(f"{path}: features of width {d0} in {f0} but {d1} in {f1}")
        super().__init__(path, records, None)
        self.feature_dim = next(iter(dims))
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def _read(self, number: int, file: Path, records: dict[str, Detections]) -> int:
        h5py = _h5py()
        try:
            handle = h5py.File(file, "r")
        except OSError as err:
            raise DetectionFormatError(f"{file}: not a readable HDF5 file (truncated or corrupt?): {err}") from None
        with handle:
            for name in ("image_features", "image_bb"):
                if name not in handle:
                    raise DetectionFormatError(
                        f"{file}: no dataset {name!r} (expected image_features, image_bb, pos_boxes; has "
                        f"{sorted(handle.keys())})"
                    )
            feats, bb = handle["image_features"], handle["image_bb"]
            fixed = "pos_boxes" not in handle
            want = 3 if fixed else 2
            if (
                feats.ndim != want
                or bb.ndim != want
                or bb.shape[-1] != 4
                or feats.shape[: want - 1] != bb.shape[: want - 1]
            ):
                layout = "[rows, dim] and [rows, 4]"
                if fixed:
                    layout = "[images, K, dim] and [images, K, 4] without pos_boxes"
                raise DetectionFormatError(
                    f"{file}: image_features {feats.shape} and image_bb {bb.shape} disagree (expected {layout})"
                )
            try:
                boxes = np.asarray(bb[()], dtype=np.float32)
                spatial = (
                    np.asarray(handle["spatial_features"][()], dtype=np.float32)
                    if "spatial_features" in handle
                    else None
                )
                pos = None if fixed else np.asarray(handle["pos_boxes"][()], dtype=np.int64)
            except OSError as err:
                raise DetectionFormatError(f"{file}: unreadable data (truncated or corrupt?): {err}") from None
            dim = int(feats.shape[-1])
            total = int(feats.shape[0])
        if pos is not None and (pos.ndim != 2 or pos.shape[1] != 2):
            raise DetectionFormatError(f"{file}: pos_boxes must be [num_images, 2], got {pos.shape}")
        index = self._index(file)
        images = len(pos) if pos is not None else total
        for image_id, idx in index.items():
            where = f"{file} (index {index_path(file).name}): image {image_id}"
            if not 0 <= idx < images:
                raise DetectionFormatError(f"{where}: row {idx} outside the file's {images} images")
            if image_id in records:  # before this file's rows replace the first file's
                raise DetectionFormatError(f"{where}: the image is also in {self._files[self._rows[image_id][0]]}")
            if pos is not None:
                start, end = (int(v) for v in pos[idx])
                if not 0 <= start <= end <= total:
                    raise DetectionFormatError(f"{where}: pos_boxes [{start}, {end}) outside the {total} feature rows")
                rows, self._rows[image_id] = slice(start, end), (number, start, end)
            else:
                rows, self._rows[image_id] = idx, (number, idx, -1)
            det = Detections(image_id, torch.from_numpy(boxes[rows].copy()).reshape(-1, 4), None, torch.ones(0))
            det.scores = torch.ones(len(det))
            if spatial is not None:
                det.image_size = _size_from_spatial(boxes[rows].reshape(-1, 4), spatial[rows].reshape(-1, 6))
            det.validate(where)
            records[image_id] = det
        return dim

    @staticmethod
    def _index(file: Path) -> dict[str, int]:
        pkl = index_path(file)
        if not pkl.is_file():
            raise FileNotFoundError(f"{file}: its image index {pkl} is missing (a pickled {{image_id: row}})")
        try:
            with pkl.open("rb") as fh:
                index = pickle.load(fh)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise DetectionFormatError(f"{pkl}: not a readable pickle (truncated or corrupt?): {err}") from None
        if not isinstance(index, dict):
            raise DetectionFormatError(f"{pkl}: expected a dict image_id -> row, got {type(index).__name__}")
        try:
            return {str(k): int(v) for k, v in index.items()}
        except (TypeError, ValueError):
            raise DetectionFormatError(f"{pkl}: the rows must be integers") from None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # each process opens the files again
        return state

    def features(self, image_id: str) -> Tensor:
        number, start, end = self._rows[str(image_id)]
        if self._pid != os.getpid():  # forked (a DataLoader worker): HDF5 handles do not survive a fork
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(number)
        if handle is None:
            handle = self._handles[number] = _h5py().File(self._files[number], "r")
        try:
            block = handle["image_features"][start:end] if end >= 0 else handle["image_features"][start]
        except OSError as err:
            raise DetectionFormatError(
                f"{self._files[number]}: image {image_id}: unreadable features (truncated or corrupt?): {err}"
            ) from None
        return torch.from_numpy(np.asarray(block, dtype=np.float32)).reshape(-1, self.feature_dim)


def _size_from_spatial(boxes: np.ndarray, spatial: np.ndarray) -> tuple[int, int] | None:
    """The image's ``(width, height)`` from pixel corners and the same corners divided by it."""
    for box, rel in zip(boxes, spatial):
        if rel[2] > 0 and rel[3] > 0:
            return round(float(box[2] / rel[2])), round(float(box[3] / rel[3]))
    return None


def write_hdf5(path: str | Path, records: list[tuple[Detections, np.ndarray]]) -> Path:
    """Write detections with per-box features in the BAN / MAF layout, and the index beside it.

    ``records``: ``(detections, [N, dim] features)`` per image; ``spatial_features`` is written
    when every image has its ``image_size``. Numeric image ids are pickled as integers, as the
    pipelines do.
    """
    h5py = _h5py()
    path = Path(path)
    feats, boxes, spatial, pos, index, row = [], [], [], [], {}, 0
    for number, (det, features) in enumerate(records):
        features = np.asarray(features, dtype=np.float32).reshape(len(det), -1)
        bb = det.boxes.numpy().astype(np.float32)
        if det.image_size is not None:
            w, h = det.image_size
            rel = bb / np.array([w, h, w, h], np.float32)
            spatial.append(np.concatenate([rel, rel[:, 2:] - rel[:, :2]], axis=1))
        feats.append(features)
        boxes.append(bb)
        pos.append([row, row + len(bb)])
        row += len(bb)
        key = str(det.image_id)
        index[int(key) if key.isdigit() else key] = number
    dim = feats[0].shape[1] if feats else 0
    with h5py.File(path, "w") as f:
        f.create_dataset("image_features", data=np.concatenate(feats) if feats else np.zeros((0, dim), np.float32))
        f.create_dataset("image_bb", data=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32))
        if spatial and len(spatial) == len(boxes):
            f.create_dataset("spatial_features", data=np.concatenate(spatial))
        f.create_dataset("pos_boxes", data=np.array(pos, np.int64).reshape(-1, 2))
    with index_path(path).open("wb") as fh:
        pickle.dump(index, fh)
    return path
