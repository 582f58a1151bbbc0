"""The two tower interfaces of :class:`~lightning_wsg.grounding_module.GroundingModule`.

A grounding model is a region tower (proposals of an image -> unit-norm features ``[B, R, D]``)
and a phrase tower (phrases of a sentence -> unit-norm features ``[B, P, D]``) scored by
cosine. Each tower kind is a subclass of :class:`RegionTower` or :class:`PhraseTower`, so a
config picks it by ``class_path`` (LightningCLI's convention for submodules)::

    model:
      region_encoder:
        class_path: lightning_wsg.models.RegionEncoder        # timm + RoIAlign + MLP
        init_args: {backbone: resnet50, embed_dim: 512}
      phrase_encoder:
        class_path: lightning_wsg.models.LstmPhraseEncoder    # GloVe + LSTM + MLP
        init_args: {embed_dim: 512}

A tower reads what it needs from a batch (:meth:`RegionTower.encode`): the networks stay free
of the data code, a batch being any object with the named attributes
(:class:`~lightning_wsg.data.batch.GroundingBatch`).

Every tower remembers the arguments it was built with (:func:`init_config`), so a module
built in Python stores the same ``class_path`` / ``init_args`` in its checkpoint as one built
from a config, and ``GroundingModule.load_from_checkpoint(path)`` rebuilds either.

Example:
    >>> from lightning_wsg.models import Teacher
    >>> init_config(Teacher(matching="lexical"))["init_args"]["matching"]
    'lexical'
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import Tensor, nn

__all__ = ["PhraseTower", "RecordsInitArgs", "RegionTower", "init_config", "plain_values"]


class RecordsInitArgs:
    """Mixin: instances remember their constructor's arguments (defaults filled in).

    The outermost constructor of a subclass chain wins, so the record names the class that
    was built and all its arguments.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_init_args", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))  # self
            self.__dict__["_init_args"] = arguments  # a plain attribute: never in state_dict

        __init__._records_init_args = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]


def init_config(obj: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuild ``obj`` (a :class:`RecordsInitArgs`)."""
    args = obj.__dict__.get("_init_args")
    if args is None:
        raise TypeError(
            f"{type(obj).__name__} does not record its constructor's arguments, so a checkpoint could not "
            "rebuild it: derive it from lightning_wsg.models.RegionTower / PhraseTower (or RecordsInitArgs)"
        )
    cls = type(obj)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": plain_values(args)}


def plain_values(value: Any) -> Any:
    """Containers as lists and dicts (a checkpoint's hyperparameters load with weights_only)."""
    if isinstance(value, dict):
        return {str(k): plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constructor argument {value!r} ({type(value).__name__}) cannot be stored in a checkpoint")


class RegionTower(RecordsInitArgs, nn.Module):
    """Proposals of a batch of images -> unit-norm region features ``[B, R, D]``.

    Attributes:
        embed_dim: ``D``, the width of the joint region-phrase space.
        reads_images: whether :meth:`encode` reads ``batch.images`` (a feature tower reads
            ``batch.region_features`` instead, and the datamodule may skip the images).
    """

    embed_dim: int
    reads_images: bool = True

    def encode(self, batch: Any) -> Tensor:
        """Region features of a batch (``images``, ``roi_boxes``, ``proposal_mask``, ...)."""
        raise NotImplementedError

    def prepare(self, feature_batches: Any) -> None:
        """One-time set-up from the training split before training (statistics); default none."""

    @property
    def needs_preparation(self) -> bool:
        """Whether :meth:`prepare` still has to run before training."""
        return False


class PhraseTower(RecordsInitArgs, nn.Module):
    """Phrases of a batch of sentences -> unit-norm phrase features ``[B, P, D]``.

    Attributes:
        embed_dim: ``D``, the width of the joint region-phrase space.
    """

    embed_dim: int

    def encode(self, batch: Any) -> Tensor:
        """Phrase features of a batch (``words``, ``phrase_spans``, ``phrase_mask``)."""
        return self(batch.words, batch.phrase_spans, batch.phrase_mask.shape[1])
