"""The ``lightning`` command: a LightningCLI over :class:`GroundingModule` and the datamodules.

Usage::

    lightning fit  --config cli_configs/flickr.yaml
    lightning test --config cli_configs/flickr.yaml --ckpt_path path/to/best.ckpt

``main(args)`` runs the same CLI in-process (tests call it with a list of arguments).
"""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.cli import LightningCLI

from .data import GroundingDataModule
from .grounding_module import GroundingModule

__all__ = ["main"]


def main(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> LightningCLI | None:
    """Run the command line interface (``args=None`` reads ``sys.argv``).

    Returns the ``LightningCLI`` when ``args`` are given (in-process use, tests); ``None``
    when it reads ``sys.argv``, because the console script does ``sys.exit(main())`` and any
    other object would make the exit status 1 after a successful run.
    """
    # Tokenizers fork badly inside DataLoader workers; the encoders run in the main process.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli = LightningCLI(
        GroundingModule,
        GroundingDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,  # the optimizer is model.optimizer, one place only
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
    return cli if args is not None else None
