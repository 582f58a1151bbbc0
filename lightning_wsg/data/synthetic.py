"""The built-in synthetic grounding world as a datamodule (generated once, then cached).

:class:`SyntheticWorldDataModule` is a :class:`Flickr30kEntitiesDataModule` whose root is
written by :func:`lightning_wsg.synthetic.generate_world` in ``prepare_data`` when it is
missing or was made with other arguments. The world holds images, Flickr30K Entities
annotations and a simulated detector's proposals, so every part of the real code path
runs on it.

Example:
    >>> dm = SyntheticWorldDataModule(root="outputs/demo/world", num_train=200)  # doctest: +SKIP
    >>> dm.prepare_data(); dm.setup("fit")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_info

from ..synthetic import CaptionNouns, WorldConfig, generate_world, world_is_complete
from .flickr30k_entities import Flickr30kEntitiesDataModule

__all__ = ["WORLD_ARGUMENTS", "SyntheticWorldDataModule"]

#: The init arguments of :class:`SyntheticWorldDataModule` that set the world: WorldConfig field ->
#: argument name (its own name, but for the images' side: ``image_size`` is the model's input size).
WORLD_ARGUMENTS = {f.name: "world_image_size" if f.name == "image_size" else f.name for f in fields(WorldConfig)}


def _world_config(init_args: dict[str, Any]) -> WorldConfig:
    """The :class:`WorldConfig` the datamodule's init arguments set (validated there)."""
    return WorldConfig(**{name: init_args[argument] for name, argument in WORLD_ARGUMENTS.items()})


class SyntheticWorldDataModule(Flickr30kEntitiesDataModule):
    """A generated world in the Flickr30K Entities layout (see :mod:`lightning_wsg.synthetic`).

    The world arguments (``num_train`` ... ``caption_nouns``; :data:`WORLD_ARGUMENTS`) are the
    fields of :class:`~lightning_wsg.synthetic.WorldConfig`, with its defaults; they build
    ``self.world``, so an invalid setting fails here, not in ``prepare_data``.

    Args:
        root: where the world is written (and found again on later runs).
        num_train: training images (5 captions each).
        num_val: validation images.
        num_test: test images.
        world_image_size: side of the generated square images in pixels.
        seed: the world's random seed (output is deterministic for a seed).
        difficulty: detector faults, 0 (clean) to 1 (hard).
        distractor_rate: share of images with two objects of one category.
        pair_rate: share of images seeded with a co-occurring category pair.
        caption_nouns: ``"category"`` (captions and detector both say the shape's category) or
            ``"varied"`` (the detector says a COCO class, the captions a synonym or a kind of it).
        detections: another source of the world's proposals than its ``detections.jsonl``,
            for example per-box features extracted from the world's images
            (``python -m lightning_wsg.features extract``) for the feature tower.
        num_workers: loader worker processes (own default: decoding the small images is cheap).
        image_size: images are resized to ``image_size x image_size`` for the model (own
            default: the world's image size).
        max_proposals: top-scored proposals kept per image (own default: the simulated
            detector's proposals per image).
        **kwargs: other arguments: :class:`~lightning_wsg.data.GroundingDataModule` (the image
            folder is the world's ``images/``, so ``image_dir`` is not taken).
    """

    def __init__(
        self,
        root: str | Path = "outputs/demo/world",
        num_train: int = WorldConfig.num_train,
        num_val: int = WorldConfig.num_val,
        num_test: int = WorldConfig.num_test,
        world_image_size: int = WorldConfig.image_size,
        seed: int = WorldConfig.seed,
        difficulty: float = WorldConfig.difficulty,
        distractor_rate: float = WorldConfig.distractor_rate,
        pair_rate: float = WorldConfig.pair_rate,
        caption_nouns: CaptionNouns = WorldConfig.caption_nouns,
        detections: str | Path | None = None,
        num_workers: int = 2,
        image_size: int = WorldConfig.image_size,
        max_proposals: int = 30,
        **kwargs: Any,
    ) -> None:
        world = _world_config(locals())
        if "image_dir" in kwargs:
            raise ValueError(f"{type(self).__name__}: the world's images are {root}/images; image_dir is not taken")
        root = Path(root)
        super().__init__(
            root,
            root / "images",
            detections if detections is not None else root / "detections.jsonl",
            unrelated_captions=None,  # a world has no unrelated captions
            num_workers=num_workers,
            image_size=image_size,
            max_proposals=max_proposals,
            **kwargs,
        )
        self.world = world

    def prepare_data(self) -> None:
        """Generate the world unless a complete one with the same arguments is there."""
        if world_is_complete(self.root, self.world):
            rank_zero_info(f"synthetic world found at {self.root}")
            return
        w = self.world
        total = w.num_train + w.num_val + w.num_test
        rank_zero_info(f"generating the synthetic world at {self.root} ({total} images, seed {w.seed}) ...")
        stats = generate_world(self.root, self.world)
        rank_zero_info(f"synthetic world written in {stats.get('seconds', 0):.0f} s")
