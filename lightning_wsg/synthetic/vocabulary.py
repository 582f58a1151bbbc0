"""The shape world's vocabulary: categories, co-occurring pairs, attributes and the varied caption nouns.

A shape's CATEGORY is what the simulated detector can name; its ATTRIBUTES (colour, size,
texture) only the captions name. With ``caption_nouns="varied"`` the detector says a COCO class
name and the captions a synonym or a kind of it (:data:`VARIED_NOUNS`).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

__all__ = [
    "ATTRIBUTE_WORDS",
    "CAPTION_NOUNS",
    "CATEGORIES",
    "COLOURS",
    "PAIRS",
    "PARTNER",
    "SIZES",
    "SOLID_CENTRE",
    "TEXTURES",
    "VARIED_NOUNS",
    "CaptionNouns",
    "detector_name",
    "phrase_type",
]

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
}  # fmt: skip
#: How captions name a shape: its category word, or one of :data:`VARIED_NOUNS`.
CaptionNouns = Literal["category", "varied"]
CAPTION_NOUNS: tuple[str, ...] = get_args(CaptionNouns)
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
