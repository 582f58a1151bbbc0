"""Small GroundingModules for tests that train a step (ResNet-18 without weights, one MiniLM layer)."""

from __future__ import annotations

from typing import Any

from lightning_wsg.contrastive_distillation import ContrastiveDistillationLoss
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.models import PhraseEncoder, RegionEncoder, Teacher

#: GroundingModule's own arguments; every other keyword of tiny_model is the loss's
MODULE_ARGS = ("optimizer", "lr_schedule", "phrase_types", "weights")

#: a small random text encoder on the offline MiniLM tokenizer (fast on CPU)
TINY_TEXT = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}


def tiny_model(
    region: dict[str, Any] | None = None,
    phrase: dict[str, Any] | None = None,
    teacher: dict[str, Any] | None = None,
    **module: Any,
) -> GroundingModule:
    """A CPU-cheap :class:`GroundingModule` with the lexical teacher.

    ``region``, ``phrase`` and ``teacher`` override the towers' arguments; the other keyword
    arguments are the module's own (:data:`MODULE_ARGS`) or the loss's
    (:class:`ContrastiveDistillationLoss`; the ramp in absolute steps unless given).
    """
    region_encoder = RegionEncoder(
        **({"backbone": "resnet18", "pretrained": False, "hidden_dim": 64, "embed_dim": 32} | (region or {}))
    )
    phrase_encoder = PhraseEncoder(
        **(
            {
                "model": "all-MiniLM-L6-v2",
                "config_overrides": {"num_hidden_layers": 1},
                "hidden_dim": 64,
                "embed_dim": 32,
            }
            | (phrase or {})
        )
    )
    own = {k: module.pop(k) for k in MODULE_ARGS if k in module}
    module.setdefault("kd_weight_unit", "steps")  # a module trained step by step without a trainer
    module.setdefault("kd_weight_every", 500 if module["kd_weight_unit"] == "steps" else 0.0179)
    loss = ContrastiveDistillationLoss(Teacher(**({"matching": "lexical"} | (teacher or {}))), **module)
    return GroundingModule(region_encoder, phrase_encoder, loss, **own)
