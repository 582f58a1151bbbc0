"""A quiet CPU Trainer for tests: one process, no logger, progress bar, summary or sanity check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning import Trainer


def quiet_trainer(root: Path, **overrides: Any) -> Trainer:
    """``Trainer`` on one CPU for one epoch, writing only under ``root``; ``overrides`` win.

    Like the ``lightning`` command it carries :class:`FeatureStatistics` (a feature tower's
    training statistics); ``callbacks`` given are added to it.
    """
    from lightning_wsg.callbacks import FeatureStatistics

    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": root,
    }
    overrides["callbacks"] = [FeatureStatistics(), *(overrides.get("callbacks") or [])]
    return Trainer(**(settings | overrides))
