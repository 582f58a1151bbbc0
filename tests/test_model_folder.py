"""Model folders: ``lightning_wsg export`` -> ``GroundingModule.from_pretrained`` / ``lightning test --model DIR``.

The round trip must give the same predictions and the same test metrics as the checkpoint it
came from; a damaged folder must fail with an error naming its file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import tiny_demo_args
from helpers.model import TINY_TEXT as TINY_TEXT_CONFIG

from lightning_wsg.cli import RUN_KEY, expand_model_folders, main
from lightning_wsg.export import main as lightning_wsg
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.model import GroundingModel
from lightning_wsg.models import FeatureRegionEncoder, PhraseEncoder
from lightning_wsg.model_folder import folder_config, load_weights, offline_towers, read_config, write_folder


def _metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_export_then_from_pretrained_and_lightning_test_match_the_checkpoint(tmp_path: Path, capsys) -> None:
    args = tiny_demo_args(tmp_path)
    best = Path(main(["fit", *args]).trainer.checkpoint_callback.best_model_path)
    assert torch.load(best, weights_only=True)[RUN_KEY]["command"].startswith("lightning fit --config")
    folder = tmp_path / "model"
    assert lightning_wsg(["export", "--ckpt_path", str(best), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]

    config = yaml.safe_load((folder / "config.yaml").read_text())
    region = config["model"]["region_encoder"]["init_args"]
    assert region["pretrained_path"] is None and region["pretrained"] is False  # the weights come from the folder
    assert config["data"] == {"init_args": {"image_size": 64}}
    card = (folder / "README.md").read_text()
    for text in (
        "lightning fit --config",
        "SyntheticWorldDataModule",
        "`val/acc`",
        "lightning_wsg 0.1.0",
        "--model model",
    ):
        assert text in card, text

    # the same predictions: every box, every score
    expected = main(["test", *args, f"--ckpt_path={best}"])
    batch = next(iter(expected.datamodule.test_dataloader()))
    from_ckpt = GroundingModule.load_from_checkpoint(best).eval()
    loaded = GroundingModule.from_pretrained(folder)
    assert not loaded.training and loaded.model.image_size == from_ckpt.model.image_size == 64
    with torch.no_grad():
        assert loaded.predict_step(batch, 0) == from_ckpt.predict_step(batch, 0)
    image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(0))
    sentence = "a [small red car] next to [a blue fish]"
    assert loaded.ground(image, sentence) == from_ckpt.ground(image, sentence)

    # the same test metrics through the command line
    metrics = _metrics(main(["test", *args, "--model", str(folder)]))
    assert metrics == _metrics(expected) and metrics["test/num_phrases"] > 0

    capsys.readouterr()
    with pytest.raises(SystemExit, match="^1$") as exit_info:
        lightning_wsg(["export", "--ckpt_path", str(best), "--out", str(folder)])
    assert exit_info.value.code == 1 and "give --overwrite" in capsys.readouterr().err


@pytest.fixture(scope="module")
def feature_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundingModule, Path]:
    """A feature-tower module (its normalisation statistics are buffers) and its model folder."""
    torch.manual_seed(0)
    region = FeatureRegionEncoder(feature_dim=6, hidden_dim=16, embed_dim=16, box_geometry=True)
    phrase = PhraseEncoder(
        "all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_TEXT_CONFIG, hidden_dim=32, embed_dim=16
    )
    model = GroundingModule(region, phrase).eval()  # no loss: a folder holds the network only
    model.model.region_encoder.prepare([torch.randn(40, 6) * 3 + 5])
    folder = model.save_pretrained(tmp_path_factory.mktemp("folder") / "features")
    return model, folder


def test_feature_statistics_travel_in_the_folder(feature_folder) -> None:
    model, folder = feature_folder
    loaded = GroundingModule.from_pretrained(folder)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert not loaded.model.region_encoder.needs_preparation
    network = GroundingModel.from_pretrained(folder)  # the network alone, as inference wants it
    for name, value in model.model.state_dict().items():
        assert torch.equal(network.state_dict()[name], value), name
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [20.0, 10.0, 90.0, 70.0], [5.0, 5.0, 15.0, 15.0]])
    features = torch.randn(3, 6, generator=torch.Generator().manual_seed(1)) * 3 + 5
    args = ((100, 80), "a [red ball] on [the mat]")
    assert loaded.ground(*args, proposals=boxes, features=features) == model.ground(
        *args, proposals=boxes, features=features
    )


def _damaged(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(folder, copy)
    return copy


def test_a_folder_without_weights_names_the_file(feature_folder, tmp_path: Path) -> None:
    folder = _damaged(feature_folder[1], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"damaged/model\.safetensors: missing"):
        GroundingModule.from_pretrained(folder)
    (folder / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"damaged/config\.yaml: missing"):
        GroundingModule.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        GroundingModule.from_pretrained(tmp_path / "nowhere")


def test_a_config_that_does_not_fit_the_weights_names_both_files(feature_folder, tmp_path: Path) -> None:
    folder = _damaged(feature_folder[1], tmp_path)
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("hidden_dim: 16", "hidden_dim: 24"))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: its weights do not fit the model built from .*config\.yaml"
    ):
        GroundingModule.from_pretrained(folder)
    config.write_text(config.read_text().replace("box_geometry:", "box_geometri:"))
    with pytest.raises(ValueError, match=r"(?s)config\.yaml: cannot build the model.*box_geometri"):
        GroundingModule.from_pretrained(folder)


def _rewrite_weights(folder: Path, change) -> None:
    """Replace the folder's ``model.safetensors`` with ``change(tensors)``, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(change(load_file(path)), path, metadata=metadata)


