"""Every dataset datamodule takes GroundingDataModule's arguments through ``**kwargs``.

The subclasses list only their own arguments and hand the rest to ``super().__init__``; the
command line learns the shared ones from jsonargparse, which follows ``**kwargs`` into the base.
These tests find every subclass in ``lightning_wsg.data`` (a new one is covered without a
change here) and check both halves: a shared argument given to the subclass reaches the base,
and the subclass's signature as jsonargparse reads it offers every shared argument.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

import lightning_wsg.data
from lightning_wsg.data import GroundingDataModule

#: Shared arguments a datamodule sets itself and does not take (each says why in its docstring).
FIXED = {
    "RefCOCODataModule": {"max_phrases"},  # every expression is one phrase
    "SyntheticWorldDataModule": {"image_dir"},  # the world's images/ folder
}

#: A value other than every datamodule's default, per shared argument.
VALUES = {
    "root": "some/root",
    "image_dir": "some/images",
    "detections": "some/detections.jsonl",
    "vocabulary": "some/vocabulary.txt",
    "batch_size": 3,
    "num_workers": 1,
    "image_size": 48,
    "max_proposals": 7,
    "max_phrases": 5,
    "pin_memory": True,
    "persistent_workers": True,
    "verify_images": True,
    "predict_split": "val",
    "read_features": True,
    "feature_dim": 9,
    "require_labels": True,
}
PATHS = {"root", "image_dir", "detections", "vocabulary"}


def shared_arguments() -> list[str]:
    return [name for name in inspect.signature(GroundingDataModule.__init__).parameters if name != "self"]


def datamodule_classes() -> list[type[GroundingDataModule]]:
    """Every subclass of GroundingDataModule defined in lightning_wsg.data and its modules."""
    for info in pkgutil.walk_packages(lightning_wsg.data.__path__, "lightning_wsg.data."):
        importlib.import_module(info.name)
    found, todo = {}, list(GroundingDataModule.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("lightning_wsg.data."):
            found[cls.__qualname__] = cls
    return [found[name] for name in sorted(found)]


CLASSES = datamodule_classes()


def test_every_datamodule_is_found_and_every_shared_argument_has_a_value():
    assert {c.__name__ for c in CLASSES} >= {"Flickr30kEntitiesDataModule", "RefCOCODataModule", "SyntheticWorldDataModule"}
    assert set(VALUES) == set(shared_arguments()), "give the new shared argument a non-default value here"


def _jsonargparse_arguments(cls: type) -> dict:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    return vars(parser.get_defaults()["data"])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_shared_arguments_reach_the_base(cls):
    given = {name: value for name, value in VALUES.items() if name not in FIXED.get(cls.__name__, set())}
    defaults = _jsonargparse_arguments(cls)
    for name, value in given.items():
        assert defaults.get(name) != value, f"{cls.__name__}: {name}={value!r} is its default: pick another"
    dm = cls(**given)
    for name, value in given.items():
        expected = Path(value) if name in PATHS else value
        assert getattr(dm, name) == expected, f"{cls.__name__}({name}={value!r}) did not reach GroundingDataModule"
        assert dm.hparams[name] == value, f"{cls.__name__}: {name} not saved as a hyperparameter"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_command_line_offers_every_shared_argument(cls):
    """jsonargparse follows ``**kwargs`` through ``super().__init__``: what ``--print_config`` lists."""
    offered = set(_jsonargparse_arguments(cls))
    fixed = FIXED.get(cls.__name__, set())
    missing = set(shared_arguments()) - fixed - offered
    assert not missing, f"{cls.__name__} does not offer {sorted(missing)} on the command line"
    assert not fixed & offered, f"{cls.__name__} offers {sorted(fixed & offered)}, which it sets itself"


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.__name__ in FIXED], ids=lambda c: c.__name__)
def test_a_fixed_argument_is_refused_naming_it(cls):
    (name,) = FIXED[cls.__name__]
    with pytest.raises(ValueError, match=f"{name} is not taken"):
        cls(root="r", **{name: VALUES[name]})
