"""A shape world's settings (:class:`WorldConfig`), its generation, its cache check and its stats.

:func:`generate_world` writes one image's files per job (each image draws from its own
generator, seeded by the world's seed and the image's index), so the output is byte-identical
for a config, whatever the number of processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import numbers
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import torch

from ..detection.formats import Detections, write_jsonl
from ..jsonl import read_jsonl
from .captions import _captions, _xml
from .detector import _detect
from .rendering import _attributes, _iou1, _place, _render, _scene_categories
from .vocabulary import (
    _CATS,
    CATEGORIES,
    COLOURS,
    PAIRS,
    PARTNER,
    SIZES,
    TEXTURES,
    CaptionNouns,
    detector_name,
    phrase_type,
)

__all__ = [
    "DIFFICULTY",
    "DISTRACTOR_RATE",
    "IMAGE_SIZE",
    "NUM_TEST",
    "NUM_TRAIN",
    "NUM_VAL",
    "PAIR_RATE",
    "WorldConfig",
    "generate_world",
    "read_objects",
    "world_is_complete",
]

VERSION = 1


@dataclass(frozen=True)
class WorldConfig:
    """Every setting of a shape world, validated: the same config gives the same bytes.

    The one source of the world's settings: the CLI's options (:mod:`lightning_wsg.synthetic.cli`)
    and the world arguments of :class:`~lightning_wsg.data.SyntheticWorldDataModule` are derived
    from these fields, and ``world.json`` stores them as ``args`` (in this order).

    Values are converted to each field's type (``difficulty=1`` is stored as ``1.0``), so that
    two configs that build the same world compare equal.

    Raises:
        TypeError: a value of the wrong kind (a string or a bool for a number, a fractional
            value for an integer).
        ValueError: a value out of range; the message names every offending field.
    """

    # metadata["help"]: the CLI option's help text
    num_train: int = field(default=1600, metadata={"help": "training images (5 captions each)"})
    num_val: int = field(default=200, metadata={"help": "validation images"})
    num_test: int = field(default=200, metadata={"help": "test images"})
    image_size: int = field(default=128, metadata={"help": "side of the square images in pixels (>= 48)"})
    seed: int = field(default=0, metadata={"help": "the world's seed (>= 0); the output is byte-identical for a seed"})
    difficulty: float = field(
        default=0.5,
        metadata={
            "help": "detector faults in [0, 1]: misses ~14% x d, wrong labels ~20% x d, loose duplicates, jitter"
        },
    )
    distractor_rate: float = field(
        default=0.5, metadata={"help": "share of images holding two objects of one category, in [0, 1]"}
    )
    pair_rate: float = field(
        default=0.7, metadata={"help": "share of images seeded with a co-occurring category pair, in [0, 1]"}
    )
    caption_nouns: CaptionNouns = field(
        default="category",
        metadata={
            "help": "'category': captions and detector both say the shape's category word; 'varied': the detector "
            "says a COCO class name, the captions a synonym or a kind of it ('woman' where the detector says 'person')"
        },
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _convert(f.name, _HINTS[f.name], getattr(self, f.name)))
        problems = [
            f"{name} must be >= 0, got {getattr(self, name)}"
            for name in ("num_train", "num_val", "num_test")
            if getattr(self, name) < 0
        ]
        if self.image_size < 48:
            problems.append(f"image_size must be >= 48, got {self.image_size}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        problems += [
            f"{name} must lie in [0, 1], got {getattr(self, name)}"
            for name in ("difficulty", "distractor_rate", "pair_rate")
            if not 0.0 <= getattr(self, name) <= 1.0
        ]
        if problems:
            raise ValueError("invalid world arguments: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored in ``world.json`` (``args``), in field order."""
        return asdict(self)


_HINTS = get_type_hints(WorldConfig)
# The defaults under their former module-level names, for importers (WorldConfig holds them).
NUM_TRAIN, NUM_VAL, NUM_TEST = WorldConfig.num_train, WorldConfig.num_val, WorldConfig.num_test
IMAGE_SIZE, DIFFICULTY = WorldConfig.image_size, WorldConfig.difficulty
DISTRACTOR_RATE, PAIR_RATE = WorldConfig.distractor_rate, WorldConfig.pair_rate


def _convert(name: str, hint: Any, value: Any) -> Any:
    """``value`` as a field of type ``hint`` wants it, or a clear error."""
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            raise ValueError(f"invalid world arguments: {name} must be one of {get_args(hint)}, got {value!r}")
        return value
    if hint is int and not isinstance(value, bool):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        raise TypeError(f"invalid world arguments: {name} must be an integer, got {value!r}")
    if hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"invalid world arguments: {name} must be a {hint.__name__}, got {value!r}")


def _resolve(config: WorldConfig | None, settings: dict[str, Any]) -> WorldConfig:
    """``config`` (default: :class:`WorldConfig`'s defaults) with ``settings`` replacing some of its fields."""
    unknown = set(settings) - {f.name for f in fields(WorldConfig)}
    if unknown:
        raise TypeError(f"unknown world arguments: {sorted(unknown)}")
    if config is not None and not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    return replace(config, **settings) if config is not None else WorldConfig(**settings)


