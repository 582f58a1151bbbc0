"""The on-disk detection cache without Lightning: round trips, fingerprints, atomic shards,
resume after a kill, concurrent readers, the precomputed import."""

from __future__ import annotations

import base64
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_wsg.detection import (
    CachedDetections,
    DetectionFormatError,
    Detections,
    DetectorBackend,
    PrecomputedBackend,
    ShardedCache,
    file_digest,
    fingerprint,
    open_detections,
    write_jsonl,
)
from lightning_wsg.detection.cache import keep_top_boxes, pack_shard, plan_shards

NAMES = ["man", "dog", "car"]


def _det(image_id: str, n: int, probs: bool = False, labels: bool = True) -> Detections:
    gen = torch.Generator().manual_seed(len(image_id) * 31 + n)
    xy = torch.rand(n, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=gen) * 30], 1)
    return Detections(
        image_id,
        boxes,
        [NAMES[i % 3] for i in range(n)] if labels else None,
        torch.rand(n, generator=gen),
        torch.softmax(torch.randn(n, 3, generator=gen), 1) if probs else None,
    )


class FakeBackend(DetectorBackend):
    name = "fake"

    def __init__(self, threshold: float = 0.5, fail_after: int | None = None, probs: bool = False) -> None:
        self.threshold = threshold
        self.fail_after = fail_after
        self.probs = probs
        self.batch_size = 2
        self.calls: Counter[str] = Counter()

    def settings(self, digest=file_digest):
        return {"backend": self.name, "threshold": self.threshold, "probs": self.probs}

    def load(self, device=None):
        self._loaded = True

    @property
    def class_names(self):
        return NAMES

    def detect(self, images):
        out = []
        for image_id, _ in images:
            if self.fail_after is not None and sum(self.calls.values()) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")  # not an error the code could catch by type
            self.calls[image_id] += 1
            out.append(_det(image_id, int(image_id[1:]) % 4, probs=self.probs))
        return out


IDS = [f"i{k}" for k in range(10)]
PATHS = {i: Path(f"/nonexistent/{i}.jpg") for i in IDS}


def _assert_same(a: Detections, b: Detections, probs_atol: float = 0.0) -> None:
    assert a.image_id == b.image_id and len(a) == len(b)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and a.labels == b.labels
    assert (a.class_probs is None) == (b.class_probs is None)
    if a.class_probs is not None:
        assert a.class_probs.shape == b.class_probs.shape
        torch.testing.assert_close(a.class_probs, b.class_probs, atol=probs_atol, rtol=0)


def test_a_shard_round_trips_boxes_labels_scores_probs_and_empty_images(tmp_path):
    cache = ShardedCache(tmp_path, {"backend": "x"}, shard_size=4)
    cache.ensure_manifest()
    with_probs = [_det("a", 3, probs=True), _det("b", 0, probs=True), _det("c", 5, probs=True)]
    without_labels = [_det("d", 2, labels=False), _det("e", 1)]
    cache.write_shard(with_probs, NAMES)
    cache.write_shard(without_labels)
    store = open_detections(cache.path)
    assert isinstance(store, CachedDetections) and len(store) == 5 and set(store) == set("abcde")
    for det in with_probs + without_labels:
        _assert_same(store[det.image_id], det, probs_atol=1e-3)  # class_probs kept as float16
    assert store["b"].boxes.shape == (0, 4) and store["b"].class_probs.shape == (0, 3)
    assert store["d"].labels is None and store["e"].labels == ["man"]
    assert store.class_names == NAMES and "zz" not in store and store.get("zz") is None


def test_labels_outside_the_vocabulary_and_mixed_probs_are_handled(tmp_path):
    odd = Detections("x", torch.tensor([[0.0, 0.0, 1.0, 1.0]]), ["unicorn"], torch.ones(1))
    shard = pack_shard([odd, _det("y", 2)], NAMES)
    assert shard["label_names"].split("\n") == [*NAMES, "unicorn"] and shard["class_names"].split("\n") == NAMES
    with pytest.raises(ValueError, match="every image of a shard or for none"):
        pack_shard([_det("a", 2, probs=True), _det("b", 2)], NAMES)
    with pytest.raises(DetectionFormatError, match="x2 < x1"):
        pack_shard([Detections("bad", torch.tensor([[5.0, 0.0, 1.0, 1.0]]), None, torch.ones(1))])


def _with_probs(image_id: str, rows: list[list[float]]) -> Detections:
    det = _det(image_id, len(rows))
    det.class_probs = torch.tensor(rows)
    return det


