"""Images become network inputs one way: the dataset, prediction and feature extraction agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from lightning_wsg.data import GroundingDataset, GroundingEntry
from lightning_wsg.data import base, dataset
from lightning_wsg.data.images import IMAGENET_MEAN, IMAGENET_STD, image_input, read_pixels, read_size
from lightning_wsg.data.predict import PredictDataset
from lightning_wsg.data.predict_file import read_predict_file
from lightning_wsg.detection import Detections, DetectionStore

#: a non-square size (width, height): a width / height swap or a crop shows
SIZE = (37, 23)


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """Noise, so that any difference in resampling or rounding changes some value."""
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(path)
    return path


def _old_formula(path: Path, size: int) -> torch.Tensor:
    """The preprocessing as the dataset wrote it before images.py (kept here as the reference)."""
    with Image.open(path) as img:
        pixels = TF.pil_to_tensor(img.convert("RGB"))
    pixels = TF.resize(pixels, [size, size], antialias=True)
    pixels = TF.to_dtype(pixels, torch.float32, scale=True)
    return TF.normalize(pixels, list(IMAGENET_MEAN), list(IMAGENET_STD))


def _dataset(path: Path, size: int) -> GroundingDataset:
    entry = GroundingEntry("noise", "noise#0", ["a", "b"], [(0, 1)], ["1"], image_size=SIZE)
    dets = Detections("noise", torch.tensor([[1.0, 2.0, 20.0, 15.0]]), None, torch.ones(1))
    store = DetectionStore("memory.jsonl", {"noise": dets})
    return GroundingDataset([entry], lambda _: path, store, "val", image_size=size)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_dataset_samples_are_image_input_of_read_pixels_exactly(picture, size):
    sample = _dataset(picture, size)[0]
    assert torch.equal(sample.image, image_input(read_pixels(picture), size))
    assert torch.equal(sample.image, _old_formula(picture, size))
    assert sample.image_size == SIZE


def test_prediction_reads_images_as_the_dataset_does(picture, tmp_path):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(f'{{"image": "{picture.name}", "sentence": "a [b]"}}\n')
    sample = PredictDataset(read_predict_file(inputs), image_size=32)[0]
    assert torch.equal(sample.image, _old_formula(picture, 32)) and sample.image_size == SIZE
    assert read_size(picture) == SIZE


def test_feature_extraction_feeds_the_backbone_image_input(picture, monkeypatch):
    from lightning_wsg import features, models

    seen = []

    class Encoder:  # stands in for the frozen backbone: records its input images
        def __init__(self, *args, **kwargs):
            pass

        def eval(self):
            return self

        def pooled_features(self, images, roi_boxes, mask):
            seen.append(images)
            return torch.zeros(int(mask.sum()), 2)

    monkeypatch.setattr(models, "RegionEncoder", Encoder)
    dets = Detections("noise", torch.tensor([[1.0, 2.0, 20.0, 15.0]]), None, torch.ones(1))
    store = DetectionStore("memory.jsonl", {"noise": dets})
    records = list(features.extract_features({"noise": picture}, store, image_size=32))
    assert records[0][0].image_size == SIZE
    assert torch.equal(seen[0][0], _old_formula(picture, 32))


def test_the_imagenet_statistics_are_defined_once():
    from lightning_wsg.data import images

    assert dataset.IMAGENET_MEAN is images.IMAGENET_MEAN and base.IMAGENET_STD is images.IMAGENET_STD


def test_unreadable_or_resized_images_name_the_file(picture, tmp_path):
    data = _dataset(picture, 16)
    Image.new("RGB", (SIZE[1], SIZE[0])).save(picture)  # width and height swapped
    swapped = rf"noise.png is {SIZE[1]}x{SIZE[0]}, the annotations say \({SIZE[0]}, {SIZE[1]}\)"
    with pytest.raises(ValueError, match=swapped):
        data[0]
    picture.write_bytes(b"not an image")
    with pytest.raises(OSError, match=f"cannot read image {picture}"):
        data[0]
    with pytest.raises(OSError, match=f"cannot read image {picture}"):
        read_size(picture)
    picture.unlink()
    with pytest.raises(FileNotFoundError, match=f"image not found: {picture}"):
        data[0]
    with pytest.raises(FileNotFoundError, match=f"image not found: {picture}"):
        read_size(picture)