def _new_stats() -> dict:
    return {
        "objects": 0,
        "missed": 0,
        "wrong": 0,
        "tight_iou": [],
        "distractor": 0,
        "pair": 0,
        "proposals": [],
        "phrases": 0,
        "covered": 0,
        "ambiguous": 0,
        "pair_captions": 0,
        "pair_named": 0,
        "cat_images": dict.fromkeys(_CATS, 0),
        "cat_with_partner": dict.fromkeys(_CATS, 0),
    }


def _merge_stats(st: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, list):
            st[k].extend(v)
        elif isinstance(v, dict):
            for c, n in v.items():
                st[k][c] += n
        else:
            st[k] += v


def _image_stats(st: dict, objs: list[dict], lines: list[str], chains: dict, props: list) -> None:
    """Count distractors, pairs, phrases, and phrases some proposal covers (IoU >= 0.5)."""
    cat_set = {o["category"] for o in objs}
    st["distractor"] += len(cat_set) < len(objs)
    pairs_here = [(x, y) for x, y in PAIRS if x in cat_set and y in cat_set]
    st["pair"] += bool(pairs_here)
    for c in cat_set:
        st["cat_images"][c] += 1
        st["cat_with_partner"][c] += PARTNER.get(c) in cat_set
    for line in lines:
        named = set()
        for chain in (int(t.split("/")[1][3:]) for t in line.split("[")[1:]):
            members = chains["used"][chain]
            if members == "scene":
                continue
            cat = objs[members[0]]["category"]
            named.add(cat)
            boxes = np.array([objs[i]["box"] for i in members])
            union = [*boxes[:, :2].min(0), *boxes[:, 2:].max(0)]
            st["phrases"] += 1
            st["covered"] += max(_iou1(union, b) for b in props) >= 0.5
            st["ambiguous"] += sum(o["category"] == cat for o in objs) > 1
        if pairs_here:
            st["pair_captions"] += 1
            st["pair_named"] += any(x in named and y in named for x, y in pairs_here)


def _make_image(job: tuple) -> tuple:
    """Write one image's files; return its detections (as lists) and its stats."""
    index, image_id, out, config = job
    out, st, s = Path(out), _new_stats(), config.image_size
    rng = np.random.default_rng([config.seed, index])
    cats, dup = _scene_categories(rng, config.distractor_rate, config.pair_rate)
    objs = _place(rng, _attributes(rng, cats, dup), s)
    img, scene_word = _render(rng, objs, s)
    img.save(out / "images" / f"{image_id}.jpg", format="JPEG", quality=95, subsampling=0)
    lines, chains = _captions(rng, objs, s, scene_word, config.caption_nouns)
    (out / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, s, objs, chains), encoding="utf-8")
    boxes, labels, scores = _detect(rng, objs, s, config.difficulty, st, config.caption_nouns)
    st["proposals"].append(len(boxes))
    props = np.array(boxes, np.float64).round(2).tolist()
    _image_stats(st, objs, lines, chains, props)
    plural = chains["used"].get(chains["plural"], [])
    truth = [
        dict(
            chains=[int(chains["chain_of"][i])] + ([chains["plural"]] if i in plural else []),
            box=o["box"].tolist(),
            **{k: o[k] for k in ("category", "colour", "size", "texture")},
        )
        for i, o in enumerate(objs)
    ]
    return image_id, props, labels, scores, st, truth


