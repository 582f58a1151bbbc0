"""The one rule for tests that read the real, public annotation files (``helpers.flickr.SHARED_DATA``).

The folder is ``$LIGHTNING_WSG_SHARED_DATA`` (by default ``shared/data`` beside the checkout),
laid out as ``scripts/get_annotations.sh <folder>`` leaves it. On a developer's machine without
the files those tests skip, and the reason names the missing file, where it comes from and the
script. Under CI (``CI=true``, as every CI service sets it) a missing file fails the test
instead: there the strongest tests (real counts, the phraseloceval agreement, the real
end-to-end runs) must run, and a silent skip would hide that they did not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["ANNOTATION_SOURCES", "in_ci", "require_shared", "source_of"]

#: The official source of each folder of the shared data (the folder name is the key).
ANNOTATION_SOURCES = {
    "flickr30k_entities": (
        "Flickr30K Entities: github.com/BryanPlummer/flickr30k_entities (annotations.zip, train/val/test.txt, "
        "UNRELATED_CAPTIONS); phraseloceval's test ground truth: github.com/josiahwang/phraseloceval"
    ),
    "refcoco": (
        "the RefCOCO family: the refer toolkit's data, github.com/lichengunc/refer (the evaluation expressions as "
        "CSV, as the toolkit writes them from refs(<split_by>).p and instances.json); phraseloceval's ground truth: "
        "github.com/josiahwang/phraseloceval"
    ),
    "visual_genome": (
        "the Visual Genome vocabulary: github.com/peteanderson80/bottom-up-attention (data/genome/1600-400-20/)"
    ),
}


def in_ci() -> bool:
    """Whether the suite runs under CI (``$CI`` is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def source_of(path: str | Path) -> str:
    """Where the annotation file ``path`` officially comes from (by its folder in the shared data)."""
    for part in reversed(Path(path).parts):
        if part in ANNOTATION_SOURCES:
            return ANNOTATION_SOURCES[part]
    return "; ".join(ANNOTATION_SOURCES.values())


def require_shared(path: str | Path, what: str) -> Path:
    """``path`` when it exists; else skip the test (naming the file's source), or fail it under CI."""
    path = Path(path)
    if path.exists():
        return path
    message = (
        f"{what} not found: {path}. Source: {source_of(path)}. "
        "`bash scripts/get_annotations.sh <folder>` fetches every annotation file the tests read, laid out as they "
        "expect; then set LIGHTNING_WSG_SHARED_DATA=<folder>"
    )
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing shared file is a failure, not a skip", pytrace=False)
    pytest.skip(message)
