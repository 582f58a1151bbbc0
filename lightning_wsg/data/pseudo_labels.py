"""Pseudo-label files: the chosen box of each phrase, in layouts that supervised grounders read.

:class:`~lightning_wsg.callbacks.PseudoLabelWriter` (``lightning predict``) collects one
:class:`PseudoLabel` per phrase and writes them with the functions here:

* :func:`write_refer_from_refs`, for a source in the refer layout (RefCOCO family): a
  ``<dataset>/refs(<split_by>).p`` + ``<dataset>/instances.json`` pair whose annotation boxes
  are the predictions. Refs keep their ``ref_id``, ``ann_id``, ``image_id``, ``category_id``,
  ``split``, ``file_name`` and sentences (``sent_id``, ``tokens``, ``raw``, ``sent``), so the
  pair reads as the original does (:class:`~lightning_wsg.data.RefCOCODataModule`). A ref
  names one box, but each of its expressions was grounded on its own: where they chose
  different boxes, the first box keeps the ref's ids and each other box becomes a new ref
  (``ref_id`` and ``ann_id`` above the source's largest, ``source_ref_id`` and
  ``source_ann_id`` naming the original) holding the expressions that chose it.
* :func:`write_refer_from_phrases`, for any other source (Flickr30K Entities, the synthetic
  world): each phrase becomes a ref with one expression, the phrase's words; the ref's
  ``source`` names its ``sentence_id``, ``phrase_id`` (Flickr chain id) and word ``span``,
  its category is the phrase's first type.
* :func:`write_phrase_jsonl`: JSON Lines, one line per phrase keyed by ``image_id``,
  ``sentence_id`` and ``phrase_id`` (Flickr chain id; RefCOCO ``sent_id``)::

    {"split": "train", "image_id": "1000000", "sentence_id": "1000000#0", "phrase_id": "2",
     "phrase": "The purple kite", "span": [0, 3], "types": ["other"],
     "box": [81.0, 51.0, 110.0, 87.0], "score": 0.83}

Boxes: refer annotations hold COCO ``[x, y, w, h]`` (0-based); JSON Lines hold corners
``[x1, y1, x2, y2]`` in original pixels, ``x2, y2`` exclusive, as ``predictions.jsonl``
(:mod:`lightning_wsg.boxes`). An annotation's ``score`` (and each refer sentence's) is the
model's score of the chosen box.

Example:
    >>> label = PseudoLabel("train", "7", "7#0", ["a", "red", "car"], (1, 3), "1", ["vehicles"],
    ...                     [10.0, 20.0, 50.0, 40.0], 0.8, (64, 48))
    >>> label.phrase
    'red car'
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..boxes import corners_to_coco
from ..files import atomic_open, atomic_write_text
from .refcoco_parsers import ReferIndex, refs_path

__all__ = ["PseudoLabel", "float32_text", "write_phrase_jsonl", "write_refer_from_phrases", "write_refer_from_refs"]


def float32_text(values: Sequence[float]) -> list[float]:
    """Each value as the shortest decimal that reads back as the same float32 (``82.99``, not
    ``82.98999786376953``): boxes and scores are float32, and so are the readers' tensors."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


@dataclass(slots=True)
class PseudoLabel:
    """The chosen box of one phrase.

    Attributes:
        split: the dataset split of the sentence.
        image_id: the image id.
        sentence_id: the sentence id (``"<image_id>#<index>"`` on Flickr, ``sent_id`` on RefCOCO).
        words: the sentence's words.
        span: the phrase's words ``(start, end)``, ``end`` exclusive.
        phrase_id: Flickr chain id, RefCOCO ``sent_id``.
        types: the phrase's types (RefCOCO: its category name), possibly empty.
        box: the chosen box, corners in original pixels.
        score: the model's score of the chosen box.
        image_size: the original ``(width, height)``.
    """

    split: str
    image_id: str
    sentence_id: str
    words: list[str]
    span: tuple[int, int]
    phrase_id: str
    types: list[str]
    box: list[float]
    score: float
    image_size: tuple[int, int]

    @property
    def phrase(self) -> str:
        return " ".join(self.words[self.span[0] : self.span[1]])


