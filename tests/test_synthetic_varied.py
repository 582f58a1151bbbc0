"""The synthetic world's varied caption nouns: captions speak like real ones, the detector says COCO names."""

from __future__ import annotations

import json
import re

import pytest

from lightning_wsg.lexicon.classes import COCO80, WordNetMatcher
from lightning_wsg.synthetic import VARIED_NOUNS, generate_world

PHRASE = re.compile(r"\[/EN#\d+/(\w+) ([^\]]+)\]")


@pytest.fixture(scope="module")
def varied_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("varied")
    generate_world(root, num_train=40, num_val=4, num_test=4, image_size=64, caption_nouns="varied", workers=1)
    return root


def test_detector_says_coco_names_and_captions_say_other_nouns(varied_world):
    names = {v[0] for v in VARIED_NOUNS.values()}
    assert names <= set(COCO80)
    lines = (varied_world / "detections.jsonl").read_text(encoding="utf-8").splitlines()
    labels = {label for line in lines for label in json.loads(line)["labels"]}
    assert labels <= names and "person" in labels
    nouns = {n for v in VARIED_NOUNS.values() for pair in v[2] for n in pair}
    heads = []
    for path in (varied_world / "Sentences").glob("*.txt"):
        for kind, text in PHRASE.findall(path.read_text(encoding="utf-8")):
            if kind != "scene":
                heads.append(text.split(" ", 1)[1] if text.startswith("two ") else text)
    spoken = {n for n in nouns if any(h.endswith(" " + n) or h == n for h in heads)}
    # real captions rarely use the detector's word: most phrases name a synonym or a kind of it
    assert len(spoken - names) >= 10
    meta = json.loads((varied_world / "world.json").read_text(encoding="utf-8"))
    assert meta["args"]["caption_nouns"] == "varied" and meta["vocabulary"]["detector_names"]["ball"] == "person"


def test_every_varied_noun_reaches_its_detector_class_through_wordnet():
    names = sorted({v[0] for v in VARIED_NOUNS.values()})
    matcher = WordNetMatcher()
    for detector, _, pairs in VARIED_NOUNS.values():
        for singular, plural in pairs:
            for phrase in (f"the small red {singular}", f"two {plural}"):
                d = matcher.distances(phrase, names)
                best = min(d)
                assert [n for n, x in zip(names, d) if x == best] == [detector], phrase


def test_category_world_is_unchanged_by_the_option(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_world(a, num_train=6, num_val=2, num_test=2, image_size=64, workers=1)
    generate_world(b, num_train=6, num_val=2, num_test=2, image_size=64, caption_nouns="category", workers=1)
    for name in ("detections.jsonl", "objects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    text = (a / "Sentences" / "1000000.txt").read_text(encoding="utf-8")
    assert any(f" {c}" in text for c in ("ball", "box", "kite", "star", "ring", "cross", "car", "fish", "hat"))


def test_unknown_caption_nouns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="caption_nouns must be one of"):
        generate_world(tmp_path / "w", num_train=2, num_val=1, num_test=1, caption_nouns="poetic")