def world_is_complete(out_dir: str | Path, config: WorldConfig | None = None, **settings: Any) -> bool:
    """Whether ``out_dir`` holds a finished world generated with ``config`` (with ``settings`` replacing fields).

    Takes the arguments of :func:`generate_world` (``workers`` is ignored), so that
    ``if not world_is_complete(d, cfg): generate_world(d, cfg)`` caches a world.

    Raises:
        TypeError: a setting that is no field of :class:`WorldConfig`.
    """
    settings.pop("workers", None)  # how many processes wrote it does not change a world
    config = _resolve(config, settings)
    out = Path(out_dir)
    try:
        meta = json.loads((out / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = ["detections.jsonl", "objects.jsonl", "train.txt", "val.txt", "test.txt"]
    return (
        meta.get("version") == VERSION
        and meta.get("args") == config.to_dict()
        and not (out / ".generating").exists()
        and all((out / f).is_file() for f in files)
    )


def _summary(st: dict, splits: dict) -> dict:
    """The world's stats (stored in ``world.json``) from the merged counts."""
    index = len(st["proposals"])
    n, props = max(1, index), np.array(st["proposals"] or [0])
    paired = [c for c in _CATS if c in PARTNER and st["cat_images"][c]]
    return {
        "images": index,
        "splits": splits,
        "objects_per_image": round(st["objects"] / n, 3),
        "distractor_rate": round(st["distractor"] / n, 4),
        "cooccurrence_rate": round(st["pair"] / n, 4),
        "pair_named_in_captions": round(st["pair_named"] / max(1, st["pair_captions"]), 4),
        "partner_given_category_min": round(
            min((st["cat_with_partner"][c] / st["cat_images"][c] for c in paired), default=0.0), 4
        ),
        "proposals_per_image": {
            "mean": round(float(props.mean()), 2),
            "min": int(props.min()),
            "max": int(props.max()),
        },
        "phrases_with_box": st["phrases"],
        "upper_bound": round(st["covered"] / max(1, st["phrases"]), 4),
        "ambiguous_phrase_share": round(st["ambiguous"] / max(1, st["phrases"]), 4),
        "missed_objects": round(st["missed"] / max(1, st["objects"]), 4),
        "wrong_labels": round(st["wrong"] / max(1, st["objects"] - st["missed"]), 4),
        "tight_iou_ge_0_7": round(float(np.mean(np.array(st["tight_iou"]) >= 0.7)) if st["tight_iou"] else 0.0, 4),
    }


def generate_world(
    out_dir: str | Path, config: WorldConfig | None = None, workers: int | None = None, **settings: Any
) -> dict:
    """Write a synthetic world to ``out_dir`` and return its summary stats.

    Args:
        out_dir: target folder; it must be empty, absent, or a world written here before
            (whose files are then replaced).
        config: the world's settings (default: :class:`WorldConfig`'s defaults).
        workers: processes (default: up to all cores; the output does not depend on it).
        **settings: :class:`WorldConfig` fields replacing those of ``config``
            (``generate_world(out, num_train=16)``).

    Returns:
        The stats also stored in ``world.json`` plus ``seconds`` (generation time).

    Raises:
        TypeError, ValueError: invalid settings (see :class:`WorldConfig`).
        FileExistsError: ``out_dir`` holds other files and no world.
    """
    config = _resolve(config, settings)
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not ((out / "world.json").exists() or (out / ".generating").exists()):
        raise FileExistsError(f"{out} is not empty and holds no synthetic world; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".generating").touch()
    (out / "world.json").unlink(missing_ok=True)
    for sub in ("images", "Annotations", "Sentences"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    total = config.num_train + config.num_val + config.num_test
    jobs = [(i, str(1_000_000 + i), str(out), config) for i in range(total)]
    if workers is None:  # a process pays off from a few dozen images on
        workers = min(os.cpu_count() or 1, max(1, len(jobs) // 64))
    if workers > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(workers) as pool:
            results = pool.map(_make_image, jobs, chunksize=16)
    else:
        results = [_make_image(job) for job in jobs]
    st, splits, dets, start_index = _new_stats(), {}, [], 0
    for split in ("train", "val", "test"):
        part = results[start_index : start_index + getattr(config, f"num_{split}")]
        start_index += len(part)
        split_st = _new_stats()
        for image_id, props, labels, scores, image_st, _ in part:
            dets.append(
                Detections(
                    image_id,
                    torch.tensor(props, dtype=torch.float32).reshape(-1, 4),
                    labels,
                    torch.tensor(scores, dtype=torch.float32),
                )
            )
            _merge_stats(split_st, image_st)
        _merge_stats(st, split_st)
        splits[split] = {
            "images": len(part),
            "upper_bound": round(split_st["covered"] / max(1, split_st["phrases"]), 4),
        }
        (out / f"{split}.txt").write_text("".join(r[0] + "\n" for r in part), encoding="utf-8")
    write_jsonl(out / "detections.jsonl", dets)
    with (out / "objects.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"image_id": r[0], "objects": r[5]}) + "\n" for r in results)
    stats = _summary(st, splits)
    meta = {
        "version": VERSION,
        "generator": "lightning_wsg.synthetic",
        "layout": "flickr30k_entities",
        "args": config.to_dict(),
        "stats": stats,
        "vocabulary": {
            "categories": {c: phrase_type(c, config.caption_nouns) for c in CATEGORIES},
            "detector_names": {c: detector_name(c, config.caption_nouns) for c in CATEGORIES},
            "colours": COLOURS,
            "sizes": list(SIZES),
            "textures": TEXTURES,
            "pairs": PAIRS,
        },
    }
    tmp = out / "world.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "world.json")
    (out / ".generating").unlink()
    return stats | {"seconds": round(time.perf_counter() - start, 2)}


def read_objects(root: str | Path) -> dict[str, list[dict]]:
    """The truth behind a generated world: ``image_id -> objects`` from ``objects.jsonl``.

    Each object has ``box`` (corner pixels, like the annotations), ``category``, ``colour``,
    ``size``, ``texture`` and ``chains`` (the ids of the phrases that name it).
    """
    path = Path(root) / "objects.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a world written by lightning_wsg.synthetic?")
    out = {}
    for n, record in read_jsonl(path):
        try:
            out[str(record["image_id"])] = list(record["objects"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not an objects record ({err!r})") from err
    return out
