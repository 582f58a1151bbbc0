"""What the feature world reads: the chosen images' Flickr30K Entities files, and its detector's class table.

The simulated detector of :mod:`lightning_wsg.synthetic.feature_world` never uses the teacher's
WordNet reading: a chain's class is a word of its mentions that IS a class name (plural forms
and the short synonym table ``SYNONYMS``), found by :class:`_ClassTable`.
"""

from __future__ import annotations

import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..lexicon.classes import COCO80, read_class_names

if TYPE_CHECKING:
    from .feature_world import FeatureWorldConfig

__all__ = ["COLOUR_WORDS", "SYNONYMS"]

COLOUR_WORDS = frozenset(
    "white black blue red green yellow brown orange pink purple gray grey tan blond blonde silver gold".split()
)
#: Words a detector of that vocabulary reports under another name (independent of WordNet).
SYNONYMS = {
    "bike": "bicycle", "bikes": "bicycle", "motorbike": "motorcycle", "plane": "airplane", "jet": "airplane",
    "sofa": "couch", "television": "tv", "phone": "cell phone", "cellphone": "cell phone", "puppy": "dog",
    "puppies": "dog", "kitten": "cat", "table": "dining table", "ball": "sports ball", "racket": "tennis racket",
    "surf board": "surfboard", "skate board": "skateboard", "bag": "handbag", "purse": "handbag",
}  # fmt: skip
_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot"}


# ------------------------------------------------------------------------------ reading
def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path} (expected the Flickr30K Entities release)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _choose(root: Path, cfg: FeatureWorldConfig) -> dict[str, list[str]]:
    """A seeded sample of each official split (sorted ids)."""
    out = {}
    for k, split in enumerate(("train", "val", "test")):
        ids = _read_ids(root / f"{split}.txt")
        n = getattr(cfg, f"num_{split}")
        if n > len(ids):
            raise ValueError(f"{root / f'{split}.txt'} lists {len(ids)} images, fewer than num_{split}={n}")
        pick = np.random.default_rng([cfg.seed, 7919, k]).choice(len(ids), size=n, replace=False)
        out[split] = sorted(ids[i] for i in pick)
    return out


def _annotation_files(root: Path, wanted: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """``(folder, image_id, bytes)`` of the wanted ``Annotations`` / ``Sentences`` files, from
    the unpacked release or from ``annotations.tar.gz``, read in one pass."""
    if (root / "Annotations").is_dir() and (root / "Sentences").is_dir():
        for image_id in sorted(wanted):
            for folder, ext in (("Annotations", "xml"), ("Sentences", "txt")):
                yield folder, image_id, (root / folder / f"{image_id}.{ext}").read_bytes()
        return
    tar_path = root / "annotations.tar.gz"
    if not tar_path.is_file():
        raise FileNotFoundError(f"{root}: neither Annotations/ + Sentences/ nor annotations.tar.gz")
    pattern = re.compile(r"(?:^|/)(Annotations|Sentences)/(\d+)\.(?:xml|txt)$")
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            match = pattern.search(member.name)
            if member.isfile() and match and match.group(2) in wanted:
                yield match.group(1), match.group(2), tar.extractfile(member).read()


# ------------------------------------------------------------------------ vocabulary
def _vocabulary(cfg: FeatureWorldConfig) -> list[str]:
    if cfg.vocabulary == "coco":
        return list(COCO80)
    return read_class_names(cfg.vocabulary)


def _singular(word: str) -> list[str]:
    forms = [word, _IRREGULAR.get(word, word)]
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        forms.append(word[:-1])
    return forms


class _ClassTable:
    """Word (or word pair) -> class index: the detector's names, their plurals, ``SYNONYMS``."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.index: dict[str, int] = {}
        for c, name in enumerate(names):
            for alias in name.split(","):
                alias = alias.strip().lower()
                if alias and alias not in self.index:
                    self.index[alias] = c
        for word, name in SYNONYMS.items():
            if name in self.index and word not in self.index:
                self.index[word] = self.index[name]
        self.person = self.index.get("person")

    def lookup(self, words: list[str]) -> list[int]:
        """Classes named in a phrase, later words (nearer the head) first."""
        found = []
        for i in range(len(words) - 1, -1, -1):
            if words[i] in COLOUR_WORDS and i < len(words) - 1:
                continue  # "an orange shirt" names no orange
            pair = f"{words[i - 1]} {words[i]}" if i else None
            for form in ([pair] if pair else []) + _singular(words[i]):
                if form in self.index:
                    found.append(self.index[form])
                    break
        return found


def _detector_class(chain: dict, table: _ClassTable) -> int | None:
    votes = Counter(c for m in chain["mentions"] for c in table.lookup(m)[:1])
    if votes:
        return votes.most_common(1)[0][0]
    return table.person if chain["type"] == "people" else None
