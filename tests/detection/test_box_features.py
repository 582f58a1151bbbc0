"""Detector box features in the detection cache (``box_features: true``): each kept box's RoI-head
feature, from torchvision and MMDetection (random weights), checked against a recomputation
from the model's own layers, stored as float16 in the shards, and trained on by the feature
tower through the CLI."""

from __future__ import annotations

import re

import pytest
import torch
from helpers.cli import FLICKR_YAML, REPO, trainer_args
from helpers.flickr import make_tiny_flickr
from helpers.shared import in_ci
from helpers.trainer import quiet_trainer
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from lightning_wsg.cli import main
from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.detection import (
    DetectionCache,
    DetectionFormatError,
    Detections,
    MMDetectionBackend,
    ShardedCache,
    TorchvisionBackend,
    open_detections,
)
from lightning_wsg.detection.native import convert
from lightning_wsg.detection.store import pack_shard
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.models import FeatureRegionEncoder, LstmPhraseEncoder

CATEGORIES = ["__background__", "man", "dog", "car", "shirt", "box"]
# a ResNet-50 FPN: random MobileNet weights give near-constant features (its maps are ~1e-8)
# min_size 128 on 96 x 72 images: the detector's input is 1.78 times the original, so a feature
# pooled at the original image's coordinates is another box's feature; the class-agnostic NMS at
# 0.3 drops boxes from the middle of the detector's list, so features must follow their boxes
TV_SETTINGS = {
    "weights": None, "categories": CATEGORIES, "score_threshold": 0.0, "max_boxes": 10, "min_size": 128,
    "max_size": 192, "nms_iou": 0.3,
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny"), n_images=6, seed=2, split_sizes=(1, 1))


def _image(path) -> torch.Tensor:
    with Image.open(path) as img:
        return TF.to_dtype(TF.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)


def _assert_rows_match(stored: torch.Tensor, expected: torch.Tensor) -> None:
    """Row by row within float16 rounding, and the rows tell boxes apart (a permutation fails)."""
    assert stored.shape == expected.shape
    error = (stored - expected).norm(dim=1) / expected.norm(dim=1).clamp(min=1e-12)
    assert error.max() < 1e-3, error  # float16 storage: about 2.5e-4 here
    apart = torch.cdist(expected, expected) / expected.norm(dim=1).clamp(min=1e-12)[:, None]
    assert (apart + torch.eye(len(expected)) * 1e9).min() > 1e-2  # distinct boxes, distinct features (>= 0.04 here)


def test_torchvision_box_features_are_the_box_heads_output_at_each_kept_box(tiny, tmp_path):
    backend = TorchvisionBackend("fasterrcnn_resnet50_fpn", box_features=True, **TV_SETTINGS)
    plain = TorchvisionBackend("fasterrcnn_resnet50_fpn", **TV_SETTINGS)
    assert backend.settings()["box_features"] is True
    assert "box_features" not in plain.settings()  # caches made before the option keep their folder
    cache = ShardedCache.for_backend(tmp_path / "cache", backend, shard_size=2)
    assert cache.path != ShardedCache.for_backend(tmp_path / "cache", plain).path
    ids = sorted(tiny.sizes)[:2]
    cache.fill(backend, {i: tiny.image_dir / f"{i}.jpg" for i in ids}, progress=False)
    assert cache.update_manifest()["feature_dim"] == 1024
    store = open_detections(cache.path)
    assert store.feature_dim == 1024 and set(store) == set(ids)

    model = backend._model
    plain.load()
    same = plain.detect([(ids[0], tiny.image_dir / f"{ids[0]}.jpg")])[0]
    assert torch.equal(same.boxes, store[ids[0]].boxes) and same.labels == store[ids[0]].labels  # features add nothing
    raw = TorchvisionBackend("fasterrcnn_resnet50_fpn", **{**TV_SETTINGS, "nms_iou": None})
    raw.load()
    reordered = 0
    for image_id in ids:
        det, stored = store[image_id], store.features(image_id)
        assert stored.shape == (len(det), 1024) and len(det) > 1 and torch.isfinite(stored).all()
        assert stored.abs().sum() > 0
        before = raw.detect([(image_id, tiny.image_dir / f"{image_id}.jpg")])[0].boxes
        reordered += not torch.equal(before[: len(det)], det.boxes)  # the NMS kept other rows than the first
        # recomputed: the stored box mapped into the detector's resized input, pooled, through box_head
        image = _image(tiny.image_dir / f"{image_id}.jpg")
        with torch.no_grad():
            resized, _ = model.transform([image])
            maps = model.backbone(resized.tensors)
            (th, tw), (h, w) = resized.image_sizes[0], image.shape[-2:]
            boxes = det.boxes * torch.tensor([tw / w, th / h, tw / w, th / h])
            expected = model.roi_heads.box_head(model.roi_heads.box_roi_pool(maps, [boxes], resized.image_sizes))
        _assert_rows_match(stored, expected)
    assert reordered  # else a feature of the wrong box could pass

    # the cache folder converts to the native store like a TSV does
    native = open_detections(convert(cache.path, tmp_path / "native"))
    assert native.feature_dim == 1024
    assert all(torch.equal(native.features(i), store.features(i)) for i in ids)
    assert all(torch.equal(native[i].boxes, store[i].boxes) for i in ids)


def _mmdet_missing() -> str | None:
    try:
        import mmcv.ops  # noqa: F401  (the compiled ops mmdet imports)
        import mmdet.apis  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any broken or missing build is a skip reason
        return f"MMDetection does not import ({type(err).__name__}: {err}); run scripts/install_mmdet.sh"
    return None


# Faster R-CNN on a ResNet-18 with 64-d shared fcs: the same heads as the real config, fast on a CPU
MM_SMALL = {
    "model.backbone.depth": 18,
    "model.neck.in_channels": [64, 128, 256, 512],
    "model.roi_head.bbox_head.fc_out_channels": 64,
}


def test_mmdetection_box_features_are_the_roi_heads_shared_feature_at_each_kept_box(tiny, tmp_path):
    missing = _mmdet_missing()
    if missing is not None:
        (pytest.fail if in_ci() else pytest.skip)(missing)
    from mmdet.apis import inference_detector

    kwargs = {
        "score_threshold": 0.0,
        "max_boxes": 8,
        "image_scale": (192, 144),
        "nms_iou": 0.3,
        "cfg_options": MM_SMALL,
    }
    config = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"
    backend = MMDetectionBackend(config, box_features=True, **kwargs)
    plain = MMDetectionBackend(config, **kwargs)
    assert backend.settings()["box_features"] is True and "box_features" not in plain.settings()
    cache = ShardedCache.for_backend(tmp_path / "cache", backend)
    assert cache.path != ShardedCache.for_backend(tmp_path / "cache", plain).path
    ids = sorted(tiny.sizes)[:2]
    cache.fill(backend, {i: tiny.image_dir / f"{i}.jpg" for i in ids}, progress=False)
    store = open_detections(cache.path)
    assert store.feature_dim == 64

    model = backend._model
    roi_head = model.roi_head
    maps: list = []
    hook = model.neck.register_forward_hook(lambda module, args, out: maps.append(out))
    try:
        for image_id in ids:
            det, stored = store[image_id], store.features(image_id)
            assert stored.shape == (len(det), 64) and len(det) > 1 and torch.isfinite(stored).all()
            maps.clear()
            sample = inference_detector(model, [str(tiny.image_dir / f"{image_id}.jpg")])[0]
            scale = torch.tensor(sample.metainfo["scale_factor"], dtype=torch.float32).repeat(2)
            assert not torch.allclose(scale, torch.ones(4))  # the input is resized: coordinates matter
            # recomputed: the stored box in the network input's pixels, RoI-pooled, through the shared fcs
            rois = torch.cat([torch.zeros(len(det), 1), det.boxes * scale], 1)
            with torch.no_grad():
                pooled = roi_head.bbox_roi_extractor(maps[0][: roi_head.bbox_roi_extractor.num_inputs], rois)
                expected = pooled.flatten(1)
                for fc in roi_head.bbox_head.shared_fcs:
                    expected = torch.relu(fc(expected))
            _assert_rows_match(stored, expected)
    finally:
        hook.remove()


def test_cache_shards_keep_one_feature_width_and_float16_range(tmp_path):
    def det(image_id: str, features: torch.Tensor | None) -> Detections:
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 5.0]])
        return Detections(image_id, boxes, ["man", "dog"], torch.tensor([0.9, 0.5]), features=features)

    with pytest.raises(ValueError, match="image 2: features that float16 cannot hold"):
        pack_shard([det("1", torch.ones(2, 3)), det("2", torch.full((2, 3), 1e6))])
    with pytest.raises(ValueError, match="features must be given for every image of a shard or for none"):
        pack_shard([det("1", torch.ones(2, 3)), det("2", None)])
    with pytest.raises(DetectionFormatError, match="image 1: 2 boxes but features of shape \\(3, 4\\)"):
        pack_shard([det("1", torch.ones(3, 4))])

    cache = ShardedCache(tmp_path, {"backend": "hand"})
    cache.ensure_manifest()
    first = cache.write_shard([det("1", torch.ones(2, 4))])
    assert open_detections(cache.path).feature_dim == 4
    second = cache.write_shard([det("2", torch.ones(2, 6))])
    shards = sorted([(first, "1", 4), (second, "2", 6)])  # read in file-name order
    (late, late_id, late_w), (early, early_id, early_w) = shards[1], shards[0]
    with pytest.raises(
        DetectionFormatError,
        match=re.escape(f"{late}: features of width {late_w} (image {late_id}), but {early} holds features of ")
        + rf"width {early_w} \(image {early_id}\): shards of two detector settings",
    ):
        open_detections(cache.path)

    plain = ShardedCache(tmp_path, {"backend": "plain"})
    plain.ensure_manifest()
    plain.write_shard([det("1", None)])
    store = open_detections(plain.path)
    assert store.feature_dim is None
    with pytest.raises(DetectionFormatError, match=r"holds no per-box features \(image 1\): set box_features: true"):
        store.features("1")


