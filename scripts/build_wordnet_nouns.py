#!/usr/bin/env python3
"""Derive the compact WordNet noun table that ships in ``lightning_wsg/lexicon/``.

The teacher's default class matching (``lightning_wsg.lexicon.wordnet``) needs, for every
English noun, its senses in WordNet's frequency order, each sense's hypernyms and member
meronyms ("people" has the member "person"), the irregular plurals, and which words are
mostly used as another part of speech ("standing", "white", "left"). This script reads
those from the WordNet 3.0 database files (Debian's ``wordnet-base`` package puts them in
``/usr/share/wordnet``; the format is ``wndb(5WN)``) and writes them as one gzipped JSON
file, so that ``pip install`` users need no system package and nothing is read at run
time but the package's own file.

Run it once after changing what the table holds (the output is committed)::

    apt-get install wordnet-base
    python scripts/build_wordnet_nouns.py            # -> lightning_wsg/lexicon/wordnet_nouns.json.gz

The output carries WordNet's licence text, which allows copying and redistribution with
that notice.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

LICENSE = (
    "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. "
    "Permission to use, copy, modify and distribute this software and database and its documentation "
    "for any purpose and without fee or royalty is hereby granted, provided that you agree to comply with "
    "the following copyright notice and statements, including the disclaimer, and that the same appear on "
    "ALL copies of the software, database and documentation, including modifications that you make for "
    "internal use or for distribution. THIS SOFTWARE AND DATABASE IS PROVIDED 'AS IS' AND PRINCETON "
    "UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT "
    "LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS "
    "FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT "
    "INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of Princeton "
    "University or Princeton may not be used in advertising or publicity pertaining to distribution of the "
    "software and/or database. Title to copyright in this software, database and any associated "
    "documentation shall at all times remain with Princeton University and LICENSEE agrees to preserve same."
)
_POS_OF_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}


def _data_lines(path: Path):
    for line in path.open(encoding="latin-1"):
        if not line.startswith("  "):  # the licence header lines start with two spaces
            yield line


def read_noun_synsets(root: Path) -> tuple[list[list], dict[str, int]]:
    """``[[names, hypernyms, members, is instance]]`` and offset -> row, from ``data.noun``."""
    rows, row_of = [], {}
    for line in _data_lines(root / "data.noun"):
        fields = line.split(" | ")[0].split()
        offset, count = fields[0], int(fields[3], 16)
        names = [fields[4 + 2 * i].lower().replace("_", " ") for i in range(count)]
        names = [re.sub(r"\(.*\)$", "", n) for n in names]  # adjective markers such as "(a)"
        k = 4 + 2 * count
        n_ptr = int(fields[k])
        hypernyms, members, instance = [], [], 0
        for i in range(n_ptr):
            symbol, target, pos = fields[k + 1 + 4 * i : k + 4 + 4 * i]
            if pos != "n":
                continue
            if symbol in ("@", "@i"):
                hypernyms.append(target)
                instance |= symbol == "@i"  # a named individual: "Crane" the writer
            elif symbol == "%m":
                members.append(target)
        row_of[offset] = len(rows)
        rows.append([list(dict.fromkeys(names)), hypernyms, members, instance])
    for row in rows:
        row[1] = [row_of[o] for o in row[1]]
        row[2] = [row_of[o] for o in row[2]]
    return rows, row_of


def read_senses(root: Path, row_of: dict[str, int]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Noun lemma -> its synsets in WordNet's sense order (most frequent first), and -> the
    tagged count of each of those senses (``cntlist.rev``; 0 when never tagged)."""
    counts: dict[tuple[str, int], int] = {}
    for line in (root / "cntlist.rev").open(encoding="latin-1"):
        key, number, count = line.split()
        lemma, rest = key.split("%")
        if rest[0] == "1":
            counts[(lemma.replace("_", " "), int(number))] = int(count)
    senses, sense_counts = {}, {}
    for line in _data_lines(root / "index.noun"):
        fields = line.split()
        lemma, n_synsets, n_ptr = fields[0].replace("_", " "), int(fields[2]), int(fields[3])
        offsets = fields[6 + n_ptr : 6 + n_ptr + n_synsets]
        senses[lemma] = [row_of[o] for o in offsets]
        sense_counts[lemma] = [counts.get((lemma, i + 1), 0) for i in range(len(offsets))]
    return senses, sense_counts


