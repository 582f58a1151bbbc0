"""RefCOCO, RefCOCO+, RefCOCOg and ReferItGame (refclef): the ``refer`` layout's parsers (the
datamodule is :mod:`lightning_wsg.data.refcoco`).

The refer API's data folder holds, per dataset, ``<dataset>/refs(<split_by>).p`` (a pickle
of referred objects with their expressions and split) and ``<dataset>/instances.json``
(COCO style: images, annotations with ``[x, y, w, h]`` boxes, categories); see
``docs/data.md``. Every expression is one phrase spanning its whole sentence:

* training entries are image-expression pairs and never read a box;
* evaluation entries carry the referred object's box (its COCO annotation, converted once
  per split with :func:`lightning_wsg.boxes.coco_to_corners`) and its category name as the
  phrase type.

Words are the sentence's ``tokens`` (the refer API's tokenisation, the one phraseloceval
uses); a sentence without tokens falls back to ``sent`` split on whitespace.

Bad input, decided once:

* errors (the files do not belong together or are not refer files): a missing refs pickle
  or ``instances.json`` (:class:`FileNotFoundError`), an unsupported dataset / split_by /
  split (:class:`ValueError` listing what exists), a ref whose ``ann_id`` or ``image_id``
  is absent from ``instances.json``, an annotation of another image than its ref, a
  malformed record or box, a split label the combination does not have
  (:class:`ReferFormatError`);
* counted, logged skips (logger ``lightning_wsg``): an expression with neither tokens nor
  text (one bad sentence must not block a training run; the warning names the sentence ids
  and the count, so an evaluation count that moved is visible), and, as for every dataset,
  pairs whose image has no proposals (:class:`~lightning_wsg.data.base.GroundingDataset`).

Example:
    >>> available_splits("refcocog", "google")
    ('train', 'val')
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..boxes import coco_to_corners
from .dataset import GroundingEntry

__all__ = [
    "REFER_SPLITS",
    "ReferFormatError",
    "ReferIndex",
    "available_splits",
    "default_eval_splits",
    "instances_path",
    "load_entries",
    "read_instances",
    "read_refs",
    "refs_path",
]

logger = logging.getLogger("lightning_wsg")

#: dataset -> split_by -> the splits its refs file holds, exactly as the refer API's data
REFER_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
    "refclef": {"unc": ("train", "val", "testA", "testB", "testC"), "berkeley": ("train", "val", "test")},
}
_EXAMPLES = 5


class ReferFormatError(ValueError):
    """A refer-layout file is malformed or does not match its partner; the message names the file."""


def _examples(ids: Sequence[object]) -> str:
    shown = ", ".join(str(i) for i in ids[:_EXAMPLES])
    return shown + (", ..." if len(ids) > _EXAMPLES else "")


def _combinations() -> str:
    return "; ".join(f"{d}: {', '.join(by)}" for d, by in REFER_SPLITS.items())


def available_splits(dataset: str, split_by: str) -> tuple[str, ...]:
    """The splits of ``dataset`` / ``split_by``.

    Raises:
        ValueError: the combination does not exist (the message lists those that do).
    """
    if dataset not in REFER_SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(REFER_SPLITS)}")
    if split_by not in REFER_SPLITS[dataset]:
        raise ValueError(
            f"{dataset} has no {split_by!r} split: it is split by {', '.join(REFER_SPLITS[dataset])} "
            f"(refer data: {_combinations()})"
        )
    return REFER_SPLITS[dataset][split_by]


def default_eval_splits(dataset: str, split_by: str) -> tuple[str, ...]:
    """Every test split of the combination (refcoco unc: testA, testB); ``val`` where there is none."""
    tests = tuple(s for s in available_splits(dataset, split_by) if s.startswith("test"))
    return tests or ("val",)


def refs_path(root: str | Path, dataset: str, split_by: str) -> Path:
    """``root/<dataset>/refs(<split_by>).p`` (the combination is checked first)."""
    available_splits(dataset, split_by)
    return Path(root) / dataset / f"refs({split_by}).p"


def instances_path(root: str | Path, dataset: str) -> Path:
    """``root/<dataset>/instances.json``."""
    return Path(root) / dataset / "instances.json"


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (lists, dicts, strings, numbers): a refs file holds nothing else."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: a refs file holds only lists and dicts")


def read_refs(path: str | Path) -> list[dict]:
    """Read a ``refs(<split_by>).p`` pickle (protocol 2, written by Python 2).

    Python 2 byte strings are decoded as UTF-8, or Latin-1 when that fails (logged).

    Raises:
        FileNotFoundError: the file does not exist.
        ReferFormatError: not a pickle of plain data, or not a list of dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs file not found: {path}")
    refs = None
    for encoding in ("utf-8", "latin-1"):
        try:
            with path.open("rb") as fh:
                refs = _PlainUnpickler(fh, encoding=encoding).load()
            break
        except UnicodeDecodeError:
            logger.warning("%s: byte strings are not UTF-8; decoding them as Latin-1", path)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
            raise ReferFormatError(f"{path}: not a refs pickle: {err}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ReferFormatError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


@dataclass
class ReferIndex:
    """What the datamodule keeps of ``instances.json``.

    Attributes:
        images: image id (string) -> ``(file_name, width, height)``.
        annotations: annotation id (int) -> ``(image id string, category_id, [x, y, w, h])``.
        categories: category id -> name.
        path: the instances file, named in errors.
    """

    images: dict[str, tuple[str, int, int]]
    annotations: dict[int, tuple[str, int, list[float]]]
    categories: dict[int, str]
    path: Path


def read_instances(path: str | Path, ann_ids: set[int] | None = None) -> ReferIndex:
    """Read ``instances.json`` into a :class:`ReferIndex`.

    Args:
        path: the file.
        ann_ids: keep only these annotations (the referred ones; the file also holds
            every other object of each image); ``None`` keeps all.

    Raises:
        FileNotFoundError: the file does not exist.
        ReferFormatError: not JSON, or a missing / malformed field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instances file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReferFormatError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ReferFormatError(f"{path}: expected a COCO-style object with 'images' and 'annotations'")
    try:
        images = {str(im["id"]): (str(im["file_name"]), int(im["width"]), int(im["height"])) for im in data["images"]}
        annotations = {}
        for ann in data["annotations"]:
            ann_id = int(ann["id"])
            if ann_ids is None or ann_id in ann_ids:
                annotations[ann_id] = (str(ann["image_id"]), int(ann["category_id"]), [float(v) for v in ann["bbox"]])
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    except (KeyError, TypeError, ValueError) as err:
        raise ReferFormatError(f"{path}: malformed image, annotation or category record: {err!r}") from None
    return ReferIndex(images, annotations, categories, path)


def _words(sentence: dict, where: str) -> list[str]:
    tokens, sent = sentence.get("tokens"), sentence.get("sent")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise ReferFormatError(f"{where}: 'tokens' must be a list of words, got {tokens!r}")
    if sent is not None and not isinstance(sent, str):
        raise ReferFormatError(f"{where}: 'sent' must be a string, got {sent!r}")
    if tokens:
        return list(tokens)
    return (sent or "").split()


def _check_box(box: list[float], ann_id: int, where: str) -> None:
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise ReferFormatError(f"{where}: annotation {ann_id} has no valid [x, y, w, h] box: {box}")


def load_entries(
    refs: Sequence[dict],
    index: ReferIndex,
    split: str,
    evaluation: bool,
    where: str | Path = "<refs>",
) -> list[GroundingEntry]:
    """One :class:`GroundingEntry` per expression of ``split``.

    Args:
        refs: the refs pickle's records.
        index: the instances file's images and (referred) annotations.
        split: the refs' ``split`` label to keep.
        evaluation: evaluation entries carry the referred box (``[1, 4]`` corners), the
            category name as phrase type and the image size; training entries carry none.
        where: the refs file, named in errors.

    Entry fields: ``image_id`` the COCO image id as a string, ``sentence_id`` and the one
    ``phrase_ids`` entry the ``sent_id`` as a string, one phrase spanning all words.

    Raises:
        ReferFormatError: a malformed ref, an image or annotation absent from
            ``instances.json``, an annotation of another image, an invalid box.
    """
    selected: list[tuple[dict, str, int]] = []
    for ref in refs:
        if ref.get("split") != split:
            continue
        try:
            ref_id, image_id, ann_id, sentences = (
                ref["ref_id"],
                str(ref["image_id"]),
                int(ref["ann_id"]),
                ref["sentences"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ReferFormatError(f"{where}: malformed ref {ref.get('ref_id', '?')}: {err!r}") from None
        if image_id not in index.images:
            raise ReferFormatError(f"{where}: ref {ref_id}: image {image_id} is not in {index.path}")
        if ann_id not in index.annotations:
            raise ReferFormatError(f"{where}: ref {ref_id}: ann_id {ann_id} is not in {index.path}")
        if index.annotations[ann_id][0] != image_id:
            raise ReferFormatError(
                f"{where}: ref {ref_id}: ann_id {ann_id} belongs to image {index.annotations[ann_id][0]}, "
                f"the ref to image {image_id}"
            )
        if not isinstance(sentences, list):
            raise ReferFormatError(f"{where}: ref {ref_id}: 'sentences' must be a list")
        selected.append((ref, image_id, ann_id))

    boxes = {}
    if evaluation and selected:
        ann_ids = list(dict.fromkeys(ann_id for _, _, ann_id in selected))
        for ann_id in ann_ids:
            _check_box(index.annotations[ann_id][2], ann_id, str(index.path))
        corners = coco_to_corners(torch.tensor([index.annotations[a][2] for a in ann_ids], dtype=torch.float32))
        boxes = dict(zip(ann_ids, corners.split(1)))  # one [1, 4] view per referred object

    entries: list[GroundingEntry] = []
    skipped: list[str] = []
    for ref, image_id, ann_id in selected:
        for sentence in ref["sentences"]:
            if not isinstance(sentence, dict) or "sent_id" not in sentence:
                raise ReferFormatError(f"{where}: ref {ref['ref_id']}: a sentence without sent_id: {sentence!r}")
            sent_id = str(sentence["sent_id"])
            words = _words(sentence, f"{where}: ref {ref['ref_id']}: sentence {sent_id}")
            if not words:
                skipped.append(sent_id)
                continue
            entry = GroundingEntry(
                image_id=image_id,
                sentence_id=sent_id,
                words=words,
                phrase_spans=[(0, len(words))],
                phrase_ids=[sent_id],
            )
            if evaluation:
                _, category_id, _ = index.annotations[ann_id]
                category = index.categories.get(category_id)
                entry.gt_boxes = [boxes[ann_id]]
                entry.phrase_types = [[category] if category is not None else []]
                entry.image_size = index.images[image_id][1:]
            entries.append(entry)
    if skipped:
        logger.warning(
            "split %s: skipped %d of %d expressions with neither tokens nor text in %s (sent_id %s)",
            split,
            len(skipped),
            len(skipped) + len(entries),
            where,
            _examples(skipped),
        )
    return entries
