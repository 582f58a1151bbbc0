"""The synthetic world: Flickr30K Entities layout, detector, rates, determinism, CLI, caching."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_wsg import synthetic as syn
from lightning_wsg.boxes import box_iou, union_box, xml_to_corners
from lightning_wsg.data.flickr30k_entities import Flickr30kEntitiesDataModule, parse_annotation, parse_sentence
from lightning_wsg.detection import open_detections

SIZE = 96
ARGS = {"num_train": 100, "num_val": 20, "num_test": 20, "image_size": SIZE, "seed": 3}
PHRASE = re.compile(r"\[/EN#(\d+)/(\w+) ([^\[\]]+)\]")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, syn.generate_world(out, **ARGS, workers=2)


def _ids(out: Path) -> dict[str, list[str]]:
    return {s: (out / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}


def _objects(out: Path) -> dict[str, list[dict]]:
    return {r["image_id"]: r["objects"] for r in map(json.loads, (out / "objects.jsonl").read_text().splitlines())}


def _xml_boxes(path: Path) -> tuple[dict[str, list[list[int]]], set[str], ET.Element]:
    root = ET.parse(path).getroot()
    boxes: dict[str, list[list[int]]] = {}
    scene: set[str] = set()
    for obj in root.findall("object"):
        names = [n.text for n in obj.findall("name")]
        bb = obj.find("bndbox")
        if bb is None:
            assert obj.findtext("scene") == "1" and obj.findtext("nobndbox") == "0"
            scene.update(names)
            continue
        for n in names:
            boxes.setdefault(n, []).append([int(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
    return boxes, scene, root


def _phrases(line: str) -> list[tuple[str, str, list[str]]]:
    return [(m.group(1), m.group(2), m.group(3).split(" ")) for m in PHRASE.finditer(line)]


def test_vocabularies_are_disjoint_and_well_formed():
    assert 6 <= len(syn.CATEGORIES) <= 10 and 5 <= len(syn.COLOURS) <= 7
    assert not set(syn.CATEGORIES) & syn.ATTRIBUTE_WORDS
    assert all(a in syn.CATEGORIES and b in syn.CATEGORIES for a, b in syn.PAIRS)
    assert len({c for p in syn.PAIRS for c in p}) == 2 * len(syn.PAIRS)  # each category in at most one pair
    assert len(set(syn.COLOURS.values())) == len(syn.COLOURS)


def test_layout(world):
    out, stats = world
    ids = _ids(out)
    assert [len(ids[s]) for s in ("train", "val", "test")] == [100, 20, 20]
    every = [i for s in ids.values() for i in s]
    assert len(set(every)) == len(every) and all(i.isdigit() for i in every)
    assert {p.stem for p in (out / "Annotations").glob("*.xml")} == set(every)
    for image_id in every:
        jpg = out / "images" / f"{image_id}.jpg"
        assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"
        with Image.open(jpg) as img:
            assert img.format == "JPEG" and img.size == (SIZE, SIZE) and img.mode == "RGB"
        boxes, scene, root = _xml_boxes(out / "Annotations" / f"{image_id}.xml")
        assert root.findtext("filename") == f"{image_id}.jpg"
        assert [root.findtext(f"size/{t}") for t in ("width", "height", "depth")] == [str(SIZE), str(SIZE), "3"]
        for chain_boxes in boxes.values():
            for x1, y1, x2, y2 in chain_boxes:
                assert 1 <= x1 <= x2 <= SIZE and 1 <= y1 <= y2 <= SIZE
        lines = (out / "Sentences" / f"{image_id}.txt").read_text().split("\n")
        assert lines[-1] == "" and len(lines) == 6
        for line in lines[:5]:
            assert line.endswith(" .") and "  " not in line and line == line.strip()
            phrases = _phrases(line)
            assert 1 <= len(phrases) <= 4 and line.count("[") == len(phrases)
            for chain, ptype, words in phrases:
                assert chain in boxes or chain in scene
                assert ptype == ("scene" if chain in scene else syn.CATEGORIES[_head(words)][0])
    assert json.loads((out / "world.json").read_text())["stats"]["images"] == stats["images"] == 140
    assert not (out / ".generating").exists()


def _head(words: list[str]) -> str:
    """The category a phrase names (plural "two balls" -> "ball")."""
    plural = {v[2]: c for c, v in syn.CATEGORIES.items()}
    return words[-1] if words[-1] in syn.CATEGORIES else plural[words[-1]]


def test_flickr_parser_reads_the_world(world):
    out, _ = world
    ids, everything = _ids(out), _objects(out)
    for image_id in [i for s in ids.values() for i in s]:
        ann = parse_annotation(out / "Annotations" / f"{image_id}.xml")
        assert (ann.width, ann.height) == (SIZE, SIZE)
        objects = everything[image_id]
        for line in (out / "Sentences" / f"{image_id}.txt").read_text().splitlines():
            words, phrases = parse_sentence(line)
            assert words[-1] == "." and len(phrases) == len(_phrases(line))
            for p in phrases:
                assert p.chain_id in ann.boxes or p.chain_id in ann.scene
                if p.chain_id in ann.boxes:  # the chain's boxes are its objects' boxes
                    mine = [o["box"] for o in objects if int(p.chain_id) in o["chains"]]
                    assert sorted(ann.boxes[p.chain_id].tolist()) == sorted(mine)


def test_flickr_datamodule_loads_the_world(world):
    out, _ = world
    dm = Flickr30kEntitiesDataModule(
        out, out / "images", out / "detections.jsonl", batch_size=4, num_workers=0, image_size=64
    )
    dm.setup("fit")
    dm.setup("test")
    assert all(d.num_skipped == 0 for d in dm.datasets.values())
    assert len(dm.datasets["train"]) == 500 and len(dm.datasets["test"]) == 100
    batch = next(iter(dm.test_dataloader()))
    assert batch.split == "test" and batch.images.shape == (4, 3, 64, 64)
    train = next(iter(dm.train_dataloader()))
    assert train.split == "train"


def test_detector_names_categories_never_attributes(world):
    out, _ = world
    store = open_detections(out / "detections.jsonl")
    assert set(store) == {i for s in _ids(out).values() for i in s}
    labels = set()
    for dets in store.values():
        assert 10 <= len(dets) <= 30
        assert dets.labels is not None and len(dets.labels) == len(dets)
        labels.update(dets.labels)
        assert ((dets.scores > 0) & (dets.scores <= 1)).all()
        b = dets.boxes
        assert (b >= 0).all() and (b <= SIZE).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert labels <= set(syn.CATEGORIES)
    assert not {w for label in labels for w in label.split()} & syn.ATTRIBUTE_WORDS


def test_distractor_and_cooccurrence_rates(world):
    out, stats = world
    objects = _objects(out)
    cats = {i: [o["category"] for o in objs] for i, objs in objects.items()}
    distractor = np.mean([len(set(c)) < len(c) for c in cats.values()])
    pair = np.mean([any(a in c and b in c for a, b in syn.PAIRS) for c in cats.values()])
    assert distractor >= 1 / 3 and pair >= 0.5
    assert stats["distractor_rate"] == pytest.approx(distractor, abs=1e-3)
    assert stats["cooccurrence_rate"] == pytest.approx(pair, abs=1e-3)
    for a, b in syn.PAIRS:  # a pair's members appear together in most images holding either
        either = [c for c in cats.values() if a in c or b in c]
        assert np.mean([a in c and b in c for c in either]) >= 0.6
    both, with_pair = 0, 0  # captions of images with a pair often name both members
    for image_id, c in cats.items():
        members = [(a, b) for a, b in syn.PAIRS if a in c and b in c]
        if members:
            for line in (out / "Sentences" / f"{image_id}.txt").read_text().splitlines():
                heads = {_head(w) for _, t, w in _phrases(line) if t != "scene"}
                with_pair += 1
                both += any(a in heads and b in heads for a, b in members)
    assert both / with_pair >= 0.4
    assert stats["pair_named_in_captions"] == pytest.approx(both / with_pair, abs=1e-3)


def test_phrases_single_out_their_objects(world):
    """A phrase's words hold for its objects; a same-category rival fails one of them."""
    out, _stats = world
    attr_of = {
        w: k for k, vocab in (("colour", syn.COLOURS), ("size", syn.SIZES), ("texture", syn.TEXTURES)) for w in vocab
    }
    ambiguous = 0
    for image_id, objs in _objects(out).items():
        for line in (out / "Sentences" / f"{image_id}.txt").read_text().splitlines():
            for chain, ptype, words in _phrases(line):
                if ptype == "scene":
                    continue
                mine = [o for o in objs if int(chain) in o["chains"]]
                said = {attr_of[w]: w for w in words if w in attr_of}
                assert mine and all(o["category"] == _head(words) for o in mine)
                assert all(o[k] == v for o in mine for k, v in said.items())
                rivals = [o for o in objs if o["category"] == _head(words) and o not in mine]
                if len(mine) == 1 and rivals:
                    ambiguous += 1
                    assert all(any(r[k] != v for k, v in said.items()) for r in rivals), line
    assert ambiguous > 0


