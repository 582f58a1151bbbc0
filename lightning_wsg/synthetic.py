"""A synthetic grounding world in the exact Flickr30K Entities layout, with detections.

Each image shows 2-5 coloured shapes on a cluttered background. An object has a CATEGORY
(the simulated detector's vocabulary: ``ball`` is a circle, ``box`` a square...) and
ATTRIBUTES (colour, size, texture) that only the captions name. Two properties make the
world a test of the method (``docs/method.md``, sections 6-8):

* same-category distractors: in about half the images two objects share a category and
  the captions name the attribute that tells them apart ("the red ball" beside a blue
  ball); the detector's labels (categories only) cannot;
* co-occurring pairs: fixed category pairs (ball+box, star+ring, ...) appear together in
  most images holding either, so image-sentence contrast alone cannot tell which region
  carries which name; the detector's labels can.

The simulated detector jitters each true box, misses some objects, mislabels some, adds
loose duplicates (IoU 0.3-0.6) and false background boxes; labels are category names only.

Written to ``out_dir``: ``images/<id>.jpg``, ``Annotations/<id>.xml``,
``Sentences/<id>.txt``, ``train.txt`` / ``val.txt`` / ``test.txt``, ``detections.jsonl``
(the simulated detector, project JSON Lines), ``objects.jsonl`` (the truth behind each
image: per object its chains, category, attributes and corner box; for analysis, never
for training) and, last, ``world.json`` (arguments, vocabulary, stats): its absence marks
an incomplete world. Output is byte-identical for a seed (every image draws from its own generator).

Example:
    >>> stats = generate_world("/tmp/world", num_train=16, num_val=4, num_test=4)  # doctest: +SKIP
    >>> world_is_complete("/tmp/world", num_train=16, num_val=4, num_test=4)  # doctest: +SKIP
    True

CLI: ``python -m lightning_wsg.synthetic --out DIR [--seed N --num-train N ...]``; the feature
world built from the real Flickr30K Entities files: ``python -m lightning_wsg.synthetic features
--flickr ROOT --out DIR`` (:mod:`lightning_wsg.feature_world`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .detection.formats import Detections, write_jsonl
from .jsonl import read_jsonl

__all__ = [
    "ATTRIBUTE_WORDS",
    "CATEGORIES",
    "COLOURS",
    "DIFFICULTY",
    "DISTRACTOR_RATE",
    "IMAGE_SIZE",
    "NUM_TEST",
    "NUM_TRAIN",
    "NUM_VAL",
    "PAIRS",
    "PAIR_RATE",
    "SIZES",
    "SOLID_CENTRE",
    "TEXTURES",
    "generate_world",
    "main",
    "read_objects",
    "world_is_complete",
]

VERSION = 1
NUM_TRAIN, NUM_VAL, NUM_TEST = 1600, 200, 200
IMAGE_SIZE = 128
DIFFICULTY = 0.5  # detector faults: 0 = clean, 1 = hard
DISTRACTOR_RATE = 0.5  # share of images with two objects of one category
PAIR_RATE = 0.7  # share of images seeded with a co-occurring pair (fillers add more)

# category -> (Flickr phrase type, width / height aspect, plural)
CATEGORIES = {
    "ball": ("other", 1.0, "balls"),
    "box": ("other", 1.0, "boxes"),
    "kite": ("other", 0.75, "kites"),
    "star": ("other", 1.0, "stars"),
    "ring": ("other", 1.0, "rings"),
    "cross": ("other", 1.0, "crosses"),
    "car": ("vehicles", 1.6, "cars"),
    "fish": ("animals", 1.6, "fish"),
    "hat": ("clothing", 1.3, "hats"),
}
PAIRS = [("ball", "box"), ("star", "ring"), ("kite", "hat"), ("car", "fish")]
PARTNER = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
SOLID_CENTRE = [c for c in CATEGORIES if c != "ring"]  # the box centre lies on the shape
#: ``caption_nouns="varied"``: the detector names each shape with a COCO class name and the
#: captions name it, as real captions do, with a synonym or a kind of it (a "woman" or a
#: "toddler" where the detector says "person"). shape -> (detector class, Flickr phrase type,
#: caption nouns as (singular, plural) pairs).
VARIED_NOUNS = {
    "ball": ("person", "people", [("woman", "women"), ("man", "men"), ("boy", "boys"), ("girl", "girls"),
                                  ("guy", "guys"), ("toddler", "toddlers"), ("lady", "ladies"), ("person", "people")]),
    "box": ("dog", "animals", [("puppy", "puppies"), ("terrier", "terriers"), ("poodle", "poodles"),
                               ("beagle", "beagles"), ("dog", "dogs")]),
    "kite": ("kite", "other", [("kite", "kites")]),
    "star": ("bird", "animals", [("sparrow", "sparrows"), ("parrot", "parrots"), ("pigeon", "pigeons"),
                                 ("bird", "birds")]),
    "ring": ("clock", "other", [("clock", "clocks"), ("wall clock", "wall clocks"), ("alarm clock", "alarm clocks")]),
    "cross": ("airplane", "vehicles", [("jet", "jets"), ("airliner", "airliners"), ("plane", "planes"),
                                       ("airplane", "airplanes")]),
    "car": ("car", "vehicles", [("sedan", "sedans"), ("taxi", "taxis"), ("jeep", "jeeps"),
                                ("convertible", "convertibles"), ("car", "cars")]),
    "fish": ("boat", "vehicles", [("canoe", "canoes"), ("kayak", "kayaks"), ("rowboat", "rowboats"),
                                  ("lifeboat", "lifeboats"), ("boat", "boats")]),
    "hat": ("cup", "other", [("teacup", "teacups"), ("coffee cup", "coffee cups"), ("cup", "cups")]),
}
CAPTION_NOUNS = ("category", "varied")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 20),
    "purple": (150, 40, 190),
    "orange": (250, 130, 0),
}
SIZES = {"small": (0.12, 0.16), "large": (0.25, 0.31)}  # side as a share of the image size
TEXTURES = ["plain", "striped", "dotted"]
ATTRIBUTE_WORDS = frozenset(COLOURS) | frozenset(SIZES) | frozenset(TEXTURES)
_ARGS = {
    "num_train": NUM_TRAIN,
    "num_val": NUM_VAL,
    "num_test": NUM_TEST,
    "image_size": IMAGE_SIZE,
    "seed": 0,
    "difficulty": DIFFICULTY,
    "distractor_rate": DISTRACTOR_RATE,
    "pair_rate": PAIR_RATE,
    "caption_nouns": "category",
}
_CATS = list(CATEGORIES)


def detector_name(category: str, caption_nouns: str) -> str:
    """The simulated detector's label for a shape category."""
    return VARIED_NOUNS[category][0] if caption_nouns == "varied" else category


