"""Flickr30K Entities: parsers, real counts, agreement with phraseloceval, the datamodule.

The real-annotation tests unpack the release once per session (``flickr_root``) and parse
every split; the datamodule tests run on a few real images (placeholder JPEGs of the
annotated sizes) and on the tiny generated dataset.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from helpers.flickr import (
    annotation_sizes,
    make_placeholder_images,
    make_tiny_flickr,
    write_gt_proposals,
)

from lightning_wsg.boxes import box_iou, phraseloceval_to_corners, union_box
from lightning_wsg.data import Flickr30kEntitiesDataModule, GroundingBatch
from lightning_wsg.data.flickr30k_entities import (
    Flickr30kFormatError,
    load_entries,
    parse_annotation,
    parse_sentence,
    read_sentences,
    read_split,
    read_unrelated_captions,
)
from lightning_wsg.detection import DetectionFormatError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Thousands of tiny reductions (union boxes): with two OpenMP threads on a busy 2-core
    machine each one can take milliseconds; one thread keeps them at tens of microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- parse_sentence ------------------------------------------------------------------------


def test_parse_sentence_words_and_phrases():
    line = "[/EN#12/people/other Two young guys] with [/EN#0/notvisual it] look at [/EN#3/bodyparts hands]"
    words, phrases = parse_sentence(line)
    assert words == ["Two", "young", "guys", "with", "it", "look", "at", "hands"]  # no final full stop
    assert [(p.start, p.end, p.chain_id, p.types) for p in phrases] == [
        (0, 3, "12", ["people", "other"]),
        (4, 5, "0", ["notvisual"]),
        (7, 8, "3", ["bodyparts"]),
    ]


def test_parse_sentence_keeps_punctuation_tokens_as_written():
    words, phrases = parse_sentence("[/EN#1/other the 'thumbs up '] , ok .\n")
    assert words == ["the", "'thumbs", "up", "'", ",", "ok", "."]
    assert (phrases[0].start, phrases[0].end) == (0, 4)
    assert parse_sentence("no phrase at all .") == (["no", "phrase", "at", "all", "."], [])


@pytest.mark.parametrize(
    "line, problem",
    [
        ("[/EN#1/people a [/EN#2/other b] c] .", "opened inside another phrase"),
        ("[/EN#1/people a man .", "never closed"),
        ("[/EN#x/people a man] .", "bad phrase header"),
        ("[/EN#1 a man] .", "bad phrase header"),
        ("[/EN#1/people] a man .", "bad phrase header"),
        ("[/EN#1/alien a man] .", "unknown phrase type 'alien'"),
        ("[/EN#4/notvisual it] .", "notvisual"),
        ("[/EN#0/people it] .", "notvisual"),
        ("a man] walks .", "stray bracket"),
        ("[/EN#1/people a ] walks .", "empty word"),
        ("[/EN#1/people a b]] walks .", "stray bracket in word .b]."),
        ("a [b walks .", "bad phrase header"),
        ("a b[ walks .", "stray bracket"),
        ("a  man .", "empty word"),
    ],
)
def test_malformed_markup_names_file_line_and_problem(line, problem):
    with pytest.raises(Flickr30kFormatError, match=problem) as err:
        parse_sentence(line, "Sentences/1.txt", 3)
    assert str(err.value).startswith("Sentences/1.txt:3:")


def test_read_sentences_names_the_line(tmp_path):
    path = tmp_path / "5.txt"
    path.write_text("[/EN#1/people A man] .\n[/EN#2/people A woman .\n")
    with pytest.raises(Flickr30kFormatError, match=rf"{path}:2: phrase \[/EN#2\.\.\. is never closed"):
        read_sentences(path)


# --- parse_annotation ----------------------------------------------------------------------


BOX = "<bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox>"


def _xml(objects: str, size: str = "<size><width>50</width><height>40</height><depth>3</depth></size>") -> str:
    return f"<annotation><filename>1.jpg</filename>{size}{objects}</annotation>"


def test_parse_annotation_cases(tmp_path):
    path = tmp_path / "77.xml"
    box = BOX
    path.write_text(
        _xml(
            "<object><name>1</name><name>2</name>" + box.format(1, 1, 10, 20) + "</object>"
            "<object><name>1</name>" + box.format(5, 6, 7, 8) + "</object>"
            "<object><name>3</name><scene>1</scene><nobndbox>0</nobndbox></object>"
            "<object><name>4</name><scene>0</scene><nobndbox>1</nobndbox></object>"
            "<object><name>5</name><scene>1</scene><nobndbox>1</nobndbox></object>"
        )
    )
    ann = parse_annotation(path)
    assert (ann.image_id, ann.width, ann.height) == ("77", 50, 40)
    assert {k: v.tolist() for k, v in ann.boxes.items()} == {
        "1": [[0.0, 0.0, 10.0, 20.0], [4.0, 5.0, 7.0, 8.0]],
        "2": [[0.0, 0.0, 10.0, 20.0]],
    }
    assert ann.scene == {"3", "5"} and ann.nobndbox == {"4", "5"}


@pytest.mark.parametrize(
    "content, problem",
    [
        ("<annotation><size>", "not valid XML"),
        (_xml("", size=""), "expected <annotation> with a <size>"),
        (_xml("", size="<size><width>a</width><height>4</height></size>"), "<width> must be an integer"),
        (_xml("<object><scene>1</scene><nobndbox>0</nobndbox></object>"), "object 1: needs one or more numeric <name>"),
        (_xml("<object><name>x</name><scene>1</scene></object>"), "numeric <name>"),
        (_xml("<object><name>1</name></object>"), "object 1: needs <bndbox> or <scene>/<nobndbox>"),
        (_xml("<object><name>1</name><bndbox><xmin>1</xmin></bndbox></object>"), "<ymin> must be an integer"),
        (_xml(f"<object><name>1</name>{BOX.format(9, 1, 3, 4)}</object>"), "xmax < xmin"),
    ],
)
def test_malformed_xml_names_the_file(tmp_path, content, problem):
    path = tmp_path / "9.xml"
    path.write_text(content)
    with pytest.raises(Flickr30kFormatError, match=problem) as err:
        parse_annotation(path)
    assert str(err.value).startswith(str(path))


def test_read_unrelated_captions_is_one_based(tmp_path):
    path = tmp_path / "UNRELATED_CAPTIONS"
    path.write_text("# format: <imageID> <sentence number>\n12 5\n34 1\n")
    assert read_unrelated_captions(path) == {"12#4", "34#0"}
    path.write_text("# header\n12 0\n")
    with pytest.raises(Flickr30kFormatError, match=f"{path}:2"):
        read_unrelated_captions(path)


# --- the real annotations ------------------------------------------------------------------

# docs/data.md: (phrases, phrases whose chain has >= 1 box, of those > 1 box)
REAL_COUNTS = {"test": (17_519, 14_481, 2_907), "val": (17_728, 14_433, 3_177), "train": (524_520, 427_226, 94_309)}


@pytest.fixture(scope="module")
def real_dm(flickr_root: Path) -> Flickr30kEntitiesDataModule:
    """A datamodule on the real root; only its parsers are used (no images, no detections)."""
    return Flickr30kEntitiesDataModule(flickr_root, flickr_root, flickr_root / "none.jsonl", max_phrases=10**6)


@pytest.fixture(scope="module")
def real_test_entries(real_dm):
    return real_dm.load_split("test")


def _counts(entries) -> tuple[int, int]:
    phrases = sum(len(e.phrase_spans) for e in entries)
    return phrases, sum(len(b) > 1 for e in entries for b in e.gt_boxes)


@pytest.mark.parametrize("split", ["test", "val"])
def test_real_evaluation_counts(real_dm, real_test_entries, split, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        entries = real_test_entries if split == "test" else real_dm.load_split(split)
    total, evaluable, multi = REAL_COUNTS[split]
    assert _counts(entries) == (evaluable, multi)
    assert all(e.gt_boxes is not None and e.image_size is not None for e in entries)
    assert all(len(e.gt_boxes) == len(e.phrase_spans) == len(e.phrase_types) == len(e.phrase_ids) for e in entries)
    # one test image has no box at all (every chain nobndbox): its five sentences drop out
    assert set(read_split(real_dm.root, split)) - {e.image_id for e in entries} == (
        {"4797050581"} if split == "test" else set()
    )
    all_phrases = sum(
        len(p)
        for i in read_split(real_dm.root, split)
        for _, p in read_sentences(real_dm.root / "Sentences" / f"{i}.txt")
    )
    assert all_phrases == total
    if split == "val":  # sentences without an evaluable phrase are skipped and counted
        assert len(entries) == 5000 - 14
        assert any("split val: skipped 14 sentences" in r.getMessage() for r in caplog.records)
    else:
        assert len(entries) == 5000 - 31


def test_real_train_evaluable_counts(real_dm):
    """All 148,915 train sentences (unrelated captions included: they carry no markup):
    427,226 phrases whose chain has a box, 94,309 of them with several boxes."""
    start = time.perf_counter()
    image_ids = read_split(real_dm.root, "train")
    evaluation = load_entries(real_dm.root, image_ids, evaluation=True, split="train")
    print(f"train evaluation entries parsed in {time.perf_counter() - start:.1f}s")
    assert len(image_ids) == 29_783
    assert _counts(evaluation) == REAL_COUNTS["train"][1:]


def test_real_training_entries(real_dm, caplog):
    """The training entries hold all 524,520 train phrases, no box, and leave out the 21
    unrelated captions (which carry no markup, so the counts above do not change)."""
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="lightning_wsg"):
        training = real_dm.load_split("train")  # max_phrases=10**6: nothing truncated
    print(f"train training entries parsed in {time.perf_counter() - start:.1f}s")
    assert sum(len(e.phrase_spans) for e in training) == REAL_COUNTS["train"][0]
    assert all(e.gt_boxes is None and e.image_size is None for e in training)
    unrelated = real_dm.unrelated_sentence_ids()
    assert len(unrelated) == 21 and {u.split("#")[0] for u in unrelated} <= set(read_split(real_dm.root, "train"))
    assert not unrelated & {e.sentence_id for e in training}
    # the unrelated captions are the only train sentences without a marked phrase
    assert len(training) == 148_915 - 21
    assert any("left out 21 unrelated captions" in r.getMessage() for r in caplog.records)
    assert not any("without a marked phrase" in r.getMessage() for r in caplog.records)


def test_real_unrelated_captions_look_unrelated(flickr_root):
    """The listed captions (1-based numbers) carry no phrase markup; their neighbours do."""
    unrelated = read_unrelated_captions(flickr_root / "UNRELATED_CAPTIONS")
    for sentence_id in unrelated:
        image_id, index = sentence_id.split("#")
        sentences = read_sentences(flickr_root / "Sentences" / f"{image_id}.txt")
        assert sentences[int(index)][1] == []
        assert sum(bool(p) for _, p in sentences) == 4
    lines = (flickr_root / "Sentences" / "3652094744.txt").read_text().splitlines()
    assert "3652094744#0" in unrelated and lines[0].startswith("images are missing")


# the 16 phrases whose first word phraseloceval places one word early: (sentence, chain, start, reference start)
PHRASELOCEVAL_START_OFFSETS = {
    ("3072074170#0", "91444", 15, 14), ("3072074170#2", "91444", 9, 8), ("3072074170#3", "91444", 7, 6),
    ("4787867133#2", "202871", 5, 4), ("2806632713#0", "73988", 4, 3), ("3543294190#3", "126307", 10, 9),
    ("1775223211#2", "20241", 8, 9), ("33497646#0", "111695", 6, 5), ("7796487260#2", "275327", 8, 7),
    ("7796487260#4", "275327", 4, 3), ("3773298212#0", "142010", 13, 12), ("4712411908#2", "193983", 5, 4),
    ("4900761380#2", "216613", 4, 3), ("3728015645#0", "140026", 3, 2), ("3728015645#2", "140026", 12, 11),
    ("3728015645#3", "140026", 6, 5),
}  # fmt: skip


def test_union_boxes_agree_with_phraseloceval(real_test_entries, phraseloceval_test_path):
    with gzip.open(phraseloceval_test_path, "rt") as fh:
        reference = json.load(fh)
    assert len(reference) == 14_481
    ours = defaultdict(list)  # (sentence id, chain) -> phrases in sentence order
    for e in real_test_entries:
        for span, chain, boxes, types in zip(e.phrase_spans, e.phrase_ids, e.gt_boxes, e.phrase_types):
            ours[(e.sentence_id, chain)].append((span, boxes, types))
    theirs = defaultdict(list)
    for r in reference:
        theirs[(r["image"], r["entity"])].append(r)
    assert ours.keys() == theirs.keys()
    pairs = []
    for key, refs in theirs.items():
        assert len(ours[key]) == len(refs), key
        pairs.extend((key, mine, r) for mine, r in zip(ours[key], refs))
    unions = torch.stack([union_box(boxes) for _, (_, boxes, _), _ in pairs])
    expected = phraseloceval_to_corners(torch.tensor([r["box"] for _, _, r in pairs], dtype=torch.float32))
    differ = [pairs[i][0] for i in torch.nonzero((unions != expected).any(1)).flatten().tolist()]
    assert not differ, f"{len(differ)} union boxes differ from phraseloceval, e.g. {differ[:5]}"
    assert all(types == r["categories"] for _, (_, _, types), r in pairs)
    start_offsets = {(*key, start, r["start"]) for key, ((start, _), _, _), r in pairs if start != r["start"]}
    span_differences = sum((start, end) != (r["start"], r["end"]) for _, ((start, end), _, _), r in pairs)
    assert start_offsets == PHRASELOCEVAL_START_OFFSETS
    assert span_differences == 17  # plus one phrase with the same start, end one word later: "the 'thumbs up '"


def test_real_cases(flickr_root):
    # several names on one object, several boxes per chain, scene and nobndbox flags
    ann = parse_annotation(flickr_root / "Annotations" / "1000092795.xml")
    assert (ann.width, ann.height) == (333, 500)
    assert ann.boxes["1"].tolist() == [[158.0, 124.0, 219.0, 335.0], [196.0, 109.0, 261.0, 373.0]]
    assert ann.boxes["6"].tolist() == [[196.0, 109.0, 261.0, 373.0]]  # the object named 1 and 6
    assert len(ann.boxes["4"]) == 2 and ann.scene == {"8", "9"} and ann.nobndbox == {"10"}
    ann = parse_annotation(flickr_root / "Annotations" / "2822265828.xml")
    assert "74853" in ann.scene and "74853" in ann.nobndbox and "74853" not in ann.boxes

    # evaluation entries: scene chains without a box drop out; boxes are all the chain's boxes
    entries = load_entries(flickr_root, ["1000092795"], evaluation=True)
    first = entries[0]
    assert first.sentence_id == "1000092795#0" and first.phrase_ids == ["1", "2", "3"]  # "the yard" (8) has no box
    assert first.words[:3] == ["Two", "young", "guys"] and first.phrase_spans[0] == (0, 3)
    assert first.gt_boxes[0].tolist() == ann_boxes(flickr_root, "1000092795")["1"]
    assert first.image_size == (333, 500)

    # a phrase with two types, with a box (test split), and notvisual phrases in training entries
    entries = load_entries(flickr_root, ["2822265828"], evaluation=True)
    assert ["people", "scene"] in entries[0].phrase_types
    training = load_entries(flickr_root, ["129602216"], evaluation=False)
    assert training[1].phrase_ids[-1] == "0" and training[1].phrase_types[-1] == ["notvisual"]
    assert training[1].words[training[1].phrase_spans[-1][0]] == "it"


def ann_boxes(root: Path, image_id: str) -> dict[str, list]:
    return {k: v.tolist() for k, v in parse_annotation(root / "Annotations" / f"{image_id}.xml").boxes.items()}


# --- the datamodule on real annotations (a few images) ---------------------------------------

TRAIN_IDS = ["1000092795", "129602216", "3652094744", "5096654568"]
VAL_IDS = ["1018148011", "1029450589"]
TEST_IDS = ["1016887272", "2822265828", "1007129816", "1042020065"]


@pytest.fixture(scope="module")
def real_subset(flickr_root: Path, tmp_path_factory) -> dict:
    """A real-format root over a few real images, placeholder JPEGs and ground-truth proposals.

    The last test image has no detections record and the one before it an empty one.
    """
    tmp = tmp_path_factory.mktemp("real_subset")
    root = tmp / "flickr30k_entities"
    root.mkdir()
    for folder in ("Annotations", "Sentences"):
        (root / folder).symlink_to(flickr_root / folder)
    shutil.copyfile(flickr_root / "UNRELATED_CAPTIONS", root / "UNRELATED_CAPTIONS")
    for split, ids in (("train", TRAIN_IDS), ("val", VAL_IDS), ("test", TEST_IDS)):
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    ids = TRAIN_IDS + VAL_IDS + TEST_IDS
    make_placeholder_images(tmp / "images", annotation_sizes(root, ids))
    detections = write_gt_proposals(tmp / "proposals.jsonl", root, ids[:-2], extra=5)
    with detections.open("a") as fh:
        fh.write(json.dumps({"image_id": ids[-2], "boxes": []}) + "\n")
    return {"root": root, "image_dir": tmp / "images", "detections": detections}


def _dm(paths: dict, **kwargs) -> Flickr30kEntitiesDataModule:
    kwargs = {"batch_size": 4, "num_workers": 0, "image_size": 64, **paths, **kwargs}
    return Flickr30kEntitiesDataModule(**kwargs)


def test_real_datamodule_batches(real_subset, caplog):
    dm = _dm(real_subset)
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        dm.setup("test")
    test = dm.datasets["test"]
    entries = dm.load_split("test")
    skipped = [e.sentence_id for e in entries if e.image_id in TEST_IDS[-2:]]
    assert test.num_skipped == len(skipped) > 0 and len(test) == len(entries) - len(skipped)
    warnings = [r.getMessage() for r in caplog.records if "no proposals" in r.getMessage()]
    assert len(warnings) == 1 and f"split test: skipped {len(skipped)} of {len(entries)}" in warnings[0]
    assert skipped[0] in warnings[0]

    upper = total = 0
    for batch in dm.test_dataloader():
        assert isinstance(batch, GroundingBatch) and batch.split == "test"
        B, P = batch.phrase_mask.shape
        R = batch.proposals.shape[1]
        assert batch.images.shape == (B, 3, 64, 64) and batch.proposal_mask.shape == (B, R)
        assert batch.gt_union.shape == (B, P, 4) and batch.gt_boxes.shape[:2] == (B, P)
        assert batch.roi_boxes.shape == (B, R, 4) and len(batch.proposal_labels) == B
        for i in range(B):
            iou = box_iou(batch.gt_union[i][batch.phrase_mask[i]], batch.proposals[i][batch.proposal_mask[i]])
            upper += int((iou.max(1).values >= 0.5).sum())
            total += int(batch.phrase_mask[i].sum())
            w, h = batch.image_sizes[i].tolist()
            expected = batch.proposals[i] * torch.tensor([64 / w, 64 / h, 64 / w, 64 / h])
            torch.testing.assert_close(batch.roi_boxes[i], expected)
    assert total == sum(len(e.phrase_spans) for e in test.entries) and upper == total  # upper bound 1.0


def test_real_training_samples_carry_no_boxes(real_subset):
    dm = _dm(real_subset, max_phrases=2)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert sorted(dm.datasets) == ["train", "val"]
    assert all(e.gt_boxes is None for e in train.entries)
    assert all(len(e.phrase_spans) <= 2 for e in train.entries)
    assert "3652094744#0" not in {e.sentence_id for e in train.entries}  # unrelated caption
    sample = train[0]
    assert sample.gt_boxes is None and sample.phrase_types is None
    batch = next(iter(dm.train_dataloader()))
    assert batch.split == "train" and not batch.has_ground_truth and batch.gt_boxes is None
    assert batch.phrase_mask.shape == (4, 2)


def test_explicit_unrelated_captions_file(real_subset, tmp_path):
    listed = tmp_path / "unrelated.txt"
    listed.write_text("# format: <imageID> <sentence number>\n1000092795 2\n")
    dm = _dm(real_subset, unrelated_captions=listed)
    kept = {e.sentence_id for e in dm.load_split("train")}
    assert "1000092795#1" not in kept and "1000092795#0" in kept
    assert "3652094744#1" in kept  # the default file is not read when one is given


def test_real_datamodule_errors(real_subset, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found: .*missing_root"):
        _dm({**real_subset, "root": tmp_path / "missing_root"}).setup("test")
    with pytest.raises(FileNotFoundError, match="image folder not found: .*missing_images"):
        _dm({**real_subset, "image_dir": tmp_path / "missing_images"}).setup("test")
    with pytest.raises(FileNotFoundError, match="detections not found: .*missing.jsonl"):
        _dm({**real_subset, "detections": tmp_path / "missing.jsonl"}).setup("test")

    images = tmp_path / "images"
    shutil.copytree(real_subset["image_dir"], images)
    (images / f"{TEST_IDS[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"split test: 1 images not found: .*{TEST_IDS[1]}\.jpg"):
        _dm({**real_subset, "image_dir": images}).setup("test")

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(real_subset["detections"].read_text() + json.dumps({"image_id": "123", "boxes": [[0, 0, 1, 1]]}))
    with pytest.raises(DetectionFormatError, match=rf"{unknown}: 1 detection records .*unknown .* image 123"):
        _dm({**real_subset, "detections": unknown}).setup("test")


# --- the tiny generated dataset ----------------------------------------------------------------


def test_tiny_dataset_end_to_end(tiny_flickr):
    dm = _dm({"root": tiny_flickr.root, "image_dir": tiny_flickr.image_dir, "detections": tiny_flickr.detections})
    dm.setup("fit")
    dm.setup("test")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 16 * 5 - 1, "val": 20, "test": 20}
    assert all(d.num_skipped == 0 for d in dm.datasets.values())
    assert tiny_flickr.unrelated.isdisjoint(e.sentence_id for e in dm.datasets["train"].entries)
    batch = next(iter(dm.val_dataloader()))
    assert batch.split == "val" and batch.images.shape == (4, 3, 64, 64) and batch.has_ground_truth
    # every evaluable phrase has a proposal equal to its union box, labelled with its colour
    for i in range(len(batch)):
        for j in torch.nonzero(batch.phrase_mask[i]).flatten().tolist():
            match = (batch.proposals[i] == batch.gt_union[i, j]).all(1) & batch.proposal_mask[i]
            assert match.any()
            start, end = batch.phrase_spans[i][j]
            label = batch.proposal_labels[i][int(torch.nonzero(match)[0])]
            if "other" not in batch.words[i][start:end]:  # "the other one" names no colour
                assert label in batch.words[i][start:end]
    train = next(iter(dm.train_dataloader()))
    assert train.split == "train" and not train.has_ground_truth and len(train) == 4


def test_tiny_dataset_is_deterministic(tmp_path):
    a = make_tiny_flickr(tmp_path / "a", n_images=24, seed=3)
    b = make_tiny_flickr(tmp_path / "b", n_images=24, seed=3)
    c = make_tiny_flickr(tmp_path / "c", n_images=24, seed=4)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert len(files) == 2 * 24 + 4
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)
    assert a.detections.read_bytes() == b.detections.read_bytes() != c.detections.read_bytes()
    # the real parsers read it: several names, several boxes, scene, notvisual and two types
    image_id = a.splits["train"][0]
    ann = parse_annotation(a.root / "Annotations" / f"{image_id}.xml")
    assert max(len(b) for b in ann.boxes.values()) == 2 and len(ann.scene) == 1
    sentences = read_sentences(a.root / "Sentences" / f"{image_id}.txt")
    types = [p.types for _, phrases in sentences for p in phrases]
    assert ["notvisual"] in types and ["other", "people"] in types


def test_tiny_dataset_format_errors_surface_at_setup(tmp_path):
    tiny = make_tiny_flickr(tmp_path, n_images=6, seed=0)
    image_id = tiny.splits["test"][0]
    sentences = tiny.root / "Sentences" / f"{image_id}.txt"
    lines = sentences.read_text().splitlines()
    lines[2] = lines[2].replace("]", "", 1)
    sentences.write_text("\n".join(lines) + "\n")
    dm = _dm({"root": tiny.root, "image_dir": tiny.image_dir, "detections": tiny.detections})
    with pytest.raises(Flickr30kFormatError, match=rf"{sentences}:3: phrase opened inside another phrase"):
        dm.setup("test")
    (tiny.root / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*val\.txt"):
        dm.setup("validate")
