"""Small GroundingModules for tests that train a step (ResNet-18 without weights, one MiniLM layer)."""

from __future__ import annotations

from typing import Any

from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.models import PhraseEncoder, RegionEncoder, Teacher

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
    arguments are the module's own.
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
    return GroundingModule(
        region_encoder, phrase_encoder, Teacher(**({"matching": "lexical"} | (teacher or {}))), **module
    )
