"""How much the teacher can say about real phrases: coverage of a class vocabulary.

For every Flickr30K Entities phrase of a split, the teacher's class matching names the
detector class(es) the phrase is about, or none. This report prints, per phrase type, the
share of phrases that get a class, the classes they map to most often, and the phrases
mapped to a person, animal or vehicle class although their type says otherwise (a "man 's
shirt" mapped to person would be one). A class's kind is read from WordNet (a class that is
a kind of person, animal or vehicle).

Usage::

    python -m lightning_wsg.teacher_coverage --flickr data/annotations/flickr30k_entities --split test \\
        --vocabulary coco80
    python -m lightning_wsg.teacher_coverage --flickr data/flickr30k_entities \\
        --vocabulary data/annotations/visual_genome/vg_objects_vocab.txt --matching glove

``--flickr`` is a Flickr30K Entities folder: unpacked (``Sentences/``) or holding the
release's ``annotations.tar.gz``, with the split files. ``--refcoco`` takes phraseloceval
RefCOCO-family files, whose expressions carry the referred object's COCO category: it prints
how often the teacher's class (COCO-80) is that category (``scripts/get_annotations.sh
data/annotations`` fetches the files these examples name)::

    python -m lightning_wsg.teacher_coverage --refcoco data/annotations/refcoco/phraseloceval_refcoco*.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.flickr30k_entities import parse_sentence, read_split
from .lexicon.classes import COCO80, class_aliases, read_class_names
from .lexicon.wordnet import WordNetNouns
from .models.teacher import Teacher

__all__ = [
    "KINDS",
    "TypeCoverage",
    "category_agreement",
    "class_kinds",
    "coverage",
    "flickr_phrases",
    "format_report",
    "main",
    "refcoco_expressions",
]

#: Flickr30K Entities phrase type -> the kind of class it should map to.
KINDS = {"people": "person", "animals": "animal", "vehicles": "vehicle"}
# WordNet nouns whose descendants make a class of that kind: COCO's vehicles (buses are "public
# transport"), not every wheeled thing (a skateboard is sports equipment to a detector).
_KIND_ROOTS = {
    "person": ("person",),
    "animal": ("animal",),
    "vehicle": ("motor vehicle", "bicycle", "craft", "public transport", "train"),
}


def class_kinds(class_names: list[str]) -> list[str | None]:
    """Per class, ``"person"``, ``"animal"``, ``"vehicle"`` or ``None`` (WordNet, main sense)."""
    wn = WordNetNouns.load()
    kinds = []
    for name in class_names:
        kind = None
        for alias in class_aliases(name):
            kind = next((k for k, roots in _KIND_ROOTS.items() if any(wn.reaches(alias, r) for r in roots)), None)
            if kind:
                break
        kinds.append(kind)
    return kinds


def flickr_phrases(root: str | Path, split: str) -> list[tuple[str, list[str]]]:
    """``(phrase text, types)`` of every phrase in a split's sentences (notvisual included)."""
    root = Path(root)
    ids = read_split(root, split)
    texts: dict[str, str] = {}
    if (root / "Sentences").is_dir():
        for image_id in ids:
            path = root / "Sentences" / f"{image_id}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (listed in {root / (split + '.txt')})")
            texts[image_id] = path.read_text(encoding="utf-8")
    elif (root / "annotations.tar.gz").is_file():
        wanted = {f"Sentences/{i}.txt": i for i in ids}
        with tarfile.open(root / "annotations.tar.gz") as tar:
            for member in tar:
                if member.name in wanted:
                    texts[wanted[member.name]] = io.TextIOWrapper(tar.extractfile(member), encoding="utf-8").read()
        missing = sorted(set(ids) - texts.keys())
        if missing:
            raise FileNotFoundError(
                f"{root / 'annotations.tar.gz'} has no Sentences/{missing[0]}.txt ({len(missing)} missing)"
            )
    else:
        raise FileNotFoundError(f"{root} has neither Sentences/ nor annotations.tar.gz")
    out = []
    for image_id in ids:
        for lineno, line in enumerate(texts[image_id].splitlines(), start=1):
            if line.strip():
                words, phrases = parse_sentence(line, f"Sentences/{image_id}.txt", lineno)
                out += [(" ".join(words[p.start : p.end]), list(p.types)) for p in phrases]
    return out


@dataclass
class TypeCoverage:
    """Coverage of one phrase type."""

    phrases: int = 0
    with_class: int = 0
    right_kind: int = 0
    wrong_kind: int = 0
    classes: Counter = field(default_factory=Counter)
    wrong_examples: Counter = field(default_factory=Counter)

    def as_dict(self, top: int = 5) -> dict:
        share = lambda n: n / self.phrases if self.phrases else 0.0
        return {
            "phrases": self.phrases,
            "with_class": share(self.with_class),
            "right_kind": share(self.right_kind),
            "wrong_kind": share(self.wrong_kind),
            "top_classes": self.classes.most_common(top),
            "wrong_examples": self.wrong_examples.most_common(top),
        }


def _mapped(texts: list[tuple[str, object]], class_names: list[str], teacher: Teacher) -> dict[str, list[int]]:
    """Each distinct text -> the indices of the classes the teacher maps it to (nearest first)."""
    unique = sorted({text for text, _ in texts})
    nearest = teacher.nearest_classes(class_names, unique)  # [C, U] bool
    return {text: torch.nonzero(nearest[:, u]).flatten().tolist() for u, text in enumerate(unique)}


