"""Region features of the synthetic world (``python -m lightning_wsg.features extract``): written as
a bottom-up-attention TSV and as HDF5, and the feature tower trained on them through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.cli import DEMO_YAML, TINY_TEXT
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from lightning_wsg.cli import main
from lightning_wsg.data import SyntheticWorldDataModule
from lightning_wsg.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from lightning_wsg.detection.formats import open_detections
from lightning_wsg.features import main as features_main
from lightning_wsg.models import RegionEncoder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "world"
    SyntheticWorldDataModule(str(root), num_train=24, num_val=8, num_test=8, world_image_size=64).prepare_data()
    return root


def test_extracted_features_in_both_layouts(world, tmp_path):
    args = ["extract", "--images", str(world / "images"), "--detections", str(world / "detections.jsonl")]
    features_main([*args, "--out", str(tmp_path / "f.tsv"), "--image-size", "64"])
    features_main([*args, "--out", str(tmp_path / "f.hdf5"), "--image-size", "64"])
    vocab = tmp_path / "f_vocab.txt"
    tsv, h5 = open_detections(tmp_path / "f.tsv", vocab), open_detections(tmp_path / "f.hdf5")
    source = open_detections(world / "detections.jsonl")
    assert set(tsv) == set(h5) == {i for i in source if len(source[i])}
    assert tsv.feature_dim == h5.feature_dim == 112  # EfficientNet-Lite0's stride-16 stage
    image_id = sorted(tsv)[0]
    assert tsv[image_id].labels == source[image_id].labels  # the detector's names travel with the TSV
    assert torch.equal(tsv.features(image_id), h5.features(image_id))
    # the same numbers as the image tower's own pooling of that image, alone
    encoder = RegionEncoder(
        "tf_efficientnet_lite0", pretrained=False, pretrained_path="efficientnet-lite0-imagenet",
        out_index=-2, roi_size=4, hidden_dim=1, embed_dim=1, freeze_backbone=True,
    ).eval()  # fmt: skip
    with Image.open(world / "images" / f"{image_id}.jpg") as img:
        pixels = TF.to_dtype(TF.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)  # 64 px already
    pixels = TF.normalize(pixels, list(IMAGENET_MEAN), list(IMAGENET_STD))
    boxes = source[image_id].boxes
    with torch.no_grad():
        expected = encoder.pooled_features(pixels[None], boxes[None], torch.ones(1, len(boxes), dtype=torch.bool))
    assert torch.allclose(tsv.features(image_id), expected, rtol=1e-4, atol=1e-4)  # batched there, alone here
    assert tsv[image_id].image_size == (64, 64) and expected.abs().sum() > 0


def test_the_feature_tower_trains_on_the_worlds_features(world, tmp_path):
    out = tmp_path / "f.tsv"
    features_main(["extract", "--images", str(world / "images"), "--detections", str(world / "detections.jsonl"),
                   "--out", str(out), "--image-size", "64"])  # fmt: skip
    args = [
        "--config", DEMO_YAML,
        f"--data.root={world}", "--data.num_train=24", "--data.num_val=8", "--data.num_test=8",
        "--data.world_image_size=64", "--data.num_workers=0", "--data.batch_size=8",
        f"--data.detections={out}", f"--data.vocabulary={tmp_path / 'f_vocab.txt'}",
        "--model.region_encoder.class_path=lightning_wsg.models.FeatureRegionEncoder",
        "--model.region_encoder.init_args.feature_dim=112", "--model.region_encoder.init_args.box_geometry=true",
        "--model.region_encoder.init_args.hidden_dim=32", "--model.region_encoder.init_args.embed_dim=16",
        f"--model.phrase_encoder.config_overrides={TINY_TEXT}",
        "--model.phrase_encoder.hidden_dim=32", "--model.phrase_encoder.embed_dim=16",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.enable_model_summary=false", "--trainer.max_epochs=1",
    ]  # fmt: skip
    fit = main(["fit", *args])
    assert fit.trainer.global_step > 0 and "train/kd" in fit.trainer.callback_metrics
    assert fit.datamodule.datasets["train"].read_images is False  # the feature tower reads no image
    tested = main(["test", *args, f"--ckpt_path={fit.trainer.checkpoint_callback.best_model_path}"])
    metrics = tested.trainer.callback_metrics
    assert metrics["test/num_phrases"] > 0 and 0.0 <= float(metrics["test/acc"]) <= float(metrics["test/upper_bound"])