@pytest.mark.parametrize(
    "row, message",
    [
        ([-0.25, 0.5, 0.25], "negative class_probs on box 1"),
        ([float("nan"), 0.1, 0.1], "class_probs of box 1 are not finite"),
        ([0.5, 0.45, 0.1], r"the class_probs of box 1 sum to 1\.0500, more than 1"),
        ([0.2, 0.2, 0.2, 0.2], r"class_probs of width 4, but the detector names 3 classes"),
    ],
)
def test_the_cache_refuses_class_probs_that_are_no_probabilities_when_written(tmp_path, row, message):
    rows = [[0.1] * len(row), row]
    with pytest.raises(DetectionFormatError, match=rf"^detections of image q: (image q: )?{message}"):
        pack_shard([_det("p", 2, probs=True), _with_probs("q", rows)], NAMES)


def test_the_cache_refuses_damaged_class_probs_when_read(tmp_path):
    cache = ShardedCache(tmp_path, {"backend": "x"}, shard_size=4)
    cache.ensure_manifest()
    shard = pack_shard([_det("p", 2, probs=True), _det("q", 3, probs=True)], NAMES)
    shard["class_probs"][3] = torch.tensor([0.7, 0.7, 0.0], dtype=torch.float16)  # q's second box: sums to 1.4
    path = cache.shard_path(["p", "q"])
    torch.save(shard, path)
    store = CachedDetections(cache.path)
    assert store["p"].class_probs.shape == (2, 3)  # the image beside it reads
    with pytest.raises(DetectionFormatError, match=rf"^{re.escape(str(path))}: image q: the class_probs of box 1 sum"):
        store["q"]
    # fewer rows than boxes: the shard is unreadable
    short = pack_shard([_det("s", 3, probs=True)], NAMES)
    short["class_probs"] = short["class_probs"][:2]
    torch.save(short, cache.shard_path(["s"]))
    with pytest.raises(
        DetectionFormatError,
        match=rf"^{re.escape(str(cache.shard_path(['s'])))}: unreadable detection-cache shard \(ValueError: "
        r"class_probs \(2, 3\) for 3 boxes\)",
    ):
        CachedDetections(cache.path)
    cache.shard_path(["s"]).unlink()
    # probabilities of another width than the folder's class names
    wide = pack_shard([_with_probs("r", [[0.25, 0.25, 0.25, 0.25]])])
    torch.save(wide, cache.shard_path(["r"]))
    manifest = json.loads(cache.manifest_path.read_text())
    cache.manifest_path.write_text(json.dumps(manifest | {"class_names": NAMES}))
    with pytest.raises(
        DetectionFormatError,
        match=rf"^{re.escape(str(cache.shard_path(['r'])))}: class_probs of width 4 \(image r\), but the folder "
        r"names 3 classes",
    ):
        CachedDetections(cache.path)


def test_fingerprint_names_the_folder_and_changes_with_any_setting(tmp_path):
    a = ShardedCache(tmp_path, FakeBackend(0.5).settings())
    assert a.path == ShardedCache(tmp_path, FakeBackend(0.5).settings()).path
    assert a.path.name == f"fake-{a.fingerprint[:16]}"
    others = {ShardedCache(tmp_path, FakeBackend(t, probs=p).settings()).path for t, p in [(0.3, False), (0.5, True)]}
    assert a.path not in others and len(others) == 2
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})  # key order is irrelevant


def test_file_digest_hashes_contents_and_remembers_it(tmp_path):
    f = tmp_path / "ckpt.pth"
    f.write_bytes(b"weights-1")
    memo = tmp_path / "digests.json"
    d1 = file_digest(f, memo=memo)
    assert len(d1) == 64 and json.loads(memo.read_text()) and file_digest(f) == d1
    f.write_bytes(b"weights-2 longer")  # new size and mtime: hashed again
    assert file_digest(f, memo=memo) != d1


def test_fill_writes_shards_and_a_manifest_then_detects_nothing_twice(tmp_path):
    backend = FakeBackend(probs=True)
    cache = ShardedCache.for_backend(tmp_path, backend, shard_size=4)
    assert cache.missing(IDS) == IDS
    assert cache.fill(backend, PATHS, progress=False) == 10
    manifest = cache.update_manifest()
    assert manifest["counts"] == {"images": 10, "boxes": sum(int(i[1:]) % 4 for i in IDS), "shards": 3}
    assert manifest["class_names"] == NAMES and manifest["settings"]["threshold"] == 0.5
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["created"] and manifest["updated"]
    assert cache.missing(IDS + ["new"]) == ["new"]
    assert len(list(cache.shard_dir.glob("*.pt"))) == 3 and not list(cache.shard_dir.glob(".*"))
    store = open_detections(cache.path)
    for i in IDS:
        _assert_same(store[i], _det(i, int(i[1:]) % 4, probs=True), probs_atol=1e-3)


