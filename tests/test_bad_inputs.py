"""Bad input stops before training with an error that names the file (or the option) and the problem.

The rest of the catalogue lives beside its format: malformed Flickr30K Entities markup and XML
(``tests/data/test_flickr30k_entities.py``), RefCOCO refs and ``instances.json``
(``tests/data/test_refcoco.py``), TSV rows and JSON Lines records (``tests/detection/test_formats.py``),
class probabilities that are no probabilities (``test_formats.py``, ``tests/detection/test_cache.py``,
``tests/detection/test_native.py``), the detection cache's damaged files (``tests/detection/test_cache_kill.py``),
region features (``tests/detection/test_features.py``, ``tests/detection/test_box_features.py``), model folders
(``tests/test_model_folder.py``) and pseudo-label runs (``tests/test_pseudo_labels.py``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from helpers.cli import FLICKR_YAML, TINY_MODEL_YAML, data_args, tiny_model_args, trainer_args
from helpers.flickr import TinyFlickr, make_tiny_flickr
from helpers.model import tiny_model
from helpers.trainer import quiet_trainer
from PIL import Image
from pytorch_lightning import Callback

from lightning_wsg.cli import main
from lightning_wsg.data import Flickr30kEntitiesDataModule, SentencesFileDataModule
from lightning_wsg.data.base import check_images
from lightning_wsg.data.predict_file import PredictFormatError
from lightning_wsg.detection.formats import DetectionFormatError
from lightning_wsg.grounding_module import GroundingModule


@pytest.fixture
def tiny(tmp_path: Path) -> TinyFlickr:
    """A tiny Flickr30K Entities dataset of this test's own (the tests damage it)."""
    return make_tiny_flickr(tmp_path / "tiny", n_images=12, seed=1)


def _dm(tiny: TinyFlickr, **kwargs) -> Flickr30kEntitiesDataModule:
    kwargs = {"batch_size": 4, "num_workers": 0, "image_size": 32, **kwargs}
    return Flickr30kEntitiesDataModule(tiny.root, tiny.image_dir, kwargs.pop("detections", tiny.detections), **kwargs)


# --------------------------------------------------------------- Flickr30K Entities files
@pytest.mark.parametrize(
    "stage, split, folder, suffix", [("fit", "train", "Sentences", ".txt"), ("test", "test", "Annotations", ".xml")]
)
def test_a_split_listing_an_image_without_its_files_names_them(tiny, stage, split, folder, suffix):
    image_id = tiny.splits[split][1]
    (tiny.root / folder / f"{image_id}{suffix}").unlink()
    split_file = re.escape(str(tiny.root / f"{split}.txt"))
    missing = re.escape(str(tiny.root / folder / f"{image_id}{suffix}"))
    with pytest.raises(FileNotFoundError, match=rf"split {split} \({split_file}\) lists images whose files are "
                       rf"missing: 1 files, e.g. {missing}; restore them or remove"):  # fmt: skip
        _dm(tiny).setup(stage)


def test_training_needs_no_annotation_file(tiny):
    """Training entries never read a box: a missing XML of a training image is not an error."""
    (tiny.root / "Annotations" / f"{tiny.splits['train'][0]}.xml").unlink()
    dm = _dm(tiny)
    assert len(dm.load_split("train")) > 0


# ------------------------------------------------------------------------------ images
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_jpeg_is_an_error_naming_it(tiny):
    dm = _dm(tiny)
    dm.setup("test")
    dataset = dm.datasets["test"]
    path = tiny.image_dir / f"{dataset.entries[0].image_id}.jpg"
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"
    _truncate(path)
    with pytest.raises(OSError, match=rf"cannot read image {re.escape(str(path))}: image file is truncated"):
        dataset[0]