def phrase_type(category: str, caption_nouns: str) -> str:
    """The Flickr30K Entities phrase type of a shape category's phrases."""
    return VARIED_NOUNS[category][1] if caption_nouns == "varied" else CATEGORIES[category][0]


def _noun(rng: np.random.Generator, category: str, caption_nouns: str, plural: bool = False) -> str:
    """The word a caption names a category by (one draw from the varied nouns)."""
    if caption_nouns != "varied":
        return CATEGORIES[category][2] if plural else category
    nouns = VARIED_NOUNS[category][2]
    return nouns[rng.integers(len(nouns))][1 if plural else 0]


def _shape_mask(cat: str, w: int, h: int, flip: bool) -> np.ndarray:
    """A boolean ``[h, w]`` mask of the category's shape filling a ``w x h`` patch."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    W, H = w - 1, h - 1
    if cat == "ball":
        d.ellipse((0, 0, W, H), fill=1)
    elif cat == "box":
        d.rectangle((0, 0, W, H), fill=1)
    elif cat == "kite":
        d.polygon([(W / 2, 0), (W, H * 0.4), (W / 2, H), (0, H * 0.4)], fill=1)
    elif cat == "star":
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        d.polygon([(W / 2 + r * W / 2 * np.cos(a), H / 2 - r * H / 2 * np.sin(a)) for a, r in zip(ang, rad)], fill=1)
    elif cat == "ring":
        d.ellipse((0, 0, W, H), fill=1)
        d.ellipse((W * 0.27, H * 0.27, W * 0.73, H * 0.73), fill=0)
    elif cat == "cross":
        d.rectangle((W * 0.33, 0, W * 0.67, H), fill=1)
        d.rectangle((0, H * 0.33, W, H * 0.67), fill=1)
    elif cat == "car":
        d.rectangle((0, H * 0.3, W, H * 0.72), fill=1)
        d.polygon([(W * 0.22, H * 0.35), (W * 0.33, 0), (W * 0.67, 0), (W * 0.78, H * 0.35)], fill=1)
        d.ellipse((W * 0.06, H * 0.5, W * 0.38, H), fill=1)
        d.ellipse((W * 0.62, H * 0.5, W * 0.94, H), fill=1)
    elif cat == "fish":
        d.ellipse((0, 0, W * 0.72, H), fill=1)
        d.polygon([(W * 0.6, H / 2), (W, 0), (W, H)], fill=1)
    elif cat == "hat":
        d.polygon([(W * 0.25, H * 0.7), (W * 0.32, 0), (W * 0.68, 0), (W * 0.75, H * 0.7)], fill=1)
        d.rectangle((0, H * 0.62, W, H), fill=1)
    mask = np.asarray(img, dtype=bool)
    return mask[:, ::-1] if flip else mask


def _texture(colour, texture: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An ``[h, w, 3]`` fill: the colour, with dark stripes or dots."""
    fill = np.empty((h, w, 3), np.float32)
    fill[:] = colour
    if texture == "plain":
        return fill
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dark = np.asarray(colour, np.float32) * 0.3
    if texture == "striped":
        t = rng.uniform(0, np.pi)
        on = ((xx * np.cos(t) + yy * np.sin(t)) // 2.5) % 2 == 0
    else:
        on = ((xx % 6.0 - 2.5) ** 2 + (yy % 6.0 - 2.5) ** 2) <= 2.6
    fill[on] = dark
    return fill


def _background(rng: np.random.Generator, s: int) -> tuple[np.ndarray, str]:
    """Low-saturation clutter: tinted grey, gradient, noise, stripes, faint shapes."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    base = rng.uniform(70, 190) + rng.uniform(-18, 18, 3)
    t = rng.uniform(0, 2 * np.pi)
    img = (base + (rng.uniform(-25, 25) * ((xx * np.cos(t) + yy * np.sin(t)) / s))[..., None]).astype(np.float32)
    kind = "noisy"
    if rng.random() < 0.5:
        t, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        img += (rng.uniform(8, 18) * np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period))[..., None]
        kind = "striped"
    for _ in range(rng.integers(2, 7)):
        w, h = (int(v) for v in rng.integers(max(4, s // 16), max(5, s // 3), 2))
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        m = _shape_mask(_CATS[rng.integers(len(_CATS))], w, h, False)
        alpha = rng.uniform(0.1, 0.25)
        patch = img[y : y + h, x : x + w]
        patch[m] = (1 - alpha) * patch[m] + alpha * rng.uniform(0, 255, 3)
    img += rng.standard_normal((s, s, 1), np.float32) * np.float32(rng.uniform(5, 14))
    img += rng.random((s, s, 3), np.float32) * np.float32(12) - np.float32(6)
    return img, kind


def _iou1(a, b) -> float:
    """IoU of two corner boxes (plain floats; the hot path of the detector)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _clip(b, s: int) -> list[float]:
    return [min(max(float(v), 0.0), float(s)) for v in b]


def _scene_categories(rng: np.random.Generator, distractor_rate: float, pair_rate: float) -> tuple[list, str | None]:
    """Categories of one scene (a distractor category appears twice) and that category."""
    cats: list[str] = []
    if rng.random() < pair_rate:
        cats += list(PAIRS[rng.integers(len(PAIRS))])
    dup = None
    if rng.random() < distractor_rate:
        dup = cats[rng.integers(2)] if cats and rng.random() < 0.6 else _CATS[rng.integers(len(_CATS))]
        cats += [dup] if dup in cats else [dup, dup]
    n = max(int(rng.integers(2, 6)), len(cats))
    while len(cats) < n:
        free = [c for c in _CATS if c not in cats]
        c = free[rng.integers(len(free))]
        p = PARTNER.get(c)
        if p is None or p in cats or rng.random() < 0.15:
            cats.append(c)
        elif n - len(cats) >= 2:
            cats += [c, p]
    return cats, dup


def _attributes(rng: np.random.Generator, cats: list[str], dup: str | None) -> list[dict]:
    objs, dup_colours = [], []
    for c in cats:
        colours = [k for k in COLOURS if k not in dup_colours] if c == dup else list(COLOURS)
        colour = colours[rng.integers(len(colours))]
        if c == dup:
            dup_colours.append(colour)
        texture = TEXTURES[rng.choice(3, p=[0.6, 0.2, 0.2])]
        objs.append({"category": c, "colour": colour, "size": list(SIZES)[rng.integers(2)], "texture": texture})
    return objs


def _place(rng: np.random.Generator, objs: list[dict], s: int) -> list[dict]:
    """Give objects masks and positions overlapping little (box IoU < 0.05); drop those that do not fit."""
    placed: list[dict] = []
    for o in objs:
        for attempt in range(60):
            size = "small" if attempt >= 40 else o["size"]
            side = rng.uniform(*SIZES[size]) * s
            asp = CATEGORIES[o["category"]][1] * rng.uniform(0.9, 1.1)
            w, h = max(6, round(side * np.sqrt(asp))), max(6, round(side / np.sqrt(asp)))
            x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            mask = _shape_mask(o["category"], w, h, bool(rng.random() < 0.5))
            ys, xs = np.nonzero(mask)
            box = np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], np.float64)
            if all(_iou1(box.tolist(), p["box"].tolist()) < 0.05 for p in placed):
                placed.append(o | {"size": size, "box": box, "mask": mask, "xy": (x, y)})
                break
    if len(placed) < 2:
        raise RuntimeError("could not place two objects; is the image size too small?")
    return placed


