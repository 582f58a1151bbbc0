"""Real detector backends on generated images: torchvision (random weights), MMDetection
(when installed: scripts/install_mmdet.sh) and precomputed files; each one's cached output
trains a step of the GroundingModule."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers.flickr import make_tiny_flickr
from helpers.model import tiny_model
from helpers.shared import in_ci
from helpers.trainer import quiet_trainer
from pytorch_lightning import Trainer

from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.detection import (
    DetectionCache,
    MMDetectionBackend,
    PrecomputedBackend,
    ShardedCache,
    TorchvisionBackend,
    open_detections,
)

CATEGORIES = ["__background__", "man", "dog", "car", "shirt", "box"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny"), n_images=6, seed=2, split_sizes=(1, 1))


def _fit_one_step(tiny, callback: DetectionCache, tmp_path) -> tuple[Trainer, Flickr30kEntitiesDataModule]:
    dm = Flickr30kEntitiesDataModule(
        tiny.root, tiny.image_dir, None, batch_size=4, num_workers=0, image_size=64, max_proposals=20
    )
    model = tiny_model()
    before = [p.detach().clone() for p in model.model.region_encoder.parameters()]
    trainer = quiet_trainer(
        tmp_path, limit_train_batches=1, limit_val_batches=1, enable_checkpointing=False, callbacks=[callback]
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model.region_encoder.parameters()))  # it learned
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    return trainer, dm


def _check_detections(store, tiny, image_ids, class_names, max_boxes, probs: bool) -> None:
    for image_id in image_ids:
        det = store[image_id]
        w, h = tiny.sizes[image_id]
        assert 0 < len(det) <= max_boxes
        assert det.boxes.shape == (len(det), 4) and (det.boxes[:, 2:] >= det.boxes[:, :2]).all()
        assert (
            (det.boxes[:, 0] >= 0).all() and (det.boxes[:, 2] <= w + 1e-3).all() and (det.boxes[:, 3] <= h + 1e-3).all()
        )
        assert set(det.labels) <= set(class_names)
        assert (det.scores[:-1] >= det.scores[1:]).all()  # top-scored first
        if probs:
            assert det.class_probs.shape == (len(det), len(class_names))
            assert (det.class_probs.sum(1) <= 1 + 2e-3).all()
            at_label = det.class_probs[torch.arange(len(det)), [class_names.index(lab) for lab in det.labels]]
            torch.testing.assert_close(at_label, det.scores, atol=2e-3, rtol=0)  # fp16 storage
        else:
            assert det.class_probs is None


def test_torchvision_backend_names_categories_from_the_weights_without_downloading():
    backend = TorchvisionBackend("fasterrcnn_resnet50_fpn_v2", weights="DEFAULT")
    settings = backend.settings()
    assert settings["weights"] == "FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"
    assert backend.class_names[:2] == ["person", "bicycle"] and len(backend.class_names) == 90
    assert TorchvisionBackend("fasterrcnn_resnet50_fpn_v2", weights="COCO_V1").settings() == settings
    assert TorchvisionBackend("fasterrcnn_resnet50_fpn_v2", weights="DEFAULT", min_size=600).settings() != settings
    with pytest.raises(ValueError, match=r"without torchvision weights, categories \(the class names, background"):
        TorchvisionBackend(weights=None)


#: one change of each setting that changes a torchvision detector's boxes, from RANDOM_SETTINGS
CHANGED_SETTINGS = {
    "model": {"model": "fasterrcnn_resnet50_fpn"},
    "weights": {"weights": "DEFAULT"},
    "checkpoint": {"checkpoint": "detector.pt"},
    "categories": {"categories": [*CATEGORIES[:-1], "bag"]},
    "score_threshold": {"score_threshold": 0.3},
    "max_boxes": {"max_boxes": 10},
    "class_nms_iou": {"class_nms_iou": 0.7},
    "nms_iou": {"nms_iou": None},
    "min_size": {"min_size": 96},
    "max_size": {"max_size": 160},
    "class_probs": {"class_probs": True},
    "box_features": {"box_features": True},
    "seed": {"seed": 1},
}
RANDOM_SETTINGS = {
    "model": "fasterrcnn_mobilenet_v3_large_fpn",
    "weights": None,
    "categories": CATEGORIES,
    "score_threshold": 0.05,
    "max_boxes": 15,
    "class_nms_iou": 0.5,
    "nms_iou": 0.5,
    "min_size": 64,
    "max_size": 128,
}


def _cache_folder(tmp_path, **settings) -> str:
    return ShardedCache.for_backend(tmp_path / "cache", TorchvisionBackend(**settings)).path.name


@pytest.mark.parametrize("name", list(CHANGED_SETTINGS))
def test_torchvision_cache_fingerprint_changes_with_each_detection_setting(tmp_path, name):
    """Each setting that changes the boxes names another cache folder: none reuses stale detections."""
    import inspect

    torch.save({}, tmp_path / "detector.pt")
    change = {k: tmp_path / v if k == "checkpoint" else v for k, v in CHANGED_SETTINGS[name].items()}
    base = _cache_folder(tmp_path, **RANDOM_SETTINGS)
    assert base.startswith("torchvision-") and _cache_folder(tmp_path, **RANDOM_SETTINGS) == base
    assert _cache_folder(tmp_path, **(RANDOM_SETTINGS | change)) != base
    # every argument of the backend is here or said not to change the boxes
    arguments = set(inspect.signature(TorchvisionBackend).parameters)
    assert arguments == set(CHANGED_SETTINGS) | {"batch_size"}


def test_torchvision_cache_fingerprint_ignores_the_batch_size(tmp_path):
    assert _cache_folder(tmp_path, **RANDOM_SETTINGS, batch_size=4) == _cache_folder(tmp_path, **RANDOM_SETTINGS)


def test_torchvision_backend_random_weights_detect_and_train_a_step(tiny, tmp_path):
    settings = {
        "weights": None,
        "categories": CATEGORIES,
        "score_threshold": 0.0,
        "max_boxes": 15,
        "min_size": 64,
        "max_size": 128,
    }
    # batch_size 1: batches pad images to one size, which moves random-weight boxes
    backend = TorchvisionBackend("fasterrcnn_mobilenet_v3_large_fpn", class_probs=True, batch_size=1, **settings)
    callback = DetectionCache(backend, tmp_path / "cache", progress_bar=False)
    _, dm = _fit_one_step(tiny, callback, tmp_path)
    store = open_detections(callback.cache.path)
    fit_ids = tiny.splits["train"] + tiny.splits["val"]
    assert set(store) == set(fit_ids) and store.class_names == CATEGORIES[1:]
    _check_detections(store, tiny, fit_ids, CATEGORIES[1:], 15, probs=True)
    assert dm.datasets["train"][0].proposal_labels is not None

    # random weights are seeded: the same settings give the same boxes (the cache key is honest)
    again = TorchvisionBackend("fasterrcnn_mobilenet_v3_large_fpn", class_probs=True, **settings)
    again.load()
    image_id = fit_ids[0]
    det = again.detect([(image_id, tiny.image_dir / f"{image_id}.jpg")])[0]
    torch.testing.assert_close(det.boxes, store[image_id].boxes)
    batch = again.detect([(i, tiny.image_dir / f"{i}.jpg") for i in fit_ids[:3]])  # one forward, three images
    assert [d.image_id for d in batch] == fit_ids[:3] and all(0 < len(d) <= 15 for d in batch)
    # class_probs=False: the same boxes through torchvision's own post-processing
    plain = TorchvisionBackend("fasterrcnn_mobilenet_v3_large_fpn", **settings)
    plain.load()
    det_plain = plain.detect([(image_id, tiny.image_dir / f"{image_id}.jpg")])[0]
    torch.testing.assert_close(det_plain.boxes, det.boxes)
    assert det_plain.labels == det.labels and det_plain.class_probs is None


def test_precomputed_file_through_the_callback_trains_a_step(tiny, tmp_path):
    callback = DetectionCache(PrecomputedBackend(tiny.detections), tmp_path / "cache", progress_bar=False)
    _, dm = _fit_one_step(tiny, callback, tmp_path)
    source = open_detections(tiny.detections)
    for image_id in tiny.splits["train"]:
        got, want = dm.store[image_id], source[image_id]
        assert torch.equal(got.boxes, want.boxes) and got.labels == want.labels


def _mmdet_missing() -> str | None:
    if importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmcv") is None:
        return "MMDetection is not installed (run scripts/install_mmdet.sh)"
    try:
        import mmcv.ops  # noqa: F401  (the compiled ops mmdet imports)
        import mmdet.apis  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any broken build is a skip reason
        return f"MMDetection does not import: {type(err).__name__}: {err}"
    return None


@pytest.mark.slow  # about 25 s on an idle 2-core machine, over 60 s on a loaded one
def test_mmdetection_backend_detects_with_class_probs_and_trains_a_step(tiny, tmp_path):
    missing = _mmdet_missing()
    if missing is not None:  # make test installs it: under CI its absence is a broken set-up
        (pytest.fail if in_ci() else pytest.skip)(missing)
    kwargs = {"score_threshold": 0.0, "max_boxes": 12, "image_scale": (160, 128), "nms_iou": 0.7}
    backend = MMDetectionBackend("mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", class_probs=True, **kwargs)
    settings = backend.settings()
    assert settings["config"]["model"]["test_cfg"]["rcnn"]["score_thr"] == 0.0
    assert settings["config"]["model"]["backbone"]["init_cfg"] is None
    callback = DetectionCache(backend, tmp_path / "cache", progress_bar=False)
    _fit_one_step(tiny, callback, tmp_path)
    store = open_detections(callback.cache.path)
    names = store.class_names
    assert len(names) == 80 and names[0] == "person"  # COCO names from model.dataset_meta
    fit_ids = tiny.splits["train"] + tiny.splits["val"]
    _check_detections(store, tiny, fit_ids, names, 12, probs=True)
    manifest = callback.cache.read_manifest()
    assert manifest["versions"]["mmdet"].startswith("3.") and manifest["class_names"] == names

    # the class-probability hook keeps MMDetection's own boxes, labels and scores
    plain = MMDetectionBackend("mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", **kwargs)
    plain.load()
    image_id = fit_ids[0]
    det = plain.detect([(image_id, tiny.image_dir / f"{image_id}.jpg")])[0]
    torch.testing.assert_close(det.boxes, store[image_id].boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(det.scores, store[image_id].scores)
    assert det.labels == store[image_id].labels and det.class_probs is None
    assert ShardedCache(callback.cache.root, plain.settings()).path != callback.cache.path  # class_probs: new key