def coverage(phrases: list[tuple[str, list[str]]], class_names: list[str], teacher: Teacher) -> dict[str, TypeCoverage]:
    """Per phrase type (and ``"all"``): who gets a class, which, and which of the wrong kind."""
    kinds = class_kinds(class_names)
    mapped = _mapped(phrases, class_names, teacher)
    report: dict[str, TypeCoverage] = {}
    for text, types in phrases:
        classes = mapped[text]
        expected = {KINDS[t] for t in types if t in KINDS}
        class_kind = {kinds[c] for c in classes} - {None}
        for key in (*types, "all"):
            row = report.setdefault(key, TypeCoverage())
            row.phrases += 1
            if not classes:
                continue
            row.with_class += 1
            row.classes[class_names[classes[0]].split(",")[0]] += 1
            if expected & class_kind:
                row.right_kind += 1
            elif class_kind and not expected & class_kind:
                row.wrong_kind += 1
                row.wrong_examples[f"{text} -> {class_names[classes[0]].split(',')[0]}"] += 1
    return report


def refcoco_expressions(path: str | Path) -> list[tuple[str, str]]:
    """``(expression, COCO category)`` pairs of a phraseloceval RefCOCO-family file (``.json.gz``)."""
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records = json.load(f)
        return [(" ".join(r["phrase"]), r["categories"][0]) for r in records]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: not a phraseloceval RefCOCO annotation file ({err})") from err


def category_agreement(expressions: list[tuple[str, str]], class_names: list[str], teacher: Teacher) -> dict:
    """How often the teacher's class is the referred object's own category (COCO names)."""
    mapped = {text: {class_names[c] for c in cs} for text, cs in _mapped(expressions, class_names, teacher).items()}
    with_class = sum(1 for text, _ in expressions if mapped[text])
    right = sum(1 for text, cat in expressions if cat in mapped[text])
    n = max(len(expressions), 1)
    return {
        "expressions": len(expressions),
        "with_class": with_class / n,
        "right_class": right / n,
        "precision": right / max(with_class, 1),
    }


def format_report(report: dict[str, TypeCoverage], title: str) -> str:
    """A Markdown table of the report (one row per phrase type)."""
    lines = [
        f"#### {title}",
        "",
        "| type | phrases | get a class | of the right kind | of a wrong kind | most frequent classes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    order = sorted(report, key=lambda k: (k == "all", -report[k].phrases))
    for key in order:
        row = report[key]
        d = row.as_dict(top=4)
        right = f"{100 * d['right_kind']:.1f}%" if key in KINDS else "-"
        top = ", ".join(f"{name} {100 * n / row.phrases:.0f}%" for name, n in d["top_classes"])
        lines.append(
            f"| {key} | {row.phrases:,} | {100 * d['with_class']:.1f}% | {right} | {100 * d['wrong_kind']:.2f}% | {top} |"
        )
    return "\n".join(lines)


def _vocabulary(spec: str) -> list[str]:
    return list(COCO80) if spec.lower() in ("coco", "coco80") else read_class_names(spec)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_wsg.teacher_coverage", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--flickr", default=None, help="Flickr30K Entities folder (Sentences/ or annotations.tar.gz)")
    parser.add_argument(
        "--refcoco",
        nargs="*",
        default=[],
        help="phraseloceval RefCOCO-family .json.gz files: agreement with the "
        "referred object's COCO category (with --vocabulary coco80)",
    )
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--vocabulary", default="coco80", help="'coco80' or a class name file (one a line)")
    parser.add_argument("--matching", default="wordnet", choices=["wordnet", "mapping", "glove", "minilm", "lexical"])
    parser.add_argument("--mapping", default=None, help="head noun<TAB>class file, for --matching mapping")
    parser.add_argument("--siblings", type=int, default=None, help="wordnet: sibling steps (default: the teacher's)")
    parser.add_argument("--min-match", type=float, default=None, help="embedding matchings: similarity threshold")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    parser.add_argument("--examples", type=int, default=5, help="wrong-kind examples printed per type")
    args = parser.parse_args(argv)
    names = _vocabulary(args.vocabulary)
    extra = {} if args.siblings is None else {"wordnet_siblings": args.siblings}
    teacher = Teacher(
        matching=args.matching, min_match=args.min_match, mapping_file=args.mapping, vocabulary=names, **extra
    )
    if not args.flickr and not args.refcoco:
        parser.error("give --flickr and/or --refcoco")
    result: dict = {}
    if args.flickr:
        phrases = flickr_phrases(args.flickr, args.split)
        report = coverage(phrases, names, teacher)
        title = f"{args.matching} matching, {len(names)} classes ({args.vocabulary}), Flickr30K Entities {args.split}"
        print(format_report(report, title))
        for key, row in report.items():
            if key != "all" and row.wrong_examples:
                examples = "; ".join(f"{e} ({n})" for e, n in row.wrong_examples.most_common(args.examples))
                print(f"wrong kind, {key}: {examples}")
        result = {key: row.as_dict(top=10) for key, row in report.items()}
    for path in args.refcoco:
        agreement = category_agreement(refcoco_expressions(path), names, teacher)
        result[Path(path).name] = agreement
        print(
            f"{Path(path).name}: {agreement['expressions']:,} expressions, {agreement['with_class']:.1%} get a class, "
            f"{agreement['right_class']:.1%} the referred object's category (precision {agreement['precision']:.1%})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