def test_verify_images_finds_unreadable_images_before_the_first_epoch(tiny, capsys):
    truncated = tiny.image_dir / f"{tiny.splits['test'][0]}.jpg"
    resized = tiny.image_dir / f"{tiny.splits['test'][1]}.jpg"
    _truncate(truncated)
    Image.new("RGB", (7, 9)).save(resized)
    unchecked = _dm(tiny)
    unchecked.setup("test")  # without the check, set-up does not notice: a worker would, mid-epoch
    assert len(unchecked.datasets["test"]) > 0
    with pytest.raises(OSError, match=r"split test: 2 of \d+ images cannot be used \(data\.verify_images\)") as err:
        _dm(tiny, verify_images=True).setup("test")
    message = str(err.value)
    n = len(tiny.splits["test"])
    assert message.startswith(f"split test: 2 of {n} images cannot be used (data.verify_images):")
    assert f"{truncated}: OSError: image file is truncated" in message
    width, height = tiny.sizes[tiny.splits["test"][1]]
    assert f"{resized}: 7x9, the annotations say {width}x{height}" in message
    assert "verifying images (test)" in capsys.readouterr().out  # the progress bar


def test_verify_images_passes_intact_images_and_says_so(tiny, caplog):
    dm = _dm(tiny, verify_images=True)
    with caplog.at_level(logging.INFO, logger="lightning_wsg"):
        dm.setup("fit")
    messages = [r.getMessage() for r in caplog.records]
    assert f"split train: all {len(tiny.splits['train'])} images decode (data.verify_images)" in messages
    assert f"split val: all {len(tiny.splits['val'])} images decode (data.verify_images)" in messages


def test_check_images_reads_garbage_as_an_error(tiny):
    dm = _dm(tiny)
    dm.setup("test")
    path = tiny.image_dir / f"{dm.datasets['test'].entries[0].image_id}.jpg"
    path.write_bytes(b"not a picture")
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: UnidentifiedImageError: cannot identify image file"):
        check_images(dm.datasets["test"], "test", progress=False)


# ------------------------------------------------------------------------- sentences file
def _predict_dm(tiny: TinyFlickr, lines: list[str], tmp_path: Path) -> SentencesFileDataModule:
    path = tmp_path / "inputs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return SentencesFileDataModule(path, batch_size=4, num_workers=0, image_size=32)


def test_an_empty_sentences_file_is_refused(tiny, tmp_path):
    with pytest.raises(
        PredictFormatError, match=rf"{re.escape(str(tmp_path / 'inputs.jsonl'))}: no sentence to ground"
    ):
        _predict_dm(tiny, ["", "  "], tmp_path).setup("predict")


def test_duplicate_sentence_ids_in_a_sentences_file_are_refused(tiny, tmp_path):
    image = str(tiny.image_dir / f"{tiny.splits['test'][0]}.jpg")
    lines = [json.dumps({"image": image, "sentence": "a [dog]", "id": "s1"}) for _ in range(2)]
    with pytest.raises(PredictFormatError, match=r"inputs.jsonl:2: duplicate sentence id 's1'"):
        _predict_dm(tiny, lines, tmp_path).setup("predict")


def test_a_sentences_file_naming_missing_images_is_refused(tiny, tmp_path):
    lines = [
        json.dumps({"image": "nowhere/a.jpg", "sentence": "a [dog]"}),
        json.dumps({"image": "b.jpg", "sentence": "x"}),
    ]
    file = re.escape(str(tmp_path / "inputs.jsonl"))
    with pytest.raises(
        FileNotFoundError, match=rf"{file} \(data.sentences_file\): 2 images to ground not found: .*b\.jpg"
    ):
        _predict_dm(tiny, lines, tmp_path).setup("predict")


# ------------------------------------------------------------------- impossible settings
def _cli_args(tiny: TinyFlickr, tmp_path: Path, detections: Path | None = None) -> list[str]:
    return [
        "--config", FLICKR_YAML,
        "--config", TINY_MODEL_YAML,
        *data_args(tiny.root, tiny.image_dir, detections or tiny.detections),
        *tiny_model_args(),
        *trainer_args(tmp_path),
        "--data.image_size=32",
        "--data.batch_size=4",
        "--trainer.max_epochs=1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "option, value", [("batch_size", 0), ("image_size", 0), ("max_proposals", -1), ("max_phrases", 0)]
)
def test_impossible_data_settings_are_refused_when_the_cli_configures_the_run(tiny, tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"data\.{option} must be >= 1, got {value}\b"):
        main([*_cli_args(tiny, tmp_path), f"--data.{option}={value}"], run=False)


