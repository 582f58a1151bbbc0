"""Flickr30K Entities: the datamodule over the release's split files.

The annotation formats and their parsers are :mod:`lightning_wsg.data.flickr30k_parsers`
(re-exported here, where they lived before); ``docs/data.md`` describes the layout.

Example:
    >>> dm = Flickr30kEntitiesDataModule("data/flickr30k_entities", "data/flickr30k_images",
    ...                                  "data/flickr30k_detections.jsonl")  # doctest: +SKIP
    >>> dm.setup("test")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import flickr30k_parsers
from .base import GroundingDataModule, GroundingEntry
from .flickr30k_parsers import (
    PHRASE_TYPES,
    Flickr30kFormatError,
    FlickrAnnotation,
    Phrase,
    load_entries,
    parse_annotation,
    parse_sentence,
    read_sentences,
    read_split,
    read_unrelated_captions,
)

__all__ = [*flickr30k_parsers.__all__, "Flickr30kEntitiesDataModule"]  # the parsers stay importable from here


class Flickr30kEntitiesDataModule(GroundingDataModule):
    """Flickr30K Entities: train / val / test from the official split files.

    Args:
        root: folder with ``Annotations/``, ``Sentences/``, ``train.txt``, ``val.txt``,
            ``test.txt`` (and optionally ``UNRELATED_CAPTIONS``).
        image_dir: folder of ``<image_id>.jpg`` (``None`` with a feature tower: no image is read).
        detections: the proposals file, records keyed by the image id (``None`` when a
            ``DetectionCache`` callback supplies them).
        unrelated_captions: pairs left out of training; default ``root/UNRELATED_CAPTIONS``
            when that file exists.
        **kwargs: other arguments: :class:`~lightning_wsg.data.GroundingDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str | Path | None = None,
        detections: str | Path | None = None,
        unrelated_captions: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, image_dir, detections, **kwargs)
        self.unrelated_captions = Path(unrelated_captions) if unrelated_captions is not None else None

    def unrelated_sentence_ids(self) -> set[str]:
        """The sentence ids left out of training (empty without a file)."""
        path = self.unrelated_captions
        if path is None:
            path = self.root / "UNRELATED_CAPTIONS"
            if not path.is_file():
                return set()
        return read_unrelated_captions(path)

    def load_split(self, split: str) -> list[GroundingEntry]:
        image_ids = read_split(self.root, split)
        if split == self.train_split:
            return load_entries(
                self.root,
                image_ids,
                evaluation=False,
                max_phrases=self.max_phrases,
                exclude=self.unrelated_sentence_ids(),
                split=split,
            )
        return load_entries(self.root, image_ids, evaluation=True, split=split)

    def load_labelled_split(self, split: str) -> list[GroundingEntry]:
        """Every marked phrase of ``split`` (no ``max_phrases`` cut), with its chain's boxes where
        it has some; the training split leaves out the unrelated captions, as in training."""
        exclude = self.unrelated_sentence_ids() if split == self.train_split else ()
        return load_entries(self.root, read_split(self.root, split), True, exclude=exclude, split=split, labelled=True)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def known_image_ids(self) -> set[str]:
        """The stems of ``Annotations/*.xml`` and the ids of the split files present."""
        known = {p.stem for p in (self.root / "Annotations").glob("*.xml")}
        for split in (self.train_split, *self.val_splits, *self.test_splits):
            if (self.root / f"{split}.txt").is_file():
                known.update(read_split(self.root, split))
        return known
