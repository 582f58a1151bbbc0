"""A model folder: a trained :class:`~lightning_wsg.model.GroundingModel` to share.

Three files, the layout the Hugging Face Hub hosts as it is::

    DIR/
      config.yaml         the model's configuration (towers as class_path / init_args),
                          a `lightning` config fragment: `model:` plus `data.init_args.image_size`
      model.safetensors   every weight and buffer of the model (no pickled code)
      README.md           the model card

A folder holds the network only (what inference needs), not the training loss or optimizer.
Folders written before the model / training split held the whole module's configuration;
their towers and weights read the same way (:func:`load_folder_model`), and
:func:`~lightning_wsg.migration.migrate_model_config` turns their training settings into
today's keys for ``lightning test --model DIR``.

``config.yaml`` switches the towers' ``pretrained`` / ``pretrained_path`` off: the weights
come from ``model.safetensors``, so building the module reads no backbone checkpoint and
downloads nothing. The phrase tower still reads its tokenizer (and word vectors) by name.

Example:
    >>> model.save_pretrained("outputs/demo/model")  # doctest: +SKIP
    >>> GroundingModel.from_pretrained("outputs/demo/model").ground("dog.jpg", "a [dog]")  # doctest: +SKIP

Written from a checkpoint by ``lightning_wsg export`` (:mod:`lightning_wsg.export`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from .files import atomic_path, atomic_write_text
from .models.towers import plain_values

__all__ = [
    "CARD",
    "CONFIG",
    "WEIGHTS",
    "folder_config",
    "load_folder_model",
    "load_weights",
    "offline_towers",
    "read_config",
    "trained_image_size",
    "weights_file",
    "write_folder",
]

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
CARD = "README.md"

TOWERS = ("region_encoder", "phrase_encoder")

_CONFIG_HEADER = """\
# A lightning_wsg model folder: the GroundingModel configuration of model.safetensors.
# The towers' pretrained weights are off: model.safetensors holds every weight.
# data.init_args.image_size is the input size the model was trained at.
# Evaluate it after a dataset config (the folder's weights come with it):
#   lightning test --config <dataset config> --model {folder}
# From Python: GroundingModel.from_pretrained("{folder}")
"""


def offline_towers(model_config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``model_config`` whose towers load no pretrained weights of their own.

    Arguments named ``pretrained`` become ``False`` and ``pretrained_path`` ``None``: the
    folder's weights replace whatever they would load, and loading them could need a download.
    """
    config = copy.deepcopy(model_config)
    for name in TOWERS:
        init_args = (config.get(name) or {}).get("init_args") or {}
        if "pretrained" in init_args:
            init_args["pretrained"] = False
        if "pretrained_path" in init_args:
            init_args["pretrained_path"] = None
    return config


def folder_config(towers: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """The ``config.yaml`` document of a model's towers (``{"region_encoder": {...}, "phrase_encoder": {...}}``)."""
    model = {k: towers[k] for k in TOWERS}
    doc: dict[str, Any] = {"model": offline_towers(plain_values(model))}
    if image_size is not None:
        doc["data"] = {"init_args": {"image_size": int(image_size)}}
    return doc


def write_folder(module: nn.Module, directory: str | Path, config: dict[str, Any], card: str) -> Path:
    """Write ``config.yaml``, ``model.safetensors`` and ``README.md`` into ``directory``.

    Args:
        module: the module whose ``state_dict`` is saved (tied tensors saved once).
        directory: the folder (created if missing).
        config: the ``config.yaml`` document (:func:`folder_config`).
        card: the model card's Markdown.
    """
    from . import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = _CONFIG_HEADER.format(folder=directory)
    # each file whole or not at all: a kill mid-export leaves no truncated weights behind
    with atomic_path(directory / WEIGHTS) as weights:
        save_model(module, str(weights), metadata={"format": "pt", "lightning_wsg": __version__})
    atomic_write_text(directory / CONFIG, header + yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(directory / CARD, card)
    shutil.copymode(directory / CARD, directory / WEIGHTS)  # safetensors writes 0600: readable like the rest
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` of a model folder, checked: ``{"model": {...}, "data": {...}}``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder (config.yaml, model.safetensors, README.md)")
    path = directory / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a model folder holds {CONFIG} and {WEIGHTS}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    towers = model.get("region_encoder") if isinstance(model, dict) else None
    if not towers:
        raise ValueError(f"{path}: no `model:` section with the towers (region_encoder, phrase_encoder)")
    return doc


def load_folder_model(cls: type, directory: str | Path) -> Any:
    """Build ``cls`` (a :class:`~lightning_wsg.model.GroundingModel`) from a folder's towers, load
    its weights strictly and set its ``image_size``; in eval mode."""
    from pytorch_lightning.cli import instantiate_module

    doc = read_config(directory)
    weights_file(directory)  # missing weights: said before the towers are built
    towers = {k: doc["model"].get(k) for k in TOWERS}
    try:
        model = instantiate_module(cls, towers)
    except (FileNotFoundError, ValueError):
        raise  # the towers' own errors name their setting
    except Exception as err:  # jsonargparse's: say which file holds the configuration
        raise ValueError(f"{Path(directory) / CONFIG}: cannot build the model: {err}") from err
    load_weights(model, directory)
    model.image_size = trained_image_size(doc)
    return model.eval()


def trained_image_size(doc: dict[str, Any]) -> int | None:
    """The training input size recorded in a ``config.yaml`` document (``None`` if absent)."""
    size = ((doc.get("data") or {}).get("init_args") or {}).get("image_size")
    return None if size is None else int(size)


def weights_file(path: str | Path) -> Path:
    """``model.safetensors`` of a model folder, or the given ``.safetensors`` file."""
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; a model folder holds {CONFIG} and {WEIGHTS}")
    return file


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a model folder's (or a ``.safetensors`` file's) weights into ``module``, strictly.

    Raises:
        FileNotFoundError: no ``model.safetensors``.
        ValueError: the weights do not fit the module (names or shapes), naming the file.
    """
    file = weights_file(path)
    config = file.parent / CONFIG
    hint = f" built from {config}" if config.is_file() else ""
    try:
        missing, unexpected = load_model(module, str(file), strict=False)
    except RuntimeError as err:  # shapes that differ
        mismatches = [line.strip() for line in str(err).splitlines()[1:]]
        detail = "; ".join(mismatches[:2]) + (f"; and {len(mismatches) - 2} more" if len(mismatches) > 2 else "")
        raise ValueError(f"{file}: its weights do not fit the model{hint}: {detail}") from None
    if missing or unexpected:
        parts = [
            f"{len(keys)} {kind} ({_some(keys)})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ValueError(f"{file}: its weights do not fit the model{hint}: {'; '.join(parts)}")


def _some(names: Any, most: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