def test_chains_keep_their_object(world):
    out, _ = world
    for image_id, objs in _objects(out).items():
        boxes, _, _ = _xml_boxes(out / "Annotations" / f"{image_id}.xml")
        for o in objs:
            for chain in o["chains"]:
                assert o["box"] in xml_to_corners(torch.tensor(boxes[str(chain)], dtype=torch.float32)).tolist()


NEUTRAL = {"next to", "near", "and"}


def _relations(a: list[float], b: list[float], s: int = 100) -> set[str]:
    """Every word ``_relation`` says of box ``a`` to box ``b`` (corners, y downwards) over 200 draws."""
    objs = [{"box": np.array(box, np.float64)} for box in (a, b)]
    return {syn._relation(np.random.default_rng(k), *objs, s) for k in range(200)}


@pytest.mark.parametrize(
    "a, b, spatial",
    [
        ([10, 10, 30, 30], [60, 70, 80, 90], {"above", "to the left of"}),  # a high up on the left
        ([60, 70, 80, 90], [10, 10, 30, 30], {"below", "to the right of"}),
        ([40, 5, 60, 25], [40, 70, 60, 90], {"above"}),  # one column: no left or right
        ([40, 70, 60, 90], [40, 5, 60, 25], {"below"}),
        ([5, 40, 25, 60], [70, 45, 90, 65], {"to the left of"}),  # one row: no above or below
        ([70, 45, 90, 65], [5, 40, 25, 60], {"to the right of"}),
        ([40, 40, 60, 60], [50, 48, 70, 68], set()),  # centres closer than 0.15 of the image: only neutral words
    ],
    ids=["above-left", "below-right", "above", "below", "left", "right", "close"],
)
def test_relation_words_match_where_the_objects_are(a, b, spatial):
    assert _relations(a, b) == NEUTRAL | spatial


