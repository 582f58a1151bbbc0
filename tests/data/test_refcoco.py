"""RefCOCO family in the refer layout: splits, real counts, agreement with phraseloceval, bad
input, the datamodule and the CLI.

The real-expression tests build refer-layout roots (refs pickle + instances.json) from the
shared CSVs once per module; the datamodule and CLI tests run on a tiny generated dataset.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
from pathlib import Path

import pytest
import torch
from helpers.refcoco import (
    PHRASELOCEVAL_FILES,
    REFCOCO_FILES,
    build_refer_root,
    make_placeholder_images,
    make_tiny_refer,
    read_phraseloceval,
    write_gt_proposals,
    write_refer,
)
from helpers.shared import require_shared

from lightning_wsg.boxes import coco_to_corners
from lightning_wsg.data import GroundingBatch, RefCOCODataModule
from lightning_wsg.data.refcoco import (
    REFER_SPLITS,
    ReferFormatError,
    available_splits,
    default_eval_splits,
    read_refs,
    refs_path,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "cli_configs" / "refcoco.yaml"
SMALL = REPO / "tests" / "configs" / "tiny_model.yaml"

# --- datasets, split authors and splits --------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, split_by, splits, default",
    [
        ("refcoco", "unc", ("train", "val", "testA", "testB"), ("testA", "testB")),
        ("refcoco", "google", ("train", "val", "test"), ("test",)),
        ("refcoco+", "unc", ("train", "val", "testA", "testB"), ("testA", "testB")),
        ("refcocog", "umd", ("train", "val", "test"), ("test",)),
        ("refcocog", "google", ("train", "val"), ("val",)),
        ("refclef", "unc", ("train", "val", "testA", "testB", "testC"), ("testA", "testB", "testC")),
        ("refclef", "berkeley", ("train", "val", "test"), ("test",)),
    ],
)
def test_combinations_and_their_splits(dataset, split_by, splits, default, tmp_path):
    assert available_splits(dataset, split_by) == splits
    assert default_eval_splits(dataset, split_by) == default
    assert refs_path(tmp_path, dataset, split_by) == tmp_path / dataset / f"refs({split_by}).p"
    dm = RefCOCODataModule(tmp_path, tmp_path, tmp_path / "d.jsonl", dataset=dataset, split_by=split_by)
    assert dm.test_splits == list(default) and dm.val_splits == ["val"]
    assert dm.refs_file == tmp_path / dataset / f"refs({split_by}).p"
    assert dm.instances_file == tmp_path / dataset / "instances.json"
    assert sum(len(v) for v in REFER_SPLITS.values()) == 7


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        (
            {"dataset": "refcocoplus"},
            r"unknown dataset 'refcocoplus': expected one of refcoco, refcoco\+, refcocog, refclef",
        ),
        ({"dataset": "refcoco+", "split_by": "google"}, r"refcoco\+ has no 'google' split: it is split by unc"),
        ({"dataset": "refcocog", "split_by": "unc"}, r"refcocog has no 'unc' split: it is split by umd, google"),
        ({"dataset": "refcoco", "split_by": "umd"}, r"refcoco has no 'umd' split: it is split by unc, google"),
        ({"dataset": "refclef", "split_by": "google"}, r"split by unc, berkeley \(refer data: refcoco: unc, google;"),
        (
            {"dataset": "refcocog", "split_by": "google", "eval_splits": ["test"]},
            r"refcocog \(google\) has no split 'test' \(eval_splits\): its splits are train, val$",
        ),
        (
            {"eval_splits": ["testC"]},
            r"refcoco \(unc\) has no split 'testC' \(eval_splits\): its splits are train, val, testA",
        ),
        ({"dataset": "refclef", "split_by": "berkeley", "eval_splits": ["testA"]}, r"has no split 'testA'"),
        ({"split_by": "google", "eval_splits": ["testA"]}, r"refcoco \(google\) has no split 'testA'"),
        ({"val_split": "dev"}, r"has no split 'dev' \(val_split\)"),
        ({"val_split": "train"}, r"val_split: 'train' cannot be evaluated"),
        ({"eval_splits": ["testA", "train"]}, r"eval_splits: 'train' cannot be evaluated"),
        ({"eval_splits": ["testA", "testA"]}, r"names a split twice"),
        ({"eval_splits": []}, r"eval_splits is empty"),
    ],
)
def test_unsupported_combinations_and_splits_raise(kwargs, problem, tmp_path):
    with pytest.raises(ValueError, match=problem):
        RefCOCODataModule(tmp_path, tmp_path, tmp_path / "d.jsonl", **kwargs)


def test_explicit_splits(tmp_path):
    dm = RefCOCODataModule(
        tmp_path, tmp_path, "d.jsonl", dataset="refclef", split_by="unc", eval_splits=["testC", "val"]
    )
    assert dm.test_splits == ["testC", "val"]
    dm = RefCOCODataModule(tmp_path, tmp_path, "d.jsonl", val_split="testA", eval_splits="testB")
    assert dm.val_splits == ["testA"] and dm.test_splits == ["testB"]


# --- the real expressions ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_roots(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Refer-layout roots built from every shared CSV (no train split), one per combination."""
    require_shared(REFCOCO_FILES / "refcoco_unc_testA.csv.gz", "the real RefCOCO expressions")
    tmp = tmp_path_factory.mktemp("refer")
    wanted = {
        ("refcoco", "unc"): ["val", "testA", "testB"],
        ("refcoco+", "unc"): ["val", "testA", "testB"],
        ("refcocog", "umd"): ["val", "test"],
        ("refcocog", "google"): ["val"],
    }
    roots = {}
    for (dataset, split_by), splits in wanted.items():
        roots[dataset, split_by] = build_refer_root(tmp / f"{dataset}_{split_by}", dataset, split_by, splits).root
    return roots


