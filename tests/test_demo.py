"""The demo config end to end on a tiny world: `lightning fit` then `lightning test`, in-process."""

from __future__ import annotations

from pathlib import Path

from helpers.cli import TINY_TEXT, demo_args

from lightning_wsg.cli import main


def _args(tmp_path: Path) -> list[str]:
    return [
        *demo_args(tmp_path, epochs=1, num_train=24, num_val=8, num_test=8),
        "--data.world_image_size=64",
        "--data.image_size=64",
        "--data.batch_size=8",
        f"--model.phrase_encoder.config_overrides={TINY_TEXT}",
        "--model.phrase_encoder.hidden_dim=32",
        "--model.phrase_encoder.embed_dim=16",
        "--model.region_encoder.hidden_dim=32",
        "--model.region_encoder.embed_dim=16",
    ]


def test_demo_config_fits_and_tests_on_a_tiny_world(tmp_path: Path) -> None:
    cli = main(["fit", *_args(tmp_path)])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step > 0
    assert (tmp_path / "world" / "world.json").is_file()
    for key in ("train/loss", "train/nce", "train/kd", "val/acc"):
        assert key in trainer.callback_metrics, key
    best = Path(trainer.checkpoint_callback.best_model_path)
    assert best == tmp_path / "checkpoints" / "best.ckpt" and best.is_file()

    metrics = main(["test", *_args(tmp_path), f"--ckpt_path={best}"]).trainer.callback_metrics
    for key in ("test/acc", "test/acc_any", "test/pointing", "test/upper_bound", "test/num_phrases"):
        assert key in metrics, key
    assert metrics["test/num_phrases"] > 0
    assert 0.0 <= float(metrics["test/acc"]) <= float(metrics["test/upper_bound"]) <= 1.0
