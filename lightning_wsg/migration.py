"""Checkpoints and model folders written before the model / training split.

Until layout 2 the LightningModule held the towers and every loss setting itself:
hyperparameters ``region_encoder``, ``phrase_encoder``, ``teacher``, ``tau_sentence`` ...
side by side, and weights named ``region_encoder.*`` / ``phrase_encoder.*``. Layout 2 keeps
the towers in a :class:`~lightning_wsg.model.GroundingModel` (weights ``model.*``) and the loss
settings in ``model.loss`` (:class:`~lightning_wsg.contrastive_distillation.ContrastiveDistillationLoss`).
The old ramp counted absolute steps, so a migrated loss keeps ``kd_weight_unit: steps``:
resuming or re-running it trains exactly as before.

:func:`migrate_checkpoint` rewrites a loaded checkpoint in place (``GroundingModule``
calls it when loading); :func:`migrate_model_config` rewrites the ``model:`` section of a
config (an old model folder's ``config.yaml``). A checkpoint of a later layout than this
package knows is refused, naming it.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["LAYOUT", "LAYOUT_KEY", "LOSS_KEYS", "is_old_model_config", "migrate_checkpoint", "migrate_model_config"]

#: the checkpoint layout this package writes
LAYOUT = 2
#: the checkpoint key recording it (absent: layout 1)
LAYOUT_KEY = "lightning_wsg_layout"
#: the module arguments of layout 1 that are the loss's arguments now
LOSS_KEYS = (
    "teacher",
    "tau_sentence",
    "phrase_reduce",
    "region_reduce",
    "symmetric_nce",
    "gather_negatives",
    "use_nce",
    "use_kd",
    "kd_target",
    "tau_student",
    "tau_teacher",
    "kd_top_k",
    "kd_weight_initial",
    "kd_weight_increment",
    "kd_weight_every",
    "kd_weight_max",
)
_MOVED_WEIGHTS = {"region_encoder.": "model.region_encoder.", "phrase_encoder.": "model.phrase_encoder.", "teacher.": "loss.teacher."}


def is_old_model_config(model: dict[str, Any]) -> bool:
    """Whether a ``model:`` section (or hyperparameters) has layout 1's loss settings at its top."""
    return any(key in model for key in LOSS_KEYS)


def migrate_model_config(model: dict[str, Any]) -> dict[str, Any]:
    """Layout 1's ``model:`` section -> layout 2's (a copy; layout 2 is returned unchanged).

    The loss settings move under ``loss`` with ``kd_weight_unit: steps`` (layout 1's ramp
    counted steps); a module that did not distil keeps no teacher.
    """
    model = copy.deepcopy(dict(model))
    if not is_old_model_config(model):
        return model
    loss = {key: model.pop(key) for key in LOSS_KEYS if key in model}
    if "kd_weight_every" in loss or loss.get("use_kd", True):
        loss["kd_weight_unit"] = "steps"
        loss.setdefault("kd_weight_every", 500)  # layout 1's default
    if not loss.get("use_kd", True):
        loss["teacher"] = None
    model["loss"] = loss
    return model


def migrate_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """Bring a loaded ``GroundingModule`` checkpoint to :data:`LAYOUT`, in place.

    Returns:
        Whether anything changed.

    Raises:
        ValueError: a layout newer than this package's.
    """
    layout = int(checkpoint.get(LAYOUT_KEY, 1))
    if layout > LAYOUT:
        raise ValueError(
            f"this checkpoint has lightning_wsg layout {layout}, newer than this package's ({LAYOUT}): "
            "upgrade lightning_wsg to load it"
        )
    if layout == LAYOUT:
        return False
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict):
        migrated = migrate_model_config(hparams)
        hparams.clear()
        hparams.update(migrated)
    state = checkpoint.get("state_dict")
    if isinstance(state, dict):
        renamed = {}
        for name, value in state.items():
            for old, new in _MOVED_WEIGHTS.items():
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            renamed[name] = value
        state.clear()
        state.update(renamed)
    checkpoint[LAYOUT_KEY] = LAYOUT
    return True
