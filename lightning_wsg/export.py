"""``lightning_wsg export``: a checkpoint of the ``lightning`` command -> a model folder to share.

Usage::

    lightning_wsg export --ckpt_path outputs/demo/checkpoints/best.ckpt --out outputs/demo/model

writes ``config.yaml``, ``model.safetensors`` and a ``README.md`` model card (the training
data, the metrics logged up to the checkpoint, the command and configuration of the run, the
package versions; see :mod:`lightning_wsg.model_folder`). The folder is what the Hugging
Face Hub hosts, as it is; ``GroundingModel.from_pretrained(DIR)`` loads it and
``lightning test --config <dataset config> --model DIR`` evaluates it.

Example:
    >>> export("outputs/demo/checkpoints/best.ckpt", "outputs/demo/model")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import pickle
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from .model_folder import CARD, CONFIG, WEIGHTS, folder_config

__all__ = ["export", "main", "model_card"]


_NO_RECORD = "the checkpoint holds no run record (saved outside `lightning fit`, or by an older lightning_wsg)"


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as err:  # not a torch file, or objects in it
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {reason})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "region_encoder" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a checkpoint of lightning_wsg's GroundingModule (no towers in its hparams)")
    return checkpoint


def export(ckpt_path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the model folder of a checkpoint.

    Args:
        ckpt_path: a checkpoint written by ``lightning fit`` (or ``trainer.save_checkpoint``).
        out: the folder to write.
        overwrite: replace a model folder's files already in ``out``.

    Returns:
        ``out``.
    """
    from pytorch_lightning.cli import instantiate_module

    from .cli import RUN_KEY
    from .migration import migrate_checkpoint
    from .model import GroundingModel

    ckpt_path, out = Path(ckpt_path), Path(out)
    existing = [name for name in (CONFIG, WEIGHTS, CARD) if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; give --overwrite to replace them")
    checkpoint = _read_checkpoint(ckpt_path)
    migrate_checkpoint(checkpoint)  # a checkpoint of the earlier layout: today's names
    image_size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size")
    config = folder_config(checkpoint["hyper_parameters"], image_size)
    model = instantiate_module(GroundingModel, config["model"])
    weights = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{ckpt_path}: its state_dict does not fit the model its hparams describe "
            f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})"
        )
    model.image_size = image_size
    card = model_card(checkpoint, out.name, command=_export_command(ckpt_path, out), run=checkpoint.get(RUN_KEY))
    return model.save_pretrained(out, card=card)


def _export_command(ckpt_path: Path, out: Path) -> str:
    return shlex.join(["lightning_wsg", "export", "--ckpt_path", str(ckpt_path), "--out", str(out)])


def _number(name: str, value: float) -> str:
    counts = "num_" in name or name.rsplit("/", 1)[-1] in ("epoch", "step")
    return str(int(value)) if counts and float(value).is_integer() else f"{value:.4f}"


def _dataset_config(command: str | None) -> str:
    """The first ``--config`` of the recorded command (the dataset config), or a placeholder."""
    words = shlex.split(command) if command else []
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return "<dataset config>"


