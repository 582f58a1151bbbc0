"""Captions in the Flickr30K Entities markup: phrases that single their objects out, relations, the XML.

A phrase names the attributes that tell its object from a same-category rival ("the red
ball" beside a blue one); captions often name both members of a co-occurring pair.
"""

from __future__ import annotations

import numpy as np

from .vocabulary import PARTNER, _noun, phrase_type


def _phrase(rng: np.random.Generator, o: dict, objs: list[dict], chain: int, nouns: str = "category") -> str:
    """``[/EN#chain/type words]`` naming attributes that single the object out."""
    rivals = [p for p in objs if p is not o and p["category"] == o["category"]]
    words = {}
    if rivals:
        differ = [a for a in ("colour", "size", "texture") if all(p[a] != o[a] for p in rivals)]
        weights = np.array([3.0 if a == "colour" else 1.0 for a in differ])
        key = differ[rng.choice(len(differ), p=weights / weights.sum())]
        words[key] = o[key]
    for a, p in (("colour", 0.55), ("size", 0.3), ("texture", 0.3)):
        if a not in words and rng.random() < p and not (a == "texture" and o[a] == "plain"):
            words[a] = o[a]
    det = "the" if rivals or rng.random() < 0.5 else "a"
    tokens = (
        [det] + [words[a] for a in ("size", "texture", "colour") if a in words] + [_noun(rng, o["category"], nouns)]
    )
    return f"[/EN#{chain}/{phrase_type(o['category'], nouns)} " + " ".join(tokens) + "]"


def _relation(rng: np.random.Generator, a: dict, b: dict, s: int) -> str:
    ca, cb = (a["box"][:2] + a["box"][2:]) / 2, (b["box"][:2] + b["box"][2:]) / 2
    rels = ["next to", "near", "and"]
    rels += ["above"] if ca[1] < cb[1] - 0.15 * s else ["below"] if ca[1] > cb[1] + 0.15 * s else []
    rels += ["to the left of"] if ca[0] < cb[0] - 0.15 * s else ["to the right of"] if ca[0] > cb[0] + 0.15 * s else []
    return rels[rng.integers(len(rels))]


def _captions(
    rng: np.random.Generator, objs: list[dict], s: int, scene_word: str, nouns: str = "category"
) -> tuple[list[str], dict]:
    """Five captions; returns them and the chains used (chain id -> object indices or 'scene')."""
    n = len(objs)
    chain_of = list(rng.permutation(n) + 1)
    scene_chain, plural_chain = n + 1, n + 2
    used: dict[int, object] = {}
    cats = [o["category"] for o in objs]
    pair_idx = [(i, j) for i in range(n) for j in range(i + 1, n) if PARTNER.get(cats[i]) == cats[j]]
    dup_idx = [i for i in range(n) if sum(o["category"] == objs[i]["category"] for o in objs) > 1]
    lines = []
    for _ in range(5):
        chosen: list[int] = []
        if pair_idx and rng.random() < 0.7:
            chosen += list(pair_idx[rng.integers(len(pair_idx))])
        if dup_idx and rng.random() < 0.8:
            extra = [i for i in dup_idx if i not in chosen]
            chosen += [extra[rng.integers(len(extra))]] if extra else []
        k = max(len(chosen), int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])))
        rest = [i for i in rng.permutation(n) if i not in chosen]
        chosen = [int(i) for i in rng.permutation((chosen + rest)[: min(k, n)])]
        phrases = [_phrase(rng, objs[i], objs, int(chain_of[i]), nouns) for i in chosen]
        for i in chosen:
            used[int(chain_of[i])] = [i]
        if len(dup_idx) == 2 and len(chosen) == 1 and chosen[0] not in dup_idx and rng.random() < 0.3:
            cat = objs[dup_idx[0]]["category"]
            phrases.append(f"[/EN#{plural_chain}/{phrase_type(cat, nouns)} two {_noun(rng, cat, nouns, plural=True)}]")
            used[plural_chain] = list(dup_idx)
            chosen.append(dup_idx[0])
        suffix = ""
        if len(phrases) == 1:
            text = [("there is ", ""), ("", " in the picture"), ("", " is shown"), ("", "")][rng.integers(4)]
            text, suffix = text[0] + phrases[0], text[1]
        elif len(phrases) == 2:
            text = f"{phrases[0]} {_relation(rng, objs[chosen[0]], objs[chosen[1]], s)} {phrases[1]}"
        else:
            mid = " , " if rng.random() < 0.5 else f" {_relation(rng, objs[chosen[0]], objs[chosen[1]], s)} "
            text = f"{phrases[0]}{mid}{phrases[1]} and {phrases[2]}"
        if rng.random() < 0.3:
            det = ["a", "the"][rng.integers(2)]
            text += f" {['on', 'in front of'][rng.integers(2)]} [/EN#{scene_chain}/scene {det} {scene_word} background]"
            used[scene_chain] = "scene"
        text = (text + suffix).strip()
        i = text.index(" ", text.index("[")) + 1 if text.startswith("[") else 0
        lines.append(text[:i] + text[i].upper() + text[i + 1 :] + " .")
    return lines, {"chain_of": chain_of, "used": used, "scene": scene_chain, "plural": plural_chain}


def _xml(image_id: str, s: int, objs: list[dict], chains: dict) -> str:
    out = [
        (
            f"<annotation>\n\t<filename>{image_id}.jpg</filename>\n\t<size>\n\t\t<width>{s}</width>\n"
            f"\t\t<height>{s}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        )
    ]
    for i, o in enumerate(objs):
        names = [chains["chain_of"][i]] + ([chains["plural"]] if i in chains["used"].get(chains["plural"], []) else [])
        x1, y1, x2, y2 = (int(v) for v in o["box"])
        out.append(
            "\t<object>\n"
            + "".join(f"\t\t<name>{c}</name>\n" for c in names)
            + f"\t\t<bndbox>\n\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
            f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    if chains["scene"] in chains["used"]:
        out.append(
            f"\t<object>\n\t\t<name>{chains['scene']}</name>\n\t\t<scene>1</scene>\n"
            "\t\t<nobndbox>0</nobndbox>\n\t</object>\n"
        )
    return "".join(out) + "</annotation>\n"
