"""Sentences to ground in new images: the ``data.sentences_file`` format and its parser.

Input of ``lightning predict`` with :class:`~lightning_wsg.data.SentencesFileDataModule`
(``data.sentences_file``) is JSON Lines, one sentence a line::

    {"image": "photos/dog.jpg", "sentence": "a [brown dog] jumps over [the fence]"}
    {"image": "photos/dog.jpg", "sentence": "a brown dog jumps over the fence",
     "phrases": ["brown dog", [4, 6]]}
    {"image": "photos/street.jpg", "sentence": "the red car on the left"}

* phrases are marked with brackets in the sentence, or listed in ``"phrases"`` as strings
  found in the sentence (first occurrence after the previous phrase, word-aligned) or as
  ``[start, end)`` word spans; a sentence with no phrase is one expression spanning it;
* ``"image"`` is relative to the JSONL file's folder (or absolute); ``"image_id"`` is
  optional (default: the file name without extension), the key into a detections source;
* ``"id"`` (optional) names the sentence in the output (default ``<image_id>#<line>``).

Example:
    >>> parse_sentence("a [red car] next to [the tree]")
    (['a', 'red', 'car', 'next', 'to', 'the', 'tree'], [(1, 3), (5, 7)])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..jsonl import read_jsonl

__all__ = ["PREDICT_SPLIT", "PredictFormatError", "PredictRecord", "parse_sentence", "read_predict_file"]

#: the split name of ``data.sentences_file``'s samples (metrics and outputs are keyed by it)
PREDICT_SPLIT = "predict"

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


class PredictFormatError(ValueError):
    """A prediction input line is malformed; the message names the file and the line."""


def _tokens(text: str) -> list[str]:
    return text.split()


def parse_sentence(
    sentence: str, phrases: Sequence[str | Sequence[int]] | None = None
) -> tuple[list[str], list[tuple[int, int]]]:
    """Words and phrase spans (``end`` exclusive) of a sentence.

    Args:
        sentence: the sentence; phrases may be marked ``[like this]`` (brackets are removed
            from the words).
        phrases: listed phrases instead of brackets: strings found in the sentence (word
            aligned, searched left to right) or ``[start, end]`` word spans.

    Returns:
        ``(words, spans)``; with no marked or listed phrase, one span over all words.

    Raises:
        ValueError: unbalanced brackets, an empty phrase, a phrase not in the sentence, a
            span out of range, or brackets together with listed phrases.
    """
    if sentence.count("[") != sentence.count("]"):
        raise ValueError(f"unbalanced brackets in {sentence!r}")
    words: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for match in _BRACKETS.finditer(sentence):
        words += _tokens(sentence[pos : match.start()])
        inner = _tokens(match.group(1))
        if not inner:
            raise ValueError(f"empty phrase [] in {sentence!r}")
        spans.append((len(words), len(words) + len(inner)))
        words += inner
        pos = match.end()
    words += _tokens(sentence[pos:])
    if "[" in sentence[pos:] or "]" in sentence[pos:] or any("[" in w or "]" in w for w in words):
        raise ValueError(f"nested or unbalanced brackets in {sentence!r}")
    if not words:
        raise ValueError("empty sentence")
    if phrases:
        if spans:
            raise ValueError(f"phrases are both marked with brackets and listed in {sentence!r}")
        start = 0
        for phrase in phrases:
            if isinstance(phrase, str):
                target = _tokens(phrase)
                if not target:
                    raise ValueError(f"empty phrase in the phrases of {sentence!r}")
                found = _find(words, target, start)
                if found is None:
                    found = _find(words, target, 0)
                if found is None:
                    lowered = [w.lower() for w in words]
                    found = _find(lowered, [t.lower() for t in target], 0)
                if found is None:
                    raise ValueError(f"phrase {phrase!r} not found in {sentence!r}")
                spans.append((found, found + len(target)))
                start = found + len(target)
            else:
                s, e = (int(v) for v in phrase)
                if not 0 <= s < e <= len(words):
                    raise ValueError(f"span {[s, e]} out of range for {len(words)} words in {sentence!r}")
                spans.append((s, e))
    if not spans:
        spans = [(0, len(words))]
    return words, spans


def _find(words: list[str], target: list[str], start: int) -> int | None:
    n = len(target)
    for i in range(start, len(words) - n + 1):
        if words[i : i + n] == target:
            return i
    return None


@dataclass(slots=True)
class PredictRecord:
    """One sentence to ground in one image (a parsed input line)."""

    image_id: str
    image: Path
    sentence_id: str
    words: list[str]
    phrase_spans: list[tuple[int, int]]


def read_predict_file(path: str | Path, image_dir: str | Path | None = None) -> list[PredictRecord]:
    """Parse a prediction input file (JSON Lines, see the module docstring).

    Args:
        path: the JSONL file.
        image_dir: relative image paths are taken from here (default: the file's folder).

    Raises:
        FileNotFoundError: the file is missing. :class:`PredictFormatError`: a bad line, or
            two different image files with the same ``image_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction input not found: {path}")
    base = Path(image_dir) if image_dir is not None else path.parent
    records: list[PredictRecord] = []
    files: dict[str, Path] = {}
    seen_ids: set[str] = set()
    for number, obj in read_jsonl(path, PredictFormatError):
        where = f"{path}:{number}"
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("image"), str)
            or not isinstance(obj.get("sentence"), str)
        ):
            raise PredictFormatError(f'{where}: expected {{"image": path, "sentence": text, "phrases": [...]}}')
        image = Path(obj["image"]).expanduser()
        image = image if image.is_absolute() else base / image
        image_id = str(obj.get("image_id") or image.stem)
        if files.setdefault(image_id, image) != image:
            raise PredictFormatError(
                f"{where}: image id {image_id!r} names both {files[image_id]} and {image}; "
                'give the lines an explicit "image_id"'
            )
        try:
            words, spans = parse_sentence(obj["sentence"], obj.get("phrases"))
        except (ValueError, TypeError) as err:
            raise PredictFormatError(f"{where}: {err}") from err
        sentence_id = str(obj.get("id") or f"{image_id}#{number - 1}")
        if sentence_id in seen_ids:
            raise PredictFormatError(f"{where}: duplicate sentence id {sentence_id!r}")
        seen_ids.add(sentence_id)
        records.append(PredictRecord(image_id, image, sentence_id, words, spans))
    if not records:
        raise PredictFormatError(f"{path}: no sentence to ground")
    return records
