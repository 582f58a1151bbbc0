"""Grounding new images: input parsing, box grid, writer, pictures, ground(), CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers.cli import DEMO_YAML, REPO
from helpers.model import TINY_TEXT, tiny_model
from helpers.trainer import quiet_trainer
from PIL import Image

from lightning_wsg.callbacks import GroundingPictures, draw_grounding
from lightning_wsg.cli import main
from lightning_wsg.data import SentencesFileDataModule, SyntheticWorldDataModule
from lightning_wsg.data.predict import PredictDataset
from lightning_wsg.data.predict_file import PredictFormatError, parse_sentence, read_predict_file
from lightning_wsg.detection.formats import Detections, open_detections, write_jsonl
from lightning_wsg.detection.grid import box_grid
from lightning_wsg.grounding_module import GroundingModule

#: the towers of the tiny model: ResNet-18 without weights, a one-layer random MiniLM
TINY_REGION = {"backbone": "resnet18", "pretrained": False, "hidden_dim": 32, "embed_dim": 16}
TINY_PHRASE = {"pretrained": False, "config_overrides": TINY_TEXT, "hidden_dim": 32, "embed_dim": 16}
PREDICT_YAML = str(REPO / "cli_configs" / "predict.yaml")


# ------------------------------------------------------------------------- parsing
def test_brackets_mark_phrases() -> None:
    words, spans = parse_sentence("a [red car] next to [the tree] .")
    assert words == ["a", "red", "car", "next", "to", "the", "tree", "."]
    assert spans == [(1, 3), (5, 7)]
    assert parse_sentence("[a  dog]") == (["a", "dog"], [(0, 2)])
    assert parse_sentence("x[dog]y") == (["x", "dog", "y"], [(1, 2)])


def test_no_phrase_is_one_expression() -> None:
    assert parse_sentence("the man on the left") == (["the", "man", "on", "the", "left"], [(0, 5)])


def test_listed_phrases_strings_and_spans() -> None:
    _words, spans = parse_sentence("the dog and the cat", ["the cat", "the dog", [1, 2]])
    assert spans == [(3, 5), (0, 2), (1, 2)]
    # repeated phrase strings take successive occurrences
    assert parse_sentence("a dog and a dog", ["a dog", "a dog"])[1] == [(0, 2), (3, 5)]
    assert parse_sentence("The Dog runs", ["the dog"])[1] == [(0, 2)]


@pytest.mark.parametrize(
    "sentence, phrases, problem",
    [("a [red car", None, "unbalanced brackets"), ("a [] car", None, r"empty phrase \[\]"),
     ("a [[red] car]", None, "nested or unbalanced brackets"), ("a car", ["bus"], "phrase 'bus' not found in 'a car'"),
     ("a car", [[1, 5]], r"span \[1, 5\] out of range for 2 words"),
     ("a [car]", ["car"], "both marked with brackets and listed"), ("   ", None, "empty sentence")],
)  # fmt: skip
def test_bad_sentences_raise(sentence, phrases, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_sentence(sentence, phrases)


def test_read_predict_file(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    lines = [
        {"image": "a.png", "sentence": "a [red car]"},
        {"image": "sub/a.png", "image_id": "a2", "sentence": "the tree", "id": "s1"},
        {"image": str(tmp_path / "b.png"), "sentence": "x y", "phrases": ["y"]},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    records = read_predict_file(f)
    assert [r.image_id for r in records] == ["a", "a2", "b"]
    assert records[0].image == tmp_path / "a.png" and records[1].image == tmp_path / "sub" / "a.png"
    assert [r.sentence_id for r in records] == ["a#0", "s1", "b#2"]
    assert records[2].phrase_spans == [(1, 2)]
    f.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"image": "sub/a.png", "sentence": "x"}) + "\n")
    with pytest.raises(PredictFormatError, match="image_id"):
        read_predict_file(f)
    f.write_text('{"image": "a.png"}\n')
    with pytest.raises(PredictFormatError, match=":1"):
        read_predict_file(f)


# ------------------------------------------------------------------------ box grid
def test_box_grid_covers_the_image_at_several_scales() -> None:
    boxes = box_grid(200, 100, scales=(1.0, 0.5, 0.25), aspect_ratios=(1.0, 2.0), stride=0.5)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert boxes[0].tolist() == [0.0, 0.0, 200.0, 100.0]  # whole image first
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 200 + 1e-3).all() and (boxes[:, 3] <= 100 + 1e-3).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)
    widths = set((boxes[:, 2] - boxes[:, 0]).round().tolist())
    assert {200.0, 100.0, 50.0} <= widths
    # the smallest boxes tile the image: both corners reached, step half a box
    small = boxes[(boxes[:, 2] - boxes[:, 0] - 50).abs() < 1e-3]
    small = small[(small[:, 3] - small[:, 1] - 25).abs() < 1e-3]
    assert small[:, 0].min() == 0 and small[:, 2].max() == pytest.approx(200)
    assert small[:, 3].max() == pytest.approx(100) and len(small) == 7 * 7
    assert torch.equal(boxes, box_grid(200, 100, scales=(1.0, 0.5, 0.25), aspect_ratios=(1.0, 2.0), stride=0.5))
    with pytest.raises(ValueError, match="image size must be positive, got 0x10"):
        box_grid(0, 10)
    with pytest.raises(ValueError, match=r"stride must be in \(0, 1\], got 0"):
        box_grid(10, 10, stride=0)


# ------------------------------------------------------------------- fixtures
def _image(path: Path, size: tuple[int, int] = (80, 64), seed: int = 0) -> Path:
    """A ``size`` (width, height) picture: a red and a blue square. Wider than high: a width / height swap shows."""
    rng = np.random.default_rng(seed)
    a = np.full((size[1], size[0], 3), 235, np.uint8)
    a[8:30, 10:40] = (220, 30, 30)
    a[36:60, 30:58] = (30, 60, 220)
    a += rng.integers(0, 10, a.shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny synthetic world, a tiny model fitted 2 steps (one epoch) (validation pictures on), its checkpoint."""
    tmp = tmp_path_factory.mktemp("predict")
    dm = SyntheticWorldDataModule(
        root=str(tmp / "world"), num_train=8, num_val=4, num_test=2, world_image_size=64, image_size=64,
        batch_size=4, num_workers=0, max_proposals=10,
    )  # fmt: skip
    model = tiny_model(region=TINY_REGION, phrase=TINY_PHRASE)
    pictures = GroundingPictures(num_images=3, picture_size=128)
    trainer = quiet_trainer(tmp / "run", limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False)
    trainer.callbacks.append(pictures)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    images = [_image(tmp / "new" / f"img{k}.png", seed=k) for k in range(2)]
    inputs = tmp / "new" / "inputs.jsonl"
    inputs.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"image": "img0.png", "sentence": "a [red square] above [a blue square]"},
                {"image": "img1.png", "sentence": "the blue square"},
                {"image": "img1.png", "sentence": "a red square and a blue one", "phrases": ["a red square", [4, 7]]},
            ]
        )
        + "\n"
    )
    return {"tmp": tmp, "ckpt": ckpt, "images": images, "inputs": inputs, "pictures": pictures, "world": tmp / "world"}