def _real_dm(real_roots, dataset: str, split_by: str) -> RefCOCODataModule:
    root = real_roots[dataset, split_by]
    return RefCOCODataModule(root, root, root / "unused.jsonl", dataset=dataset, split_by=split_by, num_workers=0)


@pytest.mark.parametrize(
    "dataset, split_by, split, expressions, refs",
    [
        ("refcoco", "unc", "val", 10_834, 3_811),
        ("refcoco", "unc", "testA", 5_657, 1_975),
        ("refcoco", "unc", "testB", 5_095, 1_810),
        ("refcoco+", "unc", "val", 10_758, 3_805),
        ("refcoco+", "unc", "testA", 5_726, 1_975),
        ("refcoco+", "unc", "testB", 4_889, 1_798),
        ("refcocog", "umd", "val", 4_896, 2_573),
        ("refcocog", "umd", "test", 9_602, 5_023),
        ("refcocog", "google", "val", 9_536, 5_000),
    ],
)
def test_real_evaluation_counts(real_roots, dataset, split_by, split, expressions, refs, caplog):
    dm = _real_dm(real_roots, dataset, split_by)
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        entries = dm.load_split(split)
    assert not caplog.records  # nothing skipped
    assert len(entries) == expressions
    assert len({e.sentence_id for e in entries}) == expressions
    assert len({id(e.gt_boxes[0]) for e in entries}) == refs  # one box per referred object (one ann per ref)
    for e in entries:
        assert e.phrase_spans == [(0, len(e.words))] and e.phrase_ids == [e.sentence_id] and len(e.words) > 0
        assert e.gt_boxes[0].shape == (1, 4) and e.image_size is not None