def _render(rng: np.random.Generator, objs: list[dict], s: int) -> tuple[Image.Image, str]:
    img, kind = _background(rng, s)
    for o in objs:
        (x, y), m = o["xy"], o["mask"]
        h, w = m.shape
        fill = _texture(COLOURS[o["colour"]], o["texture"], h, w, rng)
        img[y : y + h, x : x + w][m] = fill[m]
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)), kind


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
    tokens = [det] + [words[a] for a in ("size", "texture", "colour") if a in words] + [_noun(rng, o["category"], nouns)]
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


def _detect(
    rng: np.random.Generator, objs: list[dict], s: int, d: float, st: dict, nouns: str = "category"
) -> tuple[list, list, list]:
    """Simulated detector: jittered true boxes, misses, wrong labels, loose duplicates, false boxes."""
    boxes, labels, scores, kinds = [], [], [], []
    other = lambda c: [k for k in _CATS if k != c][rng.integers(len(_CATS) - 1)]

    def add(box, label, score, kind):
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            boxes.append(box)
            labels.append(label)
            scores.append(min(max(float(score), 0.01), 1.0))
            kinds.append(kind)

    truths = [o["box"].tolist() for o in objs]
    for t, o in zip(truths, objs):
        c, w, h = o["category"], t[2] - t[0], t[3] - t[1]
        st["objects"] += 1
        if rng.random() < 0.14 * d:
            st["missed"] += 1
        else:
            for _ in range(10):  # jitter by a few pixels, IoU >= 0.55 guaranteed
                b = _clip(np.add(t, rng.normal(0, (0.015 + 0.07 * d) * np.sqrt(w * h), 4)), s)
                if _iou1(b, t) >= 0.55:
                    break
            else:
                b = list(t)
            wrong = rng.random() < 0.2 * d
            st["wrong"] += wrong
            st["tight_iou"].append(_iou1(b, t))
            add(b, other(c) if wrong else c, rng.uniform(0.3, 0.8) if wrong else rng.uniform(0.55, 1.0), "tight")
        for _ in range(min(3, rng.poisson(0.4 + 2.4 * d))):  # loose duplicates, IoU 0.3-0.6
            for _ in range(30):
                f = (rng.uniform(0.2, 0.6, 2) * rng.choice([-1, 1], 2)).tolist()
                g = (rng.uniform(0.8, 1.8, 2) if rng.random() < 0.5 else rng.uniform(0.45, 1.0, 2)).tolist()
                cx, cy = (t[0] + t[2]) / 2 + f[0] * w, (t[1] + t[3]) / 2 + f[1] * h
                b = _clip([cx - g[0] * w / 2, cy - g[1] * h / 2, cx + g[0] * w / 2, cy + g[1] * h / 2], s)
                if 0.3 <= _iou1(b, t) <= 0.6:
                    add(b, c if rng.random() < 0.8 else other(c), rng.uniform(0.2, 0.9), "dup")
                    break
    for i, o in enumerate(objs):  # group boxes around two objects of one category
        for j in range(i + 1, len(objs)):
            if o["category"] == objs[j]["category"] and rng.random() < 0.5:
                u = [
                    min(truths[i][0], truths[j][0]),
                    min(truths[i][1], truths[j][1]),
                    max(truths[i][2], truths[j][2]),
                    max(truths[i][3], truths[j][3]),
                ]
                add(_clip(np.add(u, rng.normal(0, 1.0, 4)), s), o["category"], rng.uniform(0.2, 0.7), "group")
    target = int(rng.integers(10, 31))
    goal = len(boxes) + max(target - len(boxes), int(rng.poisson(1 + 4 * d)))
    for _ in range(400):  # false boxes on the background
        if len(boxes) >= goal:
            break
        side, asp = rng.uniform(0.1, 0.45) * s, rng.uniform(0.6, 1.6)
        w, h = side * np.sqrt(asp), side / np.sqrt(asp)
        x, y = rng.uniform(0, s - w), rng.uniform(0, s - h)
        b = [x, y, x + w, y + h]
        if max(_iou1(b, t) for t in truths) < 0.25:
            add(b, _CATS[rng.integers(len(_CATS))], rng.uniform(0.02, 0.45), "false")
    order = sorted(range(len(boxes)), key=lambda k: (kinds[k] == "tight", scores[k]), reverse=True)[:30]
    order = sorted(order, key=lambda k: -scores[k])
    return [boxes[k] for k in order], [detector_name(labels[k], nouns) for k in order], [scores[k] for k in order]


