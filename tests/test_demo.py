"""The demo config end to end on a tiny world: `lightning fit` then `lightning test`, in-process."""

from __future__ import annotations

from pathlib import Path

from helpers.cli import tiny_demo_args

from lightning_wsg.cli import main


def test_demo_config_fits_and_tests_on_a_tiny_world(tmp_path: Path) -> None:
    cli = main(["fit", *tiny_demo_args(tmp_path)])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step > 0
    assert (tmp_path / "world" / "world.json").is_file()
    for key in ("train/loss", "train/nce", "train/kd", "val/acc"):
        assert key in trainer.callback_metrics, key
    best = Path(trainer.checkpoint_callback.best_model_path)
    assert best == tmp_path / "checkpoints" / "best.ckpt" and best.is_file()

    metrics = main(["test", *tiny_demo_args(tmp_path), f"--ckpt_path={best}"]).trainer.callback_metrics
    for key in ("test/acc", "test/acc_any", "test/pointing", "test/upper_bound", "test/num_phrases"):
        assert key in metrics, key
    assert metrics["test/num_phrases"] > 0
    assert 0.0 <= float(metrics["test/acc"]) <= float(metrics["test/upper_bound"]) <= 1.0