def test_a_killed_fill_keeps_whole_shards_and_the_resume_redoes_only_the_rest(tmp_path):
    killed = FakeBackend(fail_after=6)
    cache = ShardedCache.for_backend(tmp_path, killed, shard_size=4)
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        cache.fill(killed, PATHS, progress=False)
    done = set(cache.open())
    assert done == set(IDS[:4])  # the second shard was cut after 2 of its 4 images
    # a writer killed between write and rename leaves a temp file: readers never see it
    (cache.shard_dir / f".{'0' * 24}.pt.tmp-deadhost-12-ab").write_bytes(b"half a shard")
    assert set(open_detections(cache.path)) == done

    resumed = FakeBackend()
    missing = cache.missing(IDS)
    assert missing == IDS[4:]
    cache.fill(resumed, {i: PATHS[i] for i in missing}, progress=False)
    assert set(resumed.calls) == set(IDS[4:]) and set(resumed.calls.values()) == {1}
    assert set(cache.open()) == set(IDS)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    import os
    import socket

    cache = ShardedCache(tmp_path, {"backend": "x"})
    cache.ensure_manifest()
    host = socket.gethostname()
    dead = cache.shard_dir / f".a.pt.tmp-{host}-999999999-ab"
    alive = cache.shard_dir / f".b.pt.tmp-{host}-{os.getpid()}-cd"
    other_host = cache.shard_dir / ".c.pt.tmp-elsewhere-5-ef"
    for p in (dead, alive, other_host):
        p.write_bytes(b"x")
    assert cache.remove_stale_temp_files() == 1
    assert not dead.exists() and alive.exists() and other_host.exists()


def test_a_corrupt_shard_is_an_error_naming_it(tmp_path):
    cache = ShardedCache(tmp_path, {"backend": "x"})
    cache.ensure_manifest()
    (cache.shard_dir / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(DetectionFormatError, match="broken.pt.*delete it"):
        open_detections(cache.path)


def test_open_detections_explains_a_cache_root_and_a_plain_folder(tmp_path):
    a = ShardedCache(tmp_path / "root", {"backend": "x", "v": 1})
    b = ShardedCache(tmp_path / "root", {"backend": "x", "v": 2})
    a.ensure_manifest()
    b.ensure_manifest()
    with pytest.raises(DetectionFormatError, match="2 detector settings.*point at one"):
        open_detections(tmp_path / "root")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DetectionFormatError, match="not a detection cache"):
        open_detections(tmp_path / "plain")
    assert len(open_detections(a.path)) == 0


def test_readers_see_new_shards_after_refresh_and_survive_pickling(tmp_path):
    cache = ShardedCache(tmp_path, {"backend": "x"})
    cache.ensure_manifest()
    cache.write_shard([_det("a", 2), _det("b", 1)], NAMES)
    reader = open_detections(cache.path)
    cache.write_shard([_det("c", 3)], NAMES)
    assert set(reader) == {"a", "b"}
    reader.refresh()
    assert set(reader) == {"a", "b", "c"}
    clone = pickle.loads(pickle.dumps(reader))  # what a spawned DataLoader worker receives
    assert clone._shards == {} and set(clone) == {"a", "b", "c"}
    _assert_same(clone["c"], _det("c", 3))


def test_many_processes_read_one_cache_at_once(tmp_path):
    cache = ShardedCache(tmp_path, {"backend": "x"})
    cache.ensure_manifest()
    for k in range(4):
        cache.write_shard([_det(f"s{k}_{j}", j % 4) for j in range(25)], NAMES)
    store = open_detections(cache.path)
    ds = _Lengths(store)
    loader = torch.utils.data.DataLoader(ds, batch_size=10, num_workers=2, multiprocessing_context="spawn")
    assert torch.cat(list(loader)).tolist() == [len(store[i]) for i in ds.ids]


