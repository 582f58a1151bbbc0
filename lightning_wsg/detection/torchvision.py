"""A torchvision detection backend (the Faster R-CNN family) for :class:`DetectionCache`.

Any ``torchvision.models.get_model`` detection builder that takes ``box_score_thresh``,
``box_nms_thresh``, ``box_detections_per_img``, ``min_size`` and ``max_size``
(``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``,
``fasterrcnn_mobilenet_v3_large_fpn``, ...). Weights come from a torchvision weights enum
(category names from its ``meta["categories"]``), from a checkpoint file (a state dict,
with the category names given), or are random (``weights: null``, for tests).

Output per image: boxes in original-image pixels, the label's category name, its score,
after the model's per-class NMS, an optional class-agnostic NMS and the ``max_boxes``
top-scored. With ``class_probs=True`` each box also carries the softmax over the
foreground categories (``class_names`` = categories without ``__background__``; the
background probability is ``1 - sum``) of the proposal it was regressed from. With
``box_features=True`` each box also carries its RoI-head feature: ``roi_heads.box_roi_pool``
over the backbone's feature maps at the final box (in the resized input's pixels, where the
model computed it), then ``roi_heads.box_head`` (``TwoMLPHead``: 1024-d); the cache stores
them for the feature tower (``FeatureRegionEncoder``).

Example:
    >>> backend = TorchvisionBackend("fasterrcnn_resnet50_fpn_v2", weights="DEFAULT")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .backend import DetectorBackend, keep_top_boxes
from .base import Detections, read_vocabulary
from .digests import file_digest

__all__ = ["TorchvisionBackend"]


def _load_categories(categories: Sequence[str] | str | Path | None) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, (str, Path)):
        return read_vocabulary(categories)
    return [str(c) for c in categories]


def _postprocess_with_probs(self, class_logits, box_regression, proposals, image_shapes):
    """``RoIHeads.postprocess_detections`` that also keeps each kept box's class softmax.

    Same steps as torchvision's (score threshold, small boxes, per-class NMS, top-k); the
    probability rows land in ``self._wsg_class_probs`` (one ``[K, C - 1]`` per image).
    """
    from torchvision.ops import boxes as box_ops

    num_classes = class_logits.shape[-1]
    boxes_per_image = [b.shape[0] for b in proposals]
    pred_boxes = self.box_coder.decode(box_regression, proposals)
    pred_scores = F.softmax(class_logits, -1)
    all_boxes, all_scores, all_labels, all_probs = [], [], [], []
    for boxes, scores, image_shape in zip(
        pred_boxes.split(boxes_per_image, 0), pred_scores.split(boxes_per_image, 0), image_shapes
    ):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        probs = scores[:, 1:]
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)[:, 1:]
        rows = torch.arange(scores.shape[0], device=scores.device).view(-1, 1).expand_as(scores)[:, 1:]
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels, rows = labels.reshape(-1), rows.reshape(-1)
        inds = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels, rows = boxes[inds], scores[inds], labels[inds], rows[inds]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
        all_probs.append(probs[rows[keep]])
    self._wsg_class_probs = all_probs
    return all_boxes, all_scores, all_labels


def _keep_box_features(roi_heads, args, output) -> None:
    """A forward hook of ``RoIHeads``: each final box's ``box_head`` feature, in ``_wsg_box_features``.

    ``roi_heads(features, proposals, image_shapes)`` returns boxes in the resized input's
    pixels (the model maps them to the original image afterwards), so they pool the same
    feature maps the detector's own proposals did.
    """
    features, _, image_shapes = args[:3]
    boxes = [det["boxes"] for det in output[0]]
    pooled = roi_heads.box_head(roi_heads.box_roi_pool(features, boxes, image_shapes))
    roi_heads._wsg_box_features = list(pooled.flatten(1).split([len(b) for b in boxes]))


class TorchvisionBackend(DetectorBackend):
    """A torchvision Faster R-CNN (family) detector.

    Args:
        model: a ``torchvision.models.get_model`` detection builder name.
        weights: a weights enum name: ``"DEFAULT"``, a member of the model's enum
            (``"COCO_V1"``) or a full name (``"FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"``);
            ``None`` for a checkpoint file or random weights.
        checkpoint: a state dict file (``torch.save(model.state_dict())``; a dict holding it
            under ``"model"`` or ``"state_dict"`` works too), with ``weights=None``.
        categories: the category names, index 0 being the background (a list or a
            vocabulary file, one name a line); required without ``weights``, taken from
            the weights' ``meta["categories"]`` otherwise.
        score_threshold: keep boxes whose class score exceeds this.
        max_boxes: boxes kept per image (top-scored).
        class_nms_iou: the model's per-class NMS IoU (torchvision's ``box_nms_thresh``).
        nms_iou: class-agnostic NMS IoU applied after it (``None``: none).
        min_size: the shorter image side at the detector's input.
        max_size: the longer side's cap at the detector's input.
        class_probs: also return each box's softmax over the foreground categories.
        box_features: also return each box's RoI-head feature (the ``box_head`` output), for
            the feature tower (see the module docstring).
        batch_size: images per forward pass. torchvision pads a batch's images to one size,
            which changes the output slightly (not part of the fingerprint); 1 is exact.
        seed: the seed of random weights (``weights`` and ``checkpoint`` both ``None``).
    """

    name = "torchvision"

    def __init__(
        self,
        model: str = "fasterrcnn_resnet50_fpn_v2",
        weights: str | None = "DEFAULT",
        checkpoint: str | Path | None = None,
        categories: list[str] | str | Path | None = None,
        score_threshold: float = 0.05,
        max_boxes: int = 100,
        class_nms_iou: float = 0.5,
        nms_iou: float | None = 0.5,
        min_size: int = 800,
        max_size: int = 1333,
        class_probs: bool = False,
        box_features: bool = False,
        batch_size: int = 1,
        seed: int = 0,
    ) -> None:
        # a command-line `null` nested in a callback list can arrive as the text "None"
        weights, checkpoint = (None if str(v).lower() in ("none", "null") else v for v in (weights, checkpoint))
        if weights is not None and checkpoint is not None:
            raise ValueError("give weights (a torchvision enum) or checkpoint (a file), not both")
        if weights is None and categories is None:
            raise ValueError("without torchvision weights, categories (the class names, background first) are needed")
        if max_boxes < 1 or batch_size < 1:
            raise ValueError(f"max_boxes and batch_size must be >= 1, got {max_boxes}, {batch_size}")
        self.model_name = model
        self.weights = weights
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.categories = categories
        self.score_threshold = float(score_threshold)
        self.max_boxes = int(max_boxes)
        self.class_nms_iou = float(class_nms_iou)
        self.nms_iou = float(nms_iou) if nms_iou is not None else None
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.class_probs = bool(class_probs)
        self.box_features = bool(box_features)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._model: torch.nn.Module | None = None
        self._device = torch.device("cpu")

    # -- settings (no model built) ----------------------------------------------------
    def _weights_enum(self):
        if self.weights is None:
            return None
        from torchvision.models import get_model_weights, get_weight

        if "." in self.weights:
            return get_weight(self.weights)
        enum = get_model_weights(self.model_name)
        return enum.DEFAULT if self.weights == "DEFAULT" else enum[self.weights]

    def _categories(self) -> list[str]:
        weights = self._weights_enum()
        if weights is not None:
            return list(weights.meta["categories"])
        return _load_categories(self.categories)  # type: ignore[return-value]

    def settings(self, digest: Callable[[Path], str] = file_digest) -> dict[str, Any]:
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise FileNotFoundError(f"torchvision detector checkpoint not found: {self.checkpoint}")
        weights = self._weights_enum()
        return {
            "backend": self.name,
            "model": self.model_name,
            "weights": str(weights) if weights is not None else None,
            "weights_url": weights.url if weights is not None else None,
            "checkpoint_sha256": digest(self.checkpoint) if self.checkpoint is not None else None,
            "random_init_seed": self.seed if weights is None and self.checkpoint is None else None,
            "categories": self._categories(),
            "score_threshold": self.score_threshold,
            "max_boxes": self.max_boxes,
            "class_nms_iou": self.class_nms_iou,
            "nms_iou": self.nms_iou,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "class_probs": self.class_probs,
            # only when on: a cache made before the option existed keeps its folder
            **({"box_features": True} if self.box_features else {}),
        }

    @property
    def class_names(self) -> list[str]:
        """Foreground category names (``categories[1:]``); labels and ``class_probs`` use them."""
        return self._categories()[1:]

    def versions(self) -> dict[str, str]:
        return {"torchvision": importlib.metadata.version("torchvision")}

    # -- the model ----------------------------------------------------------------------
    def load(self, device: torch.device | str | None = None) -> None:
        from torchvision.models import get_model

        weights = self._weights_enum()
        kwargs: dict[str, Any] = {
            "box_score_thresh": self.score_threshold,
            "box_nms_thresh": self.class_nms_iou,
            "box_detections_per_img": self.max_boxes,
            "min_size": self.min_size,
            "max_size": self.max_size,
        }
        if weights is not None:
            model = get_model(self.model_name, weights=weights, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = get_model(
                    self.model_name, weights=None, weights_backbone=None, num_classes=len(self._categories()), **kwargs
                )
            if self.checkpoint is not None:
                state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
                if isinstance(state, dict):
                    state = state.get("model", state.get("state_dict", state))
                model.load_state_dict(state)
        if self.class_probs:
            model.roi_heads.postprocess_detections = MethodType(_postprocess_with_probs, model.roi_heads)
        if self.box_features:
            model.roi_heads.register_forward_hook(_keep_box_features)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._model = model.eval().to(self._device)
        self._names = self._categories()
        self._loaded = True

    def _read(self, path: Path) -> Tensor:
        from torchvision.transforms.v2 import functional as TF

        with Image.open(path) as img:
            image = TF.pil_to_tensor(img.convert("RGB"))
        return TF.to_dtype(image, torch.float32, scale=True)

    @torch.inference_mode()
    def detect(self, images: Sequence[tuple[str, Path]]) -> list[Detections]:
        assert self._model is not None, "load() first"
        batch = [self._read(path).to(self._device) for _, path in images]
        outputs = self._model(batch)
        probs_list = getattr(self._model.roi_heads, "_wsg_class_probs", None) if self.class_probs else None
        feats_list = getattr(self._model.roi_heads, "_wsg_box_features", None) if self.box_features else None
        results = []
        for i, ((image_id, _), out) in enumerate(zip(images, outputs)):
            probs = probs_list[i].float().cpu() if probs_list is not None else None
            feats = feats_list[i].float().cpu() if feats_list is not None else None
            boxes, scores, labels = out["boxes"].float().cpu(), out["scores"].float().cpu(), out["labels"].cpu()
            results.append(
                keep_top_boxes(image_id, boxes, scores, labels, self._names, self.nms_iou, self.max_boxes, probs, feats)
            )
        return results
