"""Feature stores read from forked processes (DataLoader workers) while the parent reads too.

A forked worker inherits the parent's open descriptor, and with it the file position the two
share: seek-then-read in both processes at once read the wrong bytes (seen as "not base64
float32" in a demo-world training with one loader worker). Each process must read on its own.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from helpers.features import write_hdf5, write_tsv, write_vocabulary

from lightning_wsg.detection.formats import open_detections

STORE = None  # the store under test, inherited by the forked readers


def _read_all(rounds: int) -> dict[str, float]:
    sums = {}
    for _ in range(rounds):
        for image_id in sorted(STORE):
            sums[image_id] = float(STORE.features(image_id).double().sum())
    return sums


def _data(n_images: int = 40, dim: int = 64) -> dict:
    rng = np.random.default_rng(0)
    images = {}
    for k in range(n_images):
        n = int(rng.integers(5, 30))
        xy = rng.uniform(0, 50, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2)).astype(np.float32)], axis=1)
        images[str(1000 + k)] = {
            "size": (100, 100),
            "boxes": boxes,
            "features": rng.normal(size=(n, dim)).astype(np.float32),
            "ids": rng.integers(0, 3, n).astype(np.int64),
            "scores": rng.uniform(0.1, 1.0, n).astype(np.float32),
        }
    return {"images": images, "names": ["person", "dog", "car"]}


@pytest.mark.parametrize("layout", ["tsv", "hdf5"])
def test_forked_readers_and_the_parent_read_the_right_features(tmp_path, layout):
    global STORE
    data = _data()
    if layout == "tsv":
        STORE = open_detections(write_tsv(tmp_path / "f.tsv", data), write_vocabulary(tmp_path / "v.txt", data))
    else:
        STORE = open_detections(write_hdf5(tmp_path / "f.hdf5", data))
    expected = {i: float(torch.from_numpy(d["features"]).double().sum()) for i, d in data["images"].items()}
    STORE.features(sorted(STORE)[-1])  # the parent has its file open before the fork
    with mp.get_context("fork").Pool(2) as pool:
        pending = [pool.apply_async(_read_all, (20,)) for _ in range(2)]
        parent = _read_all(20)  # meanwhile, the parent reads too
        children = [p.get(timeout=300) for p in pending]
    for sums in (parent, *children):
        assert sums == pytest.approx(expected, rel=1e-6)
