"""Pseudo-labels: selection, per-phrase metric outcomes, the refer round trip, Flickr JSON Lines."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from helpers.cli import REPO, TINY_MODEL_YAML, tiny_model_args
from helpers.model import tiny_model
from helpers.refcoco import make_tiny_refer, write_refer
from helpers.trainer import quiet_trainer
from PIL import Image

from lightning_wsg.boxes import box_iou, union_box
from lightning_wsg.callbacks.pseudo_labels import PseudoLabelWriter, select_labels
from lightning_wsg.data import RefCOCODataModule, SentencesFileDataModule, SyntheticWorldDataModule
from lightning_wsg.data.pseudo_labels import PseudoLabel, write_phrase_jsonl, write_refer_from_refs
from lightning_wsg.data.refcoco import load_entries, read_instances, read_refs
from lightning_wsg.metrics import GroundingMetrics, PhraseOutcomes

REFCOCO_YAML = str(REPO / "cli_configs" / "refcoco.yaml")
PSEUDO_YAML = str(REPO / "cli_configs" / "pseudo_labels.yaml")


# ------------------------------------------------------------------- selection
def test_select_labels_threshold_and_fraction_counts() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.7])
    keep, counts = select_labels(scores)
    assert keep.all() and counts == {"phrases": 6, "kept": 6, "below_threshold": 0, "outside_top_fraction": 0}
    keep, counts = select_labels(scores, score_threshold=0.3)
    assert keep.tolist() == [True, False, True, True, True, True] and counts["below_threshold"] == 1
    # ceil(0.5 * 6) = 3 highest: 0.9 and both 0.7 (a tie keeps the earlier first)
    keep, counts = select_labels(scores, top_fraction=0.5)
    assert keep.tolist() == [True, False, False, True, False, True] and counts["outside_top_fraction"] == 3
    keep, counts = select_labels(scores, score_threshold=0.75, top_fraction=0.5)
    assert keep.tolist() == [True, False, False, False, False, False]
    assert counts == {"phrases": 6, "kept": 1, "below_threshold": 5, "outside_top_fraction": 0}
    keep, counts = select_labels(scores, score_threshold=0.2, top_fraction=0.34)  # ceil(2.04) = 3
    assert keep.tolist() == [True, False, False, True, False, True]
    assert counts == {"phrases": 6, "kept": 3, "below_threshold": 1, "outside_top_fraction": 2}
    with pytest.raises(ValueError, match=r"top_fraction must be in \(0, 1\], got 0"):
        PseudoLabelWriter(top_fraction=0)
    with pytest.raises(ValueError, match="layout must be one of auto, refer, flickr_jsonl"):
        PseudoLabelWriter(layout="coco")


def test_selected_outcomes_equal_a_masked_update() -> None:
    # the outcomes of a selection of phrases give the metrics of an update restricted to them
    g = torch.Generator().manual_seed(0)
    B, P, R, K = 4, 3, 6, 2
    xy = torch.rand(B, R, 2, generator=g) * 50
    proposals = torch.cat([xy, xy + 5 + torch.rand(B, R, 2, generator=g) * 30], -1)
    gt_boxes = proposals[:, :K, None].repeat(1, 1, P, 1).permute(0, 2, 1, 3).clone() + 1.5
    gt_box_mask = torch.rand(B, P, K, generator=g) > 0.3
    gt_union = torch.stack([torch.stack([union_box(gt_boxes[b, p]) for p in range(P)]) for b in range(B)])
    scores = torch.rand(B, P, R, generator=g)
    proposal_mask = torch.ones(B, R, dtype=torch.bool)
    proposal_mask[0, 4:] = False
    phrase_mask = torch.ones(B, P, dtype=torch.bool)
    phrase_mask[1, 2] = False
    types = [[["people"], ["animals"], []] for _ in range(B)]
    keep = torch.rand(B, P, generator=g) > 0.4
    args = (scores, proposals, proposal_mask, phrase_mask & keep, gt_union, gt_boxes, gt_box_mask, types)
    masked = GroundingMetrics(ks=(1, 3))
    masked.update(*args)
    selected = GroundingMetrics(ks=(1, 3))
    outcomes = selected.outcomes(scores, proposals, proposal_mask, phrase_mask, gt_union, gt_boxes, gt_box_mask, types)
    selected.update(outcomes=PhraseOutcomes.cat([outcomes]).select(keep.reshape(-1)))
    expected, got = masked.compute(), selected.compute()
    assert expected.keys() == got.keys() and int(expected["num_phrases"]) > 0
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    with pytest.raises(TypeError, match="either the batch's tensors or outcomes="):
        selected.update(scores, outcomes=outcomes)


# ------------------------------------------------------------------- refer layout
def test_refer_expressions_of_one_ref_that_chose_different_boxes(tmp_path: Path) -> None:
    box = [10.0, 20.0, 30.0, 40.0]
    rows = [{"ref_id": 5, "img_id": 42, "sent_id": s, "sent": f"the thing {s}", "bbox": box} for s in (7, 8, 9)]
    rows.append({"ref_id": 6, "img_id": 42, "sent_id": 10, "sent": "other", "bbox": [0.0, 0.0, 5.0, 5.0]})
    source = write_refer(tmp_path / "src", "refcoco", "unc", {"train": rows}, sizes={"42": (64, 64)})
    refs = read_refs(source.root / "refcoco" / "refs(unc).p")
    index = read_instances(source.root / "refcoco" / "instances.json")
    a, b = [1.0, 2.0, 20.5, 30.25], [3.0, 4.0, 9.0, 12.0]
    words = ["w"]
    labels = [PseudoLabel("train", "42", s, words, (0, 1), s, [], box, score, (64, 64))
              for s, box, score in (("7", a, 0.5), ("8", b, 0.25), ("9", a, 0.75))]  # fmt: skip
    refs_file, instances_file = write_refer_from_refs(tmp_path / "out", "refcoco", "unc", refs, index, labels)
    out = read_refs(refs_file)
    assert [(r["ref_id"], r["ann_id"], r["sent_ids"]) for r in out] == [(5, 1, [7, 9]), (7, 3, [8])]
    assert out[1]["source_ref_id"] == 5 and out[1]["source_ann_id"] == 1 and "source_ref_id" not in out[0]
    assert [s["sent"] for s in out[0]["sentences"]] == ["the thing 7", "the thing 9"]
    assert [s["score"] for s in out[0]["sentences"]] == [0.5, 0.75]
    instances = json.loads(instances_file.read_text())
    assert [(x["id"], x["bbox"], x["score"]) for x in instances["annotations"]] == [
        (1, [1.0, 2.0, 19.5, 28.25], 0.75),
        (3, [3.0, 4.0, 6.0, 8.0], 0.25),
    ]  # ref 6 has no label: left out
    assert instances["images"] == [
        {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 64, "height": 64}
    ]
    entries = load_entries(out, read_instances(instances_file), "train", evaluation=True)
    assert {e.sentence_id: e.gt_boxes[0].tolist() for e in entries} == {"7": [a], "8": [b], "9": [a]}


def _refer_cli(tiny, tmp: Path) -> list[str]:
    return [
        "--config", REFCOCO_YAML,
        "--config", TINY_MODEL_YAML,
        *tiny_model_args(),
        "--data.root", str(tiny.root),
        "--data.image_dir", str(tiny.image_dir),
        "--data.detections", str(tiny.detections),
        "--data.image_size", "64",
        "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def refer_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny refer dataset, a tiny model fitted 3 steps, its pseudo-labels of the training split."""
    from lightning_wsg.cli import main

    tmp = tmp_path_factory.mktemp("pseudo_refer")
    tiny = make_tiny_refer(tmp / "data", train_images=10, extra_proposals=6)
    args = _refer_cli(tiny, tmp)
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1"]
    fit = main(["fit", *args, *limits])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    runs = {}
    for name, options in (("all", []), ("kept", ["--trainer.callbacks.top_fraction", "0.6"])):
        out = tmp / f"pseudo_{name}"
        predict = [*args, "--config", PSEUDO_YAML, "--ckpt_path", ckpt, "--trainer.callbacks.output_dir", str(out)]
        cli = main(["predict", *predict, *options])
        (writer,) = [c for c in cli.trainer.callbacks if isinstance(c, PseudoLabelWriter)]
        runs[name] = {"out": out, "writer": writer}
    return {"tiny": tiny, "runs": runs}