@pytest.mark.parametrize("dataset, split_by, split", sorted(PHRASELOCEVAL_FILES))
def test_boxes_agree_with_phraseloceval(real_roots, dataset, split_by, split):
    entries = _real_dm(real_roots, dataset, split_by).load_split(split)
    reference = read_phraseloceval(PHRASELOCEVAL_FILES[dataset, split_by, split])
    matched = [e for e in entries if e.sentence_id in reference]
    assert len(matched) == len(entries)  # every expression has its phraseloceval record (sent_id = phraseId)
    ours = torch.cat([e.gt_boxes[0] for e in matched])
    theirs = coco_to_corners(torch.tensor([reference[e.sentence_id]["box"] for e in matched]))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    for e in matched:
        rec = reference[e.sentence_id]
        assert (e.image_id, e.words, e.phrase_types) == (rec["image"], rec["phrase"], [rec["categories"]])
        w, h = e.image_size
        assert (
            0 <= e.gt_boxes[0][0, 0] < e.gt_boxes[0][0, 2] <= w and 0 <= e.gt_boxes[0][0, 1] < e.gt_boxes[0][0, 3] <= h
        )


def test_real_refs_of_one_dataset_are_not_read_as_another(real_roots, tmp_path):
    # refcocog umd's file read as refcocog google: its "test" refs are a split google lacks
    root = real_roots["refcocog", "umd"]
    google = tmp_path / "refcocog"
    google.mkdir()
    (google / "refs(google).p").write_bytes((root / "refcocog" / "refs(umd).p").read_bytes())
    (google / "instances.json").write_bytes((root / "refcocog" / "instances.json").read_bytes())
    dm = RefCOCODataModule(tmp_path, tmp_path, "d.jsonl", dataset="refcocog", split_by="google")
    with pytest.raises(ReferFormatError, match=r"refs of split test, which refcocog \(google\) does not have"):
        dm.load_split("val")


# --- bad input ---------------------------------------------------------------------------------


def _rows(split: str = "testA", first_ref: int = 0, first_sent: int = 0, image: int = 1) -> list[dict]:
    return [
        {
            "ref_id": first_ref,
            "img_id": image,
            "sent_id": first_sent,
            "sent": "red cup",
            "bbox": [1.0, 2.0, 10.0, 12.0],
        },
        {
            "ref_id": first_ref,
            "img_id": image,
            "sent_id": first_sent + 1,
            "sent": "left cup",
            "bbox": [1.0, 2.0, 10.0, 12.0],
        },
        {
            "ref_id": first_ref + 1,
            "img_id": image,
            "sent_id": first_sent + 2,
            "sent": "blue man",
            "bbox": [20.0, 5.0, 8.0, 8.0],
        },
    ]


@pytest.fixture
def small_root(tmp_path) -> Path:
    rows = {"train": _rows("train", 0, 0, 1), "val": _rows("val", 10, 10, 2), "testA": _rows("testA", 20, 20, 3)}
    rows["testB"] = _rows("testB", 30, 30, 4)
    return write_refer(tmp_path / "refer", "refcoco", "unc", rows, categories={"20": "cup"}).root


def _small_dm(root: Path, **kwargs) -> RefCOCODataModule:
    return RefCOCODataModule(root, root, root / "d.jsonl", **kwargs)


def _edit_refs(root: Path, edit) -> None:
    path = root / "refcoco" / "refs(unc).p"
    refs = read_refs(path)
    edit(refs)
    path.write_bytes(pickle.dumps(refs, protocol=2))


def _edit_instances(root: Path, edit) -> None:
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_small_root_entries(small_root):
    dm = _small_dm(small_root)
    test = dm.load_split("testA")
    assert [(e.sentence_id, e.words, e.image_id) for e in test] == [
        ("20", ["red", "cup"], "3"),
        ("21", ["left", "cup"], "3"),
        ("22", ["blue", "man"], "3"),
    ]
    assert test[0].gt_boxes[0].tolist() == [[1.0, 2.0, 11.0, 14.0]] and test[2].gt_boxes[0].tolist() == [
        [20.0, 5.0, 28.0, 13.0]
    ]
    assert test[0].gt_boxes[0] is test[1].gt_boxes[0]  # one conversion per referred object
    assert [e.phrase_types for e in test] == [[["cup"]], [["cup"]], [["object"]]]  # the object's category
    assert test[0].image_size == (28, 14)
    train = dm.load_split("train")
    assert len(train) == 3 and all(e.gt_boxes is None and e.image_size is None for e in train)
    assert dm.image_path("3") == small_root / "COCO_train2014_000000000003.jpg"  # instances.json's file_name
    assert dm.known_image_ids() == {"1", "2", "3", "4"}


