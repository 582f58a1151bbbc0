"""Checkpoints and model folders written before the model / training split (layout 1).

The fixtures in tests/fixtures/layout1 were written by the package of commit a82faa7 (see
their README): they load through lightning_wsg.migration and ground exactly as they did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.migration import LAYOUT, LAYOUT_KEY, migrate_checkpoint, migrate_model_config
from lightning_wsg.model import GroundingModel

LAYOUT1 = Path(__file__).parent / "fixtures" / "layout1"


def _ground(model) -> list:
    inputs = torch.load(LAYOUT1 / "inputs.pt", weights_only=True)
    return model.ground(
        (100, 80), "a [red car] by [the old tree]", proposals=inputs["proposals"], features=inputs["features"], top_k=3
    )


def _same_results(got: list, expected: list) -> None:
    assert [p["phrase"] for p in got] == [p["phrase"] for p in expected]
    for g, e in zip(got, expected):
        assert g["box"] == e["box"] and g["score"] == pytest.approx(e["score"], abs=2e-6)
        assert [a["box"] for a in g["alternatives"]] == [a["box"] for a in e["alternatives"]]


def test_a_layout1_checkpoint_loads_through_the_migration_and_grounds_as_before() -> None:
    module = GroundingModule.load_from_checkpoint(LAYOUT1 / "layout1.ckpt").eval()
    # its loss settings moved under model.loss, the ramp kept in absolute steps
    assert module.loss.tau_student == 0.7 and module.loss.kd_top_k == 4
    assert module.loss.ramp["unit"] == "steps" and module.loss.ramp_steps() == 7
    assert module.loss.teacher.matching == "lexical"
    assert module.model.image_size is None  # saved by a trainer without a datamodule
    assert not module.model.region_encoder.needs_preparation  # the feature statistics came along
    _same_results(_ground(module.model), json.loads((LAYOUT1 / "expected.json").read_text()))


def test_migrate_checkpoint_renames_the_weights_and_records_the_layout() -> None:
    checkpoint = torch.load(LAYOUT1 / "layout1.ckpt", weights_only=True)
    assert LAYOUT_KEY not in checkpoint and any(k.startswith("region_encoder.") for k in checkpoint["state_dict"])
    assert migrate_checkpoint(checkpoint) is True
    assert checkpoint[LAYOUT_KEY] == LAYOUT
    names = list(checkpoint["state_dict"])
    assert names and all(k.startswith(("model.region_encoder.", "model.phrase_encoder.")) for k in names)
    assert "tau_student" not in checkpoint["hyper_parameters"]
    assert checkpoint["hyper_parameters"]["loss"]["kd_weight_every"] == 7
    assert migrate_checkpoint(checkpoint) is False  # already layout 2: left alone


def test_a_checkpoint_of_a_later_layout_is_refused_naming_it(tmp_path) -> None:
    checkpoint = torch.load(LAYOUT1 / "layout1.ckpt", weights_only=True)
    checkpoint[LAYOUT_KEY] = LAYOUT + 1
    torch.save(checkpoint, tmp_path / "future.ckpt")
    with pytest.raises(ValueError, match=rf"layout {LAYOUT + 1}, newer than this package's \({LAYOUT}\)"):
        GroundingModule.load_from_checkpoint(tmp_path / "future.ckpt")


def test_a_layout1_model_folder_loads_as_a_grounding_model() -> None:
    model = GroundingModel.from_pretrained(LAYOUT1 / "layout1_folder")
    assert model.image_size == 96 and not model.training
    _same_results(_ground(model), json.loads((LAYOUT1 / "expected.json").read_text()))


def test_migrate_model_config_moves_the_loss_settings() -> None:
    old = yaml.safe_load((LAYOUT1 / "layout1_folder" / "config.yaml").read_text())["model"]
    assert "teacher" in old and "tau_student" in old
    new = migrate_model_config(old)
    assert set(new) >= {"region_encoder", "phrase_encoder", "loss"} and "teacher" not in new
    assert new["loss"]["teacher"] == old["teacher"] and new["loss"]["kd_weight_unit"] == "steps"
    assert new["region_encoder"] == old["region_encoder"]
    assert migrate_model_config(new) == new


def test_the_command_line_takes_a_layout1_model_folder(tmp_path) -> None:
    from lightning_wsg.cli import expand_model_folders

    folder = tmp_path / "old"
    shutil.copytree(LAYOUT1 / "layout1_folder", folder)
    args = expand_model_folders(["--model", str(folder)])
    assert args[0] == "--config" and args[2] == f"--model.weights={folder}"
    doc = yaml.safe_load(args[1])  # the migrated configuration, given inline
    assert "loss" in doc["model"] and "tau_student" not in doc["model"]


def test_resuming_or_testing_from_a_layout1_checkpoint_renames_its_weights_before_they_load() -> None:
    """``lightning test --ckpt_path old.ckpt``: the CLI builds today's module, then Lightning hands
    the raw checkpoint to on_load_checkpoint before load_state_dict."""
    from pytorch_lightning.cli import instantiate_module

    raw = torch.load(LAYOUT1 / "layout1.ckpt", weights_only=True)
    config = migrate_model_config(raw["hyper_parameters"])
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    module = instantiate_module(GroundingModule, config)
    module.on_load_checkpoint(raw)
    module.load_state_dict(raw["state_dict"])  # strict: every name found
    module.eval()
    _same_results(_ground(module.model), json.loads((LAYOUT1 / "expected.json").read_text()))