def _accuracy_of(pseudo_root: Path, tiny) -> tuple[dict, dict[str, list[float]]]:
    """The written boxes read back by RefCOCODataModule as ground truth, scored against the
    source's ground truth by GroundingMetrics (each written box is the only proposal)."""
    written = {e.sentence_id: e for e in RefCOCODataModule(pseudo_root).load_labelled_split("train")}
    source = {e.sentence_id: e for e in RefCOCODataModule(tiny.root).load_labelled_split("train")}
    ids = sorted(written)
    pred = torch.stack([written[i].gt_boxes[0][0] for i in ids])  # [N, 4]
    gt = torch.stack([source[i].gt_boxes[0][0] for i in ids])
    n = len(ids)
    metric = GroundingMetrics(phrase_types=())
    metric.update(
        torch.ones(n, 1, 1), pred[:, None], torch.ones(n, 1, dtype=torch.bool), torch.ones(n, 1, dtype=torch.bool),
        gt[:, None], gt[:, None, None], torch.ones(n, 1, 1, dtype=torch.bool),
    )  # fmt: skip
    return metric.compute(), {i: written[i].gt_boxes[0][0].tolist() for i in ids}


def test_refer_pseudo_labels_read_back_as_ground_truth(refer_run) -> None:
    tiny = refer_run["tiny"]
    run = refer_run["runs"]["all"]
    report = json.loads((run["out"] / "metrics.json").read_text())
    assert report == run["writer"].report and report["layout"] == "refer"
    train = report["splits"]["train"]
    n = len(tiny.splits["train"])
    assert train["phrases"] == train["kept"] == train["with_ground_truth"] == n
    reported = train["metrics"]["all"]
    assert reported == train["metrics"]["kept"] and reported["num_phrases"] == n
    # read back by the datamodule, the written boxes score exactly the reported accuracy
    measured, _ = _accuracy_of(run["out"], tiny)
    assert int(measured["num_phrases"]) == n
    assert float(measured["acc"]) == pytest.approx(reported["acc"], abs=1e-9)
    assert float(measured["pointing"]) == pytest.approx(reported["pointing"], abs=1e-9)
    assert 0 < reported["acc"] < 1  # a partly trained model: both kinds of label are there

    # ids and sentences are the source's
    source = {r["ref_id"]: r for r in read_refs(tiny.root / "refcoco" / "refs(unc).p")}
    written = read_refs(run["out"] / "refcoco" / "refs(unc).p")
    sentences = {}
    for ref in written:
        origin = source[ref.get("source_ref_id", ref["ref_id"])]
        assert origin["split"] == ref["split"] == "train"
        for key in ("image_id", "category_id", "file_name"):
            assert ref[key] == origin[key]
        if "source_ref_id" not in ref:
            assert ref["ann_id"] == origin["ann_id"]
        by_id = {s["sent_id"]: s for s in origin["sentences"]}
        for s in ref["sentences"]:
            assert {k: v for k, v in s.items() if k != "score"} == by_id[s["sent_id"]]
            sentences[s["sent_id"]] = s
    assert sorted(str(s) for s in sentences) == sorted(tiny.splits["train"])
    assert len({r["ref_id"] for r in written}) == len(written)
    assert len({r["ann_id"] for r in written}) == len(written)


