"""What makes a detection-cache fingerprint: content digests of files and canonical JSON hashes.

A checkpoint of hundreds of MB is hashed once per ``(path, size, mtime)`` and remembered in a
JSON memo between runs (:func:`file_digest`); a detector setting is named by the SHA-256 of
its canonical JSON (:func:`fingerprint`).

Example:
    >>> fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

__all__ = ["file_digest", "fingerprint"]

logger = logging.getLogger("lightning_wsg")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path, memo: str | Path | None = None) -> str:
    """SHA-256 of a file's contents, memoised by ``(path, size, mtime)``.

    Args:
        path: the file.
        memo: a JSON file keeping digests between runs (a checkpoint of hundreds of MB is
            then hashed once, not at every fit); ``None`` keeps them for this process only.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    memo_key = f"{key[0]}|{key[1]}|{key[2]}"
    table: dict[str, str] = {}
    if memo is not None:
        memo = Path(memo)
        try:
            table = json.loads(memo.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
        if memo_key in table:
            _DIGESTS[key] = table[memo_key]
            return table[memo_key]
    digest = _sha256(path)
    _DIGESTS[key] = digest
    if memo is not None:
        table[memo_key] = digest
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo, json.dumps(table, indent=1, sort_keys=True))
        except OSError as err:  # a read-only cache still works
            logger.debug("could not write the digest memo %s: %s", memo, err)
    return digest


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (keys sorted, no whitespace)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
