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
an incomplete world. Output is byte-identical for a config (every image draws from its own generator).

The package by role: :mod:`.vocabulary` (categories, colours, varied nouns), :mod:`.rendering`
(shapes, textures, background, placing), :mod:`.captions` (phrases, relations, captions, XML),
:mod:`.detector` (the simulated detector), :mod:`.world` (:class:`WorldConfig`, generation,
caching, stats), :mod:`.cli` (the command line, derived from :class:`WorldConfig`) and
:mod:`.feature_world` (the feature world built from the real Flickr30K Entities files).

Example:
    >>> config = WorldConfig(num_train=16, num_val=4, num_test=4, caption_nouns="varied")
    >>> stats = generate_world("/tmp/world", config)  # doctest: +SKIP
    >>> world_is_complete("/tmp/world", config)  # doctest: +SKIP
    True

CLI: ``python -m lightning_wsg.synthetic --out DIR [--seed N --num-train N --caption-nouns varied ...]``
(one option per :class:`WorldConfig` field); the feature world built from the real Flickr30K
Entities files: ``python -m lightning_wsg.synthetic features --flickr ROOT --out DIR``
(:mod:`lightning_wsg.synthetic.feature_world`).
"""

from __future__ import annotations

from .captions import _relation as _relation  # a private name the tests use
from .cli import main
from .vocabulary import (
    ATTRIBUTE_WORDS,
    CAPTION_NOUNS,
    CATEGORIES,
    COLOURS,
    PAIRS,
    SIZES,
    SOLID_CENTRE,
    TEXTURES,
    VARIED_NOUNS,
    CaptionNouns,
    detector_name,
    phrase_type,
)
from .world import (
    DIFFICULTY,
    DISTRACTOR_RATE,
    IMAGE_SIZE,
    NUM_TEST,
    NUM_TRAIN,
    NUM_VAL,
    PAIR_RATE,
    WorldConfig,
    generate_world,
    read_objects,
    world_is_complete,
)

__all__ = [
    "ATTRIBUTE_WORDS",
    "CAPTION_NOUNS",
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
    "VARIED_NOUNS",
    "CaptionNouns",
    "WorldConfig",
    "detector_name",
    "generate_world",
    "main",
    "phrase_type",
    "read_objects",
    "world_is_complete",
]
