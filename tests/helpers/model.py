"""A small GroundingModule for tests that train a step (ResNet-18 without weights, one MiniLM layer)."""

from __future__ import annotations

from typing import Any

from lightning_wsg.grounding_module import GroundingModule


def tiny_model(**overrides: Any) -> GroundingModule:
    """A CPU-cheap :class:`GroundingModule` with the lexical teacher; ``overrides`` win."""
    settings = {
        "backbone": "resnet18",
        "pretrained_backbone": False,
        "text_encoder": "all-MiniLM-L6-v2",
        "text_encoder_overrides": {"num_hidden_layers": 1},
        "hidden_dim": 64,
        "embed_dim": 32,
        "teacher_matching": "lexical",
    }
    return GroundingModule(**(settings | overrides))
