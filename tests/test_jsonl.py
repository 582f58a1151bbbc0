"""lightning_wsg.jsonl: the one JSON Lines reader behind detections, prediction inputs and world objects."""

from __future__ import annotations

import pytest

from lightning_wsg.detection import DetectionFormatError
from lightning_wsg.jsonl import read_jsonl


def test_blank_lines_are_skipped_and_numbers_count_every_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n[2, 3]\n"x"\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2, 3]), (5, "x")]


def test_a_bad_line_raises_the_callers_error_naming_file_and_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DetectionFormatError, match=r"b\.jsonl:2: not valid JSON"):
        list(read_jsonl(path, DetectionFormatError))
    with pytest.raises(ValueError, match=r"b\.jsonl:2"):
        list(read_jsonl(path))
