"""The grounding network: two towers and their region-phrase scores, apart from training.

:class:`GroundingModel` is a plain ``nn.Module``: the region tower and the phrase tower
(:mod:`lightning_wsg.models`), the scores ``s(r, p)`` of :mod:`lightning_wsg.losses`, and
:meth:`~GroundingModel.ground` for new images. It is what a model folder holds
(:mod:`lightning_wsg.model_folder`) and what inference needs; the losses, the optimizer and
the metrics live in the LightningModule (:class:`~lightning_wsg.grounding_module.GroundingModule`).

Example:
    >>> model = GroundingModel.from_pretrained("outputs/demo/model")  # doctest: +SKIP
    >>> model.ground("dog.jpg", "a [brown dog] jumps over [the fence]")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .boxes import scale_boxes
from .data.batch import GroundingBatch, GroundingSample, collate
from .data.images import image_input, read_pixels, read_size
from .data.predict_file import PREDICT_SPLIT, parse_sentence
from .detection.grid import box_grid
from .losses import region_phrase_scores
from .metrics import phrase_results
from .models import PhraseTower, RegionTower, init_config

__all__ = ["DEFAULT_IMAGE_SIZE", "GroundingModel"]

#: ``ground()``'s input size when the model's training size is not known
DEFAULT_IMAGE_SIZE = 512


class GroundingModel(nn.Module):
    """Region and phrase towers scoring each phrase against each region of its image.

    Args:
        region_encoder: :class:`~lightning_wsg.models.RegionEncoder` (images: timm backbone +
            RoIAlign + MLP) or :class:`~lightning_wsg.models.FeatureRegionEncoder`
            (precomputed per-box features).
        phrase_encoder: :class:`~lightning_wsg.models.PhraseEncoder` (transformers) or
            :class:`~lightning_wsg.models.LSTMPhraseEncoder` (word vectors).
        image_size: the input size images are resized to in :meth:`ground` (the training
            datamodule's; model folders and checkpoints restore it).

    Attributes:
        image_size: see above (``None``: :data:`DEFAULT_IMAGE_SIZE`).
    """

    def __init__(self, region_encoder: RegionTower, phrase_encoder: PhraseTower, image_size: int | None = None) -> None:
        super().__init__()
        if region_encoder.embed_dim != phrase_encoder.embed_dim:
            raise ValueError(
                f"the towers disagree on the joint space: region_encoder.embed_dim={region_encoder.embed_dim}, "
                f"phrase_encoder.embed_dim={phrase_encoder.embed_dim}"
            )
        self.region_encoder = region_encoder
        self.phrase_encoder = phrase_encoder
        self.image_size = image_size

    def config(self) -> dict[str, Any]:
        """The towers as ``class_path`` / ``init_args`` (what rebuilds this model)."""
        return {"region_encoder": init_config(self.region_encoder), "phrase_encoder": init_config(self.phrase_encoder)}

    @property
    def reads_images(self) -> bool:
        """Whether the region tower reads pixels (else per-box features)."""
        return bool(getattr(self.region_encoder, "reads_images", True))

    @property
    def feature_dim(self) -> int | None:
        """The width of the per-box features a feature tower reads (``None`` for an image tower)."""
        return None if self.reads_images else getattr(self.region_encoder, "feature_dim", None)

    def encode(self, batch: GroundingBatch) -> tuple[Tensor, Tensor]:
        """Region features ``[B, R, D]`` and phrase features ``[B, P, D]`` (L2-normalised)."""
        return self.region_encoder.encode(batch), self.phrase_encoder.encode(batch)

    def forward(self, batch: GroundingBatch) -> Tensor:
        """Region-phrase scores ``[B, P, R]`` of each sentence against its own image.

        Uses only the images (or given region features), proposal boxes and sentences: never
        detector labels or scores.
        """
        regions, phrases = self.encode(batch)
        return region_phrase_scores(regions, phrases)

    def ground(
        self,
        image: Any,
        sentence: str,
        proposals: Tensor | Sequence[Sequence[float]] | None = None,
        top_k: int = 5,
        phrases: Sequence[str | Sequence[int]] | None = None,
        image_size: int | None = None,
        grid: dict[str, Any] | None = None,
        features: Tensor | None = None,
    ) -> list[dict[str, Any]]:
        """Ground the phrases of ``sentence`` (``"a [red car] by [the tree]"``, or plain) in ``image``.

        Args:
            image: a path, a PIL image or a ``[3, H, W]`` tensor (uint8, or float in ``[0, 1]``);
                with a feature tower, which reads no pixels, also ``(width, height)``.
            sentence: the sentence, phrases marked with brackets (or a plain expression).
            proposals: ``[R, 4]`` corners in original-image pixels (default: a dense box grid,
                :func:`~lightning_wsg.detection.grid.box_grid`; a feature tower needs them).
            top_k: the chosen box plus up to ``top_k`` next-best alternatives per phrase.
            phrases: listed phrases instead of brackets (see
                :func:`~lightning_wsg.data.predict_file.parse_sentence`).
            image_size: the network input size (default: :attr:`image_size`, else 512).
            grid: :func:`~lightning_wsg.detection.grid.box_grid` keyword arguments for the
                default proposals.
            features: ``[R, F]`` per-box features of ``proposals``: the feature tower's input.

        Returns:
            Per phrase ``{"phrase", "span", "box", "score", "alternatives": [{"box", "score"}...]}``,
            boxes in original-image pixels.
        """
        if self.reads_images:
            pixels = read_pixels(image)
            height, width = (int(v) for v in pixels.shape[-2:])
        elif isinstance(image, (tuple, list)) and len(image) == 2:
            pixels, (width, height) = None, (int(image[0]), int(image[1]))
        elif isinstance(image, (str, Path)):  # the size from the file's header: no pixel is read
            pixels, (width, height) = None, read_size(image)
        else:
            pixels = None
            height, width = (int(v) for v in read_pixels(image).shape[-2:])
        words, spans = parse_sentence(sentence, phrases)
        if not self.reads_images and (proposals is None or features is None):
            raise ValueError(
                f"{type(self.region_encoder).__name__} reads per-box features, not pixels: give ground() the "
                "proposals and their features"
            )
        boxes = (
            box_grid(width, height, **(grid or {}))
            if proposals is None
            else torch.as_tensor(proposals).float().reshape(-1, 4)
        )
        if len(boxes) == 0:
            raise ValueError("no proposals")
        if features is not None:
            features = torch.as_tensor(features).float()
            if features.ndim != 2 or features.shape[0] != len(boxes):
                raise ValueError(
                    f"features must be [{len(boxes)}, F] for {len(boxes)} proposals, got {tuple(features.shape)}"
                )
        size = int(image_size or self.image_size or DEFAULT_IMAGE_SIZE)
        tensor = image_input(pixels, size) if pixels is not None else torch.zeros(3, 1, 1)
        if pixels is None:
            size = 1
        sample = GroundingSample(
            split=PREDICT_SPLIT,
            image_id="image",
            sentence_id="image#0",
            image=tensor,
            image_size=(width, height),
            words=words,
            phrase_spans=spans,
            proposals=boxes,
            roi_boxes=scale_boxes(boxes, size / width, size / height),
            proposal_scores=torch.zeros(len(boxes)),
            region_features=features,
        )
        from lightning_fabric.utilities.apply_func import move_data_to_device

        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        batch = move_data_to_device(collate([sample]), device)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                scores = self(batch)
        finally:
            self.train(was_training)
        return phrase_results(scores, batch.proposals, batch.proposal_mask, batch.words, batch.phrase_spans, top_k)[0]

    # ------------------------------------------------------------ model folder
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GroundingModel:
        """The model of a model folder (``config.yaml`` + ``model.safetensors``), in eval mode.

        Nothing is downloaded: the towers' own pretrained weights are off in the folder's
        config. A folder written before the model/training split (its ``config.yaml`` also
        holds training settings) loads the same way: only the towers are read.
        """
        from .model_folder import load_folder_model

        return load_folder_model(cls, directory)

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> Path:
        """Write this model as a model folder (see :mod:`lightning_wsg.model_folder`).

        Args:
            directory: the folder (created if missing; its three files are replaced).
            card: the ``README.md`` model card (default: a short one;
                ``lightning_wsg export`` writes one with the run's data and metrics).
        """
        from .model_folder import folder_config, write_folder

        if card is None:
            card = f"# {Path(directory).name}\n\nA lightning_wsg GroundingModel (`GroundingModel.from_pretrained`).\n"
        return write_folder(self, directory, folder_config(self.config(), self.image_size), card)
