"""bottom-up-attention TSV (Visual Genome Faster R-CNN): boxes, labels and per-box features.

Tab-separated ``image_id, image_w, image_h, num_boxes, boxes, features`` with base64 float32
arrays (``features``: ``num_boxes x dim``, read lazily, one image at a time), or a ten-field
variant with ``objects_id`` (int64) and ``objects_conf`` (float32): either the LXMERT order
``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
features`` or the six fields followed by ``objects_id, objects_conf, attrs_id, attrs_conf``.
Labels come from ``objects_id`` named through a vocabulary file (first synonym of each line,
:func:`~lightning_wsg.detection.base.read_vocabulary`).

:class:`TsvDetections` reads a ``*.tsv`` file (through
:func:`~lightning_wsg.detection.sources.open_detections`); :func:`write_tsv` writes one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import DetectionFormatError, Detections, DetectionStore, read_vocabulary, register_reader

__all__ = ["TsvDetections", "write_tsv"]


_TSV_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
_TSV_LABEL_FIELDS = ["objects_id", "objects_conf", "attrs_id", "attrs_conf"]
_LXMERT_FIELDS = ["image_id", "image_h", "image_w", *_TSV_LABEL_FIELDS, "num_boxes", "boxes", "features"]


def _b64_array(text: str | bytes, dtype, where: str, name: str) -> np.ndarray:
    try:
        # validate: by default b64decode drops characters outside the alphabet instead of refusing them
        return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)
    except (ValueError, TypeError) as err:
        raise DetectionFormatError(f"{where}: field {name!r} is not base64 {np.dtype(dtype).name}: {err}") from None


@register_reader(lambda path: not path.is_dir() and path.suffix.lower() == ".tsv", order=50, vocabulary=True)
class TsvDetections(DetectionStore):
    """Boxes (and labels when ``objects_id`` is present) and per-box features from a
    bottom-up-attention TSV.

    Opening reads every row's boxes and labels and checks each row's ``features`` field for
    its size (``num_boxes x dim`` float32, one ``dim`` for the whole file) without decoding it;
    :meth:`features` decodes one image's block from its place in the file when asked, so a
    30,000-image file of 2048-d features is never held in memory.

    Args:
        path: the TSV file.
        vocabulary: the detector vocabulary (for example ``vg_objects_vocab.txt``); needed
            to name ``objects_id``. Without it the records carry no labels.
    """

    def __init__(self, path: str | Path, vocabulary: str | Path | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"detections file not found: {path}")
        vocab = read_vocabulary(vocabulary) if vocabulary is not None else None
        records: dict[str, Detections] = {}
        self._feature_at: dict[str, tuple[int, int, int]] = {}  # image id -> (offset, length, line)
        dims: dict[int, tuple[int, str]] = {}  # feature width -> (first line, image) with it
        offset = 0
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                start, offset = offset, offset + len(raw)
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = line.decode("ascii").split("\t")
                except UnicodeDecodeError:
                    raise DetectionFormatError(f"{where}: not a bottom-up-attention TSV row (non-ASCII)") from None
                if len(row) not in (6, 10):
                    raise DetectionFormatError(
                        f"{where}: expected 6 or 10 tab-separated fields, got {len(row)} (a truncated file?)"
                    )
                # ten fields: LXMERT order unless the fourth field is num_boxes (labels appended)
                lxmert = len(row) == 10 and not row[3].strip().isdigit()
                names = _LXMERT_FIELDS if lxmert else _TSV_FIELDS + _TSV_LABEL_FIELDS
                fields = dict(zip(names, row))
                try:
                    n = int(fields["num_boxes"])
                except ValueError:
                    raise DetectionFormatError(
                        f"{where}: num_boxes is not an integer: {fields['num_boxes']!r}"
                    ) from None
                boxes = _b64_array(fields["boxes"], np.float32, where, "boxes")
                if boxes.size != 4 * n:
                    raise DetectionFormatError(f"{where}: num_boxes={n} but boxes hold {boxes.size} floats")
                labels = None
                scores = torch.ones(n)
                if "objects_id" in fields:
                    ids = _b64_array(fields["objects_id"], np.int64, where, "objects_id")
                    conf = _b64_array(fields["objects_conf"], np.float32, where, "objects_conf")
                    if ids.size != n or conf.size != n:
                        raise DetectionFormatError(
                            f"{where}: num_boxes={n} but {ids.size} objects_id and {conf.size} objects_conf"
                        )
                    scores = torch.from_numpy(conf.copy())
                    if vocab is not None:
                        if n and (ids.min() < 0 or ids.max() >= len(vocab)):
                            raise DetectionFormatError(f"{where}: objects_id outside the {len(vocab)}-class vocabulary")
                        labels = [vocab[i] for i in ids.tolist()]
                size = _image_size(fields, where)
                det = Detections(fields["image_id"], torch.from_numpy(boxes.copy()).reshape(n, 4), labels, scores)
                det.image_size = size
                det.validate(where)
                if det.image_id in records:
                    raise DetectionFormatError(f"{where}: image {det.image_id} appears twice")
                records[det.image_id] = det
                if n:
                    dim = _feature_width(fields["features"], n, f"{where} (image {det.image_id})")
                    dims.setdefault(dim, (lineno, det.image_id))
                    if len(dims) > 1:
                        (d0, (l0, i0)), (d1, (l1, i1)) = list(dims.items())[:2]
                        raise DetectionFormatError(
                            f"{path}: features of {d0} values per box (line {l0}, image {i0}) and of {d1} "
                            f"(line {l1}, image {i1}): one width per file"
                        )
                    position = names.index("features")
                    before = sum(len(f) + 1 for f in row[:position])
                    self._feature_at[det.image_id] = (start + before, len(fields["features"]), lineno)
        super().__init__(path, records, vocab)
        self.feature_dim = next(iter(dims), None)
        self._fh, self._pid = None, os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"] = None  # each process opens the file again
        return state

    def features(self, image_id: str) -> Tensor:
        image_id = str(image_id)
        det = self[image_id]
        if len(det) == 0:
            return torch.zeros(0, self.feature_dim or 0)
        offset, length, lineno = self._feature_at[image_id]
        if self._fh is None or self._pid != os.getpid():
            # a DataLoader worker forked after the parent had read holds a copy of the parent's
            # descriptor, whose file position the two share: its own, and positional reads
            self._fh, self._pid = self.path.open("rb"), os.getpid()
        text = os.pread(self._fh.fileno(), length, offset)
        where = f"{self.path}:{lineno} (image {image_id})"
        if len(text) != length:
            raise DetectionFormatError(f"{where}: the file ended inside the features (changed since it was opened?)")
        values = _b64_array(text, np.float32, where, "features")
        return torch.from_numpy(values.copy()).reshape(len(det), -1)


def _image_size(fields: dict[str, str], where: str) -> tuple[int, int] | None:
    try:
        return int(float(fields["image_w"])), int(float(fields["image_h"]))
    except (KeyError, ValueError):
        raise DetectionFormatError(
            f"{where}: image_w / image_h are not numbers: {fields.get('image_w')!r}, {fields.get('image_h')!r}"
        ) from None


def _feature_width(text: str, n: int, where: str) -> int:
    """Floats per box of a base64 features field, from its length alone (no decoding)."""
    text = text.strip()
    if len(text) % 4:
        raise DetectionFormatError(f"{where}: the features field is not base64 (length {len(text)}; a truncated row?)")
    size = len(text) // 4 * 3 - text[-2:].count("=")
    if size % 4 or (size // 4) % n or size == 0:
        raise DetectionFormatError(
            f"{where}: the features field holds {size} bytes, not num_boxes={n} rows of float32 values"
        )
    return size // 4 // n


def write_tsv(
    path: str | Path, records: Iterable[tuple[Detections, np.ndarray]], class_names: list[str] | None = None
) -> None:
    """Write detections with per-box features as a bottom-up-attention TSV (atomically).

    ``records``: ``(detections, [N, dim] features)`` per image. With ``class_names`` the rows
    carry ``objects_id`` (each label's index in ``class_names``) and ``objects_conf`` (the
    scores) after the six fields, so :class:`TsvDetections` names them through a vocabulary
    file of ``class_names``; otherwise the six fields only.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(class_names or [])}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii") as fh:
        for det, features in records:
            features = np.ascontiguousarray(features, dtype=np.float32)
            if features.shape[0] != len(det):
                raise ValueError(f"image {det.image_id}: {features.shape[0]} feature rows for {len(det)} boxes")
            width, height = det.image_size or (0, 0)
            fields = [
                str(det.image_id), str(int(width)), str(int(height)), str(len(det)),
                base64.b64encode(det.boxes.numpy().astype(np.float32).tobytes()).decode("ascii"),
                base64.b64encode(features.tobytes()).decode("ascii"),
            ]  # fmt: skip
            if class_names is not None:
                if det.labels is None:
                    raise ValueError(f"image {det.image_id}: no labels to write as objects_id")
                ids = np.array([index[label] for label in det.labels], dtype=np.int64)
                n = len(det)
                fields += [
                    base64.b64encode(ids.tobytes()).decode("ascii"),
                    base64.b64encode(det.scores.numpy().astype(np.float32).tobytes()).decode("ascii"),
                    base64.b64encode(np.zeros(n, np.int64).tobytes()).decode("ascii"),
                    base64.b64encode(np.zeros(n, np.float32).tobytes()).decode("ascii"),
                ]
            fh.write("\t".join(fields) + "\n")
    tmp.replace(path)