def _new_stats() -> dict:
    return {
        "objects": 0,
        "missed": 0,
        "wrong": 0,
        "tight_iou": [],
        "distractor": 0,
        "pair": 0,
        "proposals": [],
        "phrases": 0,
        "covered": 0,
        "ambiguous": 0,
        "pair_captions": 0,
        "pair_named": 0,
        "cat_images": dict.fromkeys(_CATS, 0),
        "cat_with_partner": dict.fromkeys(_CATS, 0),
    }


def _merge_stats(st: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, list):
            st[k].extend(v)
        elif isinstance(v, dict):
            for c, n in v.items():
                st[k][c] += n
        else:
            st[k] += v


def _image_stats(st: dict, objs: list[dict], lines: list[str], chains: dict, props: list) -> None:
    """Count distractors, pairs, phrases, and phrases some proposal covers (IoU >= 0.5)."""
    cat_set = {o["category"] for o in objs}
    st["distractor"] += len(cat_set) < len(objs)
    pairs_here = [(x, y) for x, y in PAIRS if x in cat_set and y in cat_set]
    st["pair"] += bool(pairs_here)
    for c in cat_set:
        st["cat_images"][c] += 1
        st["cat_with_partner"][c] += PARTNER.get(c) in cat_set
    for line in lines:
        named = set()
        for chain in (int(t.split("/")[1][3:]) for t in line.split("[")[1:]):
            members = chains["used"][chain]
            if members == "scene":
                continue
            cat = objs[members[0]]["category"]
            named.add(cat)
            boxes = np.array([objs[i]["box"] for i in members])
            union = [*boxes[:, :2].min(0), *boxes[:, 2:].max(0)]
            st["phrases"] += 1
            st["covered"] += max(_iou1(union, b) for b in props) >= 0.5
            st["ambiguous"] += sum(o["category"] == cat for o in objs) > 1
        if pairs_here:
            st["pair_captions"] += 1
            st["pair_named"] += any(x in named and y in named for x, y in pairs_here)


