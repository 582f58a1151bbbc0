"""Detector class vocabularies, and which class a phrase names.

A class name may list synonyms separated by commas, as Visual Genome's
``vg_objects_vocab.txt`` does ("man,men"); each is an alias of the class. Names are matched
whole: "hot dog" is not "dog" and "teddy bear" is not "bear".

Two matchers give, for a phrase and a list of class names, the distance of each class that
the phrase names (``inf`` for the others); the teacher keeps the nearest:

* :class:`WordNetMatcher`: the phrase's head noun (:func:`~lightning_wsg.lexicon.heads.head_noun`,
  or a multi-word name ending in it) reaches a class when the class is the noun itself, a
  synonym, or a hypernym of it in WordNet (woman, guy, toddler -> person at distance 2-3;
  puppy, terrier -> dog; sedan, taxi -> car), through the noun's most frequent sense.
* :class:`MappingMatcher`: a fixed table ``head noun<TAB>class name`` (like the reference
  code's phrase-to-label table), checked against a vocabulary when it is read.

Example:
    >>> matcher = WordNetMatcher()
    >>> d = matcher.distances("a little girl", ["person", "dog", "teddy bear"])
    >>> d[0] < float("inf"), d[1], d[2]
    (True, inf, inf)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

from .heads import head_with_modifiers
from .wordnet import WordNetNouns

__all__ = ["COCO80", "MappingMatcher", "WordNetMatcher", "class_aliases", "read_class_names"]

INF = math.inf

#: The 80 COCO detection classes, in the order of torchvision's and MMDetection's COCO models.
COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def class_aliases(name: str) -> list[str]:
    """The names a class goes by: ``"man,men"`` -> ``["man", "men"]``, lower case, spaces for ``_``."""
    return [" ".join(a.strip().lower().replace("_", " ").split()) for a in name.split(",") if a.strip()]


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a file, one a line (``#`` comments and blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class name file {path} not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    return names


def _alias_forms(alias: str, wn: WordNetNouns) -> set[str]:
    """An alias and the singular of its last word ("skis" -> "ski", "men" -> "man")."""
    words = alias.split()
    forms = {alias}
    if words:
        forms |= {" ".join(words[:-1] + [base]) for base in wn.base_forms(words[-1])}
    return forms


class WordNetMatcher:
    """Class distances of a phrase through WordNet (see the module docstring).

    When no class is the noun or a hypernym of it, two further readings can name one, each
    ranked after the one before (distances offset by ``DOWN`` and ``SIBLING``):

    * ``downward``: a class that is a kind of the noun ("an animal", "the vehicle" -> the
      dog or car boxes the detector saw);
    * ``siblings > 0``: a class one step below a hypernym of the noun at most ``siblings``
      steps up ("a donkey" -> horse, "a goat" -> sheep, "a cart" -> bicycle: wheeled
      vehicles), when that hypernym is specific (at least ``MIN_HUB_ANCESTORS`` hypernyms
      above it, which keeps "organism" or "artifact" from joining a game to a person): the
      detector's nearest name for an object its vocabulary lacks.

    Args:
        senses: how many of the head noun's most frequent senses are followed (1: only the
            first, which keeps "hand" from reaching person through "hired hand").
        max_distance: classes further than this many hypernym steps are not reached
            (``None``: no limit; the nearest reachable class wins anyway).
        downward: also name classes that are kinds of the noun.
        siblings: steps up from the noun to a shared hypernym with a class one step below
            it (0: off).
    """

    DOWN = 100.0
    SIBLING = 200.0
    MIN_HUB_ANCESTORS = 7

    def __init__(self, senses: int = 1, max_distance: int | None = None, downward: bool = True, siblings: int = 2) -> None:
        if senses < 1:
            raise ValueError(f"senses must be >= 1, got {senses}")
        if siblings < 0:
            raise ValueError(f"siblings must be >= 0, got {siblings}")
        self.senses = senses
        self.max_distance = max_distance
        self.downward = downward
        self.siblings = siblings
        self._below: dict[int, list[tuple[int, int]]] = {}
        self._generic: set[str] = set()
        self._wn: WordNetNouns | None = None
        self._names_key: tuple[str, ...] | None = None
        self._forms: dict[str, list[int]] = {}
        self._cache: OrderedDict[tuple, list[float]] = OrderedDict()

    @property
    def wordnet(self) -> WordNetNouns:
        if self._wn is None:
            self._wn = WordNetNouns.load()
        return self._wn

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_wn"], state["_cache"] = None, OrderedDict()
        return state

    def _class_forms(self, class_names: list[str]) -> dict[str, list[int]]:
        key = tuple(class_names)
        if key != self._names_key:
            forms: dict[str, list[int]] = {}
            for c, name in enumerate(class_names):
                for alias in class_aliases(name):
                    for form in _alias_forms(alias, self.wordnet):
                        forms.setdefault(form, []).append(c)
            # synset -> (class, steps from the class up to it): classes below a noun
            below: dict[int, list[tuple[int, int]]] = {}
            for c, name in enumerate(class_names):
                for alias in class_aliases(name):
                    for lemma in self.wordnet.base_forms(alias):
                        for synset, d in self.wordnet.synset_distances(lemma, self.senses).items():
                            below.setdefault(synset, []).append((c, d))
            # names of the top of the hierarchy ("object", "whole", "artifact") say nothing about
            # what a phrase names: a class by such a name is taught only by the word itself
            self._generic = {form for form in forms if self.wordnet.is_generic(form)}
            self._names_key, self._forms, self._below, self._cache = key, forms, below, OrderedDict()
        return self._forms

    def _read(self, words: list[str], class_forms: dict[str, list[int]]) -> tuple[str | None, dict[str, int]]:
        """The noun read from a phrase's head words, and the noun names it reaches -> distance.

        A multi-word noun ending in the head ("teddy bear", "fishing boat") is read as one
        noun. When it reaches none of ``class_forms`` but is a kind of its last word ("a
        fishing boat" is a boat), the shorter noun is read instead; a "teddy bear" is no bear.
        """
        wn = self.wordnet
        for k in range(len(words), 0, -1):
            name = " ".join(words[-k:])
            if k > 1 and not wn.is_noun(name):
                continue
            reached = wn.ancestors(name, self.senses)
            reached.update({form: 0 for form in _alias_forms(name, wn)})
            if k > 1 and not any(n in class_forms for n in reached):
                shorter = " ".join(words[-k + 1 :])
                if any(form in reached for form in _alias_forms(shorter, wn)):
                    continue
            return name, reached
        return None, {}

    def distances(self, phrase: str, class_names: list[str]) -> list[float]:
        """Per class, the hypernym steps from the phrase's head to it (``inf``: not named)."""
        forms = self._class_forms(class_names)
        key = (phrase,)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = [INF] * len(class_names)
        words = head_with_modifiers(phrase, self.wordnet)
        # a multi-word class name said in full ("a baseball glove") is matched as it is
        for k in range(len(words), 1, -1):
            for c in forms.get(" ".join(words[-k:]), []):
                out[c] = 0.0
        if not any(d == 0.0 for d in out):
            head, reached = self._read(words, forms)
            for name, d in reached.items():
                if self.max_distance is not None and d > self.max_distance or d > 0 and name in self._generic:
                    continue
                for c in forms.get(name, []):
                    out[c] = min(out[c], float(d))
            if head is not None and all(d == INF for d in out) and (self.downward or self.siblings):
                self._related(head, out)
        self._cache[key] = out
        if len(self._cache) > 200_000:
            self._cache.popitem(last=False)
        return out

    def _related(self, head: str, out: list[float]) -> None:
        """Fill ``out`` with classes below the noun, else with its close relatives."""
        wn = self.wordnet
        up: dict[int, int] = {}
        for lemma in wn.base_forms(head):
            for synset, d in wn.synset_distances(lemma, self.senses).items():
                up[synset] = min(d, up.get(synset, d))  # a fresh dict: the memoised ones stay as they are
        if self.downward:
            for synset, d in up.items():
                if d == 0:
                    for c, steps in self._below.get(synset, []):
                        out[c] = min(out[c], self.DOWN + steps)
        if self.siblings and all(d == INF for d in out):
            for synset, d in up.items():
                if 0 < d <= self.siblings and wn.ancestor_count(synset) >= self.MIN_HUB_ANCESTORS:
                    for c, steps in self._below.get(synset, []):
                        if steps == 1:
                            out[c] = min(out[c], self.SIBLING + d + steps)


class MappingMatcher:
    """Class distances from a fixed ``head noun -> class`` table (0 for the mapped class).

    The file has one ``head noun<TAB>class name`` pair a line (``#`` comments and blank lines
    skipped); head nouns are matched in their singular form, class names as whole names.

    Args:
        path: the mapping file.
        vocabulary: the detector's class names; every class the file names must be one of
            them (else a ``ValueError`` naming the file and line).
    """

    def __init__(self, path: str | Path, vocabulary: list[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher mapping file {self.path} not found")
        wn = WordNetNouns.load()
        known = {alias: name for name in vocabulary for alias in class_aliases(name)}
        self.mapping: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise ValueError(f"{self.path}:{number}: expected 'head noun<TAB>class name', got {line!r}")
            noun, cls = parts[0].strip().lower(), " ".join(parts[1].strip().lower().split())
            if cls not in known:
                raise ValueError(
                    f"{self.path}:{number}: class {parts[1].strip()!r} is not in the detector's vocabulary "
                    f"({len(vocabulary)} classes, e.g. {', '.join(vocabulary[:5])})"
                )
            for form in {noun, *wn.base_forms(noun)}:
                self.mapping[form] = known[cls]

    def distances(self, phrase: str, class_names: list[str]) -> list[float]:
        wn = WordNetNouns.load()
        words = head_with_modifiers(phrase, wn)
        target = None
        for k in range(len(words), 0, -1):
            name = " ".join(words[-k:])
            for form in [name, *wn.base_forms(name)]:
                if form in self.mapping:
                    target = self.mapping[form]
                    break
            if target:
                break
        target_aliases = set(class_aliases(target)) if target else set()
        return [0.0 if target_aliases & set(class_aliases(n)) else INF for n in class_names]
