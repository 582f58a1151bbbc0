"""The checks every datamodule makes of its settings, written once.

Both :class:`~lightning_wsg.data.GroundingDataModule` (a dataset's splits) and
:class:`~lightning_wsg.data.SentencesFileDataModule` (new images to ground) refuse bad loader
sizes when the run is configured rather than at the first batch, refuse what the model needs
of the samples when it does not add up, and refuse per-box features of another width than the
model's feature tower, with the same messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..detection.base import DetectionFormatError, DetectionStore

__all__ = ["NO_DETECTIONS", "check_feature_width", "check_loader_settings", "check_model_needs", "plain_paths"]

NO_DETECTIONS = (
    "no detections: data.detections is null and no DetectionCache callback supplied them; "
    "set data.detections to a proposals file or cache folder, or add "
    "lightning_wsg.detection.DetectionCache to trainer.callbacks (see cli_configs/detector/)"
)


def check_loader_settings(num_workers: int, **positive: int) -> None:
    """Refuse ``num_workers < 0`` and any of ``positive`` (``batch_size=...``) below 1, naming it."""
    for name, value in positive.items():
        if int(value) < 1:
            raise ValueError(f"data.{name} must be >= 1, got {value}")
    if int(num_workers) < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")


def check_model_needs(read_features: bool, feature_dim: int | None) -> None:
    """Refuse a feature width without feature reading (the two come from one model)."""
    if feature_dim is not None and not read_features:
        raise ValueError(
            f"data.feature_dim={feature_dim} is the width of the per-box features the model reads, but "
            "data.read_features is false: set read_features=True (a feature tower) or leave feature_dim out"
        )
    if feature_dim is not None and int(feature_dim) < 1:
        raise ValueError(f"data.feature_dim must be >= 1, got {feature_dim}")


def check_feature_width(store: DetectionStore, want: int | None, example: str) -> None:
    """Refuse ``store``'s per-box features when their width is not ``want`` (``None``: any)."""
    if want is not None and store.feature_dim != want:
        raise DetectionFormatError(
            f"{store.path}: features of width {store.feature_dim} (image {example}), but the model's feature "
            f"tower takes {want} (model.region_encoder.init_args.feature_dim, data.feature_dim)"
        )


def plain_paths(hparams: Any) -> None:
    """Paths as plain strings, so that checkpoints load with ``torch.load(weights_only=True)``."""
    for key, value in list(hparams.items()):
        if isinstance(value, Path):
            hparams[key] = str(value)
