"""The shared dataset and datamodule, over a toy dataset with two validation splits."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_wsg.data import GroundingBatch, GroundingDataModule, GroundingDataset, GroundingEntry
from lightning_wsg.data import base as base_module
from lightning_wsg.data.base import IMAGENET_MEAN, IMAGENET_STD
from lightning_wsg.detection import DetectionFormatError, Detections, DetectionStore, write_jsonl

SIZES = {"a": (40, 30), "b": (24, 48), "c": (30, 30), "d": (50, 20), "e": (16, 16)}
COLOUR = (255, 0, 0)


def _entry(image_id: str, index: int = 0) -> GroundingEntry:
    return GroundingEntry(
        image_id=image_id,
        sentence_id=f"{image_id}#{index}",
        words=["a", "red", "square", "on", "grey"],
        phrase_spans=[(0, 3), (4, 5)],
        phrase_ids=["1", "2"],
        phrase_types=[["other"], ["scene"]],
        gt_boxes=[torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 6.0, 6.0]])],
        image_size=SIZES[image_id],
    )


def _dets(image_id: str, n: int = 4) -> Detections:
    w, h = SIZES[image_id]
    boxes = torch.tensor([[0.0, 0.0, w, h], [1.0, 2.0, 5.0, 6.0], [2.0, 2.0, 8.0, 9.0], [0.0, 1.0, 3.0, 3.0]])[:n]
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])[:n]
    probs = torch.eye(4)[:n]
    return Detections(image_id, boxes, [f"l{i}" for i in range(n)], scores, probs)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id, size in SIZES.items():
        Image.new("RGB", size, COLOUR).save(folder / f"{image_id}.png")
    return folder


def _store(records: list[Detections]) -> DetectionStore:
    return DetectionStore("memory.jsonl", {d.image_id: d for d in records})


def _dataset(images: Path, entries=None, records=None, **kwargs) -> GroundingDataset:
    entries = entries if entries is not None else [_entry(i) for i in SIZES]
    records = records if records is not None else [_dets(i) for i in SIZES]
    kwargs.setdefault("image_size", 32)
    return GroundingDataset(entries, lambda i: images / f"{i}.png", _store(records), "val", **kwargs)


def test_sample_fields(images):
    sample = _dataset(images)[0]
    assert sample.split == "val" and sample.image_id == "a" and sample.sentence_id == "a#0"
    assert sample.image.shape == (3, 32, 32) and sample.image.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip(COLOUR, IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(sample.image.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3, rtol=0)
    assert sample.image_size == (40, 30)
    torch.testing.assert_close(sample.roi_boxes, sample.proposals * torch.tensor([32 / 40, 32 / 30] * 2))
    assert sample.roi_boxes[0].tolist() == pytest.approx([0.0, 0.0, 32.0, 32.0])
    assert sample.phrase_spans == [(0, 3), (4, 5)] and sample.phrase_ids == ["1", "2"]
    assert sample.phrase_types == [["other"], ["scene"]] and len(sample.gt_boxes) == 2


def test_max_proposals_keeps_the_top_scored_in_file_order(images):
    sample = _dataset(images, max_proposals=2)[0]
    # scores 0.1, 0.9, 0.5, 0.7 -> keep proposals 1 and 3
    assert sample.proposal_scores.tolist() == pytest.approx([0.9, 0.7])
    assert sample.proposal_labels == ["l1", "l3"]
    assert sample.proposals.tolist() == [[1.0, 2.0, 5.0, 6.0], [0.0, 1.0, 3.0, 3.0]]
    assert sample.class_probs.argmax(1).tolist() == [1, 3]
    assert len(_dataset(images, max_proposals=10)[0].proposals) == 4


def test_training_samples_carry_no_ground_truth(images):
    sample = _dataset(images, train=True)[0]
    assert sample.gt_boxes is None and sample.phrase_types is None
    assert sample.phrase_spans == [(0, 3), (4, 5)]


def test_pairs_without_proposals_are_skipped_and_counted(images, caplog):
    records = [_dets("a"), _dets("b", n=0), _dets("d"), _dets("e")]  # "c" absent, "b" empty
    entries = [_entry("a"), _entry("b"), _entry("b", 1), _entry("c"), _entry("d"), _entry("e")]
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        dataset = _dataset(images, entries=entries, records=records)
    assert len(dataset) == 3 and dataset.num_skipped == 3
    assert dataset.skipped_ids == ["b#0", "b#1", "c#0"]
    warnings = [r for r in caplog.records if r.name == "lightning_wsg" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 of 6" in warnings[0].getMessage() and "b#0" in warnings[0].getMessage()
    assert [dataset[i].image_id for i in range(3)] == ["a", "d", "e"]


def test_missing_unreadable_or_resized_images_raise_naming_the_path(images):
    dataset = _dataset(images)
    (images / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=str(images / "a.png")):
        dataset[0]
    (images / "b.png").write_bytes(b"not an image")
    with pytest.raises(OSError, match=str(images / "b.png")):
        dataset[1]
    Image.new("RGB", (31, 30)).save(images / "c.png")
    with pytest.raises(ValueError, match=r"c.png is 31x30, the annotations say \(30, 30\)"):
        dataset[2]


def test_collated_batch(images):
    dataset = _dataset(images)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=base_module.collate)))
    assert isinstance(batch, GroundingBatch) and batch.split == "val"
    assert batch.images.shape == (3, 3, 32, 32) and batch.proposals.shape == (3, 4, 4)
    assert batch.gt_union.shape == (3, 2, 4) and batch.gt_boxes.shape == (3, 2, 2, 4)
    assert batch.gt_union[0, 1].tolist() == [0.0, 0.0, 6.0, 6.0]


# --- the datamodule ----------------------------------------------------------------------


class ToyDataModule(GroundingDataModule):
    """Entries given in memory; two validation splits as RefCOCO will have."""

    val_splits = ["valA", "valB"]
    SPLITS = {"train": ["a", "b", "c", "d", "e"], "valA": ["a", "b"], "valB": ["c"], "test": ["d", "e"]}

    def load_split(self, split: str) -> list[GroundingEntry]:
        return [_entry(i, k) for i in self.SPLITS[split] for k in range(2)]

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.png"

    def known_image_ids(self) -> set[str]:
        return set(SIZES)


@pytest.fixture
def toy(tmp_path: Path, images: Path):
    (tmp_path / "root").mkdir()
    write_jsonl(tmp_path / "dets.jsonl", [_dets(i) for i in SIZES], class_names=list("wxyz"))

    def make(**kwargs) -> ToyDataModule:
        kwargs = {"batch_size": 4, "num_workers": 0, "image_size": 32, "detections": tmp_path / "dets.jsonl", **kwargs}
        return ToyDataModule(tmp_path / "root", images, **kwargs)

    return make


def test_datamodule_loaders_per_split(toy, monkeypatch):
    opened = []
    real_open = base_module.open_detections
    monkeypatch.setattr(base_module, "open_detections", lambda *a: opened.append(a) or real_open(*a))
    dm = toy()
    dm.setup("fit")
    assert sorted(dm.datasets) == ["train", "valA", "valB"]
    train = dm.datasets["train"]
    dm.setup("validate")
    dm.setup("test")
    assert dm.datasets["train"] is train and len(opened) == 1  # each split built once, detections opened once
    assert dm.datasets["train"].train and not dm.datasets["valA"].train

    loader = dm.train_dataloader()
    assert loader.drop_last and len(loader) == 2  # 10 pairs, batch 4
    batch = next(iter(loader))
    assert batch.split == "train" and not batch.has_ground_truth and len(batch) == 4

    vals = dm.val_dataloader()
    assert isinstance(vals, list) and len(vals) == 2
    assert [next(iter(v)).split for v in vals] == ["valA", "valB"]
    test = dm.test_dataloader()
    assert isinstance(test, DataLoader) and not test.drop_last
    batch = next(iter(test))
    assert batch.split == "test" and batch.has_ground_truth and batch.images.shape == (4, 3, 32, 32)


def test_small_training_split_keeps_its_last_batch(toy):
    dm = toy(batch_size=16)
    dm.setup("fit")
    assert not dm.train_dataloader().drop_last and len(dm.train_dataloader()) == 1


def test_hyperparameters_are_saved(toy):
    dm = toy(max_proposals=7)
    assert dm.hparams["max_proposals"] == 7 and dm.hparams["batch_size"] == 4


def test_detections_for_an_unknown_image_are_an_error(toy, tmp_path):
    records = [Detections(i, torch.zeros(1, 4), None, torch.ones(1)) for i in ("a", "zzz")]
    write_jsonl(tmp_path / "dets.jsonl", records)
    with pytest.raises(DetectionFormatError, match=rf"{tmp_path / 'dets.jsonl'}: 1 detection records .* image zzz"):
        toy().setup("test")


def test_missing_paths_are_clear_errors(toy, tmp_path, images):
    dm = toy()
    dm.root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="dataset root not found: .*nowhere"):
        dm.setup("test")
    dm = toy()
    dm.image_dir = tmp_path / "no_images"
    with pytest.raises(FileNotFoundError, match="image folder not found: .*no_images"):
        dm.setup("test")
    (images / "e.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"split test: 1 images not found: .*e\.png"):
        toy().setup("test")


def test_a_split_without_any_proposals_is_an_error(toy, tmp_path):
    write_jsonl(tmp_path / "dets.jsonl", [_dets("a")], class_names=list("wxyz"))
    with pytest.raises(ValueError, match="split test: no image-sentence pair left"):
        toy().setup("test")


def test_setup_before_loader(toy):
    with pytest.raises(RuntimeError, match="call setup"):
        toy().test_dataloader()


# --- what the model needs of the samples: given, never read off the model -------------------


def test_what_the_model_needs_arrives_as_arguments(toy):
    dm = toy(read_features=True, feature_dim=7, require_labels=True)
    assert (dm.read_features, dm.feature_dim, dm.require_labels) == (True, 7, True)
    assert dm.hparams["read_features"] and dm.hparams["feature_dim"] == 7 and dm.hparams["require_labels"]
    assert not dm.reads_images()  # an image folder is given, but the model reads features
    plain = toy()
    assert plain.reads_images() and (plain.read_features, plain.feature_dim, plain.require_labels) == (False, None, False)


def test_inconsistent_model_needs_are_refused_at_init(toy):
    with pytest.raises(ValueError, match="data.feature_dim=16 .* but data.read_features is false"):
        toy(feature_dim=16)
    with pytest.raises(ValueError, match="data.feature_dim must be >= 1, got 0"):
        toy(read_features=True, feature_dim=0)


class _NoModel:
    """A trainer whose model must not be looked at."""

    is_global_zero = True

    @property
    def lightning_module(self):
        raise AssertionError("the datamodule read the model")


def test_setup_never_reads_the_model(toy, tmp_path):
    for require_labels in (False, True):
        dm = toy(require_labels=require_labels)
        dm.trainer = _NoModel()
        dm.setup("fit")  # labelled detections: accepted without asking the model
        assert dm.datasets["train"].read_images
        next(iter(dm.train_dataloader()))
    features = toy(read_features=True)
    features.trainer = _NoModel()
    with pytest.raises(ValueError, match=r"split test: the model reads per-box features \(data.read_features"):
        features.setup("test")  # the toy detections carry no features


def test_require_labels_refuses_unlabelled_training_detections(toy, tmp_path):
    unlabelled = [Detections(i, _dets(i).boxes, None, _dets(i).scores) for i in SIZES]
    write_jsonl(tmp_path / "dets.jsonl", unlabelled)
    with pytest.raises(ValueError, match=r"model.loss.use_kd=true distils .* no labels for 5 training images"):
        toy(require_labels=True).setup("fit")
    toy().setup("fit")  # without distillation they train


# --- batches say what their class probabilities are --------------------------------------------


def test_batches_carry_the_class_names_of_their_class_probabilities(toy):
    dm = toy()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.class_probs.shape[-1] == 4 and batch.class_names == list("wxyz")  # dets.jsonl's names
    assert next(iter(dm.val_dataloader()[0])).class_names == list("wxyz")


def test_class_names_of_a_native_store_travel_with_the_batch_to_the_device(toy, tmp_path):
    from pytorch_lightning.utilities import move_data_to_device

    from lightning_wsg.detection.native import write_native

    names = ["person", "dog", "car", "tree"]

    class WithFeatures(DetectionStore):
        feature_dim = 5

        def features(self, image_id):
            return torch.ones(len(self[image_id]), 5)

    store = WithFeatures("memory", {i: _dets(i) for i in SIZES}, names)
    folder = write_native(store, tmp_path / "native", {"source": {"path": "memory"}}, shard_size=2)
    dm = toy(detections=folder)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert dm.store.class_names == names and batch.class_names == names
    assert batch.class_probs.shape[-1] == len(names)
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert moved.class_names == names and torch.equal(moved.class_probs, batch.class_probs)


def test_class_names_only_with_class_probabilities(images):
    samples = [_dataset(images)[i] for i in range(2)]
    assert base_module.collate(samples, class_names=list("wxyz")).class_names == list("wxyz")
    assert base_module.collate(samples).class_names is None  # not told
    for sample in samples:
        sample.class_probs = None
    assert base_module.collate(samples, class_names=list("wxyz")).class_names is None
    samples = [_dataset(images)[i] for i in range(2)]
    with pytest.raises(ValueError, match="class_probs over 4 classes, but 3 class names"):
        base_module.collate(samples, class_names=["a", "b", "c"])