def test_weights_with_a_missing_or_an_unexpected_name_are_refused(feature_folder, tmp_path: Path) -> None:
    """A strict load: a name missing from the file, or one the model lacks, is an error naming both."""
    model, folder = feature_folder
    names = set(model.model.state_dict())
    assert "region_encoder.feature_mean" in names and "region_encoder.extra" not in names

    missing = _damaged(folder, tmp_path / "missing")
    _rewrite_weights(missing, lambda t: {k: v for k, v in t.items() if k != "region_encoder.feature_mean"})
    with pytest.raises(
        ValueError,
        match=r"missing/damaged/model\.safetensors: its weights do not fit the model built from "
        r".*config\.yaml: 1 missing \(region_encoder\.feature_mean\)$",
    ):
        GroundingModule.from_pretrained(missing)

    unexpected = _damaged(folder, tmp_path / "unexpected")
    _rewrite_weights(unexpected, lambda t: t | {"region_encoder.extra": torch.ones(3)})
    with pytest.raises(
        ValueError,
        match=r"unexpected/damaged/model\.safetensors: its weights do not fit the model built from "
        r".*config\.yaml: 1 unexpected \(region_encoder\.extra\)$",
    ):
        GroundingModule.from_pretrained(unexpected)


def test_a_load_reproduces_every_weight_exactly(feature_folder, tmp_path: Path) -> None:
    """Every tensor of the file lands in the module as saved, not the values the towers were built with."""
    from safetensors.torch import load_file

    model, folder = feature_folder
    saved = load_file(folder / "model.safetensors")
    # changed weights: a load that kept the built values (or the first folder's) would show it
    changed = _damaged(folder, tmp_path)
    _rewrite_weights(changed, lambda t: {k: v + 1 if v.is_floating_point() else v + 7 for k, v in t.items()})
    loaded = GroundingModule.from_pretrained(changed).model.state_dict()
    assert set(loaded) == set(saved) == set(model.model.state_dict())
    for name, value in saved.items():
        expected = value + 1 if value.is_floating_point() else value + 7
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], expected), name
    assert int(loaded["region_encoder.feature_count"]) == 40 + 7


def test_export_refuses_what_is_not_a_grounding_checkpoint(tmp_path: Path, capsys) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit, match="^1$"):
        lightning_wsg(["export", "--ckpt_path", str(tmp_path / "other.ckpt"), "--out", str(tmp_path / "m")])
    assert "other.ckpt: not a checkpoint of lightning_wsg's GroundingModule" in capsys.readouterr().err
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="^1$"):
        lightning_wsg(["export", "--ckpt_path", str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "m")])
    assert "junk.ckpt: cannot be read as a checkpoint" in capsys.readouterr().err


def test_model_option_expands_only_model_folders(feature_folder, tmp_path: Path) -> None:
    folder = feature_folder[1]
    assert expand_model_folders(["test", "--model", str(folder), "--trainer.max_epochs=1"]) == [
        "test",
        "--config",
        str(folder / "config.yaml"),
        f"--model.weights={folder}",
        "--trainer.max_epochs=1",
    ]
    assert expand_model_folders([f"--model={folder}"])[0] == "--config"
    assert expand_model_folders(["--model", "model.yaml"]) == ["--model", "model.yaml"]  # a config file: LightningCLI's
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/config\.yaml: missing"):
        expand_model_folders(["--model", str(tmp_path / "empty")])


def test_an_export_that_fails_part_way_keeps_the_previous_weights(feature_folder, tmp_path: Path, monkeypatch) -> None:
    model, folder = feature_folder
    target = shutil.copytree(folder, tmp_path / "folder")
    before = (target / "model.safetensors").read_bytes()

    def cut_short(module, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])  # a kill in the middle of the write
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("lightning_wsg.model_folder.save_model", cut_short)
    with pytest.raises(KeyboardInterrupt, match="killed mid-write"):
        model.save_pretrained(target)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    GroundingModule.from_pretrained(target)