def test_refer_pseudo_labels_top_fraction(refer_run) -> None:
    tiny = refer_run["tiny"]
    out = refer_run["runs"]["kept"]["out"]
    train = json.loads((out / "metrics.json").read_text())["splits"]["train"]
    n = len(tiny.splits["train"])
    kept = -(-n * 6 // 10)  # ceil(0.6 n)
    assert train["phrases"] == n and train["kept"] == kept and train["outside_top_fraction"] == n - kept
    assert train["below_threshold"] == 0 and train["metrics"]["kept"]["num_phrases"] == kept
    measured, boxes = _accuracy_of(out, tiny)
    assert len(boxes) == kept
    assert float(measured["acc"]) == pytest.approx(train["metrics"]["kept"]["acc"], abs=1e-9)
    # the kept ones are the highest-scoring: their written scores are the top ones of the full run
    everything = read_refs(refer_run["runs"]["all"]["out"] / "refcoco" / "refs(unc).p")
    scores = sorted((s["score"] for r in everything for s in r["sentences"]), reverse=True)
    kept_scores = sorted(s["score"] for r in read_refs(out / "refcoco" / "refs(unc).p") for s in r["sentences"])
    assert kept_scores[0] >= scores[kept - 1]


# ------------------------------------------------------------------- Flickr layout (the synthetic world)
@pytest.fixture(scope="module")
def world_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("pseudo_world")

    def datamodule(**kwargs) -> SyntheticWorldDataModule:
        return SyntheticWorldDataModule(
            root=str(tmp / "world"), num_train=8, num_val=4, num_test=2, world_image_size=64, image_size=64,
            batch_size=4, num_workers=0, max_proposals=10, **kwargs,
        )  # fmt: skip

    torch.manual_seed(0)
    model = tiny_model(region={"hidden_dim": 32, "embed_dim": 16}, phrase={"hidden_dim": 32, "embed_dim": 16})
    quiet_trainer(tmp / "fit", limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False).fit(
        model, datamodule=datamodule()
    )
    return {"tmp": tmp, "model": model, "datamodule": datamodule}


def _predict(world_run, split: str, out: Path, **options) -> PseudoLabelWriter:
    writer = PseudoLabelWriter(output_dir=out, **options)
    trainer = quiet_trainer(world_run["tmp"] / "predict", callbacks=[writer])
    trainer.predict(
        world_run["model"], datamodule=world_run["datamodule"](predict_split=split), return_predictions=False
    )
    return writer


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_flickr_jsonl_pseudo_labels_of_the_training_split(world_run, tmp_path: Path) -> None:
    writer = _predict(world_run, "train", tmp_path)
    lines = _lines(tmp_path / "pseudo_labels.jsonl")
    dm = world_run["datamodule"]()
    entries = dm.load_labelled_split("train")
    expected = [(e.image_id, e.sentence_id, pid, list(span)) for e in entries
                for pid, span in zip(e.phrase_ids, e.phrase_spans)]  # fmt: skip
    assert [(x["image_id"], x["sentence_id"], x["phrase_id"], x["span"]) for x in lines] == expected
    # every marked phrase, also those whose chain has no box (the world's scene phrases)
    gt = {(e.sentence_id, j): e.gt_boxes[j] for e in entries for j in range(len(e.phrase_spans))}
    with_gt = [k for k, boxes in gt.items() if len(boxes)]
    assert 0 < len(with_gt) < len(gt)
    report = json.loads((tmp_path / "metrics.json").read_text())
    train = report["splits"]["train"]
    assert report["layout"] == "flickr_jsonl" and train["phrases"] == train["kept"] == len(lines) == len(gt)
    assert train["with_ground_truth"] == len(with_gt) == train["metrics"]["all"]["num_phrases"]
    # the written boxes, scored against the union ground truth, give the reported accuracy
    correct = 0
    by_id = {e.sentence_id: e for e in entries}
    for x in lines:
        entry = by_id[x["sentence_id"]]
        boxes = gt[(x["sentence_id"], entry.phrase_spans.index(tuple(x["span"])))]
        assert 0 <= x["box"][0] < x["box"][2] <= 64 and 0 <= x["box"][1] < x["box"][3] <= 64
        assert x["phrase"] == " ".join(entry.words[x["span"][0] : x["span"][1]]) and x["types"]
        if len(boxes):
            correct += bool(box_iou(torch.tensor([x["box"]]), union_box(boxes)[None])[0, 0] >= 0.5)
    assert correct / len(with_gt) == pytest.approx(train["metrics"]["all"]["acc"], abs=1e-6)
    assert writer.files == [tmp_path / "pseudo_labels.jsonl", tmp_path / "metrics.json"]


def test_flickr_pseudo_labels_of_val_report_the_metrics_of_lightning_test(world_run, tmp_path: Path) -> None:
    writer = _predict(world_run, "val", tmp_path)
    trainer = quiet_trainer(world_run["tmp"] / "validate")
    (validated,) = trainer.validate(world_run["model"], datamodule=world_run["datamodule"](), verbose=False)
    reported = writer.report["splits"]["val"]["metrics"]["all"]
    assert {f"val/{k}" for k in reported} == set(validated)
    for name, value in reported.items():
        assert value == pytest.approx(validated[f"val/{name}"], abs=1e-6), name


def test_flickr_pseudo_labels_threshold_and_fraction(world_run, tmp_path: Path) -> None:
    everything = _lines(_predict(world_run, "train", tmp_path / "all").files[0])
    scores = sorted((x["score"] for x in everything), reverse=True)
    threshold = scores[len(scores) // 4]
    writer = _predict(world_run, "train", tmp_path / "kept", score_threshold=threshold, top_fraction=0.5)
    kept = _lines(tmp_path / "kept" / "pseudo_labels.jsonl")
    train = writer.report["splits"]["train"]
    n = len(everything)
    below = sum(s < threshold for s in scores)
    assert train["phrases"] == n and train["below_threshold"] == below
    assert train["kept"] == len(kept) == n - below - train["outside_top_fraction"]
    assert len(kept) == min(n - below, -(-n // 2))  # ceil(n / 2) highest, all above the threshold
    assert all(x["score"] >= threshold for x in kept)
    assert train["metrics"]["kept"]["num_phrases"] <= train["metrics"]["all"]["num_phrases"]
    keys = [(x["sentence_id"], x["span"][0]) for x in kept]
    assert keys == [
        (x["sentence_id"], x["span"][0]) for x in everything if (x["sentence_id"], x["span"][0]) in set(keys)
    ]


def test_pseudo_labels_refuse_new_images(world_run, tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"image": "x.png", "sentence": "a dog"}) + "\n")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    writer = PseudoLabelWriter(output_dir=tmp_path)
    trainer = quiet_trainer(tmp_path, callbacks=[writer])
    new_images = SentencesFileDataModule(inputs, image_size=32, num_workers=0)
    with pytest.raises(TypeError, match="got SentencesFileDataModule: new images .* have no split to label"):
        trainer.predict(world_run["model"], datamodule=new_images)


def test_refs_are_a_protocol_2_pickle(refer_run) -> None:
    data = (refer_run["runs"]["all"]["out"] / "refcoco" / "refs(unc).p").read_bytes()
    assert data[:2] == b"\x80\x02" and isinstance(pickle.loads(data), list)


def test_a_jsonl_write_that_fails_part_way_keeps_the_previous_labels(tmp_path: Path) -> None:
    """A JSON Lines file cut at a line boundary still parses: the labels must be written whole or not at all."""

    def label(k: int, box) -> PseudoLabel:
        return PseudoLabel("train", "1", "1#0", ["a", "dog"], (0, 2), str(k), ["animals"], box, 0.5, (10, 10))

    path = tmp_path / "pseudo_labels.jsonl"
    write_phrase_jsonl(path, [label(0, [0.0, 0.0, 5.0, 5.0])])
    before = path.read_text()
    # the third label's box cannot be written: the first two were already in the file object
    bad = [label(1, [1.0, 1.0, 4.0, 4.0]), label(2, [2.0, 2.0, 3.0, 3.0]), label(3, ["not a number"])]
    with pytest.raises(ValueError, match="could not convert string to float: 'not a number'"):
        write_phrase_jsonl(path, bad)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["pseudo_labels.jsonl"]
