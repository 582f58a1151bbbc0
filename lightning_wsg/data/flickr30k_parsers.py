"""Flickr30K Entities: the annotation parsers (the datamodule is :mod:`lightning_wsg.data.flickr30k_entities`).

The release (see ``docs/data.md``) has ``Sentences/<id>.txt`` (five captions with inline
phrase markup ``[/EN#<chain>/<type>[/<type>...] words]``), ``Annotations/<id>.xml`` (boxes
per chain id) and the split files. Evaluation follows phraseloceval: only phrases whose
chain has at least one box count, against the union of the chain's boxes (formed in
:func:`lightning_wsg.data.batch.collate` from all boxes kept here).

Example:
    >>> words, phrases = parse_sentence("[/EN#1/people Two men] stand in [/EN#0/notvisual it] .")
    >>> words
    ['Two', 'men', 'stand', 'in', 'it', '.']
    >>> [(p.start, p.end, p.chain_id, p.types) for p in phrases]
    [(0, 2, '1', ['people']), (4, 5, '0', ['notvisual'])]
"""

from __future__ import annotations

import logging
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..boxes import xml_to_corners
from .dataset import GroundingEntry

__all__ = [
    "PHRASE_TYPES",
    "Flickr30kFormatError",
    "Phrase",
    "FlickrAnnotation",
    "parse_sentence",
    "parse_annotation",
    "read_sentences",
    "read_split",
    "read_unrelated_captions",
    "load_entries",
]

logger = logging.getLogger("lightning_wsg")

PHRASE_TYPES = frozenset(
    {"people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other", "notvisual"}
)
_HEADER = re.compile(r"\[/EN#(\d+)((?:/[^/\s\[\]]+)+)")
_TYPES: dict[str, list[str]] = {}  # "/people/other" -> ["people", "other"], checked once
_EXAMPLES = 5


class Flickr30kFormatError(ValueError):
    """A Flickr30K Entities file is malformed; the message names the file (and line)."""


@dataclass
class Phrase:
    """A marked phrase: words ``start:end`` of its sentence, its chain and its types.

    ``types`` is shared by every phrase spelled with the same types: do not modify it.
    """

    start: int
    end: int
    chain_id: str
    types: list[str]


@dataclass
class FlickrAnnotation:
    """The content of one ``Annotations/<id>.xml``.

    Attributes:
        image_id: the file's stem.
        width: image width in pixels.
        height: image height in pixels.
        boxes: chain id -> ``[K, 4]`` corners (only chains with at least one box).
        scene: chain ids of objects flagged ``<scene>1``.
        nobndbox: chain ids of objects flagged ``<nobndbox>1``.
    """

    image_id: str
    width: int
    height: int
    boxes: dict[str, Tensor] = field(default_factory=dict)
    scene: set[str] = field(default_factory=set)
    nobndbox: set[str] = field(default_factory=set)


def _header(token: str, where: str) -> tuple[str, list[str]]:
    """Chain id and types of a ``[/EN#<chain>/<type>...`` token.

    Both are shared between the phrases that spell them alike (memory: 150,000 training
    sentences); treat ``types`` as read-only.
    """
    match = _HEADER.fullmatch(token)
    if match is None:
        raise Flickr30kFormatError(f"{where}: bad phrase header {token!r} (expected [/EN#<chain>/<type>...)")
    chain_id, spelled = match.groups()
    types = _TYPES.get(spelled)
    if types is None:
        types = spelled[1:].split("/")
        unknown = [t for t in types if t not in PHRASE_TYPES]
        if unknown:
            raise Flickr30kFormatError(f"{where}: unknown phrase type {unknown[0]!r} in {token!r}")
        _TYPES[spelled] = types
    if (chain_id == "0") != ("notvisual" in types):
        raise Flickr30kFormatError(f"{where}: notvisual phrases and only they have chain 0: {token!r}")
    return sys.intern(chain_id), types