def read_exceptions(path: Path) -> dict[str, list[str]]:
    out = defaultdict(list)
    for line in path.open(encoding="latin-1"):
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0].replace("_", " ")] += [p.replace("_", " ") for p in parts[1:]]
    return dict(out)


def read_counts(root: Path) -> dict[tuple[str, str], int]:
    """``(lemma, pos)`` -> tagged-sense count summed over its senses (``cntlist.rev``)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for line in (root / "cntlist.rev").open(encoding="latin-1"):
        key, _, count = line.split()
        lemma, rest = key.split("%")
        counts[(lemma.replace("_", " "), _POS_OF_SS_TYPE[rest[0]])] += int(count)
    return counts


def verb_bases(word: str, verb_exc: dict[str, list[str]], verbs: set[str]) -> set[str]:
    """Base forms of a verb form (WordNet's morphy rules for verbs)."""
    bases = set(verb_exc.get(word, []))
    for suffix, ending in (
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ):
        if word.endswith(suffix):
            bases.add(word[: len(word) - len(suffix)] + ending)
    for suffix in ("ing", "ed"):  # doubled consonant: sitting -> sit, stopped -> stop
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) > 2 and stem[-1] == stem[-2]:
            bases.add(stem[:-1])
    return {b for b in bases if b in verbs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", default="/usr/share/wordnet", help="folder of the WordNet 3.0 database files")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "lightning_wsg" / "lexicon" / "wordnet_nouns.json.gz"),
    )
    args = parser.parse_args(argv)
    root = Path(args.wordnet)
    synsets, row_of = read_noun_synsets(root)
    senses, sense_counts = read_senses(root, row_of)
    counts = read_counts(root)
    verbs = {line.split()[0].replace("_", " ") for line in _data_lines(root / "index.verb")}
    verb_exc = read_exceptions(root / "verb.exc")
    other_pos = {}
    for pos, name in (("a", "index.adj"), ("r", "index.adv")):
        for line in _data_lines(root / name):
            other_pos.setdefault(line.split()[0].replace("_", " "), set()).add(pos)
    # Single nouns more often used as a verb, adjective or adverb ("standing", "white", "left"):
    # in a referring expression such a word modifies or follows the head, it is not the head.
    # "4 times" keeps nouns that are also common verbs ("building": 52 noun, 139 verb tags).
    non_noun = {}
    for lemma in senses:
        if " " in lemma:
            continue
        noun_count = counts.get((lemma, "n"), 0)
        other = [(counts.get((lemma, pos), 0), pos) for pos in other_pos.get(lemma, ())]
        other += [(counts.get((base, "v"), 0), "v") for base in verb_bases(lemma, verb_exc, verbs) | ({lemma} & verbs)]
        if other and max(other)[0] > 0 and max(other)[0] >= 4 * noun_count:
            non_noun[lemma] = max(other)[1]
    table = {
        "license": LICENSE,
        "source": "WordNet 3.0 noun database (data.noun, index.noun, noun.exc, cntlist.rev), "
        "derived by scripts/build_wordnet_nouns.py",
        "synsets": synsets,
        "senses": senses,
        "sense_counts": sense_counts,
        "exceptions": read_exceptions(root / "noun.exc"),
        "non_noun": dict(sorted(non_noun.items())),
        "verbs": sorted(v for v in verbs if " " not in v),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(table, f, separators=(",", ":"))
    print(
        f"wrote {out}: {len(synsets)} synsets, {len(senses)} nouns, {len(non_noun)} mostly non-noun words, "
        f"{out.stat().st_size / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