def test_missing_files_raise(small_root, tmp_path):
    (small_root / "refcoco" / "refs(unc).p").unlink()
    with pytest.raises(FileNotFoundError, match=r"refs file not found: .*refcoco/refs\(unc\)\.p"):
        _small_dm(small_root).setup("test")
    with pytest.raises(FileNotFoundError, match=r"refs file not found: .*refcoco/refs\(google\)\.p"):
        _small_dm(small_root, split_by="google").load_split("test")
    other = write_refer(tmp_path / "other", "refcoco+", "unc", {"testA": _rows()}).root
    (other / "refcoco+" / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances file not found: .*refcoco\+/instances\.json"):
        _small_dm(other, dataset="refcoco+").load_split("testA")
    with pytest.raises(FileNotFoundError, match=r"dataset root not found"):
        _small_dm(tmp_path / "nowhere").setup("test")


def test_absent_annotation_raises(small_root):
    _edit_instances(
        small_root, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] not in (1, 3)])
    )
    with pytest.raises(ReferFormatError, match=r"refs\(unc\)\.p: ref 20: ann_id \d+ is not in .*instances\.json"):
        _small_dm(small_root).load_split("testA")
    with pytest.raises(ReferFormatError, match=r"ref 0: ann_id \d+ is not in"):  # training refs are checked too
        _small_dm(small_root).load_split("train")
    assert len(_small_dm(small_root).load_split("testB")) == 3


def test_absent_image_raises(small_root):
    _edit_instances(small_root, lambda d: d.update(images=[i for i in d["images"] if i["id"] != 1]))
    with pytest.raises(ReferFormatError, match=r"ref 0: image 1 is not in .*instances\.json"):
        _small_dm(small_root).load_split("train")


def test_annotation_of_another_image_raises(small_root):
    def move(refs):
        refs[-1]["image_id"] = 1

    _edit_refs(small_root, move)
    with pytest.raises(ReferFormatError, match=r"ref 31: ann_id \d+ belongs to image 4, the ref to image 1"):
        _small_dm(small_root).load_split("testB")


def test_bad_box_split_and_records_raise(small_root):
    _edit_instances(small_root, lambda d: d["annotations"][-1].update(bbox=[1.0, 1.0, 0.0, 3.0]))
    with pytest.raises(ReferFormatError, match=r"annotation \d+ has no valid \[x, y, w, h\] box"):
        _small_dm(small_root).load_split("testB")
    _edit_refs(small_root, lambda refs: refs[0].update(split="testC"))
    with pytest.raises(ReferFormatError, match=r"refs of split testC, which refcoco \(unc\) does not have"):
        _small_dm(small_root).load_split("testB")
    _edit_refs(small_root, lambda refs: refs[0].update(split="train") or refs[0].pop("ann_id"))
    with pytest.raises(ReferFormatError, match=r"ref 0 has no valid ann_id"):
        _small_dm(small_root).load_split("train")


def test_split_without_refs_raises(tmp_path):
    root = write_refer(tmp_path, "refcoco", "unc", {"testA": _rows()}).root
    with pytest.raises(ReferFormatError, match=r"no ref of split 'testB'"):
        _small_dm(root).load_split("testB")


def test_refs_file_must_be_plain_data(small_root):
    path = small_root / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "obj": Path("/x")}], protocol=2))
    with pytest.raises(ReferFormatError, match=r"not a refs pickle: .*refuses to load"):
        read_refs(path)
    path.write_bytes(pickle.dumps({"refs": []}, protocol=2))
    with pytest.raises(ReferFormatError, match=r"expected a list of ref dicts, got dict"):
        read_refs(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ReferFormatError, match=r"not a refs pickle"):
        read_refs(path)


