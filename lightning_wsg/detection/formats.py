"""Proposal files: read and write the detection formats the project accepts.

Every source ends up as a :class:`DetectionStore`, a read-only mapping from image id
(a string, ``"1000092795"``) to :class:`Detections`. Boxes are corners in pixels of the
original image (see :mod:`lightning_wsg.boxes`).

Formats:

* JSON Lines (the project's own), one record per image::

    {"image_id": "1000092795", "boxes": [[x1, y1, x2, y2], ...],
     "labels": ["man", ...], "scores": [0.93, ...]}

  ``labels`` and ``scores`` are optional; ``class_probs`` (a list of per-box probability
  vectors over a vocabulary) is optional and then needs a header record
  ``{"class_names": [...]}`` on the first line, one column per name. Each row is
  ``P(class | box)`` over the foreground classes: no value negative or non-finite, and the
  row sums to at most 1 (:data:`PROBS_SUM_TOLERANCE` above it is allowed for rounding); less
  than 1 is the background's share, as a softmax over background + classes leaves it
  (:func:`check_class_probs`).
* bottom-up-attention TSV (Visual Genome Faster R-CNN): tab-separated
  ``image_id, image_w, image_h, num_boxes, boxes, features`` with base64 float32 arrays
  (``features``: ``num_boxes x dim``, read lazily, one image at a time),
  or a ten-field variant with ``objects_id`` (int64) and ``objects_conf`` (float32):
  either the LXMERT order ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id,
  attrs_conf, num_boxes, boxes, features`` or the six fields followed by ``objects_id,
  objects_conf, attrs_id, attrs_conf``. Labels come from ``objects_id`` named through a
  vocabulary file (first synonym of each line).
* HDF5 of the BAN / MAF pipelines (:mod:`lightning_wsg.detection.hdf5`): per-box features,
  boxes and spatial features of every image, with a ``<split>_imgid2idx.pkl`` index.

Sources with per-box features (the feature tower's input) report their width as
``store.feature_dim`` and give an image's ``[N, dim]`` float32 block by
``store.features(image_id)``, row ``i`` belonging to box ``i``.

Example:
    >>> store = open_detections("proposals.jsonl")  # doctest: +SKIP
    >>> dets = store["1000092795"]  # doctest: +SKIP
    >>> dets.boxes.shape, dets.labels[:2]  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..jsonl import read_jsonl

__all__ = [
    "DetectionFormatError",
    "DetectionStore",
    "Detections",
    "JsonlDetections",
    "PROBS_SUM_TOLERANCE",
    "TsvDetections",
    "check_class_probs",
    "open_detections",
    "read_vocabulary",
    "write_jsonl",
    "write_tsv",
]


class DetectionFormatError(ValueError):
    """A detections file is malformed; the message names the file and the record."""


#: How far above 1 a row of class probabilities may sum: rounding in files (1e-5 in JSON Lines)
#: and float16 storage (about 5e-4 of the sum) stay well inside it; per-class sigmoid scores
#: or logits do not.
PROBS_SUM_TOLERANCE = 1e-2


def check_class_probs(probs: Tensor, where: str, image_id: str, width: int | None = None) -> None:
    """Refuse class probabilities that cannot be ``P(class | box)`` over foreground classes.

    Args:
        probs: ``[N, C]`` one row per box.
        where: the file (and line) the rows come from, first in the message.
        image_id: the image they belong to, named in the message.
        width: the number of class names the store indexes them by (``None``: not checked).

    Raises:
        DetectionFormatError: not ``[N, C]``, a width other than ``width``, a negative or
            non-finite value, or a row summing to more than ``1 + PROBS_SUM_TOLERANCE`` (a row
            may sum to less: the rest is the background).
    """
    if probs.ndim != 2:
        raise DetectionFormatError(f"{where}: image {image_id}: class_probs must be [N, C], got {tuple(probs.shape)}")
    if width is not None and probs.shape[1] != width and len(probs):
        raise DetectionFormatError(
            f"{where}: image {image_id}: class_probs of width {probs.shape[1]}, but the store names {width} classes "
            "(class_names): one column per class name"
        )
    if not len(probs):
        return
    values = probs.float()
    sums = values.sum(dim=1)
    # the common case in two reductions (stores check each image they return): NaN fails both
    # comparisons, an infinity one of them
    if bool(values.min() >= 0) and bool(sums.max() <= 1.0 + PROBS_SUM_TOLERANCE):
        return
    finite = torch.isfinite(values)
    if not finite.all():
        box = int((~finite).any(dim=1).nonzero()[0])
        raise DetectionFormatError(f"{where}: image {image_id}: class_probs of box {box} are not finite (nan or inf)")
    if (values < 0).any():
        box = int((values < 0).any(dim=1).nonzero()[0])
        raise DetectionFormatError(
            f"{where}: image {image_id}: negative class_probs on box {box} (min {values[box].min().item():.4g}): "
            "probabilities, not logits"
        )
    if (sums > 1.0 + PROBS_SUM_TOLERANCE).any():
        box = int((sums > 1.0 + PROBS_SUM_TOLERANCE).nonzero()[0])
        raise DetectionFormatError(
            f"{where}: image {image_id}: the class_probs of box {box} sum to {sums[box].item():.4f}, more than 1: a "
            "row is P(class | box) over the foreground classes (the background takes the rest), not per-class "
            "sigmoid scores"
        )


@dataclass
class Detections:
    """The detector's output for one image.

    Attributes:
        image_id: the image id as a string.
        boxes: ``[N, 4]`` float32 corners in original-image pixels.
        labels: ``N`` class names, or ``None`` when the source has no labels.
        scores: ``[N]`` float32 confidences (ones when the source has none).
        class_probs: optional ``[N, C]`` class-probability vectors over the store's
            ``class_names``: each row ``P(class | box)`` over the foreground classes, summing
            to at most 1 (:func:`check_class_probs`).
        image_size: the image's ``(width, height)`` when the source gives it.
        features: optional ``[N, D]`` per-box features a detector returns for the cache
            (stores give theirs by :meth:`DetectionStore.features`, not here).
    """

    image_id: str
    boxes: Tensor
    labels: list[str] | None
    scores: Tensor
    class_probs: Tensor | None = None
    image_size: tuple[int, int] | None = None
    features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def validate(self, where: str) -> None:
        """Raise :class:`DetectionFormatError` naming ``where`` if fields disagree or
        ``class_probs`` are no probabilities (:func:`check_class_probs`)."""
        n = len(self)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise DetectionFormatError(
                f"{where}: image {self.image_id}: boxes must be [N, 4], got {tuple(self.boxes.shape)}"
            )
        if self.labels is not None and len(self.labels) != n:
            raise DetectionFormatError(f"{where}: image {self.image_id}: {n} boxes but {len(self.labels)} labels")
        if self.scores.shape != (n,):
            raise DetectionFormatError(f"{where}: image {self.image_id}: {n} boxes but {self.scores.numel()} scores")
        if self.class_probs is not None and (self.class_probs.ndim != 2 or self.class_probs.shape[0] != n):
            raise DetectionFormatError(
                f"{where}: image {self.image_id}: {n} boxes but class_probs of shape {tuple(self.class_probs.shape)}"
            )
        if self.class_probs is not None:
            check_class_probs(self.class_probs, where, self.image_id)
        if self.features is not None and (self.features.ndim != 2 or self.features.shape[0] != n):
            raise DetectionFormatError(
                f"{where}: image {self.image_id}: {n} boxes but features of shape {tuple(self.features.shape)}"
            )
        if n and not torch.isfinite(self.boxes).all():
            raise DetectionFormatError(f"{where}: image {self.image_id}: non-finite box coordinates")
        if n and ((self.boxes[:, 2] < self.boxes[:, 0]) | (self.boxes[:, 3] < self.boxes[:, 1])).any():
            raise DetectionFormatError(f"{where}: image {self.image_id}: a box has x2 < x1 or y2 < y1")


class DetectionStore(Mapping[str, Detections]):
    """Read-only mapping ``image_id -> Detections`` with the source's class names.

    Attributes:
        class_names: the detector's vocabulary, ``None`` when the source names none; the
            columns of the records' ``class_probs`` when they carry them.
        feature_dim: the width of the source's per-box features, ``None`` when it has none.
    """

    path: Path
    class_names: list[str] | None = None
    feature_dim: int | None = None

    def __init__(self, path: str | Path, records: dict[str, Detections], class_names: list[str] | None = None):
        self.path = Path(path)
        self._records = records
        self.class_names = class_names

    def __getitem__(self, image_id: str) -> Detections:
        return self._records[str(image_id)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, images={len(self)})"

    def class_probs_width(self) -> int | None:
        """The width ``C`` of the records' ``class_probs``, ``None`` when they carry none.

        A store's records carry them all or none (images without boxes aside): the first
        record with boxes, or with an empty ``[0, C]`` block, says.
        """
        for image_id in self:
            det = self[image_id]
            if det.class_probs is not None:
                return int(det.class_probs.shape[1])
            if len(det):
                return None
        return None

    def features(self, image_id: str) -> Tensor:
        """The ``[N, feature_dim]`` float32 features of an image's boxes (row ``i``: box ``i``)."""
        raise DetectionFormatError(
            f"{self.path}: this detections source has no per-box features (the feature tower needs a "
            "bottom-up-attention TSV with its features column, or an HDF5 file of image_features)"
        )


