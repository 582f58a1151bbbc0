"""An MMDetection 3.x backend for :class:`~lightning_wsg.detection.DetectionCache`.

The model comes from ``mmdet.apis.init_detector(config, checkpoint)``; its class names from
the checkpoint's ``meta.dataset_meta.classes`` (``model.dataset_meta["classes"]``), or
``class_names`` when a converted checkpoint lacks them. MMDetection is optional (the
``mmdet`` extra, built by ``scripts/install_mmdet.sh``): nothing here imports it until
the cache needs a fingerprint or a detection.

What a box carries:

* ``boxes``, ``labels``, ``scores``: MMDetection's own test-time output (its score
  threshold and per-class NMS, ``score_threshold`` and ``max_boxes`` written into the
  config's ``test_cfg``), then a class-agnostic NMS at ``nms_iou`` and the ``max_boxes``
  top-scored.
* ``class_probs`` (``class_probs=True``, two-stage detectors whose R-CNN head is a
  ``BBoxHead``: Faster R-CNN, Cascade R-CNN's last stage, ...): MMDetection 3 does not
  return them, so the head's ``_predict_by_feat_single`` is wrapped on the loaded model:
  it asks the original for the raw per-proposal output (class-specific boxes and the
  softmax over ``C + 1`` classes, background last), runs MMDetection's own
  ``multiclass_nms`` with ``return_inds=True``, and keeps, for every surviving box, the
  softmax row of the proposal it was regressed from, without the background column:
  ``class_probs[i, c] = P(class c | proposal of box i)`` over ``class_names`` (rows sum
  to ``1 - P(background)``). The box's own ``scores[i]`` equals ``class_probs[i, label]``.
* ``features`` (``box_features=True``, a ``StandardRoIHead`` whose bbox head has shared
  layers, ``ConvFCBBoxHead``: Faster R-CNN's ``Shared2FCBBoxHead`` gives 1024-d): the RoI
  head's shared feature of each final box. The roi head's ``predict`` is wrapped: its final
  boxes, mapped back from original-image pixels to the network input's (times the resize's
  ``scale_factor``), are pooled from the neck's maps by ``bbox_roi_extractor`` and passed
  through the head's shared convs and fcs, the layers before the class and box branches
  split. The cache stores them for the feature tower (``FeatureRegionEncoder``).

Example:
    >>> backend = MMDetectionBackend(  # doctest: +SKIP
    ...     "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
    ...     checkpoint="checkpoints/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth")
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MethodType
from typing import Any

import torch

from .backend import DetectorBackend, keep_top_boxes
from .base import Detections, read_vocabulary
from .digests import file_digest

__all__ = ["MMDetectionBackend", "mmdet_config_path"]

_PKG_PREFIX = "mmdet::"


def mmdet_config_path(config: str | Path) -> Path:
    """Resolve ``"mmdet::<path>"`` to a config shipped inside the installed mmdet package
    (``mmdet/.mim/configs/<path>``); any other value is a file path."""
    text = str(config)
    if text.startswith(_PKG_PREFIX):
        try:
            import mmdet
        except ImportError as err:
            raise ImportError(_install_hint()) from err
        path = Path(mmdet.__file__).parent / ".mim" / "configs" / text[len(_PKG_PREFIX) :]
    else:
        path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"MMDetection config not found: {path}")
    return path


def _install_hint() -> str:
    return (
        "the MMDetection backend needs mmdet 3.x and mmcv with its compiled ops: run scripts/install_mmdet.sh "
        "(pip install -e '.[mmdet]' alone cannot build mmcv 2.1 for this torch)"
    )


def _versions() -> dict[str, str]:
    out = {}
    for name in ("mmdet", "mmcv", "mmengine"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _predict_single_with_probs(self, roi, cls_score, bbox_pred, img_meta, rescale: bool = False, rcnn_test_cfg=None):
    """``BBoxHead._predict_by_feat_single`` that also returns ``class_probs`` per kept box."""
    from mmdet.models.layers import multiclass_nms

    original = self._wsg_original_predict_single
    num_classes = self.num_classes
    if rcnn_test_cfg is None or roi.shape[0] == 0:
        results = original(roi, cls_score, bbox_pred, img_meta, rescale=rescale, rcnn_test_cfg=rcnn_test_cfg)
        if rcnn_test_cfg is not None:
            results.class_probs = roi.new_zeros(len(results), num_classes)
        return results
    raw = original(roi, cls_score, bbox_pred, img_meta, rescale=rescale, rcnn_test_cfg=None)
    scores = raw.scores  # [N, C + 1], background last
    dets, labels, inds = multiclass_nms(
        raw.bboxes,
        scores,
        rcnn_test_cfg.score_thr,
        rcnn_test_cfg.nms,
        rcnn_test_cfg.max_per_img,
        return_inds=True,
        box_dim=4,
    )
    from mmengine.structures import InstanceData

    results = InstanceData()
    results.bboxes = dets[:, :-1]
    results.scores = dets[:, -1]
    results.labels = labels
    results.class_probs = scores[inds // num_classes, :num_classes]
    return results


def _predict_with_box_features(self, x, rpn_results_list, batch_data_samples, rescale: bool = False):
    """``StandardRoIHead.predict`` that also gives each final box its RoI-head feature."""
    from mmdet.structures.bbox import bbox2roi, get_box_tensor

    results = self._wsg_original_predict(x, rpn_results_list, batch_data_samples, rescale=rescale)
    boxes = []
    for result, sample in zip(results, batch_data_samples):
        bboxes = get_box_tensor(result.bboxes)
        if rescale:  # MMDetection divided them by the resize's scale factor: back to the input's pixels
            bboxes = bboxes * bboxes.new_tensor(sample.metainfo["scale_factor"]).repeat(2)
        boxes.append(bboxes)
    pooled = self.bbox_roi_extractor(x[: self.bbox_roi_extractor.num_inputs], bbox2roi(boxes))
    if self.with_shared_head:
        pooled = self.shared_head(pooled)
    features = _shared_head_features(self.bbox_head, pooled)
    for result, block in zip(results, features.split([len(b) for b in boxes])):
        result.box_features = block
    return results


def _shared_head_features(head, x: torch.Tensor) -> torch.Tensor:
    """``ConvFCBBoxHead.forward`` up to where the class and box branches split."""
    for conv in head.shared_convs:
        x = conv(x)
    if head.num_shared_fcs > 0:
        if head.with_avg_pool:
            x = head.avg_pool(x)
        x = x.flatten(1)
        for fc in head.shared_fcs:
            x = head.relu(fc(x))
    return x.flatten(1)


class MMDetectionBackend(DetectorBackend):
    """An MMDetection 3.x detector (``init_detector(config, checkpoint)``).

    Args:
        config: the model config file, or ``"mmdet::<path>"`` for a config shipped with
            mmdet (for example ``"mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"``).
        checkpoint: the weights (a local file, hashed for the fingerprint, or a URL,
            fingerprinted by its text); ``None``: random weights (tests), COCO class names.
        class_names: the detector's class names (a list or a vocabulary file), for
            checkpoints whose meta lacks them; default ``model.dataset_meta["classes"]``.
        score_threshold: the config's test-time score threshold (``test_cfg.rcnn.score_thr``).
        max_boxes: boxes per image (the config's ``max_per_img`` and a final top-k).
        nms_iou: class-agnostic NMS IoU after MMDetection's per-class NMS (``None``: none).
        image_scale: ``(long, short)`` of the test pipeline's ``Resize`` (``None``: the
            config's, usually ``(1333, 800)``).
        class_probs: also return each box's class-probability vector (see module docstring).
        box_features: also return each box's RoI-head feature, for the feature tower (see
            module docstring).
        cfg_options: extra config overrides (``{"model.test_cfg.rcnn.nms.iou_threshold": 0.3}``).
        seed: the seed of random weights (``checkpoint=None``).
    """

    name = "mmdet"

    def __init__(
        self,
        config: str | Path = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
        checkpoint: str | Path | None = None,
        class_names: list[str] | str | Path | None = None,
        score_threshold: float = 0.05,
        max_boxes: int = 100,
        nms_iou: float | None = 0.5,
        image_scale: tuple[int, int] | None = None,
        class_probs: bool = False,
        box_features: bool = False,
        cfg_options: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        self.config = config
        self.checkpoint = checkpoint
        self.class_names_arg = class_names
        self.score_threshold = float(score_threshold)
        self.max_boxes = int(max_boxes)
        self.nms_iou = float(nms_iou) if nms_iou is not None else None
        self.image_scale = tuple(int(v) for v in image_scale) if image_scale is not None else None
        self.class_probs = bool(class_probs)
        self.box_features = bool(box_features)
        self.cfg_options = dict(cfg_options or {})
        self.seed = int(seed)
        self.batch_size = 1
        self._model = None
        self._names: list[str] | None = None
        self._device = torch.device("cpu")

    # -- config (no model built) --------------------------------------------------------
    def _is_url(self) -> bool:
        return self.checkpoint is not None and "://" in str(self.checkpoint)

    def build_config(self):
        """The mmengine ``Config`` with this backend's settings written into it."""
        try:
            from mmengine.config import Config
        except ImportError as err:
            raise ImportError(_install_hint()) from err
        cfg = Config.fromfile(str(mmdet_config_path(self.config)))
        if self.cfg_options:
            cfg.merge_from_dict(self.cfg_options)
        backbone = cfg.model.get("backbone")
        if backbone is not None and "init_cfg" in backbone:
            backbone.init_cfg = None  # weights come from the checkpoint (or are random): no download
        test_cfg = cfg.model.get("test_cfg")
        if test_cfg is not None:
            target = test_cfg.get("rcnn") or test_cfg
            if "score_thr" in target:
                target.score_thr = self.score_threshold
            if "max_per_img" in target:
                target.max_per_img = self.max_boxes
        if self.image_scale is not None:
            found = False
            for pipeline in _test_pipelines(cfg):
                for step in pipeline:
                    if str(step.get("type", "")).split(".")[-1] == "Resize" and "scale" in step:
                        step["scale"] = self.image_scale
                        found = True
            if not found:
                raise ValueError(
                    f"{self.config}: no Resize step with a scale in the test pipeline to set image_scale on"
                )
        return cfg

    def settings(self, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        cfg = self.build_config()
        resolved = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
        checkpoint = None
        if self.checkpoint is not None and not self._is_url() and not Path(self.checkpoint).is_file():
            raise FileNotFoundError(
                f"MMDetection checkpoint not found: {self.checkpoint} (download it, for example from the "
                "MMDetection model zoo, or give its URL; checkpoint: null runs random weights)"
            )
        if self.checkpoint is not None:
            checkpoint = {"url": str(self.checkpoint)} if self._is_url() else {"sha256": digest(Path(self.checkpoint))}
        names = self.class_names_arg
        if names is not None and not isinstance(names, list):
            names = {"vocabulary_sha256": digest(Path(names))}
        return {
            "backend": self.name,
            "config": resolved,
            "checkpoint": checkpoint,
            "random_init_seed": self.seed if self.checkpoint is None else None,
            "class_names": names,
            "score_threshold": self.score_threshold,
            "max_boxes": self.max_boxes,
            "nms_iou": self.nms_iou,
            "image_scale": list(self.image_scale) if self.image_scale is not None else None,
            "class_probs": self.class_probs,
            # only when on: a cache made before the option existed keeps its folder
            **({"box_features": True} if self.box_features else {}),
        }

    def versions(self) -> dict[str, str]:
        return _versions()

    @property
    def class_names(self) -> list[str] | None:
        if self._names is not None:
            return self._names
        if isinstance(self.class_names_arg, list):
            return [str(c) for c in self.class_names_arg]
        if self.class_names_arg is not None:
            return read_vocabulary(self.class_names_arg)
        return None

    # -- the model ----------------------------------------------------------------------
    def load(self, device: torch.device | str | None = None) -> None:
        try:
            from mmdet.apis import init_detector
        except ImportError as err:
            raise ImportError(_install_hint()) from err
        cfg = self.build_config()
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(self.seed)
            warnings.filterwarnings("ignore", message=".*(checkpoint is None|class names are not saved).*")
            model = init_detector(
                cfg,
                str(self.checkpoint) if self.checkpoint is not None else None,
                palette="random",  # skips building the config's test dataset for its palette
                device=str(self._device),
            )
        names = self.class_names
        if names is None:
            names = [str(c) for c in model.dataset_meta["classes"]]
        if self.class_probs:
            head = _rcnn_bbox_head(model)
            if head is None:
                raise ValueError(
                    f"class_probs=True needs a two-stage detector with a BBoxHead (Faster R-CNN family); "
                    f"{type(model).__name__} from {self.config} has none"
                )
            head._wsg_original_predict_single = head._predict_by_feat_single
            head._predict_by_feat_single = MethodType(_predict_single_with_probs, head)
        if self.box_features:
            roi_head = getattr(model, "roi_head", None)
            extractor = getattr(roi_head, "bbox_roi_extractor", None)
            head = getattr(roi_head, "bbox_head", None)
            if isinstance(extractor, (torch.nn.ModuleList, type(None))) or not hasattr(head, "shared_fcs"):
                raise ValueError(
                    f"box_features=True needs a two-stage detector with one RoI stage whose bbox head has shared "
                    f"layers (StandardRoIHead + ConvFCBBoxHead, as Faster R-CNN); {type(model).__name__} from "
                    f"{self.config} has {type(roi_head).__name__} with {type(head).__name__}"
                )
            roi_head._wsg_original_predict = roi_head.predict
            roi_head.predict = MethodType(_predict_with_box_features, roi_head)
        num_classes = _num_classes(model)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"the detector has {num_classes} classes but {len(names)} class names")
        self._model = model
        self._names = names
        self._loaded = True

    def detect(self, images: Sequence[tuple[str, Path]]) -> list[Detections]:
        from mmdet.apis import inference_detector

        assert self._model is not None, "load() first"
        samples = inference_detector(self._model, [str(path) for _, path in images])
        results = []
        for (image_id, _), sample in zip(images, samples):
            pred = sample.pred_instances
            probs = pred.class_probs.detach().float().cpu() if self.class_probs else None
            feats = pred.box_features.detach().float().cpu() if self.box_features else None
            results.append(
                keep_top_boxes(
                    image_id,
                    pred.bboxes.detach().float().cpu(),
                    pred.scores.detach().float().cpu(),
                    pred.labels.detach().cpu(),
                    self._names,
                    self.nms_iou,
                    self.max_boxes,
                    probs,
                    feats,
                )
            )
        return results


def _test_pipelines(cfg) -> list[list]:
    pipelines = []
    if cfg.get("test_pipeline") is not None:
        pipelines.append(cfg.test_pipeline)
    loader = cfg.get("test_dataloader")
    dataset = loader.get("dataset") if loader is not None else None
    pipeline = dataset.get("pipeline") if dataset is not None else None
    if pipeline is not None and not any(p is pipeline for p in pipelines):
        pipelines.append(pipeline)
    return pipelines


def _rcnn_bbox_head(model):
    roi_head = getattr(model, "roi_head", None)
    head = getattr(roi_head, "bbox_head", None)
    if isinstance(head, torch.nn.ModuleList):  # cascade: the last stage predicts
        head = head[-1]
    return head if head is not None and hasattr(head, "_predict_by_feat_single") else None


def _num_classes(model) -> int | None:
    head = _rcnn_bbox_head(model)
    if head is not None:
        return int(head.num_classes)
    bbox_head = getattr(model, "bbox_head", None)
    return int(bbox_head.num_classes) if hasattr(bbox_head, "num_classes") else None
