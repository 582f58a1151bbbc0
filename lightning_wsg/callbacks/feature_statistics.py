"""Hands a feature tower the statistics of the training split's region features.

:class:`~lightning_wsg.models.FeatureRegionEncoder` standardises its input features with
their mean and standard deviation over the training split. The data lives in the
datamodule and the tower in the LightningModule; this callback is the one place that sees
both, once, at the start of ``fit`` (before the module's own ``on_fit_start``, which refuses
to train an unprepared tower). The ``lightning`` command adds it to every run; in Python add
it to the Trainer's callbacks. A tower restored from a checkpoint is prepared already and
is left alone.
"""

from __future__ import annotations

from pytorch_lightning import Callback, LightningModule, Trainer

__all__ = ["FeatureStatistics"]


class FeatureStatistics(Callback):
    """At ``fit`` start, ``region_encoder.prepare(datamodule.region_features(train_split))``
    when the module's region tower still needs it."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tower = pl_module.model.region_encoder
        if not tower.needs_preparation:
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "region_features"):
            raise RuntimeError(
                f"{type(tower).__name__} needs statistics of the training split's region features, but the "
                "trainer has no lightning_wsg datamodule to read them from"
            )
        tower.prepare(datamodule.region_features(datamodule.train_split))