def test_offline_towers_turns_pretrained_off_in_a_copy() -> None:
    config = {
        "region_encoder": {"init_args": {"pretrained": True, "pretrained_path": "/weights.pt", "dim": 8}},
        "phrase_encoder": {"init_args": {"pretrained": True}},
        "teacher": None,
    }
    offline = offline_towers(config)
    assert offline["region_encoder"]["init_args"] == {"pretrained": False, "pretrained_path": None, "dim": 8}
    assert offline["phrase_encoder"]["init_args"] == {"pretrained": False}
    # the caller's configuration (the module's hyperparameters) is left alone
    assert config["region_encoder"]["init_args"] == {"pretrained": True, "pretrained_path": "/weights.pt", "dim": 8}
    assert config["phrase_encoder"]["init_args"] == {"pretrained": True}


def test_folder_config_holds_the_towers_only() -> None:
    hparams = {"lr": 0.1, "_instantiator": "x", "weights": "old/model.safetensors", "loss": {"tau_student": 0.1}}
    hparams |= {"phrase_encoder": {"b": 2}, "region_encoder": {"a": 1}}
    doc = folder_config(hparams, None)
    assert doc == {"model": {"region_encoder": {"a": 1}, "phrase_encoder": {"b": 2}}}
    assert list(doc["model"]) == ["region_encoder", "phrase_encoder"]  # the towers say what it is
    assert folder_config(hparams, 320)["data"] == {"init_args": {"image_size": 320}}


@pytest.mark.parametrize(
    ("extra", "listed"),
    [(4, "a0, a1, a2, a3"), (5, "a0, a1, a2, a3, ..."), (6, "a0, a1, a2, a3, ...")],
)
def test_a_refused_load_lists_at_most_four_names(tmp_path: Path, extra: int, listed: str) -> None:
    saved = torch.nn.Linear(2, 2)
    write_folder(saved, tmp_path / "folder", {"model": {}}, "card")
    wider = torch.nn.Module()
    for name, param in saved.named_parameters():
        wider.register_parameter(name, torch.nn.Parameter(param.detach().clone()))
    for i in range(extra):
        wider.register_buffer(f"a{i}", torch.zeros(1))
    with pytest.raises(ValueError, match=rf": {extra} missing \({listed}\)$"):
        load_weights(wider, tmp_path / "folder")


def test_write_folder_makes_missing_parents_and_records_its_origin(tmp_path: Path) -> None:
    from safetensors import safe_open

    from lightning_wsg import __version__

    folder = tmp_path / "exports" / "run 1" / "model"  # neither parent exists yet
    doc = {"model": {"region_encoder": {"class_path": "R"}, "lr": 0.1}}  # folder_config's order: towers first
    write_folder(torch.nn.Linear(2, 2), folder, doc, "card")
    config = (folder / "config.yaml").read_text(encoding="utf-8")
    # the header's commands name this folder
    assert f"--model {folder}\n" in config and f'from_pretrained("{folder}")' in config
    assert yaml.safe_load(config) == doc and list(yaml.safe_load(config)["model"]) == ["region_encoder", "lr"]
    # "format": "pt" is what other safetensors readers (transformers) expect of a torch file
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert weights.metadata() == {"format": "pt", "lightning_wsg": __version__}


class _Buffers(torch.nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        for i, width in enumerate(widths):
            self.register_buffer(f"b{i}", torch.zeros(width))


def _mismatch(i: int) -> str:
    return (
        f"size mismatch for b{i}: copying a param with shape torch.Size([2]) from checkpoint, "
        "the shape in current model is torch.Size([4])."
    )


@pytest.mark.parametrize(
    ("wrong", "detail"),
    [
        (1, _mismatch(0)),
        (2, f"{_mismatch(0)}; {_mismatch(1)}"),
        (3, f"{_mismatch(0)}; {_mismatch(1)}; and 1 more"),
        (4, f"{_mismatch(0)}; {_mismatch(1)}; and 2 more"),
    ],
)
def test_a_bare_weights_file_of_other_shapes_names_two_mismatches(tmp_path: Path, wrong: int, detail: str) -> None:
    from safetensors.torch import save_model

    file = tmp_path / "weights.safetensors"  # no config.yaml beside it: no "built from" hint
    save_model(_Buffers([2, 2, 2, 2]), str(file))
    expected = f"{file}: its weights do not fit the model: {detail}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        load_weights(_Buffers([4] * wrong + [2] * (4 - wrong)), file)


def test_a_load_with_missing_and_unexpected_names_lists_both(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    file = tmp_path / "weights.safetensors"
    save_model(_Buffers([2, 2]), str(file))
    other = torch.nn.Module()
    other.register_buffer("b0", torch.zeros(2))
    other.register_buffer("c", torch.zeros(2))
    expected = f"{file}: its weights do not fit the model: 1 missing (c); 1 unexpected (b1)"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        load_weights(other, file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [unclosed\n", "not valid YAML"),
        ("- a list\n", "no `model:` section with the towers"),  # not a mapping
        ("model: [region_encoder]\n", "no `model:` section with the towers"),  # model not a mapping
        ("data: {}\n", "no `model:` section with the towers"),
    ],
)
def test_read_config_names_the_file_and_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'config.yaml'))}: {re.escape(message)}"):
        read_config(tmp_path)