def _assert_picture(path: Path, min_colours: int = 4) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        img.load()
        a = np.asarray(img.convert("RGB"))
    assert a.shape[0] > 32 and a.shape[1] > 32
    assert a.std() > 5, "blank picture"
    assert len(np.unique(a.reshape(-1, 3), axis=0)) >= min_colours
    return img


# ------------------------------------------------------------------- dataset
def test_predict_dataset_grid_and_detections(trained, tmp_path: Path) -> None:
    records = read_predict_file(trained["inputs"])
    grid = PredictDataset(records, image_size=32, grid={"scales": (1.0, 0.5), "aspect_ratios": (1.0,)})
    sample = grid[0]
    assert sample.split == "predict" and sample.gt_boxes is None and sample.image.shape == (3, 32, 32)
    assert sample.image_size == (80, 64) and sample.phrase_spans == [(1, 3), (4, 7)]
    assert torch.equal(sample.proposals, box_grid(80, 64, scales=(1.0, 0.5), aspect_ratios=(1.0,)))
    # resized to 32 x 32: x by 32 / 80, y by 32 / 64
    torch.testing.assert_close(sample.roi_boxes, sample.proposals * torch.tensor([0.4, 0.5, 0.4, 0.5]))
    dets = tmp_path / "dets.jsonl"
    write_jsonl(dets, [Detections("img0", torch.tensor([[1.0, 2.0, 30.0, 40.0]]), ["square"], torch.tensor([0.9]))])
    with_dets = PredictDataset(records, image_size=32, detections=open_detections(dets))
    assert with_dets.grid_ids == ["img1"]
    assert with_dets[0].proposals.tolist() == [[1.0, 2.0, 30.0, 40.0]]
    assert torch.equal(with_dets[1].proposals, box_grid(80, 64))  # no detections: the default grid


