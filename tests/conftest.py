"""Suite-wide fixtures: the real Flickr30K Entities annotations and a tiny generated dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.flickr import FLICKR_FILES, TinyFlickr, cached_flickr_root, make_tiny_flickr
from helpers.shared import require_shared


@pytest.fixture(scope="session")
def flickr_root() -> Path:
    """The real annotations as a real-format root (read-only by convention).

    Holds ``Annotations/``, ``Sentences/`` (31,783 images), ``train.txt``, ``val.txt``,
    ``test.txt`` and ``UNRELATED_CAPTIONS``. Unpacked from the shared archive once into a
    temporary cache folder and reused by later sessions (see
    :func:`helpers.flickr.cached_flickr_root`); skips when the shared data is absent, fails
    under ``CI=true`` (:func:`helpers.shared.require_shared`).
    """
    require_shared(FLICKR_FILES / "annotations.tar.gz", "the real Flickr30K Entities annotations")
    return cached_flickr_root()


@pytest.fixture(scope="session")
def phraseloceval_test_path() -> Path:
    """The phraseloceval reference ground truth of the 14,481 test phrases (``.json.gz``)."""
    return require_shared(FLICKR_FILES / "phraseloceval_annotation_test.json.gz", "the phraseloceval test ground truth")


@pytest.fixture(scope="session")
def tiny_flickr(tmp_path_factory: pytest.TempPathFactory) -> TinyFlickr:
    """A tiny generated Flickr30K Entities dataset (24 images: 16 train, 4 val, 4 test).

    Read-only by convention: tests that modify files should call
    :func:`helpers.flickr.make_tiny_flickr` into their own ``tmp_path``.
    """
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny_flickr"), n_images=24, seed=0)