def _tensor(values, where: str, name: str, dtype=torch.float32) -> Tensor:
    try:
        return torch.as_tensor(values, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise DetectionFormatError(f"{where}: field {name!r} is not numeric: {err}") from None


def _record_from_json(obj: dict, where: str) -> Detections:
    if not isinstance(obj, dict) or "image_id" not in obj or "boxes" not in obj:
        raise DetectionFormatError(f"{where}: a record needs 'image_id' and 'boxes'")
    boxes = _tensor(obj["boxes"], where, "boxes")
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    n = boxes.shape[0] if boxes.ndim >= 1 else -1
    labels = obj.get("labels")
    if labels is not None:
        labels = [str(x) for x in labels]
    scores = _tensor(obj["scores"], where, "scores") if "scores" in obj else torch.ones(max(n, 0))
    probs = obj.get("class_probs")
    if probs is not None:
        probs = _tensor(probs, where, "class_probs")
        if probs.numel() == 0:
            probs = probs.reshape(0, 0)
    det = Detections(
        image_id=str(obj["image_id"]),
        boxes=boxes,
        labels=labels,
        scores=scores.reshape(-1) if scores.numel() or n == 0 else scores,
        class_probs=probs,
    )
    det.validate(where)
    return det


class JsonlDetections(DetectionStore):
    """Detections from the project's JSON Lines format, read fully into memory."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"detections file not found: {path}")
        records: dict[str, Detections] = {}
        class_names = None
        for lineno, obj in read_jsonl(path, DetectionFormatError):
            where = f"{path}:{lineno}"
            if lineno == 1 and isinstance(obj, dict) and "class_names" in obj and "image_id" not in obj:
                class_names = [str(c) for c in obj["class_names"]]
                continue
            det = _record_from_json(obj, where)
            if det.class_probs is not None and (
                class_names is None or (len(det) and det.class_probs.shape[1] != len(class_names))
            ):
                header = f"a header of {len(class_names)} names" if class_names is not None else "no header"
                raise DetectionFormatError(
                    f"{where}: class_probs need a class_names header of matching length (image {det.image_id}: rows "
                    f"of width {det.class_probs.shape[1]}, {header})"
                )
            if det.class_probs is not None and len(det) == 0:
                det.class_probs = torch.zeros(0, len(class_names))
            if det.image_id in records:
                raise DetectionFormatError(f"{where}: image {det.image_id} appears twice")
            records[det.image_id] = det
        super().__init__(path, records, class_names)


def read_vocabulary(path: str | Path) -> list[str]:
    """Class names, one per line; a line of comma-separated synonyms is named by the first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    names = [line.strip().split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    if not names or any(not n for n in names):
        raise DetectionFormatError(f"{path}: empty vocabulary line")
    return names


_TSV_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
_TSV_LABEL_FIELDS = ["objects_id", "objects_conf", "attrs_id", "attrs_conf"]
_LXMERT_FIELDS = ["image_id", "image_h", "image_w", *_TSV_LABEL_FIELDS, "num_boxes", "boxes", "features"]


def _b64_array(text: str | bytes, dtype, where: str, name: str) -> np.ndarray:
    try:
        # validate: by default b64decode drops characters outside the alphabet instead of refusing them
        return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)
    except (ValueError, TypeError) as err:
        raise DetectionFormatError(f"{where}: field {name!r} is not base64 {np.dtype(dtype).name}: {err}") from None


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


def open_detections(path: str | Path, vocabulary: str | Path | None = None) -> DetectionStore:
    """Open any supported detections source by its path.

    ``*.jsonl`` / ``*.json`` -> :class:`JsonlDetections`; ``*.tsv`` -> :class:`TsvDetections`;
    ``*.h5`` / ``*.hdf5``, or a folder of them ->
    :class:`~lightning_wsg.detection.hdf5.Hdf5Detections`; a native feature store (a folder
    holding ``features.json``) -> :class:`~lightning_wsg.detection.native.NativeDetections`; a
    detection-cache folder (one holding ``manifest.json``, written by
    :class:`~lightning_wsg.detection.DetectionCache`) -> :class:`~lightning_wsg.detection.store.CachedDetections`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"detections not found: {path}")
    if path.is_dir():
        from .store import MANIFEST, CachedDetections  # store.py imports this module

        if (path / MANIFEST).is_file():
            return CachedDetections(path)
        from .native import NATIVE_MANIFEST, NativeDetections

        if (path / NATIVE_MANIFEST).is_file():
            return NativeDetections(path)
        if any(p.suffix.lower() in (".h5", ".hdf5") for p in path.iterdir()):
            from .hdf5 import Hdf5Detections

            return Hdf5Detections(path)
        settings = sorted(p.name for p in path.iterdir() if (p / MANIFEST).is_file())
        if settings:
            raise DetectionFormatError(
                f"{path}: a detection-cache root holding {len(settings)} detector settings; "
                f"point at one of its folders: {', '.join(settings)}"
            )
        raise DetectionFormatError(f"{path}: a folder but not a detection cache (no {MANIFEST})")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return JsonlDetections(path)
    if suffix == ".tsv":
        return TsvDetections(path, vocabulary)
    if suffix in (".h5", ".hdf5"):
        from .hdf5 import Hdf5Detections  # imports this module

        return Hdf5Detections(path)
    raise DetectionFormatError(f"{path}: unknown detections format (expected .jsonl, .tsv, .h5 or .hdf5)")


def write_jsonl(path: str | Path, detections: Iterable[Detections], class_names: list[str] | None = None) -> None:
    """Write detections in the project's JSON Lines format (atomically: temp file, rename).

    Boxes are rounded to 0.01 pixel, scores to 1e-4, class probabilities to 1e-5.
    ``class_names`` is required when any record carries ``class_probs``.
    """
    path = Path(path)
    detections = list(detections)
    if class_names is None and any(det.class_probs is not None for det in detections):
        raise ValueError(f"{path}: records carry class_probs: write_jsonl needs their class_names")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        if class_names is not None:
            fh.write(json.dumps({"class_names": list(class_names)}) + "\n")
        for det in detections:
            rec = {
                "image_id": str(det.image_id),
                "boxes": [[round(float(v), 2) for v in b] for b in det.boxes.tolist()],
                "scores": [round(float(s), 4) for s in det.scores.tolist()],
            }
            if det.labels is not None:
                rec["labels"] = list(det.labels)
            if det.class_probs is not None:
                rec["class_probs"] = [[round(float(p), 5) for p in row] for row in det.class_probs.tolist()]
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(path)


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
