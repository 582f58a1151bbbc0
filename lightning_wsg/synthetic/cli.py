"""``python -m lightning_wsg.synthetic``: generate (or reuse) a shape world, or build the feature world.

The options are derived from the config dataclasses (:func:`add_config_options`): one option
per field, its type, default, choices and help taken from the field, so that a setting added
to :class:`~lightning_wsg.synthetic.WorldConfig` or
:class:`~lightning_wsg.synthetic.feature_world.FeatureWorldConfig` is on the command line too.

Example:
    python -m lightning_wsg.synthetic --out outputs/demo/world --caption-nouns varied   # the demo's world
    python -m lightning_wsg.synthetic features --flickr data/flickr30k_entities --out outputs/feature_world
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from .world import WorldConfig, generate_world, world_is_complete

__all__ = [
    "add_config_options",
    "build_features_parser",
    "build_parser",
    "config_from_options",
    "features_main",
    "main",
    "parse_args",
]

C = TypeVar("C")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Add one ``--field-name`` option per field of the dataclass ``config_cls``.

    The option's type, default and choices (a ``Literal`` field) come from the field, its help
    from ``field.metadata["help"]``.

    Raises:
        TypeError: a field with no default, or of a type no option is derived for.
    """
    hints = get_type_hints(config_cls)
    for f in fields(config_cls):
        hint = hints[f.name]
        if f.default is MISSING:
            raise TypeError(f"{config_cls.__name__}.{f.name} has no default: no command-line option is derived for it")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"default": f.default, "help": f"{help_text} (default: %(default)s)".lstrip()}
        if get_origin(hint) is Literal:
            choices = get_args(hint)
            kwargs |= {"type": type(choices[0]), "choices": choices}
        elif hint in (int, float, str):
            kwargs["type"] = hint
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name}: no command-line option is derived for type {hint!r}")
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def config_from_options(config_cls: type[C], options: dict[str, Any]) -> C:
    """Pop the fields of ``config_cls`` from parsed ``options`` and build the config from them."""
    return config_cls(**{f.name: options.pop(f.name) for f in fields(config_cls)})


def build_parser() -> argparse.ArgumentParser:
    """The shape world's parser: ``--out``, ``--workers``, ``--force`` and one option per :class:`WorldConfig` field."""
    doc = (sys.modules[__package__].__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m lightning_wsg.synthetic", description=doc)
    p.add_argument("--out", required=True, help="output folder")
    add_config_options(p, WorldConfig)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="regenerate even if an identical world exists")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[Path, WorldConfig, int | None, bool]:
    """``(out, config, workers, force)`` from the shape world's command line (``argv``: default ``sys.argv[1:]``)."""
    options = vars(build_parser().parse_args(argv))
    config = config_from_options(WorldConfig, options)
    return Path(options["out"]), config, options["workers"], options["force"]


def main(argv: list[str] | None = None) -> dict:
    """CLI: generate (or reuse, unless ``--force``) a world and print its summary as JSON.

    ``python -m lightning_wsg.synthetic features --flickr ROOT --out DIR`` builds the feature
    world from the real Flickr30K Entities annotations instead (:func:`features_main`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["features"]:
        return features_main(argv[1:])
    out, config, workers, force = parse_args(argv)
    if not force and world_is_complete(out, config):
        summary = json.loads((out / "world.json").read_text(encoding="utf-8"))["stats"] | {"reused": True}
    else:
        summary = generate_world(out, config, workers=workers)
    print(json.dumps(summary, indent=1))
    return summary


def build_features_parser() -> argparse.ArgumentParser:
    """The feature world's parser: ``--flickr``, ``--out``, ``--force``, one option per ``FeatureWorldConfig`` field."""
    from . import feature_world  # reads the Flickr release through lightning_wsg.data: imported only here

    p = argparse.ArgumentParser(
        prog="python -m lightning_wsg.synthetic features", description=(feature_world.__doc__ or "").split("\n")[0]
    )
    p.add_argument("--flickr", required=True, help="Flickr30K Entities release: annotations.tar.gz (or Annotations/ "
                   "+ Sentences/) and train.txt / val.txt / test.txt")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="rebuild even if an identical world exists")
    add_config_options(p, feature_world.FeatureWorldConfig)
    return p


def features_main(argv: list[str] | None = None) -> dict:
    """``python -m lightning_wsg.synthetic features``: build (or reuse) a feature world, print its stats."""
    from . import feature_world

    options = vars(build_features_parser().parse_args(argv))
    cfg = config_from_options(feature_world.FeatureWorldConfig, options)
    out = options["out"]
    if not options["force"] and feature_world.world_is_complete(out, cfg):
        stats = json.loads((Path(out) / "world.json").read_text(encoding="utf-8"))["stats"] | {"reused": True}
    else:
        stats = feature_world.build_feature_world(options["flickr"], out, cfg)
    print(json.dumps(stats, indent=1))
    return stats
