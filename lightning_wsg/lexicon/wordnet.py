"""WordNet 3.0 nouns, shipped as a compact table: senses, hypernyms, members, plurals.

The table ``wordnet_nouns.json.gz`` beside this file was derived from the WordNet 3.0
database by ``scripts/build_wordnet_nouns.py`` and carries WordNet's licence (which allows
redistribution with its notice). It is read once per process; nothing else is needed at
run time.

:meth:`WordNetNouns.ancestors` is what the teacher's class matching uses: every noun that a
word is (its own synonyms, at distance 0) or is a kind of (hypernyms, at their distance),
through the word's most frequent sense(s) that are physical things. Collective nouns also reach what they are made
of: WordNet's member meronyms ("people" has the member "person", "herd" has "cattle"), and
a social group (a crowd, a couple, a team) is made of persons.

Example:
    >>> wn = WordNetNouns.load()
    >>> wn.base_forms("women")
    ['woman']
    >>> wn.ancestors("woman")["person"]
    2
    >>> "person" in wn.ancestors("shirt")
    False
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

__all__ = ["TABLE", "WordNetNouns"]

TABLE = Path(__file__).with_name("wordnet_nouns.json.gz")

# Suffix rules of WordNet's morphy for nouns (irregular plurals come from noun.exc).
_NOUN_SUFFIXES = (
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
)


class WordNetNouns:
    """Read-only view of the shipped WordNet noun table.

    Args:
        table: the parsed JSON table (see :meth:`load`).
    """

    def __init__(self, table: dict) -> None:
        self._synsets = table["synsets"]
        self._senses = table["senses"]
        self._sense_counts = table["sense_counts"]
        self._exceptions = table["exceptions"]
        self._non_noun = table["non_noun"]  # word -> its usual part of speech: "v", "a" or "r"
        self._verbs = set(table["verbs"])
        self._person = self._senses["person"][0]
        self._social_group = self._senses["social group"][0]
        # groups, quantities, pictures and kinds: "a herd of", "a cup of" (a measure), "a photo
        # of", "some sort of" are about what follows
        self._group_like = {self._senses[w][0] for w in ("group", "measure", "representation")}
        self._group_like |= set(self._senses["category"])
        self._physical = self._senses["physical entity"][0]
        self._colour = self._senses["color"][0]
        # memos: every phrase walks the same few thousand senses (results are read, never changed)
        self._reached: dict[int, dict[int, int]] = {}
        self._main: dict[tuple[str, int], list[int]] = {}
        self._distances: dict[tuple[str, int], dict[int, int]] = {}

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls, path: str | None = None) -> WordNetNouns:
        """The table at ``path`` (default: the one shipped in the package), read once."""
        with gzip.open(path or TABLE, "rt", encoding="utf-8") as f:
            return cls(json.load(f))

    # ------------------------------------------------------------------ words
    def base_forms(self, word: str) -> list[str]:
        """Noun lemmas a word form can be: itself, its irregular or regular singular."""
        word = word.lower().replace("_", " ")
        forms = [word] if word in self._senses else []
        forms += [b for b in self._exceptions.get(word, []) if b in self._senses]
        for suffix, ending in _NOUN_SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: len(word) - len(suffix)] + ending
                if base in self._senses:
                    forms.append(base)
        if "-" in word:  # "t-shirt" is a lemma; "hard-hat" is "hard hat"
            forms += self.base_forms(word.replace("-", " ")) if word.replace("-", " ") != word else []
        return list(dict.fromkeys(forms))

    def is_noun(self, word: str) -> bool:
        """Whether some form of the word is a WordNet noun (or an agent noun, see below)."""
        return bool(self.base_forms(word)) or self.agent_noun(word)

    def agent_noun(self, word: str) -> bool:
        """A word WordNet lacks that is a noun or verb + "-er" ("kayaker", "wakeboarders",
        "biker"): someone who does it, a person."""
        word = word.lower()
        word = word[:-1] if word.endswith("ers") else word
        if not word.endswith("er") or len(word) < 5 or self.base_forms(word):
            return False
        stem = word[:-2]
        stems = {stem, stem + "e", stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else stem}
        # a comparative is no agent: "younger", "smaller", "bigger"
        if any(self.mainly_other_pos(s) == "a" for s in stems):
            return False
        return any(s in self._senses or s in self._verbs for s in stems)

    def mainly_other_pos(self, word: str) -> str | None:
        """``"v"``, ``"a"`` or ``"r"`` when the word is mostly a verb ("standing"), an adjective
        ("white") or an adverb rather than a noun; else ``None``."""
        return self._non_noun.get(word.lower())

    def names(self, synset: int) -> list[str]:
        return self._synsets[synset][0]

    # ----------------------------------------------------------- hierarchy
    def _closure(self, start: int, distance: int, out: dict[int, int]) -> None:
        frontier = [(start, distance)]
        while frontier:
            nxt = []
            for synset, d in frontier:
                if synset in out and out[synset] <= d:
                    continue
                out[synset] = d
                nxt += [(h, d + 1) for h in self._synsets[synset][1]]
            frontier = nxt

    def physical(self, synset: int) -> bool:
        """Whether a sense is a physical entity (a thing one can see), not an abstraction."""
        return self._physical in self._reach(synset)

    def main_senses(self, lemma: str, senses: int = 1) -> list[int]:
        """The senses a noun is read in: its first ``senses`` physical senses that annotators
        ever tagged, else its first senses that are not named individuals.

        A phrase in a picture names something visible: "a van" is the vehicle, not WordNet's
        first sense (the vanguard); "a crowd" has no physical sense and keeps its first; "a
        trick" keeps its first (the physical "john" sense was never tagged); "crane" is never
        Stephen Crane.
        """
        if (lemma, senses) not in self._main:
            self._main[(lemma, senses)] = self._choose_senses(lemma, senses)
        return self._main[(lemma, senses)]

    def _choose_senses(self, lemma: str, senses: int) -> list[int]:
        all_senses = self._senses.get(lemma, [])
        counts = self._sense_counts.get(lemma, [0] * len(all_senses))
        common = [s for s in all_senses if not self._synsets[s][3]] or all_senses
        # the most often tagged physical senses, WordNet's order on a tie; a person only when
        # that is the noun's first sense: the person readings of object words are figures of
        # speech ("a target", "a hard hat", "a trailer" as people)
        ranked = sorted((-n, i, s) for i, (s, n) in enumerate(zip(all_senses, counts)))
        physical = [
            s
            for n, i, s in ranked
            if n < 0 and s in common and self.physical(s) and (i == 0 or self._person not in self._reach(s))
        ]
        if not physical and not any(counts):
            # never tagged: a physical object before a person ("a stroller", "a hard hat")
            untagged = [s for s in common if self.physical(s)]
            physical = sorted(untagged, key=lambda s: self._person in self._reach(s))[:1]
        return (physical or common)[:senses]

    def ancestor_count(self, synset: int) -> int:
        """How many hypernyms lie above a sense, on every path up to the root."""
        return len(self._reach(synset)) - 1

    def is_generic(self, name: str) -> bool:
        """Whether a noun's main sense has at most 4 hypernyms above it ("object", "artifact")."""
        return any(len(self._reach(s)) <= 5 for lemma in self.base_forms(name) for s in self.main_senses(lemma))

    def _reach(self, synset: int) -> dict[int, int]:
        """A sense and every hypernym above it -> steps up (memoised)."""
        if synset not in self._reached:
            reached: dict[int, int] = {}
            self._closure(synset, 0, reached)
            self._reached[synset] = reached
        return self._reached[synset]

    def synset_distances(self, lemma: str, senses: int = 1) -> dict[int, int]:
        """Synsets a noun lemma reaches -> distance (0: its own sense, 1: its hypernym ...).

        The dict is memoised and shared: read it, do not change it.
        """
        if (lemma, senses) in self._distances:
            return self._distances[(lemma, senses)]
        out: dict[int, int] = {}
        for synset in self.main_senses(lemma, senses):
            self._closure(synset, 0, out)
            # members make up a group ("people", "herd") or a train (its cars); a named place's
            # are its inhabitants, not what a picture of it shows ("India", "London")
            members = [] if self._synsets[synset][3] else list(self._synsets[synset][2])
            if not members and not self.physical(synset) and out.get(self._social_group, 99) <= 3:
                members = [self._person]  # a crowd, a team, a couple: made of persons
            for member in members:
                self._closure(member, 1, out)
        self._distances[(lemma, senses)] = out
        return out

    def ancestors(self, word: str, senses: int = 1) -> dict[str, int]:
        """Every noun name a word reaches through its main ``senses`` senses -> distance.

        A name stands for a reached sense only when that sense is one of the name's own main
        senses: "guy" reaches person, but not "cat" (a synonym of guy whose main sense is the
        animal). Plural names count in the singular too ("cows" -> cow).
        """
        out: dict[str, int] = {}
        lemmas = self.base_forms(word) or (["person"] if self.agent_noun(word) else [])
        # "fields", "banks", "gates" are fields, banks and gates, not W. C. Fields or Bill Gates
        lemmas = [lemma for lemma in lemmas if not self.named_only(lemma)] or lemmas
        for lemma in lemmas:
            for synset, d in self.synset_distances(lemma, senses).items():
                for name in self._synsets[synset][0]:
                    if name not in (lemma, word) and synset not in self.main_senses(name, senses):
                        continue
                    # a name's singular stands for the sense only when it is read so: "cows" ->
                    # cow, but "buss" (a kiss) is no "bus"
                    singulars = [b for b in self.base_forms(name) if synset in self.synset_distances(b, senses)]
                    for form in {name, *singulars}:
                        if d < out.get(form, 1 << 30):
                            out[form] = d
        return out

    def named_only(self, lemma: str) -> bool:
        """Whether every sense of a lemma is a named individual (a person or a place)."""
        senses = self._senses.get(lemma, [])
        return bool(senses) and all(self._synsets[s][3] for s in senses)

    def reaches(self, word: str, root: str, senses: int = 1) -> bool:
        """Whether a word's main sense is a kind of some sense named ``root`` ("bus", "public transport")."""
        return any(
            root in self._synsets[synset][0]
            for lemma in self.base_forms(word)
            for synset in self.synset_distances(lemma, senses)
        )

    def is_colour(self, word: str) -> bool:
        """Whether a word's first noun sense is a colour ("blue", "yellow"; not "silver", a
        metal first): before another noun it describes that noun ("a yellow moped")."""
        firsts = [self._senses[lemma][0] for lemma in self.base_forms(word) if self._senses[lemma]]
        return any(self._colour in self._reach(first) for first in firsts)

    def is_collective(self, word: str) -> bool:
        """A group, quantity, picture or kind ("group", "couple", "herd", "lot", "photo",
        "sort"): "a group of X", "a picture of X" and "some sort of X" are about X."""
        for lemma in self.base_forms(word):
            for synset in {*self.main_senses(lemma), *self._senses.get(lemma, [])[:1]}:
                if self._group_like & self._reach(synset).keys():
                    return True
        return False
