"""`lightning test` on the real Flickr30K Entities test annotations (placeholder images).

Proposals hold every ground-truth box and every chain's union box, so the proposal upper
bound must be exactly 1.0, and every one of the 14,481 evaluable test phrases is counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import FLICKR_YAML, TINY_MODEL_YAML, data_args, tiny_model_args, trainer_args
from helpers.flickr import annotation_sizes, make_placeholder_images, write_gt_proposals

from lightning_wsg.cli import main
from lightning_wsg.data.flickr30k_entities import read_split


@pytest.mark.slow
def test_lightning_test_on_real_flickr_test_annotations(flickr_root: Path, tmp_path: Path) -> None:
    test_ids = read_split(flickr_root, "test")
    assert len(test_ids) == 1000
    images = make_placeholder_images(tmp_path / "images", annotation_sizes(flickr_root, test_ids))
    detections = write_gt_proposals(tmp_path / "proposals.jsonl", flickr_root, test_ids, extra=5)
    cli = main(
        [
            "test",
            "--config",
            FLICKR_YAML,
            "--config",
            TINY_MODEL_YAML,
            *data_args(flickr_root, images, detections),
            *tiny_model_args(),
            *trainer_args(tmp_path),
            "--data.image_size=64",
            "--data.batch_size=50",
            "--data.num_workers=2",
            "--data.max_proposals=1000",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert int(metrics["test/num_phrases"]) == 14481
    assert float(metrics["test/upper_bound"]) == pytest.approx(1.0)
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
    assert float(metrics["test/recall@10"]) >= float(metrics["test/recall@1"])
    for ptype in ("people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other"):
        assert f"test/acc_{ptype}" in metrics
