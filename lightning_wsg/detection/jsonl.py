"""The project's own detections format, JSON Lines: one record per image.

::

    {"image_id": "1000092795", "boxes": [[x1, y1, x2, y2], ...],
     "labels": ["man", ...], "scores": [0.93, ...]}

``labels`` and ``scores`` are optional; ``class_probs`` (a list of per-box probability vectors
over a vocabulary) is optional and then needs a header record ``{"class_names": [...]}`` on the
first line, one column per name. Each row is ``P(class | box)`` over the foreground classes
(:func:`~lightning_wsg.detection.base.check_class_probs`).

:class:`JsonlDetections` reads a ``*.jsonl`` / ``*.json`` file (through
:func:`~lightning_wsg.detection.sources.open_detections`); :func:`write_jsonl` writes one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from ..jsonl import read_jsonl
from .base import DetectionFormatError, Detections, DetectionStore, register_reader

__all__ = ["JsonlDetections", "write_jsonl"]


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


@register_reader(lambda path: not path.is_dir() and path.suffix.lower() in (".jsonl", ".json"), order=40)
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