class _Lengths(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store, self.ids = store, sorted(store)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        return len(self.store[self.ids[k]])


def test_plan_shards_spreads_few_images_over_every_rank():
    assert plan_shards([], 4) == []
    assert plan_shards(list("abcdefghij"), 4) == [list("abcd"), list("efgh"), list("ij")]
    two = plan_shards(list("abc"), 256, world_size=2)
    assert two == [list("ab"), list("c")]
    shares = [[i for shard in two[r::2] for i in shard] for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list("abc") and not set(shares[0]) & set(shares[1])


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode()


def test_precomputed_jsonl_and_tsv_are_imported_into_the_cache(tmp_path):
    jsonl = tmp_path / "dets.jsonl"
    records = [_det("i1", 3, probs=True), _det("i2", 2, probs=True)]
    write_jsonl(jsonl, records, NAMES)
    backend = PrecomputedBackend(jsonl, max_boxes=2)
    cache = ShardedCache.for_backend(tmp_path / "cache", backend)
    cache.fill(backend, {"i1": "x", "i2": "x", "i3": "x"}, progress=False)  # i3: not in the file
    store = open_detections(cache.update_manifest() and cache.path)
    assert len(store["i1"]) == 2 and len(store["i3"]) == 0 and store["i3"].class_probs.shape == (0, 3)
    top = torch.argsort(records[0].scores, descending=True)[:2].sort().values
    torch.testing.assert_close(store["i1"].boxes, records[0].boxes[top], atol=0.01, rtol=0)
    assert store.class_names == NAMES

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("man,men\ndog\ncar\n")
    tsv = tmp_path / "dets.tsv"
    boxes = np.array([[1, 2, 10, 20], [0, 0, 5, 5]], dtype=np.float32)
    row = ["i1", "40", "30", "2", _b64(boxes), _b64(np.zeros((2, 4), np.float32))]
    row += [_b64(np.array([2, 0], np.int64)), _b64(np.array([0.9, 0.4], np.float32)), "", ""]
    tsv.write_text("\t".join(row) + "\n")
    tsv_backend = PrecomputedBackend(tsv, vocabulary=vocab)
    tsv_cache = ShardedCache.for_backend(tmp_path / "cache", tsv_backend)
    assert tsv_cache.path != cache.path
    tsv_cache.fill(tsv_backend, {"i1": "x"}, progress=False)
    got = open_detections(tsv_cache.update_manifest() and tsv_cache.path)["i1"]
    assert got.labels == ["car", "man"] and torch.equal(got.boxes, torch.from_numpy(boxes))
    torch.testing.assert_close(got.scores, torch.tensor([0.9, 0.4]))


def test_a_changed_precomputed_file_is_a_new_cache(tmp_path):
    jsonl = tmp_path / "dets.jsonl"
    write_jsonl(jsonl, [_det("i1", 3)])
    first = ShardedCache.for_backend(tmp_path / "cache", PrecomputedBackend(jsonl)).path
    write_jsonl(jsonl, [_det("i1", 2)])
    assert ShardedCache.for_backend(tmp_path / "cache", PrecomputedBackend(jsonl)).path != first


def test_the_progress_bar_reports_images_per_second_and_time_left(tmp_path):
    from rich.console import Console

    from lightning_wsg.detection.cache import _progress

    with open(tmp_path / "bar.txt", "w") as fh:
        bar = _progress(True, "detecting", 4, console=Console(file=fh, force_terminal=True, width=150))
        advance = bar.__enter__()
        advance(4)
        bar.__exit__(None, None, None)
    text = (tmp_path / "bar.txt").read_text()
    assert "detecting" in text and "4/4" in text and "images/s" in text and "left" in text


def test_images_of_a_real_file_reach_the_backend(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    seen = []

    class Recorder(FakeBackend):
        def detect(self, images):
            seen.extend(images)
            return [_det(i, 1) for i, _ in images]

    backend = Recorder()
    ShardedCache.for_backend(tmp_path / "c", backend).fill(backend, {"a": tmp_path / "a.png"}, progress=False)
    assert seen == [("a", tmp_path / "a.png")]


def test_keep_top_boxes_drops_cross_class_duplicates_then_keeps_the_best():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32)
    scores = torch.tensor([0.6, 0.9, 0.5, 0.7])
    labels = torch.tensor([0, 1, 2, 0])
    probs = torch.eye(4)[:, :3]
    names = ["dog", "cat", "ball"]
    det = keep_top_boxes("img", boxes, scores, labels, names, nms_iou=0.5, max_boxes=2, class_probs=probs)
    # box 0 (a "dog" over the "cat" box 1) goes to the class-agnostic NMS; the best two remain
    assert det.image_id == "img" and det.labels == ["cat", "dog"]
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(det.boxes, boxes[[1, 3]])
    torch.testing.assert_close(det.class_probs, probs[[1, 3]])
    # without NMS: plain score order, ties kept in input order
    det = keep_top_boxes("img", boxes, torch.tensor([0.5, 0.5, 0.9, 0.1]), labels, names, None, 3)
    assert det.labels == ["ball", "dog", "cat"] and det.class_probs is None


def test_the_default_unload_drops_the_model():
    backend = FakeBackend()
    backend.load()
    backend._model, backend._device = torch.nn.Linear(2, 2), torch.device("cpu")
    assert backend.loaded
    backend.unload()
    assert backend._model is None and not backend.loaded
