"""Writes that a kill cannot leave half done: the file is written beside its place under a
temporary name and renamed over it (``os.replace`` is atomic on one file system), so a reader
sees the old file or the whole new one, never a truncated one that still parses (a JSON Lines
file cut at a line boundary would silently lose its last records).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels.jsonl"
    >>> with atomic_open(path, "w") as fh:
    ...     _ = fh.write('{"box": [0, 0, 1, 1]}\\n')
    >>> path.read_text()
    '{"box": [0, 0, 1, 1]}\\n'
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "atomic_write_text", "temp_name"]


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique per host, process and call."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write (a library's ``save(filename)``), renamed over
    ``path`` only when the block ends without error; removed otherwise."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` whose file replaces ``path`` only when the block ends without error."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
