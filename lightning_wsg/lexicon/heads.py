"""The head noun of a phrase or referring expression, by a few parsing rules over WordNet.

A phrase names its object by its head noun: "two men" -> men, "the man 's shirt" -> shirt,
"her left hand" -> hand. A referring expression is read up to the end of its first noun
phrase: "the man in yellow coat" -> man, "giraffe on the left behind the fence" -> giraffe,
"man holding an umbrella" -> man. The rules:

* the first noun phrase ends at a preposition, conjunction or relative word ("next" only in
  "next to"), or at a verb form ("holding", "sitting": words WordNet mostly uses as a verb)
  once a word that is mainly a noun was seen ("two smiling women" goes on to "women");
* "X of Y" is about Y when X is a group, a quantity, a kind or a place on the object ("a
  group of people", "a couple of dogs", "one of the men", "some sort of vehicle", "the back
  of a truck"), else about X ("a cup of coffee");
* the head is the last noun of that phrase, unless that is a verb form ("woman standing")
  and another noun is there ("a building" stays a building); a colour before it is no head
  ("a yellow moped", "a blue and white boat");
* a phrase whose head is a position, a pronoun or a placeholder ("bottom left", "the one on
  the right", "it") has no head: abstaining is better than naming a wrong object.

Example:
    >>> head_noun("the man in yellow coat")
    'man'
    >>> head_noun("a group of people")
    'people'
    >>> head_noun("bottom left") is None
    True
"""

from __future__ import annotations

import re

from .wordnet import WordNetNouns

__all__ = ["head_noun", "head_with_modifiers", "tokens"]

# Words that end the first noun phrase of an expression.
_BREAK = frozenset(
    "in on at with behind near next by under over above below beside besides between from to into onto "
    "for against across along around through inside outside underneath beneath toward towards among "
    "atop upon via without within like than who whom whose which that while where when and or but "
    "is are was were being has have having".split()
)
# Heads that name a place in the picture, a pronoun or nothing in particular: no object.
_NO_OBJECT = frozenset(
    "left right top bottom middle center centre front back rear side sides corner edge inside outside far near closest "
    "nearest furthest farthest leftmost rightmost upper lower up down first second third fourth last "
    "one ones other others half part portion area spot thing things stuff something anything everything "
    "a an the who whom whose what which nothing object objects item items it its this these those that them they he she him her his hers "
    "their theirs we us you i me my our your all both each either neither some any few several many "
    "more most much lot lots none".split()
)
# Words before "of" that hand the phrase to what follows: quantities ("one of the men", "lots
# of people") and places on an object ("the back of a truck", "the middle of a crowd"), which
# a detector boxes as the object.
_ABOUT_WHAT_FOLLOWS = frozenset(
    "one ones some all both each few several many most lot lots half none any "
    "back front side sides top bottom rear edge corner end middle center centre inside outside".split()
)
_POSSESSIVE = frozenset(["'s", "'", "s"])


def tokens(text: str) -> list[str]:
    """Lower-cased words; a possessive "'s" becomes a token of its own ("man's" -> man, 's)."""
    out = []
    for raw in text.lower().replace("_", " ").split():
        raw = raw.replace("\u2019", "'")
        possessive = raw.endswith("'s") and len(raw) > 2
        word = re.sub(r"^[^a-z0-9']+|[^a-z0-9]+$", "", raw[:-2] if possessive else raw)
        if word:
            out.append(word)
        if possessive:
            out.append("'s")
    return out


def _is_candidate(word: str, wn: WordNetNouns) -> bool:
    return word not in _NO_OBJECT and word not in _POSSESSIVE and not word.isdigit() and wn.is_noun(word)


def has_mainly_noun(chunk: list[str], wn: WordNetNouns) -> bool:
    return any(_is_candidate(w, wn) and not wn.mainly_other_pos(w) and not wn.is_colour(w) for w in chunk)


def _first_noun_phrase(words: list[str], wn: WordNetNouns) -> list[str]:
    """The words of the first noun phrase (after "X of" when X is a group or a quantity)."""
    chunk: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        has_noun = any(_is_candidate(w, wn) for w in chunk)
        if word == "of":
            head = _last_noun(chunk, wn)
            if head is None and chunk and chunk[-1] in _NO_OBJECT and chunk[-1] not in _ABOUT_WHAT_FOLLOWS:
                return chunk  # "a part of the wall", "the first of them": no object named
            if head is None or wn.is_collective(head):
                chunk = []  # "a group of people", "one of the men": about what follows
                i += 1
                continue
            return chunk
        if word in ("and", "or") and not has_mainly_noun(chunk, wn):
            chunk.append(word)  # "a brown and white dog": still the same noun phrase
            i += 1
            continue
        if (
            word in _BREAK
            and chunk
            and not (word == "next" and words[i + 1 : i + 2] != ["to"])
            and not (word in _ABOUT_WHAT_FOLLOWS and words[i + 1 : i + 2] == ["of"] and not has_noun)
        ):
            return chunk  # "next to" ends it, "the next train" does not; "the inside of a bus"
        if has_mainly_noun(chunk, wn) and word.endswith("ing") and (wn.mainly_other_pos(word) or not wn.is_noun(word)):
            return chunk  # "man holding an umbrella"
        chunk.append(word)
        i += 1
    return chunk


def _last_noun(chunk: list[str], wn: WordNetNouns) -> str | None:
    nouns = [w for w in chunk if _is_candidate(w, wn)]
    if not nouns:
        return None
    mainly = [w for w in nouns if not wn.mainly_other_pos(w) and not (w != chunk[-1] and wn.is_colour(w))]
    last, usually = chunk[-1], wn.mainly_other_pos(chunk[-1])
    if last in nouns and (usually is None or (usually == "v" and not (mainly and last.endswith(("ing", "ed"))))):
        return last  # "a teddy bear" (bear is mostly a verb), "a drawing"
    # "woman standing" -> woman; an adjective is no head ("black", "the white")
    return mainly[-1] if mainly else None


def head_with_modifiers(text: str, wn: WordNetNouns | None = None) -> list[str]:
    """The head noun with up to two words before it (``["teddy", "bear"]``); ``[]`` when none.

    Multi-word class names are matched against these ("teddy bear", "traffic light").
    """
    wn = wn or WordNetNouns.load()
    chunk = _first_noun_phrase(tokens(text), wn)
    if chunk and chunk[-1] in _NO_OBJECT and not any(_is_candidate(w, wn) for w in chunk):
        return []
    head = _last_noun(chunk, wn)
    if head is None:
        return []
    at = len(chunk) - 1 - chunk[::-1].index(head)
    before: list[str] = []
    for word in reversed(chunk[max(0, at - 2) : at]):
        if word in _NO_OBJECT or word in _POSSESSIVE or wn.mainly_other_pos(word) == "a":
            # "second banana from left" is a banana, not WordNet's "second banana"; "a white
            # horse" a horse, not the White Horse (a class named in full, "hot dog", is
            # matched as a whole name anyway)
            break
        before.insert(0, word)
    return before + [head]


def head_noun(text: str, wn: WordNetNouns | None = None) -> str | None:
    """The head noun of a phrase or of an expression's first noun phrase (``None``: none)."""
    words = head_with_modifiers(text, wn)
    return words[-1] if words else None
