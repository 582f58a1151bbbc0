"""The native feature store: conversion from each real format (resumable, checked), random reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.features import features_of, write_hdf5, write_tsv, write_vocabulary
from helpers.flickr import make_tiny_flickr

from lightning_wsg.detection.formats import DetectionFormatError, open_detections
from lightning_wsg.detection.native import NativeDetections, convert
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