def parse_sentence(line: str, path: str | Path = "<string>", lineno: int = 0) -> tuple[list[str], list[Phrase]]:
    """Parse one caption line into its words and its marked phrases.

    Tokens are separated by single spaces; the markup (``[/EN#...`` and the closing
    ``]``) is removed from the words.

    Args:
        line: the caption, with markup.
        path: the file, named in errors.
        lineno: the 1-based line number, named in errors.

    Returns:
        ``(words, phrases)``.

    Raises:
        Flickr30kFormatError: malformed markup (bad header, nesting, unclosed phrase,
            stray bracket, empty word, unknown type, notvisual not on chain 0).
    """
    where = f"{path}:{lineno}"
    intern = sys.intern  # the 20,000 distinct words are shared by every sentence
    words: list[str] = []
    phrases: list[Phrase] = []
    start, chain_id, types = -1, "", []
    for token in line.rstrip("\r\n").split(" "):
        if token[:1] == "[":
            if start >= 0:
                raise Flickr30kFormatError(f"{where}: phrase opened inside another phrase at {token!r}")
            chain_id, types = _header(token, where)
            start = len(words)
        elif start >= 0 and token[-1:] == "]":
            words.append(intern(token[:-1]))
            phrases.append(Phrase(start, len(words), chain_id, types))
            start = -1
        else:
            words.append(intern(token))
    if start >= 0:
        raise Flickr30kFormatError(f"{where}: phrase [/EN#{chain_id}... is never closed")
    if "" in words:
        raise Flickr30kFormatError(f"{where}: empty word (a double space or a lone ']'): {line!r}")
    # every "[" opens a phrase and every "]" closes one: any other bracket is inside a word
    if line.count("[") != len(phrases) or line.count("]") != len(phrases):
        stray = next(w for w in words if "[" in w or "]" in w)
        raise Flickr30kFormatError(f"{where}: stray bracket in word {stray!r}")
    return words, phrases