def _make_image(job: tuple) -> tuple:
    """Write one image's files; return its detections (as lists) and its stats."""
    seed, index, image_id, out, a = job
    out, st, s = Path(out), _new_stats(), a["image_size"]
    rng = np.random.default_rng([seed, index])
    cats, dup = _scene_categories(rng, a["distractor_rate"], a["pair_rate"])
    objs = _place(rng, _attributes(rng, cats, dup), s)
    img, scene_word = _render(rng, objs, s)
    img.save(out / "images" / f"{image_id}.jpg", format="JPEG", quality=95, subsampling=0)
    lines, chains = _captions(rng, objs, s, scene_word, a["caption_nouns"])
    (out / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, s, objs, chains), encoding="utf-8")
    boxes, labels, scores = _detect(rng, objs, s, a["difficulty"], st, a["caption_nouns"])
    st["proposals"].append(len(boxes))
    props = np.array(boxes, np.float64).round(2).tolist()
    _image_stats(st, objs, lines, chains, props)
    plural = chains["used"].get(chains["plural"], [])
    truth = [
        dict(
            chains=[int(chains["chain_of"][i])] + ([chains["plural"]] if i in plural else []),
            box=o["box"].tolist(),
            **{k: o[k] for k in ("category", "colour", "size", "texture")},
        )
        for i, o in enumerate(objs)
    ]
    return image_id, props, labels, scores, st, truth


