"""JSON Lines reading whose errors name the file and the line.

Every JSON Lines input of the project (detections, prediction inputs, a synthetic world's
objects) is read through :func:`read_jsonl`; each reader raises its own error type.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = path.write_text('{"a": 1}\\n\\n[2]\\n', encoding="utf-8")
    >>> list(read_jsonl(path))
    [(1, {'a': 1}), (3, [2])]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of ``path`` (numbers from 1).

    Raises:
        error: ``"<path>:<line>: not valid JSON: <reason>"`` for a line that does not parse.
    """
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{number}: not valid JSON: {err.msg}") from None