def read_sentences(path: str | Path) -> list[tuple[list[str], list[Phrase]]]:
    """Parse every caption of a ``Sentences/<id>.txt`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parse_sentence(line, path, lineno) for lineno, line in enumerate(lines, 1)]


def _int(text: str | None, what: str, where: str) -> int:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Flickr30kFormatError(f"{where}: <{what}> must be an integer, got {text!r}") from None


def parse_annotation(xml_path: str | Path) -> FlickrAnnotation:
    """Parse an ``Annotations/<id>.xml`` file.

    An ``<object>`` has one or more ``<name>`` (chain ids) and either a ``<bndbox>``
    (1-based inclusive corners, converted with :func:`lightning_wsg.boxes.xml_to_corners`)
    or the ``<scene>`` / ``<nobndbox>`` flags. One box may belong to several chains and a
    chain may own several boxes.

    Raises:
        FileNotFoundError: the file does not exist.
        Flickr30kFormatError: malformed XML or a missing / invalid element.
    """
    path = Path(xml_path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise Flickr30kFormatError(f"{path}: not valid XML: {err}") from None
    where = str(path)
    size = root.find("size")
    if root.tag != "annotation" or size is None:
        raise Flickr30kFormatError(f"{where}: expected <annotation> with a <size> element")
    ann = FlickrAnnotation(
        path.stem, _int(size.findtext("width"), "width", where), _int(size.findtext("height"), "height", where)
    )
    chain_boxes: dict[str, list[list[int]]] = {}
    for number, obj in enumerate(root.iter("object"), 1):
        at = f"{where}: object {number}"
        names = [(child.text or "").strip() for child in obj if child.tag == "name"]
        fields = {child.tag: child for child in obj if child.tag != "name"}
        if not names or not all(name.isdigit() for name in names):
            raise Flickr30kFormatError(f"{at}: needs one or more numeric <name> chain ids, got {names}")
        if "bndbox" in fields:
            coords = {child.tag: child.text for child in fields["bndbox"]}
            xyxy = [_int(coords.get(tag), tag, at) for tag in ("xmin", "ymin", "xmax", "ymax")]
            if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
                raise Flickr30kFormatError(f"{at}: box {xyxy} has xmax < xmin or ymax < ymin")
            for name in names:
                chain_boxes.setdefault(name, []).append(xyxy)
        elif "scene" in fields or "nobndbox" in fields:
            for flag, chains in (("scene", ann.scene), ("nobndbox", ann.nobndbox)):
                if flag in fields and _int(fields[flag].text, flag, at):
                    chains.update(names)
        else:
            raise Flickr30kFormatError(f"{at}: needs <bndbox> or <scene>/<nobndbox> flags")
    if chain_boxes:
        # one conversion for the whole image, then a view per chain
        rows = [xyxy for boxes in chain_boxes.values() for xyxy in boxes]
        corners = xml_to_corners(torch.tensor(rows, dtype=torch.float32))
        ann.boxes = dict(zip(chain_boxes, corners.split([len(b) for b in chain_boxes.values()])))
    return ann


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids of ``root/<split>.txt`` (one a line)."""
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_unrelated_captions(path: str | Path) -> set[str]:
    """Sentence ids (``"<image_id>#<index>"``, 0-based) listed in ``UNRELATED_CAPTIONS``.

    The file holds ``<image_id> <sentence number>`` pairs with 1-based sentence numbers
    after ``#`` comment lines.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unrelated-captions file not found: {path}")
    ids = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) < 1:
            raise Flickr30kFormatError(f"{path}:{lineno}: expected '<image_id> <sentence number>', got {line!r}")
        ids.add(f"{fields[0]}#{int(fields[1]) - 1}")
    return ids


def _require_files(root: Path, image_ids: Sequence[str], evaluation: bool, split: str) -> None:
    """One error for every listed image whose sentences (or, to evaluate, annotations) are missing."""
    needed = [("Sentences", ".txt")] + ([("Annotations", ".xml")] if evaluation else [])
    missing = [
        str(root / folder / f"{image_id}{suffix}")
        for image_id in image_ids
        for folder, suffix in needed
        if not (root / folder / f"{image_id}{suffix}").is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"split {split} ({root / f'{split}.txt'}) lists images whose files are missing: {len(missing)} files, "
            f"e.g. {', '.join(missing[:_EXAMPLES])}; restore them or remove the images from the split file"
        )


def load_entries(
    root: str | Path,
    image_ids: Iterable[str],
    evaluation: bool,
    max_phrases: int | None = None,
    exclude: Iterable[str] = (),
    split: str = "?",
    labelled: bool = False,
) -> list[GroundingEntry]:
    """Turn a split's images into one :class:`GroundingEntry` per sentence.

    Args:
        root: the release folder (``Annotations/``, ``Sentences/``).
        image_ids: the split's images.
        evaluation: evaluation entries keep only the phrases whose chain has a box, with
            all the chain's boxes, types and the image size; training entries keep every
            marked phrase and never read a box.
        max_phrases: training entries keep their first ``max_phrases`` phrases.
        exclude: sentence ids to leave out (``"<image_id>#<index>"``), e.g. unrelated captions.
        split: the split name, for the log.
        labelled: every marked phrase (as training entries, ``max_phrases`` aside) with its
            chain's boxes, types and the image size where ``Annotations/<id>.xml`` exists: a
            phrase whose chain has no box (or whose image has no annotation file) has a
            ``[0, 4]`` box tensor, which no metric counts. Overrides ``evaluation``.

    Sentences left without a phrase are skipped; the count is logged.
    """
    root = Path(root)
    image_ids = list(image_ids)
    _require_files(root, image_ids, evaluation and not labelled, split)
    exclude = set(exclude)
    entries: list[GroundingEntry] = []
    skipped: list[str] = []
    excluded = 0
    for image_id in image_ids:
        sentences = read_sentences(root / "Sentences" / f"{image_id}.txt")
        xml = root / "Annotations" / f"{image_id}.xml"
        read = xml.is_file() if labelled else evaluation
        ann = parse_annotation(xml) if read else None
        for index, (words, phrases) in enumerate(sentences):
            sentence_id = f"{image_id}#{index}"
            if sentence_id in exclude:
                excluded += 1
                continue
            if ann is not None and not labelled:
                phrases = [p for p in phrases if p.chain_id in ann.boxes]
            elif max_phrases is not None:
                phrases = phrases[:max_phrases]
            if not phrases:
                skipped.append(sentence_id)
                continue
            entries.append(
                GroundingEntry(
                    image_id=image_id,
                    sentence_id=sentence_id,
                    words=words,
                    phrase_spans=[(p.start, p.end) for p in phrases],
                    phrase_ids=[p.chain_id for p in phrases],
                    phrase_types=[p.types for p in phrases],
                    gt_boxes=_gt_boxes(ann, phrases, labelled),
                    image_size=(ann.width, ann.height) if ann is not None else None,
                )
            )
    if excluded:
        logger.info("split %s: left out %d unrelated captions", split, excluded)
    if skipped:
        what = "an evaluable phrase (a chain with a box)" if evaluation and not labelled else "a marked phrase"
        logger.warning(
            "split %s: skipped %d sentences without %s (e.g. %s)",
            split,
            len(skipped),
            what,
            ", ".join(skipped[:_EXAMPLES]) + (", ..." if len(skipped) > _EXAMPLES else ""),
        )
    return entries


def _gt_boxes(ann: FlickrAnnotation | None, phrases: Sequence[Phrase], labelled: bool) -> list[Tensor] | None:
    if labelled:
        none = torch.zeros(0, 4)
        return [ann.boxes.get(p.chain_id, none) if ann is not None else none for p in phrases]
    return [ann.boxes[p.chain_id] for p in phrases] if ann is not None else None