# ------------------------------------------------------------------- pictures
def test_draw_grounding_is_not_blank(trained) -> None:
    with Image.open(trained["images"][0]) as img:
        picture = draw_grounding(
            img,
            [
                {"phrase": "red square", "box": [10, 8, 40, 30], "score": 0.7},
                {"phrase": "blue", "box": [30, 36, 58, 60]},
            ],
            ground_truth=[[[9, 8, 41, 31]], None],
            title="a red square and blue",
            size=256,
        )
    assert picture.width == 256 and picture.height > 205  # the 80 x 64 image drawn 256 x 205, the legend below
    a = np.asarray(picture)
    assert (np.abs(a[:205].astype(int) - (230, 25, 75)).sum(-1) < 30).any()  # first phrase colour drawn
    assert (a[205:] < 100).any()  # legend text


def test_validation_pictures_written(trained) -> None:
    path = trained["pictures"].last_path
    assert path is not None and path.parent.name == "pictures"
    _assert_picture(path)


def test_validation_pictures_to_tensorboard(trained, tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    model = GroundingModule.load_from_checkpoint(trained["ckpt"], map_location="cpu")
    dm = SyntheticWorldDataModule(
        root=str(trained["world"]), num_train=8, num_val=4, num_test=2, world_image_size=64, image_size=64,
        batch_size=2, num_workers=0, max_proposals=10,
    )  # fmt: skip
    callback = GroundingPictures(num_images=2, picture_size=96)
    trainer = pl.Trainer(
        logger=TensorBoardLogger(tmp_path), callbacks=[callback], limit_val_batches=1, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.validate(model, datamodule=dm, verbose=False)
    assert callback.last_path is None  # logged to TensorBoard, not written as a file
    (events,) = tmp_path.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={IMAGES: 0})
    accumulator.Reload()
    assert accumulator.Tags()[IMAGES] == ["val_grounding"]
    (image,) = accumulator.Images("val_grounding")  # one validation epoch, one grid
    # two 96-px pictures side by side with 4-px padding; their legends below
    assert image.width == 2 * (96 + 4) + 4 and image.height > 96 + 2 * 4
    with Image.open(io.BytesIO(image.encoded_image_string)) as picture:
        assert picture.size == (image.width, image.height)
        assert np.asarray(picture.convert("RGB")).std() > 5  # not blank


# ------------------------------------------------------------------- ground()
def test_ground_api_from_checkpoint(trained) -> None:
    model = GroundingModule.load_from_checkpoint(trained["ckpt"], map_location="cpu")
    assert model.model.image_size == 64  # from the checkpoint's datamodule
    out = model.ground(trained["images"][0], "a [red square] above [a blue square]", top_k=3)
    assert [p["phrase"] for p in out] == ["red square", "a blue square"]
    grid = box_grid(80, 64).tolist()
    for p in out:
        assert p["box"] in [[round(v, 2) for v in b] for b in grid]
        assert len(p["alternatives"]) == 3
        scores = [p["score"]] + [a["score"] for a in p["alternatives"]]
        assert scores == sorted(scores, reverse=True)
    # a plain expression, a PIL image, a tensor, explicit proposals
    with Image.open(trained["images"][1]) as img:
        plain = model.ground(img.copy(), "the blue square", proposals=[[0, 0, 64, 64], [30, 36, 58, 60]], top_k=5)
    assert len(plain) == 1 and plain[0]["phrase"] == "the blue square" and len(plain[0]["alternatives"]) == 1
    # a wide tensor: the default proposals are the grid of its own 80 x 48 pixels
    t = torch.rand(3, 48, 80)
    res = model.ground(t, "[a] and [b]", top_k=3)
    wide = [[round(v, 2) for v in b] for b in box_grid(80, 48).tolist()]
    assert wide != [[round(v, 2) for v in b] for b in box_grid(48, 80).tolist()]
    assert len(res) == 2 and all(b in wide for p in res for b in [p["box"]] + [a["box"] for a in p["alternatives"]])


# ------------------------------------------------------------------- CLI predict
def test_cli_predict_writes_jsonl_and_pictures(trained, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    main(
        [
            "predict",
            "--config", DEMO_YAML,
            "--config", PREDICT_YAML,
            "--ckpt_path", str(trained["ckpt"]),
            "--data.sentences_file", str(trained["inputs"]),
            "--data.init_args.image_size=64",
            "--data.init_args.num_workers=0", "--data.init_args.batch_size=2",
            "--data.init_args.grid_scales=[1.0, 0.5, 0.25]",
            f"--trainer.callbacks.output_dir={out}",
            "--trainer.callbacks.top_k=2",
            "--trainer.callbacks.picture_size=160",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.phrase_encoder.pretrained=false",
            f"--model.phrase_encoder.config_overrides={json.dumps(TINY_TEXT)}",
            "--model.phrase_encoder.hidden_dim=32", "--model.phrase_encoder.embed_dim=16",
            "--model.region_encoder.hidden_dim=32", "--model.region_encoder.embed_dim=16",
            "--model.region_encoder.out_index=-1", "--model.region_encoder.roi_size=7",
        ]
    )  # fmt: skip
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["sentence_id"] for x in lines] == ["img0#0", "img1#1", "img1#2"]
    first = lines[0]
    assert first["image"].endswith("img0.png") and first["image_size"] == [80, 64]
    assert first["sentence"] == "a red square above a blue square"
    assert [p["phrase"] for p in first["phrases"]] == ["red square", "a blue square"]
    for line in lines:
        for p in line["phrases"]:
            assert set(p) >= {"phrase", "span", "box", "score", "alternatives"}
            assert len(p["box"]) == 4 and 0 <= p["box"][0] < p["box"][2] <= 80 and 0 <= p["box"][1] < p["box"][3] <= 64
            assert len(p["alternatives"]) == 2 and all(a["score"] <= p["score"] for a in p["alternatives"])
        _assert_picture(out / line["picture"])
    assert lines[2]["phrases"][1]["phrase"] == "a blue one"


def test_the_documented_predict_command_parses(trained, tmp_path: Path) -> None:
    """``lightning predict --config cli_configs/demo.yaml --config cli_configs/predict.yaml --ckpt_path ...
    --data.sentences_file inputs.jsonl`` (README, docs/usage.md): the new-images datamodule, with the
    training config's input size."""
    cli = main(
        ["--config", DEMO_YAML, "--config", PREDICT_YAML, "--data.sentences_file", str(trained["inputs"]),
         f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )  # fmt: skip
    dm = cli.datamodule
    assert isinstance(dm, SentencesFileDataModule) and dm.sentences_file == trained["inputs"]
    assert (dm.image_size, dm.max_proposals, dm.num_workers, dm.proposals) == (128, 30, 1, "grid")  # demo.yaml's
    assert dm.grid == {"scales": (1.0, 0.7, 0.5, 0.35, 0.25), "aspect_ratios": (0.5, 1.0, 2.0), "stride": 0.5}
    assert not dm.read_features and dm.image_dir == trained["inputs"].parent
    dm.setup("predict")
    assert [r.image_id for r in dm.records()] == ["img0", "img1", "img1"] and len(dm.dataset) == 3
    with pytest.raises(ValueError, match="grounds new images for lightning predict; it has nothing to fit"):
        dm.setup("fit")


def test_the_sentences_datamodule_under_a_detection_cache_waits_for_its_boxes(trained, tmp_path: Path) -> None:
    """The DetectionCache protocol: splits_for, image_paths, then use_detections builds the dataset."""
    dm = SentencesFileDataModule(trained["inputs"], "detections", image_size=32, num_workers=0, batch_size=2)
    dm.setup("predict")
    assert dm.dataset is None and dm.splits_for("predict") == ["predict"]
    with pytest.raises(RuntimeError, match="no detections: data.detections is null"):
        dm.predict_dataloader()
    paths = dm.image_paths("predict")
    assert sorted(paths) == ["img0", "img1"] and paths["img0"] == trained["images"][0]
    dets = tmp_path / "dets.jsonl"
    write_jsonl(dets, [Detections("img0", torch.tensor([[1.0, 2.0, 30.0, 40.0]]), ["square"], torch.tensor([0.9]))])
    dm.use_detections(open_detections(dets), ["predict"])
    batch = next(iter(dm.predict_dataloader()))
    assert batch.split == "predict" and batch.proposals[0, 0].tolist() == [1.0, 2.0, 30.0, 40.0]
    assert dm.dataset.grid_ids == ["img1"]  # not detected: the box grid