def model_card(checkpoint: dict[str, Any], name: str, command: str, run: dict[str, Any] | None) -> str:
    """The ``README.md`` of a model folder: what the model is, its data, metrics and provenance.

    Args:
        checkpoint: the loaded checkpoint.
        name: the folder's name (the card's title).
        command: the export command line.
        run: the checkpoint's run record (``lightning_wsg.cli.RecordRun``), if any.
    """
    from . import __version__

    hparams = checkpoint["hyper_parameters"]
    towers = {k: (hparams.get(k) or {}).get("class_path", "none") for k in ("region_encoder", "phrase_encoder")}
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data_class = data.pop("_class_path", None) or checkpoint.get("datamodule_hparams_name") or "unknown"
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    run = run or {}
    fit_command = run.get("command")
    lines = [
        "---",
        "library_name: lightning_wsg",
        "tags: [phrase-grounding, weakly-supervised, pytorch-lightning]",
        "---",
        "",
        f"# {name}",
        "",
        (
            "A weakly supervised phrase-grounding model of lightning_wsg (`GroundingModel`, trained by contrastive "
            "knowledge distillation): given an image, its proposal boxes and a sentence, it picks the box "
            "each phrase refers to."
        ),
        "",
        f"- region tower: `{towers['region_encoder']}`",
        f"- phrase tower: `{towers['phrase_encoder']}`",
        "",
        "## Files",
        "",
        (
            f"- `{CONFIG}`: the model's configuration (a `lightning` config fragment; the towers' own "
            "pretrained weights are off)"
        ),
        f"- `{WEIGHTS}`: every weight and buffer",
        f"- `{CARD}`: this card",
        "",
        "## Use",
        "",
        "```python",
        "from lightning_wsg import GroundingModel",
        f'model = GroundingModel.from_pretrained("{name}")',
        'model.ground("dog.jpg", "a [brown dog] jumps over [the fence]")',
        "```",
        "",
        "```bash",
        f"lightning test --config {_dataset_config(fit_command)} --model {name}",
        "```",
        "",
        "## Training data",
        "",
        f"`{data_class}`",
        "",
        "```yaml",
        yaml.safe_dump(data, sort_keys=False).rstrip() if data else "# not recorded in the checkpoint",
        "```",
        "",
        "## Metrics of the run",
        "",
    ]
    step = f"epoch {checkpoint.get('epoch', '?')}, global step {checkpoint.get('global_step', '?')}"
    best = [
        (state.get("monitor"), state.get("best_model_score"))
        for key, state in (checkpoint.get("callbacks") or {}).items()
        if key.startswith("ModelCheckpoint") and state.get("monitor") and state.get("best_model_score") is not None
    ]
    lines.append(f"Checkpoint written at {step}.")
    for monitor, score in best:
        lines.append(f"Best `{monitor}` of the run so far: {_number(monitor, float(score))}.")
    metrics = run.get("metrics") or {}
    if metrics:
        lines += ["", "Logged when the checkpoint was written:", "", "| metric | value |", "|---|---:|"]
        lines += [f"| `{k}` | {_number(k, v)} |" for k, v in sorted(metrics.items())]
    else:
        lines += ["", f"No metrics recorded: {_NO_RECORD}."]
    lines += ["", "## How it was made", ""]
    if fit_command:
        lines += ["```bash", fit_command, "```"]
    else:
        lines.append(f"The training command was not recorded: {_NO_RECORD}.")
    if run.get("config"):
        lines += [
            "",
            "<details><summary>The run's full configuration</summary>",
            "",
            "```yaml",
            run["config"].rstrip(),
            "```",
            "",
            "</details>",
        ]
    versions = f"lightning_wsg {__version__}, pytorch-lightning {checkpoint.get('pytorch-lightning_version', '?')}"
    lines += ["", f"Exported by `{command}` ({versions}, torch {torch.__version__}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The ``lightning_wsg`` command (its one subcommand: ``export``)."""
    parser = argparse.ArgumentParser(
        prog="lightning_wsg", description="lightning_wsg tools (the training command is `lightning`)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser(
        "export", help="a checkpoint -> a model folder (config.yaml, model.safetensors, README.md)"
    )
    sub.add_argument("--ckpt_path", required=True, help="a checkpoint of `lightning fit`")
    sub.add_argument("--out", required=True, help="the model folder to write")
    sub.add_argument("--overwrite", action="store_true", help="replace the files of a model folder already there")
    args = parser.parse_args(argv)
    try:
        out = export(args.ckpt_path, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sub.exit(1, f"lightning_wsg export: error: {err}\n")
    print(f"model folder: {out} ({CONFIG}, {WEIGHTS}, {CARD})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
