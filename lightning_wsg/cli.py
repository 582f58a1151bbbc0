"""The ``lightning`` command: a LightningCLI over :class:`GroundingModule` and the datamodules.

Usage::

    lightning fit  --config cli_configs/flickr.yaml
    lightning test --config cli_configs/flickr.yaml --ckpt_path path/to/best.ckpt
    lightning test --config cli_configs/flickr.yaml --model path/to/model_folder

``--model DIR`` with a model folder (:mod:`lightning_wsg.model_folder`) stands for
``--config DIR/config.yaml --model.weights DIR``: its configuration and its weights (a
folder written before the model / training split has its configuration migrated,
:mod:`lightning_wsg.migration`).

Every run gets the :class:`~lightning_wsg.callbacks.FeatureStatistics` callback (it does
nothing unless the region tower needs the training split's feature statistics).

``main(args)`` runs the same CLI in-process (tests call it with a list of arguments).

The datamodule never looks at the model: :class:`GroundingCLI` hands it what the model needs
of the samples when both are built (``data.read_features``, ``data.feature_dim``,
``data.require_labels``, from the model's ``reads_images``, ``feature_dim`` and
``needs_labels``), so these three are not set in configs or on the command line.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

import yaml

from .callbacks.feature_statistics import FeatureStatistics
from .grounding_module import GroundingModule
from .migration import is_old_model_config, migrate_model_config
from .model_folder import CONFIG, read_config

__all__ = ["RUN_KEY", "GroundingCLI", "RecordRun", "expand_model_folders", "main"]

#: the checkpoint key of the run's record (command, full config, metrics; see :class:`RecordRun`)
RUN_KEY = "lightning_wsg_run"


class RecordRun(SaveConfigCallback):
    """Saves the run's config in its log folder, as LightningCLI does, and into every checkpoint.

    Each checkpoint also gets the command line and the metrics logged so far, so that a model
    card written from it (``lightning_wsg export``) can say how the model was made and how it did.
    """

    def __init__(self, *args: Any, command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command = command
        self._dump: str | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._dump is None:
            self._dump = self.parser.dump(self.config, skip_none=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        checkpoint[RUN_KEY] = {"command": self.command, "config": self._dump, "metrics": metrics}


def _reads_features(model: GroundingModule) -> bool:
    return not model.reads_images


def _feature_dim(model: GroundingModule) -> int | None:
    return model.feature_dim


def _needs_labels(model: GroundingModule) -> bool:
    return model.needs_labels


class GroundingCLI(LightningCLI):
    """The LightningCLI with the model -> datamodule links.

    Whether samples carry per-box features instead of images, the feature width and whether
    training detections need labels are the model's to say; linked on instantiation, one
    config cannot set them inconsistently with its model.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for compute, target in (
            (_reads_features, "read_features"),
            (_feature_dim, "feature_dim"),
            (_needs_labels, "require_labels"),
        ):
            parser.link_arguments("model", f"data.init_args.{target}", compute_fn=compute, apply_on="instantiate")


def expand_model_folders(args: list[str]) -> list[str]:
    """``--model DIR`` (or ``--model=DIR``) of a model folder -> ``--config DIR/config.yaml --model.weights DIR``.

    Any other ``--model`` value (a YAML file, inline YAML) is left to LightningCLI.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg, value, step = args[i], None, 1
        if arg == "--model" and i + 1 < len(args):
            value, step = args[i + 1], 2
        elif arg.startswith("--model="):
            value = arg.split("=", 1)[1]
        if value is not None and Path(value).is_dir():
            doc = read_config(value)  # a clear error when it is not a model folder
            config = str(Path(value) / CONFIG)
            if is_old_model_config(doc["model"]):  # the earlier layout: its settings under today's keys
                config = yaml.safe_dump({**doc, "model": migrate_model_config(doc["model"])}, sort_keys=False)
            out += ["--config", config, f"--model.weights={value}"]
        else:
            out += args[i : i + step]
        i += step
    return out


def main(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> LightningCLI | None:
    """Run the command line interface (``args=None`` reads ``sys.argv``).

    Returns the ``LightningCLI`` when ``args`` are given (in-process use, tests); ``None``
    when it reads ``sys.argv``, because the console script does ``sys.exit(main())`` and any
    other object would make the exit status 1 after a successful run.
    """
    # Tokenizers fork badly inside DataLoader workers; the encoders run in the main process.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = None
    if args is None:
        command = shlex.join(["lightning", *sys.argv[1:]])
        # rewritten in place: LightningCLI warns when it gets args while sys.argv has some
        sys.argv[1:] = expand_model_folders(sys.argv[1:])
    elif isinstance(args, list):
        command = shlex.join(["lightning", *args])
        args = expand_model_folders(args)
    cli = GroundingCLI(
        GroundingModule,
        LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,  # the optimizer is model.optimizer, one place only
        save_config_callback=RecordRun,
        save_config_kwargs={"overwrite": True, "command": command},
        trainer_defaults={"callbacks": [FeatureStatistics()]},
        args=args,
        run=run,
    )
    return cli if args is not None else None