def test_an_unknown_lr_schedule_is_refused_by_the_cli_and_the_module(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit, match="^2$"):  # the CLI's type check, before anything is built
        main([*_cli_args(tiny, tmp_path), "--model.lr_schedule=step"], run=False)
    assert "lr_schedule" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^model\.lr_schedule must be 'constant' or 'cosine', got 'step'$"):
        GroundingModule(None, None, lr_schedule="step")  # refused before the towers are looked at


class _Started(Callback):
    def __init__(self) -> None:
        self.train_started = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_started = True


def _without_labels(tiny: TinyFlickr, path: Path) -> Path:
    records = [json.loads(line) for line in tiny.detections.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "labels"}) + "\n" for r in records))
    return path


def test_distillation_from_detections_without_labels_is_refused_before_training(tiny, tmp_path):
    unlabelled = _without_labels(tiny, tmp_path / "unlabelled.jsonl")
    started = _Started()
    trainer = quiet_trainer(tmp_path / "run", callbacks=[started], limit_train_batches=1, limit_val_batches=1)
    with pytest.raises(ValueError, match=rf"model\.loss\.use_kd=true distils .* but {re.escape(str(unlabelled))} has no labels for "
                       r"\d+ training images .*or set model\.loss\.use_kd=false"):  # fmt: skip
        trainer.fit(tiny_model(use_kd=True), datamodule=_dm(tiny, detections=unlabelled, require_labels=True))
    assert not started.train_started and trainer.global_step == 0
    # not told (Python, no CLI): the first training batch stops it, naming the setting
    trainer = quiet_trainer(tmp_path / "run1", limit_train_batches=1, limit_val_batches=1)
    with pytest.raises(ValueError, match=r"distillation needs detector labels .* set model\.loss\.use_kd=false"):
        trainer.fit(tiny_model(use_kd=True), datamodule=_dm(tiny, detections=unlabelled))
    # the same detections train without distillation, and evaluation never needs labels
    trainer = quiet_trainer(tmp_path / "run2", limit_train_batches=1, limit_val_batches=1)
    trainer.fit(tiny_model(use_kd=False), datamodule=_dm(tiny, detections=unlabelled))
    assert trainer.global_step == 1


def test_the_cli_refuses_distillation_without_labels(tiny, tmp_path):
    unlabelled = _without_labels(tiny, tmp_path / "unlabelled.jsonl")
    with pytest.raises(ValueError, match=r"model\.loss\.use_kd=true distils .*no labels"):
        main(["fit", *_cli_args(tiny, tmp_path, unlabelled), "--model.loss.use_kd=true"])


# ------------------------------------------------------------- detector class probabilities
def _with_class_probs(tiny: TinyFlickr, path: Path) -> tuple[Path, list[str]]:
    """The tiny detections with a class-probability row per box (0.8 on its label) and their header."""
    records = [json.loads(line) for line in tiny.detections.read_text().splitlines() if line.strip()]
    names = sorted({label for r in records for label in r["labels"]})
    for r in records:
        r["class_probs"] = [[0.8 if name == label else 0.1 / len(names) for name in names] for label in r["labels"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"class_names": names}, *records]))
    return path, names


def test_a_vocabulary_of_another_width_than_the_class_probs_is_refused_at_setup(tiny, tmp_path):
    detections, names = _with_class_probs(tiny, tmp_path / "probs.jsonl")
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("\n".join([*names, "unicorn"]) + "\n")
    with pytest.raises(
        DetectionFormatError,
        match=rf"^{re.escape(str(detections))}: class_probs over {len(names)} classes, but data\.vocabulary "
        rf"{re.escape(str(vocabulary))} names {len(names) + 1}",
    ):
        _dm(tiny, detections=detections, vocabulary=vocabulary).setup("test")
    # the vocabulary they were made with: the batches carry the probabilities
    vocabulary.write_text("\n".join(names) + "\n")
    dm = _dm(tiny, detections=detections, vocabulary=vocabulary)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.class_probs.shape[-1] == len(names) and dm.store.class_names == names
    real = batch.class_probs[batch.proposal_mask]
    assert real.max(dim=-1).values.tolist() == pytest.approx([0.8] * len(real))
