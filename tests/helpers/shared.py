"""The one rule for tests that read the real annotation files in ``../shared/data``.

On a developer's machine without the shared data those tests skip (with the path in the
reason). Under CI (``CI=true``, as every CI service sets it) a missing file fails the test
instead: there the strongest tests (real counts, the phraseloceval agreement, the real
end-to-end runs) must run, and a silent skip would hide that they did not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["in_ci", "require_shared"]


def in_ci() -> bool:
    """Whether the suite runs under CI (``$CI`` is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_shared(path: str | Path, what: str) -> Path:
    """``path`` when it exists; else skip the test, or fail it under CI."""
    path = Path(path)
    if path.exists():
        return path
    message = f"{what} not found: {path} (the shared data folder; $LIGHTNING_WSG_SHARED_DATA overrides it)"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing shared file is a failure, not a skip", pytrace=False)
    pytest.skip(message)
