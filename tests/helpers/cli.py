"""Arguments for in-process runs of the ``lightning`` CLI on small CPU-sized models."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLICKR_YAML = str(REPO / "cli_configs" / "flickr.yaml")
TINY_MODEL_YAML = str(REPO / "tests" / "configs" / "tiny_model.yaml")
DEMO_YAML = str(REPO / "cli_configs" / "demo.yaml")

#: a small random text encoder on the offline MiniLM tokenizer (fast on CPU)
TINY_TEXT = json.dumps({"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128})


def tiny_model_args() -> list[str]:
    """CLI overrides that make the model of ``tests/configs/tiny_model.yaml`` even smaller for tests."""
    return [
        "--model.phrase_encoder.pretrained=false",
        f"--model.phrase_encoder.config_overrides={TINY_TEXT}",
        "--model.phrase_encoder.hidden_dim=64",
        "--model.phrase_encoder.embed_dim=32",
        "--model.region_encoder.hidden_dim=64",
        "--model.region_encoder.embed_dim=32",
        "--model.loss.teacher.matching=lexical",
    ]


def data_args(root: Path, image_dir: Path, detections: Path) -> list[str]:
    return [f"--data.root={root}", f"--data.image_dir={image_dir}", f"--data.detections={detections}"]


def trainer_args(tmp: Path) -> list[str]:
    return [
        f"--trainer.default_root_dir={tmp}",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
    ]


def demo_args(tmp: Path, epochs: int, num_train: int, num_val: int, num_test: int) -> list[str]:
    """The demo config on a small world of its own in ``tmp``, checkpoints beside it."""
    return [
        "--config",
        DEMO_YAML,
        f"--trainer.default_root_dir={tmp}",
        f"--trainer.callbacks.dirpath={tmp / 'checkpoints'}",
        "--trainer.enable_model_summary=false",
        f"--trainer.max_epochs={epochs}",
        f"--data.root={tmp / 'world'}",
        f"--data.num_train={num_train}",
        f"--data.num_val={num_val}",
        f"--data.num_test={num_test}",
        "--data.num_workers=0",
    ]


def tiny_demo_args(tmp: Path) -> list[str]:
    """The demo config (packaged EfficientNet-Lite0, feature cache) on a 24-image world, one
    epoch, with a small phrase tower: a few seconds."""
    return [
        *demo_args(tmp, epochs=1, num_train=24, num_val=8, num_test=8),
        "--data.world_image_size=64",
        "--data.image_size=64",
        "--data.batch_size=8",
        f"--model.phrase_encoder.config_overrides={TINY_TEXT}",
        "--model.phrase_encoder.hidden_dim=32",
        "--model.phrase_encoder.embed_dim=16",
        "--model.region_encoder.hidden_dim=32",
        "--model.region_encoder.embed_dim=16",
    ]
