"""RefCOCO, RefCOCO+, RefCOCOg and ReferItGame (refclef): the datamodule, evaluated per split.

The ``refer`` layout, its parsers and what they refuse are :mod:`lightning_wsg.data.refcoco_parsers`
(re-exported here, where they lived before); ``docs/data.md`` describes the layout.

Example:
    >>> dm = RefCOCODataModule("data/refer", "data/coco/train2014", "refcoco_proposals.jsonl",
    ...                        dataset="refcoco", split_by="unc")  # doctest: +SKIP
    >>> dm.test_splits  # doctest: +SKIP
    ['testA', 'testB']
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from . import refcoco_parsers
from .base import GroundingDataModule, GroundingEntry
from .dataset import examples
from .refcoco_parsers import (
    REFER_SPLITS,
    ReferFormatError,
    ReferIndex,
    available_splits,
    default_eval_splits,
    instances_path,
    load_entries,
    read_instances,
    read_refs,
    refs_path,
)

__all__ = [*refcoco_parsers.__all__, "RefCOCODataModule"]  # the parsers stay importable from here

logger = logging.getLogger("lightning_wsg")


class RefCOCODataModule(GroundingDataModule):
    """RefCOCO / RefCOCO+ / RefCOCOg / ReferItGame from the refer API's data, evaluated per split.

    ``fit`` trains on ``train`` and validates on ``val_split``; ``test`` evaluates each of
    ``eval_splits`` in its own loader, whose batches carry the split name, so the metrics
    come out as ``testA/acc``, ``testB/acc``...

    Args:
        root: the refer data folder, holding ``<dataset>/refs(<split_by>).p`` and
            ``<dataset>/instances.json``.
        image_dir: the image folder (``None`` with a feature tower: no image is read); an image
            is ``image_dir/<file_name>`` with ``file_name`` from ``instances.json`` (COCO:
            ``COCO_train2014_%012d.jpg``).
        detections: the proposals file, records keyed by the image id as a string; ``None``
            when a :class:`~lightning_wsg.detection.DetectionCache` callback supplies them.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or ``refclef`` (ReferItGame).
        split_by: the split's author: refcoco: ``unc``, ``google``; refcoco+: ``unc``;
            refcocog: ``umd``, ``google``; refclef: ``unc``, ``berkeley``.
        val_split: the split validated during ``fit``.
        eval_splits: the splits ``test`` evaluates (a list, or one name); default every test split of the
            combination (refcoco unc: testA, testB; refcocog umd: test), ``val`` for
            refcocog google, which has no test split.
        **kwargs: other arguments: :class:`~lightning_wsg.data.GroundingDataModule` (each
            expression is one phrase, so ``max_phrases`` has no use here and is not taken).

    Raises:
        ValueError: an unsupported dataset / split_by, a split the combination lacks, or
            ``train`` as an evaluation split (training entries carry no boxes).
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str | Path | None = None,
        detections: str | Path | None = None,
        dataset: str = "refcoco",
        split_by: str = "unc",
        val_split: str = "val",
        eval_splits: list[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        if "max_phrases" in kwargs:
            raise ValueError(f"{type(self).__name__}: every expression is one phrase, so max_phrases is not taken")
        super().__init__(root, image_dir, detections, max_phrases=1, **kwargs)
        splits = available_splits(dataset, split_by)
        if isinstance(eval_splits, str):
            eval_splits = [eval_splits]
        eval_splits = list(eval_splits) if eval_splits is not None else list(default_eval_splits(dataset, split_by))
        if not eval_splits:
            raise ValueError("eval_splits is empty: name at least one split to evaluate")
        if len(set(eval_splits)) != len(eval_splits):
            raise ValueError(f"eval_splits {eval_splits} names a split twice")
        for what, split in [("val_split", val_split)] + [("eval_splits", s) for s in eval_splits]:
            if split not in splits:
                raise ValueError(
                    f"{dataset} ({split_by}) has no split {split!r} ({what}): its splits are {', '.join(splits)}"
                )
            if split == self.train_split:
                raise ValueError(f"{what}: {split!r} cannot be evaluated (training entries never carry a box)")
        if self.predict_split is not None and self.predict_split not in splits:
            raise ValueError(
                f"{dataset} ({split_by}) has no split {self.predict_split!r} (predict_split): its splits are "
                f"{', '.join(splits)}"
            )
        self.dataset = dataset
        self.split_by = split_by
        self.val_splits = [val_split]
        self.test_splits = eval_splits
        self._refs: list[dict] | None = None
        self._index: ReferIndex | None = None

    @property
    def refs_file(self) -> Path:
        """``root/<dataset>/refs(<split_by>).p``."""
        return refs_path(self.root, self.dataset, self.split_by)

    @property
    def instances_file(self) -> Path:
        """``root/<dataset>/instances.json``."""
        return instances_path(self.root, self.dataset)

    def load_refer(self) -> tuple[list[dict], ReferIndex]:
        """The refs and the instances index (of the referred annotations), read once; the
        refs' split labels are checked."""
        return self._load()

    def _load(self) -> tuple[list[dict], ReferIndex]:
        """Read the refs and instances once; check the refs' split labels."""
        if self._refs is None or self._index is None:
            refs = read_refs(self.refs_file)
            labels = Counter(str(r.get("split")) for r in refs)
            unknown = sorted(set(labels) - set(available_splits(self.dataset, self.split_by)))
            if unknown:
                raise ReferFormatError(
                    f"{self.refs_file}: refs of split {examples(unknown)}, which {self.dataset} ({self.split_by}) "
                    f"does not have (expected {', '.join(available_splits(self.dataset, self.split_by))}): "
                    "is it the right dataset / split_by?"
                )
            ann_ids = set()
            for ref in refs:
                try:
                    ann_ids.add(int(ref["ann_id"]))
                except (KeyError, TypeError, ValueError):
                    raise ReferFormatError(
                        f"{self.refs_file}: ref {ref.get('ref_id', '?')} has no valid ann_id"
                    ) from None
            self._index = read_instances(self.instances_file, ann_ids)
            self._refs = refs
            logger.info(
                "%s (%s): %d refs (%s) over %d images from %s",
                self.dataset,
                self.split_by,
                len(refs),
                ", ".join(f"{s} {n}" for s, n in sorted(labels.items())),
                len(self._index.images),
                self.refs_file.parent,
            )
        return self._refs, self._index

    def load_split(self, split: str) -> list[GroundingEntry]:
        refs, index = self._load()
        if not any(r.get("split") == split for r in refs):
            raise ReferFormatError(f"{self.refs_file}: no ref of split {split!r}")
        return load_entries(refs, index, split, evaluation=split != self.train_split, where=self.refs_file)

    def load_labelled_split(self, split: str) -> list[GroundingEntry]:
        """``split``'s expressions with the referred box, the training split too (its refs name
        their annotation as every split's do)."""
        refs, index = self._load()
        if not any(r.get("split") == split for r in refs):
            raise ReferFormatError(f"{self.refs_file}: no ref of split {split!r}")
        return load_entries(refs, index, split, evaluation=True, where=self.refs_file)

    def image_path(self, image_id: str) -> Path:
        _, index = self._load()
        if image_id not in index.images:
            raise KeyError(f"image {image_id} is not in {index.path}")
        return self.image_dir / index.images[image_id][0]

    def known_image_ids(self) -> set[str]:
        """Every image of ``instances.json``."""
        return set(self._load()[1].images)