def _py2_pickle(value: bytes) -> bytes:
    """``[{"raw": value}]`` as Python 2 writes it with protocol 2 (``value`` a byte ``str``)."""
    return b"\x80\x02]q\x00}q\x01U\x03rawq\x02U" + bytes([len(value)]) + value + b"q\x03sa."


def test_python2_byte_strings_are_decoded(tmp_path, caplog):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(_py2_pickle("café".encode()))
    assert read_refs(path) == [{"raw": "café"}]
    path.write_bytes(_py2_pickle("café".encode("latin-1")))
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        assert read_refs(path) == [{"raw": "café"}]
    assert "decoding them as Latin-1" in caplog.text


def test_empty_sentences_are_counted_skips_and_tokens_fall_back_to_sent(small_root, caplog):
    def edit(refs):
        by_id = {r["ref_id"]: r for r in refs}
        by_id[20]["sentences"][0].update(tokens=[], sent="   ")  # empty: skipped
        by_id[20]["sentences"][1].update(tokens=[], sent="left  cup ")  # no tokens: sent split on whitespace
        by_id[21]["sentences"][0].pop("tokens")
        by_id[21]["sentences"][0]["sent"] = "the blue man"

    _edit_refs(small_root, edit)
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        entries = _small_dm(small_root).load_split("testA")
    assert [(e.sentence_id, e.words) for e in entries] == [("21", ["left", "cup"]), ("22", ["the", "blue", "man"])]
    warnings = [r for r in caplog.records if r.name == "lightning_wsg" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "split testA: skipped 1 of 3 expressions with neither tokens nor text" in warnings[0].getMessage()
    assert "sent_id 20" in warnings[0].getMessage()


# --- the datamodule on the tiny dataset --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_refer(tmp_path_factory.mktemp("tiny_refer"))


def _tiny_dm(tiny, **kwargs) -> RefCOCODataModule:
    kwargs = {"detections": tiny.detections, "batch_size": 4, "num_workers": 0, "image_size": 64, **kwargs}
    return RefCOCODataModule(tiny.root, tiny.image_dir, **kwargs)


def test_tiny_training_samples_carry_no_boxes(tiny):
    dm = _tiny_dm(tiny)
    dm.setup("fit")
    assert sorted(dm.datasets) == ["train", "val"]
    train = dm.datasets["train"]
    assert len(train) == len(tiny.splits["train"]) and train.num_skipped == 0
    assert all(e.gt_boxes is None and e.phrase_types is None for e in train.entries)
    sample = train[0]
    assert sample.gt_boxes is None and sample.phrase_types is None and sample.split == "train"
    batch = next(iter(dm.train_dataloader()))
    assert batch.split == "train" and not batch.has_ground_truth and batch.gt_boxes is None
    assert batch.phrase_mask.shape == (4, 1) and batch.proposal_labels is not None


def test_tiny_evaluation_loaders_carry_their_split(tiny):
    dm = _tiny_dm(tiny)
    dm.setup("test")
    assert sorted(dm.datasets) == ["testA", "testB"]
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    for split, loader in zip(["testA", "testB"], loaders):
        seen = []
        for batch in loader:
            assert isinstance(batch, GroundingBatch) and batch.split == split and batch.has_ground_truth
            assert batch.phrase_mask.shape[1] == 1 and batch.gt_boxes.shape[2] == 1
            for i in range(len(batch)):
                assert batch.phrase_spans[i] == [(0, len(batch.words[i]))]
                # the referred box is a proposal, labelled with the colour the expression names
                match = (batch.proposals[i] == batch.gt_union[i, 0]).all(1) & batch.proposal_mask[i]
                assert match.any()
                assert (
                    batch.proposal_labels[i][int(torch.nonzero(match)[0])] in batch.words[i] or len(batch.words[i]) == 2
                )
            seen.extend(batch.sentence_ids)
        assert seen == tiny.splits[split]
    val = _tiny_dm(tiny, eval_splits=["val"], val_split="testB")
    val.setup("validate")
    assert val.val_dataloader().dataset.split == "testB"


def test_tiny_images_for_a_detection_cache(tiny):
    # with detections supplied later (DetectionCache), setup parses the splits and names their images
    dm = _tiny_dm(tiny, detections=None)
    dm.setup("test")
    paths = dm.image_paths("testA")
    assert len(paths) == 3 and all(p.is_file() and p.parent == tiny.image_dir for p in paths.values())
    dm.use_detections(tiny.detections)
    assert len(dm.datasets["testA"]) == len(tiny.splits["testA"])


def test_tiny_is_deterministic(tmp_path):
    a = make_tiny_refer(tmp_path / "a", seed=3)
    b = make_tiny_refer(tmp_path / "b", seed=3)
    for name in ("refs(unc).p", "instances.json"):
        assert (a.root / "refcoco" / name).read_bytes() == (b.root / "refcoco" / name).read_bytes()
    assert a.detections.read_bytes() == b.detections.read_bytes()
    g = make_tiny_refer(tmp_path / "g", dataset="refcocog", split_by="google")
    assert sorted(g.splits) == ["train", "val"]
    dm = RefCOCODataModule(g.root, g.image_dir, g.detections, dataset="refcocog", split_by="google", num_workers=0)
    dm.setup("test")
    assert dm.test_splits == ["val"] and len(dm.datasets["val"]) == len(g.splits["val"])


# --- the command line --------------------------------------------------------------------------


def _cli_args(tiny, tmp_path: Path) -> list[str]:
    return [
        "--config", str(CONFIG),
        "--config", str(SMALL),
        "--data.root", str(tiny.root),
        "--data.image_dir", str(tiny.image_dir),
        "--data.detections", str(tiny.detections),
        "--data.image_size", "64",
        "--data.batch_size", "4",
        "--model.phrase_encoder.config_overrides", '{"num_hidden_layers": 1}',
        "--model.loss.teacher.matching", "lexical",  # no word vectors to load: this test is about the data
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
    ]  # fmt: skip


def test_cli_fit_then_test_logs_each_split(tiny, tmp_path):
    from lightning_wsg.cli import main

    args = _cli_args(tiny, tmp_path)
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
    fit = main(["fit", *args, *limits])
    assert isinstance(fit.datamodule, RefCOCODataModule) and fit.datamodule.test_splits == ["testA", "testB"]
    assert fit.model.hparams.phrase_types == []
    assert fit.trainer.global_step == 2 and "val/acc" in fit.trainer.callback_metrics
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    assert ckpt and Path(ckpt).is_file() and Path(ckpt).is_relative_to(tmp_path)

    test = main(["test", *args, "--ckpt_path", ckpt])
    metrics = test.trainer.callback_metrics
    for split in ("testA", "testB"):
        for name in ("acc", "acc_any", "pointing", "recall@1", "recall@5", "recall@10", "upper_bound"):
            assert f"{split}/{name}" in metrics
        assert int(metrics[f"{split}/num_phrases"]) == len(tiny.splits[split])
        assert float(metrics[f"{split}/upper_bound"]) == 1.0
        assert 0.0 <= float(metrics[f"{split}/acc"]) <= 1.0
    assert not any(k.startswith(("test/", "val/")) or "dataloader_idx" in k for k in metrics)


# --- the real test expressions end to end ------------------------------------------------------


@pytest.mark.slow
def test_real_refcoco_test_end_to_end(tmp_path):
    """`lightning test` on RefCOCO testA/testB: placeholder images, proposals holding each true box."""
    from lightning_wsg.cli import main

    require_shared(REFCOCO_FILES / "refcoco_unc_testA.csv.gz", "the real RefCOCO expressions")
    start = time.perf_counter()
    refer = build_refer_root(tmp_path / "refer", "refcoco", "unc", ["testA", "testB"])
    image_dir = make_placeholder_images(tmp_path / "images", refer)
    detections = write_gt_proposals(tmp_path / "proposals.jsonl", refer, extra=3)
    prepared = time.perf_counter() - start
    args = [
        "test",
        "--config", str(CONFIG),
        "--config", str(SMALL),
        "--data.root", str(refer.root),
        "--data.image_dir", str(image_dir),
        "--data.detections", str(detections),
        "--data.image_size", "32",
        "--data.batch_size", "128",
        "--model.loss.use_kd", "false",
        "--model.phrase_encoder.config_overrides", '{"num_hidden_layers": 1}',
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
    ]  # fmt: skip
    test = main(args)
    elapsed = time.perf_counter() - start
    metrics = test.trainer.callback_metrics
    assert int(metrics["testA/num_phrases"]) == 5_657 and int(metrics["testB/num_phrases"]) == 5_095
    assert float(metrics["testA/upper_bound"]) == 1.0 and float(metrics["testB/upper_bound"]) == 1.0
    print(f"\nreal RefCOCO testA + testB: prepared in {prepared:.1f} s, prepared + tested in {elapsed:.1f} s")


# --- malformed refer files ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, problem",
    [
        (b'{"images": [', "not valid JSON"),
        (b"\xff\xfe\x00 not text", "not valid JSON"),
        (b"[]", "expected a COCO-style object with 'images' and 'annotations'"),
        (b'{"images": []}', "expected a COCO-style object with 'images' and 'annotations'"),
        (
            b'{"images": [{"id": 1}], "annotations": []}',
            r"malformed image, annotation or category record: KeyError\('file_name'\)",
        ),
        (b'{"images": [], "annotations": [{"id": "x"}]}', "malformed image, annotation or category record: ValueError"),
    ],
)
def test_an_invalid_instances_json_names_the_file(small_root, content, problem):
    path = small_root / "refcoco" / "instances.json"
    path.write_bytes(content)
    with pytest.raises(ReferFormatError, match=rf"{re.escape(str(path))}: {problem}"):
        _small_dm(small_root).load_split("testA")