def test_captions_relate_their_objects_as_drawn(world):
    """``[A] above [B]`` in a generated caption: A's box centre is higher than B's (image y grows downwards)."""
    out, _ = world
    relation = re.compile(r"\[/EN#(\d+)/\w+ [^\]]+\] (above|below|to the left of|to the right of) \[/EN#(\d+)/")
    checked = {}
    for image_id, objs in _objects(out).items():
        for line in (out / "Sentences" / f"{image_id}.txt").read_text().splitlines():
            for first, word, second in relation.findall(line):
                a, b = ([o for o in objs if int(chain) in o["chains"]] for chain in (first, second))
                if len(a) != 1 or len(b) != 1:  # "two dogs": the relation holds for one of them
                    continue
                (ax, ay), (bx, by) = ((np.add(o["box"][:2], o["box"][2:]) / 2) for o in (a[0], b[0]))
                margin = 0.15 * SIZE
                holds = {
                    "above": ay < by - margin,
                    "below": ay > by + margin,
                    "to the left of": ax < bx - margin,
                    "to the right of": ax > bx + margin,
                }[word]
                assert holds, (image_id, line, a[0]["box"], b[0]["box"])
                checked[word] = checked.get(word, 0) + 1
    assert set(checked) == {"above", "below", "to the left of", "to the right of"} and min(checked.values()) >= 5


