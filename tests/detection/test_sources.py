"""open_detections and the reader table: which store a path opens as, and the names the old homes keep."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import lightning_wsg.detection as detection
from lightning_wsg.detection import base, formats, hdf5, jsonl, native, native_store, store, tsv
from lightning_wsg.detection.base import (
    DetectionFormatError,
    Detections,
    DetectionStore,
    register_reader,
    registered_readers,
)
from lightning_wsg.detection.sources import open_detections

#: where each name ``lightning_wsg.detection.formats`` held before the split lives now
FORMATS_HOMES = {
    "DetectionFormatError": "base",
    "DetectionStore": "base",
    "Detections": "base",
    "PROBS_SUM_TOLERANCE": "base",
    "check_class_probs": "base",
    "read_vocabulary": "base",
    "JsonlDetections": "jsonl",
    "write_jsonl": "jsonl",
    "TsvDetections": "tsv",
    "write_tsv": "tsv",
    "open_detections": "sources",
}


def test_formats_keeps_every_name_it_held():
    assert sorted(formats.__all__) == sorted(FORMATS_HOMES)
    for name, home in FORMATS_HOMES.items():
        module = importlib.import_module(f"lightning_wsg.detection.{home}")
        assert getattr(formats, name) is getattr(module, name), name


def test_the_package_and_native_export_the_same_objects():
    assert all(hasattr(detection, name) for name in detection.__all__)
    assert detection.open_detections is formats.open_detections is open_detections
    assert detection.JsonlDetections is jsonl.JsonlDetections and detection.TsvDetections is tsv.TsvDetections
    assert native.NativeDetections is native_store.NativeDetections
    assert (native.NATIVE_MANIFEST, native.NATIVE_FORMAT) == ("features.json", 1)
    assert native.NATIVE_MANIFEST is native_store.NATIVE_MANIFEST


def test_the_readers_are_asked_cache_then_native_then_hdf5_then_files():
    assert [(r.store, r.vocabulary) for r in registered_readers()] == [
        (store.CachedDetections, False),
        (native_store.NativeDetections, False),
        (hdf5.Hdf5Detections, False),
        (jsonl.JsonlDetections, False),
        (tsv.TsvDetections, True),
    ]


def test_a_folder_of_several_kinds_opens_as_the_first_that_accepts_it(tmp_path: Path):
    """Each marker file is broken on purpose: the error names the reader that opened the folder."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "x.h5").write_bytes(b"")
    with pytest.raises(DetectionFormatError, match="x.h5: not a readable HDF5 file"):
        open_detections(folder)
    (folder / "features.json").write_text("{")
    with pytest.raises(DetectionFormatError, match="features.json: unreadable native-store manifest"):
        open_detections(folder)
    (folder / "manifest.json").write_text("{")
    with pytest.raises(DetectionFormatError, match="manifest.json: unreadable detection-cache manifest"):
        open_detections(folder)


def test_folders_no_reader_accepts(tmp_path: Path):
    root = tmp_path / "cache"
    for name in ("torchvision-2", "mmdet-1"):
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text("{}")
    with pytest.raises(
        DetectionFormatError, match=r"a detection-cache root holding 2 detector settings; .*: mmdet-1, torchvision-2$"
    ):
        open_detections(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetectionFormatError, match=r"a folder but not a detection cache \(no manifest.json\)"):
        open_detections(tmp_path / "empty")


def test_a_registered_reader_opens_its_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """open_detections asks the table, not a list of its own: a reader registered later is used."""
    monkeypatch.setattr(base, "_READERS", dict(base._READERS))  # the test's reader leaves with the test

    @register_reader(lambda path: path.suffix == ".dets", order=60, vocabulary=True)
    class DotDets(DetectionStore):
        def __init__(self, path: Path, vocabulary: str | Path | None) -> None:
            det = Detections("a", torch.tensor([[0.0, 0.0, 2.0, 2.0]]), None, torch.ones(1))
            super().__init__(path, {"a": det}, [Path(vocabulary).stem])

    path = tmp_path / "x.dets"
    path.write_text("")
    opened = open_detections(path, tmp_path / "classes.txt")
    assert type(opened) is DotDets and opened.class_names == ["classes"] and list(opened) == ["a"]
    assert registered_readers()[-1].store is DotDets
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(DetectionFormatError, match=r"x.csv: unknown detections format \(expected .jsonl"):
        open_detections(tmp_path / "x.csv")