def write_phrase_jsonl(path: str | Path, labels: Sequence[PseudoLabel]) -> Path:
    """One JSON line per label (see the module docstring); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:  # a cut-short file would parse and lose labels silently
        for label in labels:
            record = {
                "split": label.split,
                "image_id": label.image_id,
                "sentence_id": label.sentence_id,
                "phrase_id": label.phrase_id,
                "phrase": label.phrase,
                "span": list(label.span),
                "types": list(label.types),
                "box": float32_text(label.box),
                "score": float32_text([label.score])[0],
            }
            fh.write(json.dumps(record) + "\n")
    return path


def _annotation(ann_id: int, image_id: Any, category_id: Any, box: Sequence[float], score: float) -> dict:
    x, y, w, h = float32_text(corners_to_coco(torch.tensor(box, dtype=torch.float32)).tolist())
    score = float32_text([score])[0]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "area": w * h,
            "iscrowd": 0, "segmentation": [], "score": score}  # fmt: skip


def _write_pair(root: Path, dataset: str, split_by: str, refs: list[dict], instances: dict) -> tuple[Path, Path]:
    refs_file = root / dataset / f"refs({split_by}).p"
    refs_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(refs_file, "wb") as fh:
        pickle.dump(refs, fh, protocol=2)  # the refer API's protocol (its data was pickled by Python 2)
    instances_file = root / dataset / "instances.json"
    atomic_write_text(instances_file, json.dumps(instances))
    return refs_file, instances_file


def write_refer_from_refs(
    root: str | Path,
    dataset: str,
    split_by: str,
    refs: Sequence[dict],
    index: ReferIndex,
    labels: Sequence[PseudoLabel],
) -> tuple[Path, Path]:
    """The refer-layout pair of a refer-layout source, boxes replaced by ``labels``.

    Args:
        root: the output refer data folder (``root/<dataset>/refs(<split_by>).p``, ``instances.json``).
        dataset, split_by: the source's (the files' names).
        refs: the source refs (:func:`~lightning_wsg.data.refcoco_parsers.read_refs`).
        index: the source instances (images, the referred annotations' categories, category names).
        labels: one per expression (``sentence_id`` is its ``sent_id``); refs with no labelled
            expression are left out, and so are the expressions without a label.

    Returns:
        The refs and instances files written.
    """
    refs_path(root, dataset, split_by)  # the combination is checked
    by_sentence = {label.sentence_id: label for label in labels}
    next_ref = max((int(r["ref_id"]) for r in refs), default=-1) + 1
    next_ann = max((int(r["ann_id"]) for r in refs), default=0) + 1
    out_refs: list[dict] = []
    annotations: list[dict] = []
    image_ids: dict[str, Any] = {}
    for ref in refs:
        sentences = [s for s in ref.get("sentences", []) if str(s.get("sent_id")) in by_sentence]
        if not sentences:
            continue
        groups: dict[tuple[float, ...], list[dict]] = {}  # expressions by chosen box, first choice first
        for sentence in sentences:
            groups.setdefault(tuple(by_sentence[str(sentence["sent_id"])].box), []).append(sentence)
        category_id = ref.get("category_id", index.annotations[int(ref["ann_id"])][1])
        for k, (box, group) in enumerate(groups.items()):
            new = dict(ref)
            if k > 0:
                new.update(ref_id=next_ref, ann_id=next_ann, source_ref_id=ref["ref_id"], source_ann_id=ref["ann_id"])
                next_ref, next_ann = next_ref + 1, next_ann + 1
            scores = [by_sentence[str(s["sent_id"])].score for s in group]
            new["sentences"] = [{**s, "score": score} for s, score in zip(group, float32_text(scores))]
            new["sent_ids"] = [s["sent_id"] for s in group]
            out_refs.append(new)
            annotations.append(_annotation(int(new["ann_id"]), ref["image_id"], category_id, box, max(scores)))
            image_ids[str(ref["image_id"])] = ref["image_id"]
    images = []
    for key, image_id in image_ids.items():
        file_name, width, height = index.images[key]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    categories = [{"id": c, "name": n, "supercategory": n} for c, n in index.categories.items()]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    return _write_pair(Path(root), dataset, split_by, out_refs, instances)


def _coco_id(image_id: str) -> int | str:
    return int(image_id) if image_id.isdigit() else image_id


def write_refer_from_phrases(
    root: str | Path,
    dataset: str,
    split_by: str,
    labels: Sequence[PseudoLabel],
    file_name: Callable[[str], str],
) -> tuple[Path, Path]:
    """The refer-layout pair of a phrase source (Flickr30K Entities): one ref per phrase.

    Ref, annotation and sentence ids are ``1..N`` in label order; images keep their ids
    (as integers when they are digits, as COCO's); categories are the phrases' first types
    (``"object"`` for a phrase without one), numbered in order of appearance.

    Args:
        root: the output refer data folder.
        dataset, split_by: the files' names (``root/<dataset>/refs(<split_by>).p``).
        labels: the phrases.
        file_name: an image id's file name (the ``instances.json`` images' ``file_name``).

    Returns:
        The refs and instances files written.
    """
    refs: list[dict] = []
    annotations: list[dict] = []
    images: dict[str, dict] = {}
    categories: dict[str, int] = {}
    for n, label in enumerate(labels, start=1):
        image_id = _coco_id(label.image_id)
        category_id = categories.setdefault(label.types[0] if label.types else "object", len(categories) + 1)
        words = label.words[label.span[0] : label.span[1]]
        text = " ".join(words)
        refs.append(
            {
                "ref_id": n,
                "ann_id": n,
                "image_id": image_id,
                "category_id": category_id,
                "split": label.split,
                "file_name": file_name(label.image_id),
                "sent_ids": [n],
                "sentences": [
                    {
                        "tokens": list(words),
                        "raw": text,
                        "sent": text,
                        "sent_id": n,
                        "score": float32_text([label.score])[0],
                    }
                ],
                "source": {"sentence_id": label.sentence_id, "phrase_id": label.phrase_id, "span": list(label.span)},
            }
        )
        annotations.append(_annotation(n, image_id, category_id, label.box, label.score))
        if label.image_id not in images:
            width, height = label.image_size
            images[label.image_id] = {"id": image_id, "file_name": file_name(label.image_id), "width": int(width),
                                      "height": int(height)}  # fmt: skip
    instances = {
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": n} for n, c in categories.items()],
    }
    return _write_pair(Path(root), dataset, split_by, refs, instances)