def test_boxes_match_the_drawing(world):
    """The centre pixel of a plain solid shape's XML box has its colour; boxes are tight."""
    out, _ = world
    checked, outside = 0, []
    for image_id, objs in _objects(out).items():
        rgb = np.asarray(Image.open(out / "images" / f"{image_id}.jpg").convert("RGB"), dtype=int)
        for o in objs:
            if o["texture"] != "plain" or o["category"] not in syn.SOLID_CENTRE:
                continue
            x1, y1, x2, y2 = (int(v) for v in o["box"])
            pixel = rgb[(y1 + y2) // 2, (x1 + x2) // 2]
            assert np.abs(pixel - np.array(syn.COLOURS[o["colour"]])).max() <= 40, (image_id, o, pixel)
            if o["category"] == "box":  # a square fills its box: colour at the inner corners, not outside
                colour = np.array(syn.COLOURS[o["colour"]])
                for x, y in ((x1, y1), (x2 - 1, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)):
                    assert np.abs(rgb[y, x] - colour).max() <= 60, (image_id, o)
                for x, y in ((x1 - 2, (y1 + y2) // 2), (x2 + 1, (y1 + y2) // 2), ((x1 + x2) // 2, y1 - 2)):
                    if 0 <= x < SIZE and 0 <= y < SIZE:  # the background is rarely close to a colour
                        outside.append(np.abs(rgb[y, x] - colour).sum() > 60)
            checked += 1
    assert checked >= 50 and len(outside) >= 10 and np.mean(outside) >= 0.9


def test_large_objects_are_larger(world):
    out, _ = world
    side = {"small": [], "large": []}
    for objs in _objects(out).values():
        for o in objs:
            b = o["box"]
            side[o["size"]].append(((b[2] - b[0]) * (b[3] - b[1])) ** 0.5)
    assert min(side["large"]) > 1.2 * np.median(side["small"])
    assert np.median(side["large"]) > 1.6 * np.median(side["small"])


def test_upper_bound_and_tight_boxes(world):
    out, stats = world
    store, objects = open_detections(out / "detections.jsonl"), _objects(out)
    covered, total = 0, 0
    for image_id in _ids(out)["test"]:
        boxes, _, _ = _xml_boxes(out / "Annotations" / f"{image_id}.xml")
        props = store[image_id].boxes
        for line in (out / "Sentences" / f"{image_id}.txt").read_text().splitlines():
            for chain, _, _ in _phrases(line):
                if chain in boxes:
                    gt = union_box(xml_to_corners(torch.tensor(boxes[chain], dtype=torch.float32)))
                    covered += int(box_iou(gt[None], props).max() >= 0.5)
                    total += 1
    assert covered / total >= 0.85
    assert stats["splits"]["test"]["upper_bound"] == pytest.approx(covered / total, abs=1e-3)
    tight = [
        box_iou(torch.tensor([o["box"]]), store[i].boxes).max().item() for i, objs in objects.items() for o in objs
    ]
    assert np.mean(np.array(tight) >= 0.7) >= 0.85  # most objects have a tight proposal...
    assert np.mean(np.array(tight) >= 0.7) < 1.0  # ...but the detector misses some
    assert 0.03 <= stats["missed_objects"] <= 0.12 and 0.05 <= stats["wrong_labels"] <= 0.15


def test_deterministic_for_a_seed(tmp_path):
    small = {"num_train": 6, "num_val": 2, "num_test": 2, "image_size": 64}
    syn.generate_world(tmp_path / "a", seed=7, workers=1, **small)
    syn.generate_world(tmp_path / "b", seed=7, workers=2, **small)
    syn.generate_world(tmp_path / "c", seed=8, workers=1, **small)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 * 10 + 6
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "detections.jsonl").read_bytes() != (tmp_path / "c" / "detections.jsonl").read_bytes()
    first = Path("Sentences") / "1000000.txt"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_difficulty_controls_detector_faults(tmp_path):
    small = {"num_train": 40, "num_val": 0, "num_test": 0, "image_size": 64}
    easy = syn.generate_world(tmp_path / "easy", difficulty=0.0, **small)
    hard = syn.generate_world(tmp_path / "hard", difficulty=1.0, **small)
    assert easy["missed_objects"] == 0 and easy["wrong_labels"] == 0 and easy["upper_bound"] == 1.0
    assert hard["missed_objects"] > 0 and hard["wrong_labels"] > 0
    with pytest.raises(ValueError, match="invalid world arguments"):
        syn.generate_world(tmp_path / "bad", difficulty=1.5, **small)


def test_world_is_complete_semantics(tmp_path, monkeypatch):
    small = {"num_train": 3, "num_val": 1, "num_test": 1, "image_size": 64, "seed": 1}
    out = tmp_path / "w"
    assert not syn.world_is_complete(out, **small)
    syn.generate_world(out, **small)
    assert syn.world_is_complete(out, **small)
    assert not syn.world_is_complete(out, **(small | {"seed": 2}))
    assert not syn.world_is_complete(out, **(small | {"num_train": 4}))
    assert not syn.world_is_complete(out, **(small | {"difficulty": 0.1}))
    assert not syn.world_is_complete(out, num_train=3)  # other sizes: the defaults differ
    assert syn.world_is_complete(out, workers=2, **small)  # the process count does not matter
    with pytest.raises(TypeError, match=r"unknown world arguments: \['colour_count'\]"):
        syn.world_is_complete(out, colour_count=3)

    calls = []

    def crash(job):  # an interrupted regeneration leaves the world incomplete...
        calls.append(job)
        if len(calls) > 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(job)

    real = syn.world._make_image  # generate_world's module: the one whose name it looks up
    monkeypatch.setattr(syn.world, "_make_image", crash)
    with pytest.raises(KeyboardInterrupt, match="simulated interruption"):
        syn.generate_world(out, workers=1, **small)
    assert not syn.world_is_complete(out, **small) and not (out / "world.json").exists()
    monkeypatch.setattr(syn.world, "_make_image", real)
    syn.generate_world(out, **small)  # ...and generation into it recovers
    assert syn.world_is_complete(out, **small)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no synthetic world; refusing to write into it"):
        syn.generate_world(foreign, **small)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli(tmp_path, capsys):
    argv = [
        "--out",
        str(tmp_path / "w"),
        "--num-train",
        "4",
        "--num-val",
        "1",
        "--num-test",
        "1",
        "--image-size",
        "64",
        "--seed",
        "5",
        "--difficulty",
        "0.3",
    ]
    summary = syn.main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == summary["images"] == 6 and "reused" not in printed
    assert syn.world_is_complete(
        tmp_path / "w", num_train=4, num_val=1, num_test=1, image_size=64, seed=5, difficulty=0.3
    )
    assert syn.main(argv)["reused"] is True
    capsys.readouterr()
    assert "reused" not in syn.main(argv + ["--force"])
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        syn.main([])  # --out is required


def test_read_objects_returns_every_image_and_names_a_bad_line(world, tmp_path):
    out, _ = world
    objects = syn.read_objects(out)
    ids = [i for part in _ids(out).values() for i in part]
    assert sorted(objects) == sorted(ids)
    first = objects[ids[0]]
    assert first and {"box", "category", "colour", "chains"} <= set(first[0])
    assert all(o["category"] in syn.CATEGORIES for objs in objects.values() for o in objs)
    (tmp_path / "objects.jsonl").write_text('{"image_id": "1", "objects": []}\n{"oops": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"objects.jsonl:2"):
        syn.read_objects(tmp_path)
    with pytest.raises(FileNotFoundError, match="objects.jsonl"):
        syn.read_objects(tmp_path / "missing")


def test_datamodule_generates_once_and_says_so(tmp_path, caplog):
    from lightning_wsg.data import SyntheticWorldDataModule

    dm = SyntheticWorldDataModule(
        root=tmp_path / "w", num_train=4, num_val=2, num_test=2, world_image_size=64, image_size=64, num_workers=0
    )
    with caplog.at_level("INFO"):
        dm.prepare_data()
        assert "generating the synthetic world" in caplog.text and "(8 images, seed 0)" in caplog.text
        mtime = (tmp_path / "w" / "world.json").stat().st_mtime_ns
        caplog.clear()
        dm.prepare_data()
    assert "synthetic world found" in caplog.text
    assert (tmp_path / "w" / "world.json").stat().st_mtime_ns == mtime