def _pop(key):
    return lambda ref: ref.pop(key)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_pop("ann_id"), r"ref 20 has no valid ann_id"),
        (_pop("image_id"), r"malformed ref 20: KeyError\('image_id'\)"),
        (lambda ref: ref.update(ann_id="cup"), r"ref 20 has no valid ann_id"),
        (lambda ref: ref.update(sentences="red cup"), r"ref 20: 'sentences' must be a list"),
        (lambda ref: ref["sentences"][0].pop("sent_id"), r"ref 20: a sentence without sent_id"),
        (lambda ref: ref["sentences"].append("left cup"), r"ref 20: a sentence without sent_id: 'left cup'"),
        (
            lambda ref: ref["sentences"][0].update(tokens="red cup"),
            r"ref 20: sentence 20: 'tokens' must be a list of words",
        ),
        (
            lambda ref: ref["sentences"][0].update(tokens=[1, 2]),
            r"ref 20: sentence 20: 'tokens' must be a list of words",
        ),
        (
            lambda ref: ref["sentences"][0].update(tokens=[], sent=7),
            r"ref 20: sentence 20: 'sent' must be a string, got 7",
        ),
    ],
)
def test_malformed_refs_and_sentences_name_the_refs_file_and_ref(small_root, edit, problem):
    _edit_refs(small_root, lambda refs: edit(next(r for r in refs if r["ref_id"] == 20)))
    path = small_root / "refcoco" / "refs(unc).p"
    with pytest.raises(ReferFormatError, match=rf"{re.escape(str(path))}: {problem}"):
        _small_dm(small_root).load_split("testA")
