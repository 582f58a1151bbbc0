"""WorldConfig is the one source of the shape world's settings: the CLI's options and the
datamodule's world arguments are derived from it and agree with it field by field, and the CLI
builds the demo's world (``caption_nouns: varied``) as ``cli_configs/demo.yaml`` does."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
import yaml
from jsonargparse import ArgumentParser
from pytorch_lightning import LightningDataModule

from lightning_wsg.data.synthetic import WORLD_ARGUMENTS, SyntheticWorldDataModule
from lightning_wsg.synthetic import WorldConfig, generate_world, world_is_complete
from lightning_wsg.synthetic.cli import build_features_parser, build_parser, parse_args
from lightning_wsg.synthetic.feature_world import FeatureWorldConfig

REPO = Path(__file__).resolve().parents[1]
HINTS = get_type_hints(WorldConfig)
FIELDS = [f.name for f in fields(WorldConfig)]


def _other_value(index: int, name: str) -> object:
    """A valid value of field ``name`` that is not its default, nor any other field's other value
    (so a setting that never arrives, or arrives in another field, shows)."""
    default, hint = getattr(WorldConfig, name), HINTS[name]
    if get_origin(hint) is Literal:
        return next(c for c in get_args(hint) if c != default)
    if hint is int:
        return default + 1 + index
    return round((default + 0.1 * (1 + index)) % 1.0, 2)  # rates and difficulty lie in [0, 1]


OTHER = {name: _other_value(i, name) for i, name in enumerate(FIELDS)}
assert len(set(OTHER.values())) == len(OTHER) and all(v != getattr(WorldConfig, k) for k, v in OTHER.items())


def _cli_option(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_field_has_a_cli_option_with_its_default_type_and_choices():
    actions = {a.dest: a for a in build_parser()._actions}
    assert set(actions) - {"help", "out", "workers", "force"} == set(FIELDS)  # no option the config lacks
    for f in fields(WorldConfig):
        action, hint = actions[f.name], HINTS[f.name]
        assert action.option_strings == [_cli_option(f.name)], f.name
        assert action.default == f.default and type(action.default) is type(f.default), f.name
        if get_origin(hint) is Literal:
            assert tuple(action.choices) == get_args(hint) and action.type is str, f.name
        else:
            assert action.type is hint and action.choices is None, f.name
        assert action.help.startswith(f.metadata["help"].replace("%", "%%")), f.name


def test_the_cli_with_no_settings_gives_the_config_defaults():
    out, config, workers, force = parse_args(["--out", "w"])
    assert (out, config, workers, force) == (Path("w"), WorldConfig(), None, False)


def test_the_cli_with_every_option_set_gives_the_same_config():
    argv = ["--out", "w", "--workers", "3", "--force"]
    for name, value in OTHER.items():
        argv += [_cli_option(name), str(value)]
    out, config, workers, force = parse_args(argv)
    assert config == WorldConfig(**OTHER) and (out, workers, force) == (Path("w"), 3, True)
    assert all(getattr(config, name) != getattr(WorldConfig(), name) for name in FIELDS)


def test_the_cli_refuses_an_unknown_caption_noun_choice(capsys):
    with pytest.raises(SystemExit, match="^2$"):
        parse_args(["--out", "w", "--caption-nouns", "poetic"])
    assert "invalid choice: 'poetic'" in capsys.readouterr().err


def test_the_feature_world_cli_is_derived_from_its_config_the_same_way():
    parser = build_features_parser()
    actions = {a.dest: a for a in parser._actions}
    assert set(actions) - {"help", "flickr", "out", "force"} == {f.name for f in fields(FeatureWorldConfig)}
    assert all(actions[f.name].default == f.default for f in fields(FeatureWorldConfig))
    assert tuple(actions["format"].choices) == ("native", "tsv") and actions["miss_rate"].type is float
    options = vars(parser.parse_args(["--flickr", "f", "--out", "o", "--num-val", "7", "--format", "tsv"]))
    assert FeatureWorldConfig(**{f.name: options[f.name] for f in fields(FeatureWorldConfig)}) == FeatureWorldConfig(
        num_val=7, format="tsv"
    )


def test_the_datamodule_world_arguments_are_the_config_fields():
    params = inspect.signature(SyntheticWorldDataModule.__init__).parameters
    hints = get_type_hints(SyntheticWorldDataModule.__init__)
    assert list(WORLD_ARGUMENTS) == FIELDS and WORLD_ARGUMENTS["image_size"] == "world_image_size"
    for name, argument in WORLD_ARGUMENTS.items():
        assert params[argument].default == getattr(WorldConfig, name), name
        assert hints[argument] == HINTS[name], name
    dm = SyntheticWorldDataModule(root="w", image_size=96, **{WORLD_ARGUMENTS[k]: v for k, v in OTHER.items()})
    assert dm.world == WorldConfig(**OTHER) and dm.image_size == 96  # the model's input size stays apart
    assert SyntheticWorldDataModule(root="w").world == WorldConfig()


def test_an_invalid_world_argument_fails_when_the_datamodule_is_built():
    with pytest.raises(ValueError, match=r"invalid world arguments: image_size must be >= 48, got 32"):
        SyntheticWorldDataModule(root="w", world_image_size=32)


def _demo_datamodule() -> SyntheticWorldDataModule:
    """The datamodule of ``cli_configs/demo.yaml``, parsed and built by jsonargparse as LightningCLI does."""
    data = yaml.safe_load((REPO / "cli_configs" / "demo.yaml").read_text(encoding="utf-8"))["data"]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": data})).data


def test_the_cli_builds_the_demo_world():
    dm = _demo_datamodule()
    out, config, _, _ = parse_args(["--out", "outputs/demo/world", "--caption-nouns", "varied"])
    assert config == dm.world and out == Path(dm.root)
    assert config.caption_nouns == "varied" and (config.num_train, config.image_size) == (1600, 128)


def test_the_module_runs_as_a_program_and_lists_every_setting():
    done = subprocess.run(
        [sys.executable, "-m", "lightning_wsg.synthetic", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--caption-nouns {category,varied}" in done.stdout
    assert all(_cli_option(name) in done.stdout for name in FIELDS)


@pytest.mark.parametrize(
    "settings, error, match",
    [
        ({"difficulty": 1.5}, ValueError, r"difficulty must lie in \[0, 1\], got 1.5"),
        ({"pair_rate": -0.1}, ValueError, r"pair_rate must lie in \[0, 1\], got -0.1"),
        ({"num_val": -1, "seed": -2}, ValueError, r"num_val must be >= 0, got -1; seed must be >= 0, got -2"),
        ({"image_size": 40}, ValueError, r"image_size must be >= 48, got 40"),
        ({"caption_nouns": "poetic"}, ValueError, r"caption_nouns must be one of \('category', 'varied'\)"),
        ({"num_train": 3.5}, TypeError, r"num_train must be an integer, got 3.5"),
        ({"num_train": "16"}, TypeError, r"num_train must be an integer, got '16'"),
        ({"difficulty": True}, TypeError, r"difficulty must be a float, got True"),
    ],
)
def test_invalid_settings_are_refused_naming_the_field(settings, error, match):
    with pytest.raises(error, match=match):
        WorldConfig(**settings)


def test_values_take_their_fields_type():
    config = WorldConfig(num_train=16.0, difficulty=1, pair_rate=0)
    assert config.to_dict()["num_train"] == 16 and type(config.num_train) is int
    assert type(config.difficulty) is float and type(config.pair_rate) is float
    assert config == WorldConfig(num_train=16, difficulty=1.0, pair_rate=0.0)
    assert list(config.to_dict()) == FIELDS  # world.json's "args" order


def test_a_config_and_keyword_settings_name_the_same_world(tmp_path):
    small = WorldConfig(num_train=3, num_val=1, num_test=1, image_size=64, seed=1)
    generate_world(tmp_path, small, workers=1)
    assert world_is_complete(tmp_path, small) and world_is_complete(tmp_path, **small.to_dict())
    assert world_is_complete(
        tmp_path, WorldConfig(num_train=9, num_val=1, num_test=1, image_size=64, seed=1), num_train=3
    )
    assert not world_is_complete(tmp_path, small, seed=2)
    with pytest.raises(TypeError, match=r"unknown world arguments: \['colour_count'\]"):
        generate_world(tmp_path / "other", small, colour_count=3)
