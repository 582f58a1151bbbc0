"""The feature tower: an MLP over given per-box features (``docs/method.md``, section 1: the paper's input).

Published weakly supervised grounding trains on region features precomputed by a detector
(bottom-up-attention Faster R-CNN, 2048-d per box). This tower reads them from the batch
(``batch.region_features``, ``[B, R, F]``), normalises each dimension with statistics of the
training split, optionally appends each box's relative position and size
(:func:`~lightning_wsg.models.region_encoder.box_geometry`), then
``Linear(hidden_dim), ReLU, Linear(embed_dim)`` and L2 normalisation. No image is read.

The statistics (per-dimension mean and standard deviation) are buffers: computed once before
the first training step (:meth:`FeatureRegionEncoder.prepare`, called by the
``GroundingModule`` with the training split's features) and saved in every checkpoint.

Example:
    >>> import torch
    >>> enc = FeatureRegionEncoder(feature_dim=6, hidden_dim=16, embed_dim=8)
    >>> enc.prepare([torch.randn(5, 6), torch.randn(3, 6)])
    >>> enc(torch.randn(1, 2, 6), torch.tensor([[True, False]])).shape
    torch.Size([1, 2, 8])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .region_encoder import GEOMETRY_DIM, box_geometry
from .towers import RegionTower

__all__ = ["FeatureRegionEncoder"]


class FeatureRegionEncoder(RegionTower):
    """Encode precomputed per-box features into unit-norm region features.

    Args:
        feature_dim: ``F``, the width of the given features (2048 for bottom-up-attention).
        hidden_dim: hidden width of the MLP.
        embed_dim: output dimension ``D``.
        box_geometry: also feed the MLP each box's relative position and size.
        normalize: standardise each feature dimension with the training split's mean and
            standard deviation (else the features enter as given).
        min_std: standard deviations below this count as this (constant dimensions).
    """

    reads_images = False

    def __init__(
        self,
        feature_dim: int = 2048,
        hidden_dim: int = 1024,
        embed_dim: int = 512,
        box_geometry: bool = False,
        normalize: bool = True,
        min_std: float = 1e-6,
    ) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.feature_dim = int(feature_dim)
        self.embed_dim = int(embed_dim)
        self.box_geometry = box_geometry
        self.normalize = normalize
        self.min_std = float(min_std)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.register_buffer("feature_count", torch.zeros((), dtype=torch.long))  # boxes behind the statistics
        width = feature_dim + (GEOMETRY_DIM if box_geometry else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))

    @property
    def needs_preparation(self) -> bool:
        return self.normalize and int(self.feature_count) == 0

    def prepare(self, feature_batches: Iterable[Tensor]) -> None:
        """Compute the per-dimension statistics from ``[N, F]`` feature blocks (the training split)."""
        total = torch.zeros(self.feature_dim, dtype=torch.float64)
        squares = torch.zeros(self.feature_dim, dtype=torch.float64)
        count = 0
        for block in feature_batches:
            block = torch.as_tensor(block).reshape(-1, block.shape[-1]).to(torch.float64)
            if block.shape[1] != self.feature_dim:
                raise ValueError(
                    f"region features of width {block.shape[1]}, but the feature tower was built for "
                    f"feature_dim={self.feature_dim}"
                )
            total += block.sum(0)
            squares += block.square().sum(0)
            count += block.shape[0]
        if count == 0:
            raise ValueError("no region features to compute the normalisation statistics from")
        mean = total / count
        var = (squares / count - mean.square()).clamp(min=0.0)
        self.feature_mean.copy_(mean.float())
        self.feature_std.copy_(var.sqrt().float())
        self.feature_count.fill_(count)

    def forward(
        self,
        features: Tensor,
        proposal_mask: Tensor,
        proposals: Tensor | None = None,
        image_sizes: Tensor | None = None,
    ) -> Tensor:
        """Encode the given features of each image's proposals.

        Args:
            features: ``[B, R, F]`` per-box features.
            proposal_mask: ``[B, R]`` bool, real proposals.
            proposals: ``[B, R, 4]`` corners in original pixels (for ``box_geometry``).
            image_sizes: ``[B, 2]`` original ``(width, height)`` (for ``box_geometry``).

        Returns:
            ``[B, R, D]`` unit-norm features, zero rows for padding.
        """
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"region features of width {features.shape[-1]}, but this model was trained on "
                f"feature_dim={self.feature_dim} (model.region_encoder.init_args.feature_dim)"
            )
        if self.needs_preparation:
            raise RuntimeError(
                "the feature tower's normalisation statistics were never computed: train it (fit computes "
                "them on the training split), load a trained checkpoint, or set normalize=false"
            )
        proposal_mask = proposal_mask.to(torch.bool)
        x = features[proposal_mask].float()
        if self.normalize:
            x = (x - self.feature_mean) / self.feature_std.clamp(min=self.min_std)
        if self.box_geometry:
            if proposals is None or image_sizes is None:
                raise ValueError("box_geometry needs the proposals and the image sizes")
            sizes = image_sizes.to(x)[:, None, :].expand(*proposal_mask.shape, 2)[proposal_mask]
            boxes = proposals.to(x)[proposal_mask]
            x = torch.cat([x, box_geometry(boxes, 1.0, 1.0) / _geometry_scale(sizes)], dim=1)
        emb = F.normalize(self.mlp(x), dim=-1)
        out = emb.new_zeros(*proposal_mask.shape, emb.shape[-1])
        out[proposal_mask] = emb
        return out

    def encode(self, batch: Any) -> Tensor:
        """Region features of a batch's given per-box features (``batch.region_features``)."""
        if getattr(batch, "region_features", None) is None:
            raise ValueError(
                "the feature tower needs per-box features, but the batch has none: build the datamodule with "
                "read_features=True (data.read_features; the lightning CLI sets it from the model) and give "
                "data.detections a source with features (a bottom-up-attention TSV, an HDF5 file)"
            )
        return self(batch.region_features, batch.proposal_mask, batch.proposals, batch.image_sizes)


def _geometry_scale(sizes: Tensor) -> Tensor:
    """Divisors that make :func:`box_geometry` of pixel boxes relative to each box's image."""
    w, h = sizes[:, :1], sizes[:, 1:]
    return torch.cat([w, h, w, h, w, h, w * h], dim=1)
