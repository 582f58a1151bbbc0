"""The native feature store: conversion from each real format (resumable, checked), random reads."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import numpy as np
import pytest
import torch
from helpers.features import features_of, write_hdf5, write_tsv, write_vocabulary
from helpers.flickr import make_tiny_flickr

from lightning_wsg.detection.cache import ShardedCache
from lightning_wsg.detection.formats import DetectionFormatError, Detections, DetectionStore, open_detections
from lightning_wsg.detection.native import NativeDetections, convert, write_native
from lightning_wsg.features import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny"), n_images=9, seed=4, split_sizes=(2, 2))


@pytest.fixture(scope="module")
def data(tiny):
    return features_of(tiny.detections, tiny.sizes, dim=12)


@pytest.mark.parametrize("kind", ["tsv", "hdf5"])
def test_conversion_round_trip(tmp_path, data, kind):
    if kind == "tsv":
        source = write_tsv(tmp_path / "f.tsv", data)
        vocabulary = write_vocabulary(tmp_path / "vocab.txt", data)
    else:
        source, vocabulary = write_hdf5(tmp_path / "f.hdf5", data), None
    main(["convert", str(source), str(tmp_path / "native"), "--shard-size", "4", "--no-progress"]
         + (["--vocabulary", str(vocabulary)] if vocabulary else []))  # fmt: skip
    original, native = open_detections(source, vocabulary), open_detections(tmp_path / "native")
    assert isinstance(native, NativeDetections) and native.feature_dim == 12 and set(native) == set(original)
    assert len(list((tmp_path / "native" / "shards").glob("*.npy"))) == 3  # 9 images, 4 a shard
    for image_id in original:
        a, b = original[image_id], native[image_id]
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and a.labels == b.labels
        assert torch.equal(b.boxes, torch.from_numpy(data["images"][image_id]["boxes"]))  # each image its own
        assert a.image_size == b.image_size
        want = original.features(image_id).numpy().astype(np.float16).astype(np.float32)
        assert np.array_equal(native.features(image_id).numpy(), want)
        assert torch.allclose(native.features(image_id), original.features(image_id), rtol=1e-3, atol=1e-3)


def test_conversion_resumes_and_refuses_another_source(tmp_path, data):
    source = write_tsv(tmp_path / "f.tsv", data)
    folder = tmp_path / "native"
    calls = []
    convert(source, folder, shard_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    first = (folder / "shards" / "000001.npy").stat().st_mtime_ns
    # a killed run: the last shard's index gone, the manifest not finished
    (folder / "shards" / "000002.pt").unlink()
    manifest = json.loads((folder / "features.json").read_text())
    (folder / "features.json").write_text(json.dumps(manifest | {"complete": False}))
    with pytest.raises(DetectionFormatError, match="an unfinished conversion .* run the converter again"):
        NativeDetections(folder)
    convert(source, folder, shard_size=4)
    assert (folder / "shards" / "000001.npy").stat().st_mtime_ns == first  # done shards are kept
    assert len(NativeDetections(folder)) == 9
    with pytest.raises(DetectionFormatError, match="a native store of another source or setting \\(shard_size"):
        convert(source, folder, shard_size=5)


def test_a_source_without_features_and_a_corrupt_shard(tmp_path, data, tiny):
    with pytest.raises(DetectionFormatError, match=f"{tiny.detections}: no per-box features to convert"):
        convert(tiny.detections, tmp_path / "n")
    folder = convert(write_tsv(tmp_path / "f.tsv", data), tmp_path / "native", shard_size=4)
    (folder / "shards" / "000000.npy").write_bytes(b"\x93NUMPY")  # truncated
    store = NativeDetections(folder)
    first = store._indexes[0]["image_ids"][0]
    with pytest.raises(DetectionFormatError, match=r"000000.npy: unreadable features \(truncated or corrupt\?\)"):
        store.features(first)


# --- class probabilities -------------------------------------------------------------------
PROB_NAMES = ["person", "dog", "car"]


class MemoryStore(DetectionStore):
    """An in-memory source with per-box features and, optionally, class probabilities (the
    kind of store a simulated world hands to ``write_native``)."""

    def __init__(self, records: list[Detections], features: dict[str, torch.Tensor], class_names=PROB_NAMES):
        super().__init__("memory-world", {d.image_id: d for d in records}, class_names)
        self.feature_dim = 6
        self._features = features

    def features(self, image_id: str) -> torch.Tensor:
        return self._features[image_id]


def _memory_store(probs: bool = True, sizes=(3, 0, 4, 2, 5)) -> MemoryStore:
    gen = torch.Generator().manual_seed(7)
    records, features = [], {}
    for k, n in enumerate(sizes):
        image_id = f"img{k}"
        xy = torch.rand(n, 2, generator=gen) * 40
        boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=gen) * 20], 1)
        # a softmax over background + 3 classes, the background dropped: rows sum to less than 1
        rows = torch.softmax(torch.randn(n, 4, generator=gen) * 2, 1)[:, 1:]
        labels = [PROB_NAMES[i] for i in rows.argmax(1).tolist()]
        scores = rows.max(1).values if n else torch.zeros(0)
        records.append(Detections(image_id, boxes, labels, scores, rows if probs else None, image_size=(64, 64)))
        features[image_id] = torch.randn(n, 6, generator=gen)
    return MemoryStore(records, features)


def _write(store, folder, shard_size=2):
    return write_native(store, folder, {"source": {"path": "memory-world"}}, shard_size)


def test_class_probs_round_trip_through_the_native_store(tmp_path):
    source = _memory_store()
    folder = _write(source, tmp_path / "native")
    assert sorted(p.name for p in (folder / "shards").iterdir()) == [
        f"{k:06d}{suffix}" for k in range(3) for suffix in (".npy", ".probs.npy", ".pt")
    ]  # no temporary file left
    assert json.loads((folder / "features.json").read_text())["class_probs"] == {"width": 3, "dtype": "float16"}
    native = open_detections(folder)
    assert isinstance(native, NativeDetections) and native.class_names == PROB_NAMES
    assert native.class_probs_width() == 3
    for image_id in source:
        want, got = source[image_id], native[image_id]
        assert got.class_probs.dtype == torch.float32 and got.class_probs.shape == (len(want), 3)
        exact = want.class_probs.numpy().astype(np.float16).astype(np.float32)
        assert np.array_equal(got.class_probs.numpy(), exact)  # float16, nothing else lost
        torch.testing.assert_close(got.class_probs, want.class_probs, atol=5e-4, rtol=0)
        assert got.labels == want.labels and torch.equal(got.boxes, want.boxes)
    assert native["img1"].class_probs.shape == (0, 3)  # an image without boxes
    # a detection cache made with class_probs (and box features) converts with them
    cache = ShardedCache(tmp_path / "cache", {"backend": "x"}, shard_size=8)
    cache.ensure_manifest()
    dets = [dataclasses.replace(source[i], features=source.features(i)) for i in sorted(source)]
    cache.write_shard(dets, PROB_NAMES)
    cache.update_manifest(PROB_NAMES)
    from_cache = NativeDetections(convert(cache.path, tmp_path / "from_cache", shard_size=2))
    for image_id in source:
        torch.testing.assert_close(from_cache[image_id].class_probs, source[image_id].class_probs, atol=5e-4, rtol=0)


def test_a_source_without_class_probs_gives_top1_labels_only(tmp_path):
    folder = _write(_memory_store(probs=False), tmp_path / "native")
    assert not list((folder / "shards").glob("*.probs.npy"))
    assert json.loads((folder / "features.json").read_text())["class_probs"] is None
    native = NativeDetections(folder)
    assert native.class_probs_width() is None
    assert all(native[i].class_probs is None for i in native) and native["img0"].labels is not None


def test_class_probs_without_class_names_are_left_out_with_a_warning(tmp_path, caplog):
    store = _memory_store()
    store.class_names = None
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        native = NativeDetections(_write(store, tmp_path / "native"))
    assert "memory-world: the records carry class_probs but the source names no classes" in caplog.text
    assert native["img0"].class_probs is None and native["img0"].labels == store["img0"].labels
    assert not list((tmp_path / "native" / "shards").glob("*.probs.npy"))


def _spoil(store: MemoryStore, image_id: str, row: list[float]) -> None:
    store[image_id].class_probs = store[image_id].class_probs.clone()
    store[image_id].class_probs[1] = torch.tensor(row)


@pytest.mark.parametrize(
    "row, message",
    [
        ([-0.25, 0.5, 0.25], r"negative class_probs on box 1"),
        ([float("nan"), 0.1, 0.1], r"class_probs of box 1 are not finite"),
        ([0.5, 0.45, 0.1], r"the class_probs of box 1 sum to 1\.0500, more than 1"),
    ],
)
def test_write_native_refuses_rows_that_are_no_probabilities(tmp_path, row, message):
    store = _memory_store()
    _spoil(store, "img2", row)
    with pytest.raises(DetectionFormatError, match=rf"^memory-world: image img2: {message}"):
        _write(store, tmp_path / "native")
    assert not list((tmp_path / "native" / "shards").glob("000001*"))  # the shard of img2 was not written


def test_write_native_accepts_rows_summing_a_little_over_one_or_under_it(tmp_path):
    store = _memory_store()
    _spoil(store, "img2", [0.5, 0.505, 0.0])  # 1.005: rounding in a file, inside the tolerance
    _spoil(store, "img3", [0.0, 0.0, 0.0])  # all background
    native = NativeDetections(_write(store, tmp_path / "native"))
    assert native["img2"].class_probs[1].sum().item() == pytest.approx(1.005, abs=1e-3)


def test_write_native_refuses_a_width_other_than_the_class_names_and_mixed_records(tmp_path):
    store = _memory_store()
    store.class_names = ["person", "dog", "car", "bicycle"]
    with pytest.raises(
        DetectionFormatError, match=r"^memory-world: image img0: class_probs of width 3, but the store names 4 classes"
    ):
        _write(store, tmp_path / "a")
    assert not (tmp_path / "a").exists()  # refused before a manifest of that setting is written
    store = _memory_store()
    store["img3"].class_probs = torch.full((2, 4), 0.2)  # one image of another width than the rest
    with pytest.raises(
        DetectionFormatError, match=r"^memory-world: image img3: class_probs of width 4, but the store names 3 classes"
    ):
        _write(store, tmp_path / "c")
    store = _memory_store()
    store["img3"].class_probs = None
    with pytest.raises(
        DetectionFormatError, match=r"^memory-world: image img3 carries no class_probs but the other images do"
    ):
        _write(store, tmp_path / "b")
    store = _memory_store()
    store["img0"].class_probs = None  # the first image with boxes says the source has none
    with pytest.raises(
        DetectionFormatError,
        match=r"^memory-world: image img2 carries class_probs but the first image with boxes does not",
    ):
        _write(store, tmp_path / "d")


def test_write_native_reads_the_written_probabilities_back(tmp_path, monkeypatch):
    save = np.save

    def bad_disk(path, array):  # a disk that flips a value of the class probabilities
        if ".probs.npy" in str(path):
            array = array.copy()
            array[0, 0] += np.float16(0.25)
        save(path, array)

    monkeypatch.setattr(np, "save", bad_disk)
    with pytest.raises(
        DetectionFormatError, match=r"^memory-world: a written shard \(000000\.probs\.npy\) disagrees with the source"
    ):
        _write(_memory_store(), tmp_path / "native")
    assert not list((tmp_path / "native" / "shards").iterdir())  # no temporary file left, nothing renamed


@pytest.mark.parametrize(
    "value, message",
    [(-0.5, "negative class_probs on box 0"), (np.nan, "class_probs of box 0 are not finite"),
     (0.99, r"the class_probs of box 0 sum to 1\.[0-9]+, more than 1")],
)  # fmt: skip
def test_native_store_refuses_damaged_class_probs_when_read(tmp_path, value, message):
    folder = _write(_memory_store(), tmp_path / "native")
    path = folder / "shards" / "000001.probs.npy"  # img2 (4 boxes), img3
    array = np.load(path, mmap_mode="r+")
    array[0, :] = [value, 0.5, 0.0]  # img2's first box
    array.flush()
    del array
    native = NativeDetections(folder)
    assert native["img3"].class_probs.shape == (2, 3)  # the other image of the shard reads
    with pytest.raises(DetectionFormatError, match=rf"^{re.escape(str(path))}: image img2: {message}"):
        native["img2"]


def test_native_store_refuses_probabilities_of_another_width_or_shape(tmp_path):
    folder = _write(_memory_store(), tmp_path / "native")
    manifest_path = folder / "features.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest | {"class_probs": {"width": 4, "dtype": "float16"}}))
    with pytest.raises(
        DetectionFormatError, match=rf"^{re.escape(str(manifest_path))}: class_probs of width 4, but 3 class names"
    ):
        NativeDetections(folder)
    manifest_path.write_text(json.dumps(manifest))
    path = folder / "shards" / "000000.probs.npy"
    np.save(path, np.zeros((2, 3), np.float16))  # img0 has 3 boxes: the shard holds 3 rows
    with pytest.raises(
        DetectionFormatError,
        match=rf"^{re.escape(str(path))}: class probabilities float16\[2, 3\], but the shard holds 3 boxes of 3",
    ):
        NativeDetections(folder)["img0"]
    path.unlink()
    with pytest.raises(DetectionFormatError, match=rf"^{re.escape(str(path))}: unreadable class probabilities"):
        NativeDetections(folder)["img1"]


# --- the store's manifest, indexes and what a record carries ----------------------------------


def test_native_manifest_and_index_errors_name_the_file(tmp_path):
    folder = _write(_memory_store(probs=False), tmp_path / "native")
    manifest = folder / "features.json"
    good = manifest.read_text()
    for text in ("[]", json.dumps({**json.loads(good), "format": 0})):
        manifest.write_text(text)
        with pytest.raises(DetectionFormatError, match=rf"^{manifest}: not a format-\d+ native feature store$"):
            NativeDetections(folder)
    manifest.write_text(json.dumps({**json.loads(good), "complete": False}))
    with pytest.raises(DetectionFormatError, match=rf"^{folder}: an unfinished conversion \(3 shards planned\); run the"):
        NativeDetections(folder)
    manifest.write_text(good)
    store = NativeDetections(folder)
    assert store.manifest == json.loads(good)
    (folder / "shards" / "000001.pt").write_bytes(b"PK\x03")
    with pytest.raises(DetectionFormatError, match=rf"^{folder / 'shards' / '000001.pt'}: unreadable shard index \(truncated or corrupt\?\)"):
        NativeDetections(folder)


def test_native_records_carry_their_id_and_a_size_only_when_known(tmp_path):
    source = _memory_store(probs=False)
    source._records["img2"].image_size = None  # converted as 0 x 0: no size
    native = NativeDetections(_write(source, tmp_path / "native"))
    assert [native[i].image_id for i in native] == list(source)
    assert native["img0"].image_size == (64, 64) and native["img2"].image_size is None
    assert native["img1"].labels == [] and native["img1"].boxes.shape == (0, 4)


def test_a_pickled_native_store_maps_its_probability_shards_again(tmp_path):
    import pickle

    wide = [f"c{i}" for i in range(2000)]
    gen = torch.Generator().manual_seed(0)
    records, features = [], {}
    for k in range(3):
        rows = torch.softmax(torch.randn(4, 2001, generator=gen), 1)[:, 1:]
        records.append(Detections(f"i{k}", torch.tensor([[0.0, 0, 5, 5]] * 4), [wide[0]] * 4, torch.ones(4), rows))
        features[f"i{k}"] = torch.zeros(4, 6)
    store = MemoryStore(records, features, class_names=wide)
    native = NativeDetections(write_native(store, tmp_path / "n", {"source": {"path": "w"}}, 1))
    unread = len(pickle.dumps(native))
    for image_id in native:
        native[image_id]  # maps every probability shard (3 x 4 x 2000 float16: 48 kB)
    payload = pickle.dumps(native)
    assert len(payload) == unread  # the maps stay behind
    assert torch.equal(pickle.loads(payload)["i2"].class_probs, native["i2"].class_probs)
