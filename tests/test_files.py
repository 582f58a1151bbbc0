"""Atomic writes: a write that fails (or is killed) part-way leaves the old file whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_wsg.files import atomic_open, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text("old 1\nold 2\n")
    with pytest.raises(RuntimeError, match="cut"), atomic_open(path, "w") as fh:
        fh.write("new 1\n")
        fh.flush()
        raise RuntimeError("cut")
    assert path.read_text() == "old 1\nold 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl"]


def test_a_whole_write_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    with atomic_open(path, "wb") as fh:
        fh.write(b"\x00\x01")
    atomic_write_text(tmp_path / "b.json", "{}")
    assert path.read_bytes() == b"\x00\x01" and (tmp_path / "b.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]