TORCHVISION_YAML = str(REPO / "cli_configs" / "detector" / "torchvision.yaml")
CKD_YAML = str(REPO / "cli_configs" / "model" / "ckd_features.yaml")


def test_lightning_fit_trains_the_feature_tower_on_torchvision_box_features(tiny, tmp_path):
    """``flickr.yaml`` + ``model/ckd_features.yaml`` + ``detector/torchvision.yaml`` with box_features."""
    categories = tmp_path / "categories.txt"
    categories.write_text("\n".join(CATEGORIES) + "\n")
    detector = "--trainer.callbacks.backend.init_args"
    args = [
        "--config", FLICKR_YAML, "--config", CKD_YAML, "--config", str(REPO / "cli_configs" / "model" / "paper.yaml"),
        "--config", TORCHVISION_YAML,
        f"--data.root={tiny.root}", f"--data.image_dir={tiny.image_dir}",
        f"{detector}.model=fasterrcnn_resnet50_fpn", f"{detector}.weights=null",
        f"{detector}.categories={categories}", f"{detector}.score_threshold=0.0", f"{detector}.max_boxes=10",
        f"{detector}.min_size=128", f"{detector}.max_size=192", f"{detector}.nms_iou=0.3",
        f"{detector}.box_features=true",
        f"--trainer.callbacks.cache_dir={tmp_path / 'cache'}", "--trainer.callbacks.progress_bar=false",
        "--model.region_encoder.feature_dim=1024",
        "--model.region_encoder.hidden_dim=32", "--model.region_encoder.embed_dim=16",
        "--model.phrase_encoder.vectors=glove-6b-50d", "--model.phrase_encoder.hidden_size=16",
        "--model.phrase_encoder.hidden_dim=32", "--model.phrase_encoder.embed_dim=16",
        "--model.loss.teacher.matching=lexical", "--data.batch_size=4", "--data.num_workers=0",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_epochs=1", *trainer_args(tmp_path),
    ]  # fmt: skip
    fit = main(["fit", *args])
    (callback,) = [c for c in fit.trainer.callbacks if isinstance(c, DetectionCache)]
    assert callback.cache.read_manifest()["feature_dim"] == 1024
    train = fit.datamodule.datasets["train"]
    assert train.read_features and not train.read_images and train.detections.feature_dim == 1024
    assert fit.trainer.global_step > 0 and torch.isfinite(fit.trainer.callback_metrics["train/loss"])
    region = fit.model.model.region_encoder
    kept = torch.cat([train.detections.features(i)[train.kept_proposals(i)] for i in tiny.splits["train"]])
    assert int(region.feature_count) == len(kept)  # statistics of the cached features
    assert torch.allclose(region.feature_mean, kept.mean(0), atol=1e-5)

    # a tower built for another width is refused, naming the cache folder and an image
    dm = Flickr30kEntitiesDataModule(
        tiny.root, tiny.image_dir, None, batch_size=4, num_workers=0, read_features=True, feature_dim=16
    )
    backend = TorchvisionBackend("fasterrcnn_resnet50_fpn", box_features=True, **TV_SETTINGS)
    again = DetectionCache(backend, tmp_path / "cache", progress_bar=False)
    trainer = quiet_trainer(tmp_path, callbacks=[again], enable_checkpointing=False)
    model = GroundingModule(
        FeatureRegionEncoder(feature_dim=16, hidden_dim=8, embed_dim=4),
        LstmPhraseEncoder("glove-6b-50d", hidden_size=8, hidden_dim=8, embed_dim=4),
    )
    with pytest.raises(
        DetectionFormatError,
        match=re.escape(f"{callback.cache.path}: features of width 1024 (image ")
        + r"\d+\), but the model's feature tower takes 16",
    ):
        trainer.fit(model, datamodule=dm)
    assert again.cache.path == callback.cache.path and again.detected == 0  # read from the cache, not detected

    # a feature tower with a detector that stores no features: refused before anything is detected
    plain = TorchvisionBackend("fasterrcnn_resnet50_fpn", **TV_SETTINGS)
    trainer = quiet_trainer(tmp_path, callbacks=[DetectionCache(plain, tmp_path / "other")], enable_checkpointing=False)
    with pytest.raises(ValueError, match="FeatureRegionEncoder reads per-box features, .* set box_features: true"):
        trainer.fit(model, datamodule=dm)
    assert not plain.loaded and not (tmp_path / "other").exists()