def _normalise_args(args: dict) -> dict:
    unknown = set(args) - set(_ARGS)
    if unknown:
        raise TypeError(f"unknown world arguments: {sorted(unknown)}")
    a = _ARGS | args
    if a["caption_nouns"] not in CAPTION_NOUNS:
        raise ValueError(f"caption_nouns must be one of {CAPTION_NOUNS}, got {a['caption_nouns']!r}")
    return {k: type(_ARGS[k])(v) for k, v in a.items()}  # each argument as its default's type


def world_is_complete(out_dir: str | Path, **args) -> bool:
    """Whether ``out_dir`` holds a finished world generated with these arguments (defaults filled).

    Takes the keyword arguments of :func:`generate_world` (``workers`` is ignored), so that
    ``if not world_is_complete(d, **kw): generate_world(d, **kw)`` caches a world.
    """
    out = Path(out_dir)
    args.pop("workers", None)  # how many processes wrote it does not change a world
    try:
        meta = json.loads((out / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = ["detections.jsonl", "objects.jsonl", "train.txt", "val.txt", "test.txt"]
    return (
        meta.get("version") == VERSION
        and meta.get("args") == _normalise_args(args)
        and not (out / ".generating").exists()
        and all((out / f).is_file() for f in files)
    )


def _summary(st: dict, splits: dict) -> dict:
    """The world's stats (stored in ``world.json``) from the merged counts."""
    index = len(st["proposals"])
    n, props = max(1, index), np.array(st["proposals"] or [0])
    paired = [c for c in _CATS if c in PARTNER and st["cat_images"][c]]
    return {
        "images": index,
        "splits": splits,
        "objects_per_image": round(st["objects"] / n, 3),
        "distractor_rate": round(st["distractor"] / n, 4),
        "cooccurrence_rate": round(st["pair"] / n, 4),
        "pair_named_in_captions": round(st["pair_named"] / max(1, st["pair_captions"]), 4),
        "partner_given_category_min": round(
            min((st["cat_with_partner"][c] / st["cat_images"][c] for c in paired), default=0.0), 4
        ),
        "proposals_per_image": {
            "mean": round(float(props.mean()), 2),
            "min": int(props.min()),
            "max": int(props.max()),
        },
        "phrases_with_box": st["phrases"],
        "upper_bound": round(st["covered"] / max(1, st["phrases"]), 4),
        "ambiguous_phrase_share": round(st["ambiguous"] / max(1, st["phrases"]), 4),
        "missed_objects": round(st["missed"] / max(1, st["objects"]), 4),
        "wrong_labels": round(st["wrong"] / max(1, st["objects"] - st["missed"]), 4),
        "tight_iou_ge_0_7": round(float(np.mean(np.array(st["tight_iou"]) >= 0.7)) if st["tight_iou"] else 0.0, 4),
    }


def generate_world(
    out_dir: str | Path,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    num_test: int = NUM_TEST,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    difficulty: float = DIFFICULTY,
    distractor_rate: float = DISTRACTOR_RATE,
    pair_rate: float = PAIR_RATE,
    caption_nouns: str = "category",
    workers: int | None = None,
) -> dict:
    """Write a synthetic world to ``out_dir`` and return its summary stats.

    Args:
        out_dir: target folder; it must be empty, absent, or a world written here before
            (whose files are then replaced).
        num_train, num_val, num_test: images per split.
        image_size: side of the square images in pixels (>= 48).
        seed: the world's seed; the output is byte-identical for a seed.
        difficulty: detector faults in [0, 1] (misses ~14% x d, wrong labels ~20% x d,
            loose duplicates, box jitter).
        distractor_rate: share of images holding two objects of one category.
        pair_rate: share of images seeded with a co-occurring category pair.
        caption_nouns: ``"category"`` (captions and detector both say the shape's category
            word) or ``"varied"`` (the detector says a COCO class name, the captions a synonym
            or a kind of it: "woman" where the detector says "person"; see ``VARIED_NOUNS``).
        workers: processes (default: up to all cores; the output does not depend on it).

    Returns:
        The stats also stored in ``world.json`` plus ``seconds`` (generation time).
    """
    a = _normalise_args(
        {
            "num_train": num_train,
            "num_val": num_val,
            "num_test": num_test,
            "image_size": image_size,
            "seed": seed,
            "difficulty": difficulty,
            "distractor_rate": distractor_rate,
            "pair_rate": pair_rate,
            "caption_nouns": caption_nouns,
        }
    )
    if a["image_size"] < 48 or not 0 <= a["difficulty"] <= 1 or min(a["num_train"], a["num_val"], a["num_test"]) < 0:
        raise ValueError(f"invalid world arguments: {a}")
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not ((out / "world.json").exists() or (out / ".generating").exists()):
        raise FileExistsError(f"{out} is not empty and holds no synthetic world; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".generating").touch()
    (out / "world.json").unlink(missing_ok=True)
    for sub in ("images", "Annotations", "Sentences"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    total = a["num_train"] + a["num_val"] + a["num_test"]
    jobs = [(a["seed"], i, str(1_000_000 + i), str(out), a) for i in range(total)]
    if workers is None:  # a process pays off from a few dozen images on
        workers = min(os.cpu_count() or 1, max(1, len(jobs) // 64))
    if workers > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(_make_image, jobs, chunksize=16)
    else:
        results = [_make_image(job) for job in jobs]
    st, splits, dets, start_index = _new_stats(), {}, [], 0
    for split in ("train", "val", "test"):
        part = results[start_index : start_index + a[f"num_{split}"]]
        start_index += len(part)
        split_st = _new_stats()
        for image_id, props, labels, scores, image_st, _ in part:
            dets.append(
                Detections(
                    image_id,
                    torch.tensor(props, dtype=torch.float32).reshape(-1, 4),
                    labels,
                    torch.tensor(scores, dtype=torch.float32),
                )
            )
            _merge_stats(split_st, image_st)
        _merge_stats(st, split_st)
        splits[split] = {
            "images": len(part),
            "upper_bound": round(split_st["covered"] / max(1, split_st["phrases"]), 4),
        }
        (out / f"{split}.txt").write_text("".join(r[0] + "\n" for r in part), encoding="utf-8")
    write_jsonl(out / "detections.jsonl", dets)
    with (out / "objects.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"image_id": r[0], "objects": r[5]}) + "\n" for r in results)
    stats = _summary(st, splits)
    meta = {
        "version": VERSION,
        "generator": "lightning_wsg.synthetic",
        "layout": "flickr30k_entities",
        "args": a,
        "stats": stats,
        "vocabulary": {
            "categories": {c: phrase_type(c, a["caption_nouns"]) for c in CATEGORIES},
            "detector_names": {c: detector_name(c, a["caption_nouns"]) for c in CATEGORIES},
            "colours": COLOURS,
            "sizes": list(SIZES),
            "textures": TEXTURES,
            "pairs": PAIRS,
        },
    }
    tmp = out / "world.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "world.json")
    (out / ".generating").unlink()
    return stats | {"seconds": round(time.perf_counter() - start, 2)}


def read_objects(root: str | Path) -> dict[str, list[dict]]:
    """The truth behind a generated world: ``image_id -> objects`` from ``objects.jsonl``.

    Each object has ``box`` (corner pixels, like the annotations), ``category``, ``colour``,
    ``size``, ``texture`` and ``chains`` (the ids of the phrases that name it).
    """
    path = Path(root) / "objects.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a world written by lightning_wsg.synthetic?")
    out = {}
    for n, record in read_jsonl(path):
        try:
            out[str(record["image_id"])] = list(record["objects"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not an objects record ({err!r})") from err
    return out


def main(argv: list[str] | None = None) -> dict:
    """CLI: generate (or reuse, unless ``--force``) a world and print its summary as JSON.

    ``python -m lightning_wsg.synthetic features --flickr ROOT --out DIR`` builds the feature
    world from the real Flickr30K Entities annotations instead (:mod:`lightning_wsg.feature_world`).
    """
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["features"]:
        from .feature_world import main as feature_world_main

        return feature_world_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m lightning_wsg.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=NUM_TRAIN)
    p.add_argument("--num-val", type=int, default=NUM_VAL)
    p.add_argument("--num-test", type=int, default=NUM_TEST)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--difficulty", type=float, default=DIFFICULTY)
    p.add_argument("--distractor-rate", type=float, default=DISTRACTOR_RATE)
    p.add_argument("--pair-rate", type=float, default=PAIR_RATE)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="regenerate even if an identical world exists")
    ns = vars(p.parse_args(argv))
    out, force, workers = ns.pop("out"), ns.pop("force"), ns.pop("workers")
    if not force and world_is_complete(out, **ns):
        summary = json.loads((Path(out) / "world.json").read_text(encoding="utf-8"))["stats"] | {"reused": True}
    else:
        summary = generate_world(out, **ns, workers=workers)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
