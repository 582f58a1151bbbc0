"""Detection files: JSON Lines round trip and errors, bottom-up-attention TSV with a vocabulary, per-box
features from TSV and BAN / MAF HDF5 files with their bad inputs, and the package's own writers.

The readers' mutation run (scripts/mutation.py) selects this file: a test of what a reader reads
belongs here; tests/detection/test_features.py trains and tests on what they read."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.features import b64, features_of, write_hdf5, write_tsv, write_vocabulary
from helpers.flickr import SHARED_DATA, make_tiny_flickr
from helpers.shared import require_shared

from lightning_wsg.detection import (
    DetectionFormatError,
    Detections,
    JsonlDetections,
    TsvDetections,
    open_detections,
    read_vocabulary,
    write_jsonl,
)
from lightning_wsg.detection.hdf5 import Hdf5Detections

VOCAB = SHARED_DATA / "visual_genome" / "vg_objects_vocab.txt"


@pytest.fixture
def needs_vocab() -> Path:
    return require_shared(VOCAB, "the Visual Genome vocabulary")


def _dets(image_id: str, n: int, seed: int, probs: int = 0) -> Detections:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 50 + 1
    return Detections(
        image_id,
        torch.cat([xy, xy + wh], 1),
        [f"class{i}" for i in range(n)],
        torch.rand(n, generator=gen),
        torch.softmax(torch.rand(n, probs, generator=gen), 1) if probs else None,
    )


def _write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --- JSON Lines ---------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    records = [_dets("1000092795", 5, 0, probs=3), _dets("42", 1, 1, probs=3), _dets("7", 0, 2, probs=3)]
    path = tmp_path / "proposals.jsonl"
    write_jsonl(path, records, class_names=["a", "b", "c"])
    store = open_detections(path)
    assert isinstance(store, JsonlDetections)
    assert len(store) == 3 and list(store) == ["1000092795", "42", "7"]
    assert store.class_names == ["a", "b", "c"] and store.path == path
    for det in records:
        got = store[det.image_id]
        assert len(got) == len(det) and got.labels == det.labels
        torch.testing.assert_close(got.boxes, det.boxes, atol=0.005, rtol=0)
        torch.testing.assert_close(got.scores, det.scores, atol=5e-5, rtol=0)
        torch.testing.assert_close(got.class_probs, det.class_probs, atol=5e-6, rtol=0)
    assert store["7"].boxes.shape == (0, 4)
    assert not (tmp_path / "proposals.jsonl.tmp").exists()


def test_jsonl_without_labels_or_scores(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [{"image_id": 12, "boxes": [[0, 0, 5, 5], [1, 1, 2, 2]]}])
    det = open_detections(path)["12"]
    assert det.labels is None and det.scores.tolist() == [1.0, 1.0] and det.class_probs is None
    assert det.boxes.dtype == torch.float32


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image_id": "b", "boxes": [[0, 0, 1, 1], [0, 0, 2, 2]], "labels": ["x"]}, "2 boxes but 1 labels"),
        ({"image_id": "b", "boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.2]}, "1 boxes but 2 scores"),
        ({"image_id": "b", "boxes": [[0, 0, 1]]}, r"boxes must be \[N, 4\]"),
        ({"image_id": "b", "boxes": [[5, 0, 1, 1]]}, "x2 < x1"),
        ({"image_id": "b", "boxes": [[0, 0, 1, "x"]]}, "not numeric"),
        ({"boxes": [[0, 0, 1, 1]]}, "needs 'image_id' and 'boxes'"),
        ({"image_id": "b", "boxes": [[0, 0, 1, 1]], "class_probs": [[0.5, 0.5]]}, "class_names header"),
        ('{"image_id": "b", "boxes": [[0, 0, 1, 1]]', "not valid JSON"),
        ({"image_id": "a", "boxes": []}, "image a appears twice"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, bad, message):
    path = _write_lines(tmp_path / "d.jsonl", [{"image_id": "a", "boxes": [[0, 0, 1, 1]]}, "", bad])
    with pytest.raises(DetectionFormatError, match=message) as err:
        open_detections(path)
    assert f"{path}:3" in str(err.value)


def test_jsonl_class_probs_width_must_match_header(tmp_path):
    path = _write_lines(
        tmp_path / "d.jsonl",
        [{"class_names": ["a", "b", "c"]}, {"image_id": "a", "boxes": [[0, 0, 1, 1]], "class_probs": [[0.5, 0.5]]}],
    )
    with pytest.raises(DetectionFormatError, match=f"{path}:2: class_probs need a class_names header"):
        open_detections(path)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("[0.1, 0.1, 0.1], [-0.25, 0.5, 0.25]", r"negative class_probs on box 1 \(min -0\.25\): probabilities, not"),
        ("[0.1, 0.1, 0.1], [NaN, 0.1, 0.1]", r"class_probs of box 1 are not finite"),
        ("[0.1, 0.1, 0.1], [0.9, 0.2, 0.1]", r"the class_probs of box 1 sum to 1\.2000, more than 1"),
        (
            "[0.1, 0.1], [0.5, 0.5]",
            r"class_probs need a class_names header .* \(image x: rows of width 2, a header of 3 names\)",
        ),
    ],
)
def test_jsonl_refuses_class_probs_that_are_no_probabilities(tmp_path, rows, message):
    """Rows are P(class | box) over the header's classes: no negatives, no NaN, summing to at most 1."""
    header = json.dumps({"class_names": ["person", "dog", "car"]})
    good = '{"image_id": "w", "boxes": [[0, 0, 1, 1]], "class_probs": [[0.2, 0.3, 0.1]]}'
    bad = f'{{"image_id": "x", "boxes": [[0, 0, 1, 1], [0, 0, 2, 2]], "class_probs": [{rows}]}}'
    path = _write_lines(tmp_path / "d.jsonl", [header, good, bad])
    with pytest.raises(DetectionFormatError, match=rf"^{re.escape(str(path))}:3: (image x: )?{message}"):
        open_detections(path)


def test_jsonl_class_probs_may_sum_to_less_than_one_or_a_rounding_over_it(tmp_path):
    header = {"class_names": ["person", "dog", "car"]}
    rows = [[0.0, 0.0, 0.0], [0.3, 0.2, 0.1], [0.5, 0.3, 0.205]]  # background only; 0.4 background; 1.005
    record = {"image_id": "x", "boxes": [[0, 0, 1, 1]] * 3, "class_probs": rows}
    store = open_detections(_write_lines(tmp_path / "d.jsonl", [header, record]))
    torch.testing.assert_close(store["x"].class_probs, torch.tensor(rows))
    assert store.class_probs_width() == 3


def test_write_jsonl_needs_class_names_for_class_probs(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        write_jsonl(tmp_path / "d.jsonl", [_dets("a", 2, 0, probs=3)])


def test_open_detections_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        open_detections(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("x\n")
    with pytest.raises(DetectionFormatError, match="unknown detections format"):
        open_detections(tmp_path / "d.csv")


# --- bottom-up-attention TSV -------------------------------------------------------------


def _tsv_row(image_id: str, boxes: np.ndarray, ids: np.ndarray | None = None, layout: str = "plain") -> str:
    n = len(boxes)
    w, h = "500", "375"
    feats = b64(np.zeros((n, 8), np.float32))
    base = [image_id, w, h, str(n), b64(boxes.astype(np.float32)), feats]
    if ids is None:
        return "\t".join(base)
    labels = [b64(ids.astype(np.int64)), b64(np.linspace(0.9, 0.5, n, dtype=np.float32))]
    attrs = [b64(np.zeros(n, np.int64)), b64(np.ones(n, np.float32))]
    if layout == "appended":
        return "\t".join(base + labels + attrs)
    # LXMERT order: img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features
    return "\t".join([image_id, h, w, *labels, *attrs, str(n), base[4], feats])


BOXES = np.array([[0, 0, 10, 10], [5, 5, 50.5, 60], [1, 2, 3, 4]], np.float32)


def test_tsv_without_objects_id(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text(_tsv_row("1000092795", BOXES) + "\n" + _tsv_row("9", BOXES[:0]) + "\n")
    store = open_detections(path)
    assert isinstance(store, TsvDetections) and len(store) == 2
    det = store["1000092795"]
    assert det.boxes.tolist() == BOXES.tolist() and det.labels is None and det.scores.tolist() == [1.0] * 3
    assert store["9"].boxes.shape == (0, 4)


def _synonym_line() -> tuple[int, str, str]:
    for index, line in enumerate(VOCAB.read_text().splitlines()):
        if "," in line:
            return index, line.split(",")[0], line
    raise AssertionError("no synonym line in the vocabulary")


@pytest.mark.parametrize("layout", ["lxmert", "appended"])
def test_tsv_with_objects_id_and_the_real_vocabulary(tmp_path, layout, needs_vocab):
    vocab = read_vocabulary(VOCAB)
    assert len(vocab) == 1600
    synonym, first, line = _synonym_line()
    assert vocab[synonym] == first and first != line  # e.g. "stop sign,stopsign" -> "stop sign"
    ids = np.array([0, synonym, 1599])
    path = tmp_path / "d.tsv"
    path.write_text(_tsv_row("1000092795", BOXES, ids, layout) + "\n")
    det = open_detections(path, VOCAB)["1000092795"]
    assert det.labels == [vocab[0], first, vocab[1599]]
    assert det.boxes.tolist() == BOXES.tolist()
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.7, 0.5]))
    # without a vocabulary: the confidences, no names
    unnamed = open_detections(path)["1000092795"]
    assert unnamed.labels is None and unnamed.scores.tolist() == det.scores.tolist()


def test_tsv_errors_name_file_and_line(tmp_path, needs_vocab):
    path = tmp_path / "d.tsv"
    good = _tsv_row("1", BOXES, np.array([0, 1, 2]))
    path.write_text(good + "\n" + _tsv_row("2", BOXES, np.array([0, 1, 1600])) + "\n")
    with pytest.raises(DetectionFormatError, match=f"{path}:2: objects_id outside the 1600-class vocabulary"):
        open_detections(path, VOCAB)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(DetectionFormatError, match=f"{path}:2: image 1 appears twice"):
        open_detections(path, VOCAB)
    fields = _tsv_row("3", BOXES).split("\t")
    fields[3] = "4"
    path.write_text("\t".join(fields) + "\n")
    with pytest.raises(DetectionFormatError, match=f"{path}:1: num_boxes=4 but boxes hold 12 floats"):
        open_detections(path)
    path.write_text("a\tb\tc\n")
    with pytest.raises(DetectionFormatError, match=f"{path}:1: expected 6 or 10 tab-separated fields, got 3"):
        open_detections(path)


def test_read_vocabulary_rejects_empty_lines(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("man\n\ndog\n")
    with pytest.raises(DetectionFormatError, match="empty vocabulary line"):
        read_vocabulary(path)


# --- bad rows of a bottom-up TSV and of JSON Lines class probabilities --------------------------
def _good_tsv_row() -> str:
    return _tsv_row("1", BOXES, np.array([0, 1, 2]), layout="appended")


@pytest.mark.parametrize(
    "field, value, problem",
    [
        (4, "%%% not base64 %%%", "field 'boxes' is not base64 float32"),
        (4, "AAAAA", "field 'boxes' is not base64 float32"),  # a cut string: bad padding
        (4, b64(np.zeros(5, np.uint8)), "field 'boxes' is not base64 float32"),  # 5 bytes: no whole float
        (6, b64(np.array([0, 1], np.int64)), "num_boxes=3 but 2 objects_id and 3 objects_conf"),
        (7, b64(np.array([0.9], np.float32)), "num_boxes=3 but 3 objects_id and 1 objects_conf"),
        (6, "@@", "field 'objects_id' is not base64 int64"),
        # stray characters are refused, not dropped (dropping them would read these three floats)
        (7, b64(np.array([0.9, 0.8, 0.7], np.float32)) + "!!", "field 'objects_conf' is not base64 float32"),
    ],
)
def test_tsv_bad_fields_name_file_line_and_field(tmp_path, field, value, problem):
    fields = _tsv_row("2", BOXES, np.array([0, 1, 2]), layout="appended").split("\t")
    fields[field] = value
    path = tmp_path / "d.tsv"
    path.write_text(_good_tsv_row() + "\n" + "\t".join(fields) + "\n")
    with pytest.raises(DetectionFormatError, match=rf"{re.escape(str(path))}:2: {problem}"):
        open_detections(path)


@pytest.mark.parametrize("num_boxes", ["three", "2.5", ""])
def test_tsv_non_integer_num_boxes_is_named(tmp_path, num_boxes):
    fields = _tsv_row("2", BOXES).split("\t")
    fields[3] = num_boxes
    path = tmp_path / "d.tsv"
    path.write_text("\t".join(fields) + "\n")
    with pytest.raises(
        DetectionFormatError, match=rf"{re.escape(str(path))}:1: num_boxes is not an integer: '{num_boxes}'"
    ):
        open_detections(path)


def test_jsonl_class_probs_rows_must_match_the_boxes(tmp_path):
    header = {"class_names": ["a", "b", "c"]}
    bad = {"image_id": "x", "boxes": [[0, 0, 1, 1], [0, 0, 2, 2]], "class_probs": [[0.5, 0.3, 0.2]]}
    path = _write_lines(tmp_path / "d.jsonl", [header, bad])
    with pytest.raises(
        DetectionFormatError, match=rf"{re.escape(str(path))}:2: image x: 2 boxes but class_probs of shape \(1, 3\)"
    ):
        open_detections(path)


# --- the package's own writers (features extract, the feature world) and the stores' state ------


def _featured(image_id: str, n: int, seed: int, size: tuple[int, int] | None, dim: int = 5):
    det = _dets(image_id, n, seed)
    det.image_size = size
    return det, np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_write_tsv_round_trips_boxes_features_sizes_labels_and_scores(tmp_path):
    # not square, ids neither sorted nor numbered like their rows, one image without boxes
    records = [_featured("1000092795", 3, 0, (640, 480)), _featured("abc", 2, 1, (300, 500)),
               _featured("7", 0, 2, (10, 20)), _featured("8", 1, 3, (33, 44))]  # fmt: skip
    names = [f"class{i}" for i in range(3)][::-1]  # labels are written as their index in this list
    path = tmp_path / "f.tsv"
    from lightning_wsg.detection.tsv import write_tsv

    write_tsv(path, records, class_names=names)
    assert not (tmp_path / "f.tsv.tmp").exists()
    (tmp_path / "vocab.txt").write_text("\n".join(names) + "\n")
    store = TsvDetections(path, tmp_path / "vocab.txt")
    assert list(store) == ["1000092795", "abc", "7", "8"] and store.feature_dim == 5
    assert store.features("7").shape == (0, 5)  # an image without boxes: no rows, the file's width
    for det, features in records:
        back = store[det.image_id]
        assert back.image_size == det.image_size
        assert torch.equal(back.boxes, det.boxes.float())
        assert back.labels == det.labels
        assert torch.allclose(back.scores, det.scores)
        assert np.array_equal(store.features(det.image_id).numpy(), features.reshape(len(det), 5))
    rows = path.read_text().splitlines()
    assert [len(r.split("\t")) for r in rows] == [10, 10, 10, 10]
    assert rows[0].split("\t")[:4] == ["1000092795", "640", "480", "3"]


def test_write_tsv_without_class_names_writes_six_fields_and_checks_its_records(tmp_path):
    from lightning_wsg.detection.tsv import write_tsv

    det, features = _featured("5", 2, 3, None)
    write_tsv(tmp_path / "f.tsv", [(det, features)])
    row = (tmp_path / "f.tsv").read_text().rstrip("\n").split("\t")
    assert len(row) == 6 and row[1:4] == ["0", "0", "2"]
    assert TsvDetections(tmp_path / "f.tsv")["5"].labels is None
    with pytest.raises(ValueError, match=r"image 5: 3 feature rows for 2 boxes"):
        write_tsv(tmp_path / "g.tsv", [(det, np.zeros((3, 4), np.float32))])
    unnamed = Detections("6", det.boxes, None, det.scores)
    with pytest.raises(ValueError, match=r"image 6: no labels to write as objects_id"):
        write_tsv(tmp_path / "h.tsv", [(unnamed, features)], class_names=["a"])
    assert not (tmp_path / "h.tsv").exists()


def test_write_hdf5_round_trips_and_pickles_numeric_ids_as_integers(tmp_path):
    import pickle

    from lightning_wsg.detection.hdf5 import Hdf5Detections, index_path, write_hdf5

    records = [_featured("1000092795", 3, 0, (640, 480)), _featured("abc", 2, 1, (300, 500)),
               _featured("42", 4, 2, (123, 77))]  # fmt: skip
    path = write_hdf5(tmp_path / "f.hdf5", records)
    with index_path(path).open("rb") as fh:
        assert pickle.load(fh) == {1000092795: 0, "abc": 1, 42: 2}
    store = Hdf5Detections(path)
    assert store.feature_dim == 5 and set(store) == {"1000092795", "abc", "42"}
    for det, features in records:
        back = store[det.image_id]
        assert back.image_size == det.image_size  # read back from spatial_features
        assert torch.allclose(back.boxes, det.boxes.float())
        assert np.array_equal(store.features(det.image_id).numpy(), features)
    import h5py

    with h5py.File(path, "r") as f:
        assert f["pos_boxes"][:].tolist() == [[0, 3], [3, 5], [5, 9]]
        assert f["spatial_features"].shape == (9, 6)
        assert np.allclose(f["spatial_features"][3], [*(records[1][0].boxes[0] / torch.tensor([300, 500] * 2)).tolist(),
                                                      *((records[1][0].boxes[0, 2:] - records[1][0].boxes[0, :2])
                                                        / torch.tensor([300, 500])).tolist()])  # fmt: skip
    # one image without its size: no spatial_features at all, so no image sizes
    sizeless = write_hdf5(tmp_path / "g.hdf5", [records[0], _featured("9", 1, 5, None)])
    with h5py.File(sizeless, "r") as f:
        assert "spatial_features" not in f
    assert Hdf5Detections(sizeless)["1000092795"].image_size is None


def test_stores_pickle_without_their_open_files(tmp_path):
    import pickle

    from lightning_wsg.detection.hdf5 import Hdf5Detections, write_hdf5
    from lightning_wsg.detection.native import convert
    from lightning_wsg.detection.tsv import write_tsv

    records = [_featured(str(i), 3 + i, i, (200 + i, 100), dim=2048) for i in range(4)]
    write_tsv(tmp_path / "f.tsv", records)
    stores = [TsvDetections(tmp_path / "f.tsv"), Hdf5Detections(write_hdf5(tmp_path / "f.hdf5", records))]
    stores.append(open_detections(convert(tmp_path / "f.tsv", tmp_path / "native", shard_size=2)))
    for store in stores:
        first = store.features("1").numpy()
        for image_id in store:  # opens the file, maps every shard
            store.features(image_id)
        payload = pickle.dumps(store)  # what a spawned DataLoader worker receives
        # the features stay in the file: the pickle holds no copy of them (73 kB even as float16)
        assert len(payload) < 16_000, type(store).__name__
        clone = pickle.loads(payload)
        assert np.array_equal(clone.features("1").numpy(), first)
        assert np.array_equal(clone.features("3").numpy(), store.features("3").numpy())
        assert np.allclose(clone.features("3").numpy(), records[3][1], atol=5e-3)  # native: float16


def test_store_membership_repr_and_the_refusal_of_features(tmp_path):
    from lightning_wsg.detection.native import convert
    from lightning_wsg.detection.tsv import write_tsv

    write_tsv(tmp_path / "f.tsv", [_featured("1000092795", 2, 0, (64, 48)), _featured("x", 1, 1, (64, 48))])
    native = open_detections(convert(tmp_path / "f.tsv", tmp_path / "native", shard_size=1))
    assert "x" in native and 1000092795 in native and "y" not in native and 7 not in native
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [_dets("a", 2, 0), _dets("b", 1, 1), _dets("c", 0, 2)])
    store = open_detections(path)
    assert repr(store) == f"JsonlDetections({str(path)!r}, images=3)"
    with pytest.raises(DetectionFormatError, match=r"p\.jsonl: this detections source has no per-box features"):
        store.features("a")


# --- per-box features: bottom-up-attention TSV and BAN / MAF HDF5 ----------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny"), n_images=10, seed=3, split_sizes=(2, 2))


@pytest.fixture(scope="module")
def data(tiny):
    return features_of(tiny.detections, tiny.sizes, dim=16)


def test_tsv_features_are_read_one_image_at_a_time(tmp_path, data):
    path = write_tsv(tmp_path / "f.tsv", data)
    store = open_detections(path, write_vocabulary(tmp_path / "vocab.txt", data))
    assert isinstance(store, TsvDetections) and store.feature_dim == 16
    for image_id, d in data["images"].items():
        det = store[image_id]
        assert torch.equal(store.features(image_id), torch.from_numpy(d["features"]))
        assert torch.equal(det.boxes, torch.from_numpy(d["boxes"])) and det.image_size == d["size"]
        assert det.labels == [data["names"][i] for i in d["ids"]]
    # the store travels to DataLoader workers without its open file
    clone = pickle.loads(pickle.dumps(store))
    assert clone._fh is None and torch.equal(clone.features(image_id), store.features(image_id))


def test_hdf5_files_of_a_folder_form_one_store(tmp_path, data, tiny):
    folder = tmp_path / "h5"
    folder.mkdir()
    train = tiny.splits["train"]
    write_hdf5(folder / "train.hdf5", data, train)
    write_hdf5(folder / "test.h5", data, [i for i in data["images"] if i not in train])
    store = open_detections(folder)
    assert isinstance(store, Hdf5Detections) and store.feature_dim == 16 and set(store) == set(data["images"])
    for image_id, d in data["images"].items():
        assert torch.equal(store.features(image_id), torch.from_numpy(d["features"]))
        assert torch.equal(store[image_id].boxes, torch.from_numpy(d["boxes"]))
        assert store[image_id].labels is None and store[image_id].image_size == d["size"]  # from spatial_features
    single = open_detections(folder / "train.hdf5")
    assert set(single) == set(train)
    clone = pickle.loads(pickle.dumps(single))
    assert torch.equal(clone.features(train[0]), single.features(train[0]))


@pytest.mark.parametrize("fixed", [False, True], ids=["pos_boxes", "fixed_size"])
def test_hdf5_index_says_where_each_image_lies(tmp_path, data, fixed):
    """The images lie in the file in another order than the index lists them: each gets its own rows."""
    ids = list(data["images"])
    path = write_hdf5(tmp_path / "f.hdf5", data, ids, fixed=fixed)
    with (tmp_path / "f_imgid2idx.pkl").open("rb") as fh:
        index = pickle.load(fh)
    assert list(index) == [int(i) for i in ids] and all(index[int(i)] != k for k, i in enumerate(ids))
    store = Hdf5Detections(path)
    keep = min(len(d["boxes"]) for d in data["images"].values()) if fixed else None
    assert set(store) == set(ids)
    for image_id, d in data["images"].items():
        assert torch.equal(store[image_id].boxes, torch.from_numpy(d["boxes"][:keep])), image_id
        assert torch.equal(store.features(image_id), torch.from_numpy(d["features"][:keep])), image_id
        assert store[image_id].image_size == d["size"], image_id


def _feature_row(image_id="1", n=2, dim=4, feature_rows=None, size=("40", "30")) -> str:
    boxes = np.array([[0, 0, 10, 10]] * n, np.float32)
    feats = np.zeros((feature_rows if feature_rows is not None else n, dim), np.float32)
    return "\t".join([image_id, *size, str(n), b64(boxes), b64(feats)])


@pytest.mark.parametrize(
    "rows, message",
    [
        # three rows of 5 for two boxes (three of 4 would read as two boxes of 6: the file-wide width catches it)
        ([_feature_row(feature_rows=3, dim=5)], r":1 \(image 1\): the features field holds 60 bytes, not num_boxes=2 rows"),
        ([_feature_row(), _feature_row("2", feature_rows=3)], r"features of 4 values per box \(line 1, image 1\) and of 6"),
        (
            [_feature_row(dim=4), _feature_row("2", dim=5)],
            r"features of 4 values per box \(line 1, image 1\) and of 5 \(line 2, image 2\)",
        ),
        (
            [_feature_row(), _feature_row("2")[:-7]],
            r":2 \(image 2\): the features field is not base64 \(length \d+; a truncated row\?\)",
        ),
        (
            [_feature_row(), _feature_row("2").split("\t", 3)[0]],
            r":2: expected 6 or 10 tab-separated fields, got 1 \(a truncated file\?\)",
        ),
        ([_feature_row(size=("forty", "30"))], r":1: image_w / image_h are not numbers: 'forty', '30'"),
    ],
)
def test_tsv_feature_errors_name_the_file_the_line_and_the_image(tmp_path, rows, message):
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DetectionFormatError, match=rf"{path}{message}" if message.startswith(":") else message):
        TsvDetections(path)


def test_hdf5_errors_name_the_file_and_the_image(tmp_path, data):
    import h5py

    path = write_hdf5(tmp_path / "val.hdf5", data)
    first = next(iter(data["images"]))
    # truncated: the file cut in half
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "cut_imgid2idx.pkl").write_bytes((tmp_path / "val_imgid2idx.pkl").read_bytes())
    with pytest.raises(DetectionFormatError, match=rf"{cut}: not a readable HDF5 file \(truncated or corrupt\?\)"):
        Hdf5Detections(cut)
    # an index row beyond pos_boxes
    with (tmp_path / "val_imgid2idx.pkl").open("wb") as fh:
        pickle.dump({int(first): 99}, fh)
    with pytest.raises(
        DetectionFormatError, match=rf"{path} \(index val_imgid2idx.pkl\): image {first}: row 99 outside"
    ):
        Hdf5Detections(path)
    # pos_boxes past the feature rows
    with (tmp_path / "val_imgid2idx.pkl").open("wb") as fh:
        pickle.dump({int(first): 0}, fh)
    with h5py.File(path, "r+") as f:
        f["pos_boxes"][0] = [0, 10_000]
    with pytest.raises(
        DetectionFormatError, match=rf"image {first}: pos_boxes \[0, 10000\) outside the \d+ feature rows"
    ):
        Hdf5Detections(path)
    # a truncated index, a missing index, features and boxes of different row counts
    (tmp_path / "val_imgid2idx.pkl").write_bytes(b"\x80\x04\x95")
    with pytest.raises(DetectionFormatError, match=r"val_imgid2idx.pkl: not a readable pickle"):
        Hdf5Detections(path)
    (tmp_path / "val_imgid2idx.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_imgid2idx.pkl is missing"):
        Hdf5Detections(path)
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["image_features"] = np.zeros((5, 4), np.float32)
        f["image_bb"] = np.zeros((4, 4), np.float32)
        f["pos_boxes"] = np.array([[0, 4]])
    with pytest.raises(DetectionFormatError, match=r"rows.h5: image_features \(5, 4\) and image_bb \(4, 4\) disagree"):
        Hdf5Detections(tmp_path / "rows.h5")


# --- what the readers say about bad input, and what the writer rounds -----------------------------


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"image_id": 1, "boxes": "abc"}, "field 'boxes' is not numeric"),
        ({"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": ["x"]}, "field 'scores' is not numeric"),
        ({"image_id": 1, "boxes": [[0, 0, 1, 1]], "class_probs": [["y"]]}, "field 'class_probs' is not numeric"),
        # a scalar: a clear error, not the IndexError of asking its length
        ({"image_id": 1, "boxes": 5}, r"image 1: boxes must be \[N, 4\], got \(\)"),
        ({"image_id": 1, "boxes": [0, 0, 1, 1]}, r"image 1: boxes must be \[N, 4\], got \(4,\)"),
        ({"image_id": 1, "boxes": [[0, 0, 1, 1]] * 2, "class_probs": []}, r"2 boxes but class_probs of shape \(0, 0\)"),
        ({"image_id": 1, "boxes": [[0, 0, 1, 1]] * 2, "scores": [0.5]}, "image 1: 2 boxes but 1 scores"),
    ],
)
def test_jsonl_record_errors_name_the_field(tmp_path, record, problem):
    path = _write_lines(tmp_path / "bad.jsonl", [{"class_names": ["a"]}, record])
    with pytest.raises(DetectionFormatError, match=rf"{path}:2: .*{problem}" if "image" not in problem else rf"{path}:2: {problem}"):
        open_detections(path)


def test_jsonl_header_and_missing_file(tmp_path):
    plain = _write_lines(tmp_path / "plain.jsonl", [{"image_id": "a", "boxes": [[0, 0, 1, 1]]}])
    store = open_detections(plain)
    assert store.class_names is None and store["a"].scores.tolist() == [1.0]
    probs = _write_lines(tmp_path / "probs.jsonl", [{"image_id": "a", "boxes": [[0, 0, 1, 1]], "class_probs": [[1.0]]}])
    with pytest.raises(DetectionFormatError, match=r"rows of width 1, no header\)"):
        open_detections(probs)
    with pytest.raises(FileNotFoundError, match=r"detections file not found: .*gone\.jsonl"):
        JsonlDetections(tmp_path / "gone.jsonl")
    with pytest.raises(FileNotFoundError, match=r"detections file not found: .*gone\.tsv"):
        TsvDetections(tmp_path / "gone.tsv")


def test_write_jsonl_rounds_as_documented(tmp_path):
    det = Detections("a", torch.tensor([[1.234567, 2.0, 3.98765, 4.5]]), None, torch.tensor([0.123456789]),
                     torch.tensor([[0.1234567, 0.8765]]))  # fmt: skip
    write_jsonl(tmp_path / "r.jsonl", [det], class_names=["x", "y"])
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[1])
    assert record["boxes"] == [[1.23, 2.0, 3.99, 4.5]]
    assert record["scores"] == [0.1235]
    assert record["class_probs"] == [[0.12346, 0.8765]]


def test_read_vocabulary_names_a_synonym_line_by_its_first_name(tmp_path):
    (tmp_path / "v.txt").write_text("dog, puppy,hound\n  man \ncar,automobile\n")
    assert read_vocabulary(tmp_path / "v.txt") == ["dog", "man", "car"]
    with pytest.raises(FileNotFoundError, match=r"vocabulary file not found: .*none\.txt"):
        read_vocabulary(tmp_path / "none.txt")


def test_a_vocabulary_reaches_only_the_readers_that_take_one(tmp_path):
    from lightning_wsg.detection.hdf5 import write_hdf5 as write_package_hdf5

    (tmp_path / "v.txt").write_text("a\n")
    records = [_featured("1", 2, 0, (64, 48))]
    write_jsonl(tmp_path / "d.jsonl", [records[0][0]])
    for path in (tmp_path / "d.jsonl", write_package_hdf5(tmp_path / "d.hdf5", records)):
        assert list(open_detections(path, vocabulary=tmp_path / "v.txt")) == ["1"]


def test_tsv_rows_blank_lines_line_endings_and_a_last_field_ending_in_x(tmp_path):
    from lightning_wsg.detection.tsv import write_tsv

    features = np.zeros((1, 3), np.float32)
    features.view(np.uint8)[0, -4:] = [0, 0, 0, 0x57]  # base64 of the row ends in "X"
    det, _ = _featured("2", 1, 0, (64, 48))
    write_tsv(tmp_path / "x.tsv", [_featured("1", 2, 1, (64, 48), dim=3), (det, features)])
    lines = (tmp_path / "x.tsv").read_text().splitlines()
    assert lines[1].endswith("X")
    # a blank line between rows, and Windows line endings
    (tmp_path / "y.tsv").write_bytes((lines[0] + "\r\n\r\n" + lines[1] + "\r\n").encode("ascii"))
    for name in ("x.tsv", "y.tsv"):
        store = TsvDetections(tmp_path / name)
        assert list(store) == ["1", "2"], name
        assert np.array_equal(store.features("2").numpy(), features), name


def test_tsv_errors_found_when_opening_and_when_reading_features(tmp_path):
    from lightning_wsg.detection.tsv import write_tsv

    path = tmp_path / "f.tsv"
    write_tsv(path, [_featured("1", 2, 1, (64, 48)), _featured("2", 3, 2, (64, 48))])
    good = path.read_bytes()
    path.write_bytes(good.replace(b"\t64\t48\t3\t", b"\t64\t48\t3\t\xe9", 1))
    with pytest.raises(DetectionFormatError, match=rf"{path}:2: not a bottom-up-attention TSV row \(non-ASCII\)"):
        TsvDetections(path)
    fields = good.decode().splitlines()[0].split("\t")
    path.write_text("\t".join(fields[:5] + [""]) + "\n")
    with pytest.raises(DetectionFormatError, match=rf"{path}:1 \(image 1\): the features field holds 0 bytes, not num_boxes=2"):
        TsvDetections(path)
    # the file changes after it was opened: cut inside, or the features field overwritten
    path.write_bytes(good)
    store = TsvDetections(path)
    lines = good.decode().splitlines(keepends=True)
    row = lines[1].split("\t")
    row[5] = "!" * len(row[5])
    path.write_text(lines[0] + "\t".join(row))
    with pytest.raises(DetectionFormatError, match=rf"{path}:2 \(image 2\): field 'features' is not base64 float32"):
        store.features("2")
    path.write_bytes(good)
    store = TsvDetections(path)
    path.write_bytes(good[: len(good) - 20])
    with pytest.raises(
        DetectionFormatError, match=rf"{path}:2 \(image 2\): the file ended inside the features \(changed since"
    ):
        store.features("2")


# --- the checks of every record, and HDF5 files written by hand -----------------------------------


def test_class_probs_checks_accept_the_bounds_and_name_the_box():
    from lightning_wsg.detection.base import check_class_probs

    check_class_probs(torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.0, 0.0]]), "f", "1", width=2)  # zeros, sums of 1
    with pytest.raises(DetectionFormatError, match=r"^f: image 1: class_probs must be \[N, C\], got \(3,\)"):
        check_class_probs(torch.ones(3), "f", "1")
    with pytest.raises(DetectionFormatError, match=r"\(class_names\): one column per class name"):
        check_class_probs(torch.zeros(2, 3), "f", "1", width=2)
    with pytest.raises(DetectionFormatError, match=r"^f: image 1: negative class_probs on box 1 \(min -0.1\): probabilities, not logits"):
        check_class_probs(torch.tensor([[0.0, 1.0], [-0.1, 0.5]]), "f", "1")
    with pytest.raises(
        DetectionFormatError,
        match=r"box 1 .*row is P\(class \| box\) over the foreground classes \(the background takes the rest\), "
        r"not per-class sigmoid scores",
    ):
        check_class_probs(torch.tensor([[0.0, 1.0], [0.7, 0.7]]), "f", "1")


def test_detections_validate_features_finite_and_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0]])  # a zero-size box is a box
    Detections("1", boxes, None, torch.ones(2)).validate("f")
    det = Detections("1", boxes, None, torch.ones(2), features=torch.zeros(3, 4))
    with pytest.raises(DetectionFormatError, match=r"^f: image 1: 2 boxes but features of shape \(3, 4\)$"):
        det.validate("f")
    bad = Detections("1", torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), None, torch.ones(1))
    with pytest.raises(DetectionFormatError, match=r"^f: image 1: non-finite box coordinates$"):
        bad.validate("f")
    jsonl = JsonlDetections.__new__(JsonlDetections)
    jsonl.path = Path("p.jsonl")
    with pytest.raises(
        DetectionFormatError,
        match=r"bottom-up-attention TSV with its features column, or an HDF5 file of image_features\)$",
    ):
        jsonl.features("1")


def test_jsonl_scores_of_any_shape_and_a_first_line_that_is_a_record(tmp_path):
    path = _write_lines(
        tmp_path / "s.jsonl",
        [
            {"image_id": "a", "boxes": [[0, 0, 1, 1]] * 2, "scores": [[0.5], [0.25]], "class_names": ["x"]},
            {"image_id": "b", "boxes": [], "scores": [[]]},
        ],
    )
    store = open_detections(path)
    assert store.class_names is None and list(store) == ["a", "b"]  # a record naming classes is no header
    assert store["a"].scores.tolist() == [0.5, 0.25] and store["b"].scores.shape == (0,)


def _h5(path: Path, index: dict, **datasets) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    with (path.parent / f"{path.stem}_imgid2idx.pkl").open("wb") as fh:
        pickle.dump(index, fh)
    return path


def test_hdf5_files_written_by_hand_read_as_float32_with_their_rows(tmp_path):
    # float64 on disk, an image of no boxes first (rows [0, 0)), ids mapped to rows out of order
    feats = np.arange(3 * 4, dtype=np.float64).reshape(3, 4)
    boxes = np.array([[0, 0, 10, 20], [5, 5, 5, 9], [1, 1, 2, 2]], np.float64)
    spatial = np.array([[0, 0, 10 / 64, 20 / 48, 10 / 64, 20 / 48], [5 / 64, 5 / 48, 5 / 64, 9 / 48, 0, 4 / 48],
                        [0, 0, 0, 0, 0, 0]], np.float64)  # fmt: skip
    path = _h5(tmp_path / "f.h5", {"empty": 0, 7: 2, "pair": 1}, image_features=feats, image_bb=boxes,
               spatial_features=spatial, pos_boxes=np.array([[0, 0], [0, 2], [2, 3]], np.int32))  # fmt: skip
    store = Hdf5Detections(path)
    assert store["empty"].boxes.shape == (0, 4) and store.features("empty").shape == (0, 4)
    assert store["pair"].boxes.dtype == torch.float32 and store["pair"].boxes.tolist() == boxes[:2].tolist()
    assert store["pair"].image_id == "pair" and store["pair"].scores.tolist() == [1.0, 1.0]
    assert store.features("7").dtype == torch.float32 and store.features("7").tolist() == [feats[2].tolist()]
    assert store["pair"].image_size == (64, 48)
    assert store["7"].image_size is None  # no box of positive relative size to divide by
    one = _h5(tmp_path / "one.h5", {"d": 0}, image_features=feats[1:2], image_bb=boxes[1:2],
              spatial_features=spatial[1:2], pos_boxes=np.array([[0, 1]]))  # fmt: skip
    assert Hdf5Detections(one)["d"].image_size == (64, 48)  # a box of zero width still gives the size


def test_hdf5_layout_errors_name_the_file_and_the_layout(tmp_path):
    feats, boxes = np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)
    pos = np.array([[0, 2]])
    cases = [
        (dict(image_features=feats), r"no dataset 'image_bb' \(expected image_features, image_bb, pos_boxes; "
                                     r"has \['image_features'\]\)"),
        (dict(image_features=feats, image_bb=boxes[None], pos_boxes=pos),
         r"image_features \(2, 4\) and image_bb \(1, 2, 4\) disagree \(expected \[rows, dim\] and \[rows, 4\]\)"),
        (dict(image_features=feats[None, :, :3], image_bb=boxes),
         r"image_features \(1, 2, 3\) and image_bb \(2, 4\) disagree \(expected \[images, K, dim\] and \[images, K, 4\] without pos_boxes\)"),
        (dict(image_features=feats[None], image_bb=boxes),
         r"image_features \(1, 2, 4\) and image_bb \(2, 4\) disagree \(expected \[images, K, dim\]"),
        # only the boxes' rank is wrong (the leading sizes agree)
        (dict(image_features=np.zeros((2, 4, 5)), image_bb=boxes),
         r"image_features \(2, 4, 5\) and image_bb \(2, 4\) disagree"),
        (dict(image_features=feats, image_bb=boxes[:, None], pos_boxes=pos),
         r"image_features \(2, 4\) and image_bb \(2, 1, 4\) disagree \(expected \[rows, dim\] and \[rows, 4\]\)"),
        (dict(image_features=feats, image_bb=boxes, pos_boxes=np.array([0, 2])),
         r"pos_boxes must be \[num_images, 2\], got \(2,\)"),
        (dict(image_features=feats, image_bb=boxes, pos_boxes=np.array([[0, 1, 2]])),
         r"pos_boxes must be \[num_images, 2\], got \(1, 3\)"),
    ]  # fmt: skip
    for k, (datasets, message) in enumerate(cases):
        path = _h5(tmp_path / f"bad{k}.h5", {"1": 0}, **datasets)
        with pytest.raises(DetectionFormatError, match=rf"^{path}: {message}"):
            Hdf5Detections(path)
    ok = dict(image_features=feats, image_bb=boxes, pos_boxes=np.array([[0, 1], [1, 2]]))
    path = _h5(tmp_path / "row.h5", {"1": 2}, **ok)
    with pytest.raises(DetectionFormatError, match=r"image 1: row 2 outside the file's 2 images"):
        Hdf5Detections(path)
    path = _h5(tmp_path / "box.h5", {"1": 0}, **{**ok, "image_bb": np.array([[5, 0, 1, 1], [0, 0, 1, 1]], np.float32)})
    with pytest.raises(DetectionFormatError, match=rf"^{path} \(index box_imgid2idx.pkl\): image 1: image 1: a box has x2"):
        Hdf5Detections(path)
    for name, index, message in [("list", [1], "expected a dict image_id -> row, got list"),
                                 ("rows", {"1": "x"}, "the rows must be integers")]:  # fmt: skip
        path = _h5(tmp_path / f"{name}.h5", index, **ok)
        with pytest.raises(DetectionFormatError, match=rf"{name}_imgid2idx.pkl: {message}$"):
            Hdf5Detections(path)


def test_hdf5_folders_refuse_mixed_widths_twice_listed_images_and_no_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    rows = dict(image_bb=np.zeros((1, 4), np.float32), pos_boxes=np.array([[0, 1]]))
    _h5(a / "x.h5", {"1": 0}, image_features=np.zeros((1, 16), np.float32), **rows)
    _h5(a / "y.h5", {"2": 0}, image_features=np.zeros((1, 8), np.float32), **rows)
    with pytest.raises(DetectionFormatError, match=rf"^{a}: features of width 16 in {a / 'x.h5'} but 8 in {a / 'y.h5'}$"):
        Hdf5Detections(a)
    _h5(b / "x.h5", {"1": 0}, image_features=np.zeros((1, 8), np.float32), **rows)
    _h5(b / "y.h5", {"1": 0}, image_features=np.zeros((1, 8), np.float32), **rows)
    with pytest.raises(DetectionFormatError, match=rf"{b / 'y.h5'} \(index y_imgid2idx.pkl\): image 1: the image is also in {b / 'x.h5'}$"):
        Hdf5Detections(b)
    (tmp_path / "c").mkdir()
    with pytest.raises(DetectionFormatError, match=rf"^{tmp_path / 'c'}: a folder without .h5 / .hdf5 files$"):
        Hdf5Detections(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match=rf"^detections not found: {tmp_path / 'none.h5'}$"):
        Hdf5Detections(tmp_path / "none.h5")


def test_write_hdf5_stores_float32_and_int64_and_writes_an_empty_file(tmp_path):
    import h5py

    from lightning_wsg.detection.hdf5 import write_hdf5 as write_package_hdf5

    det = Detections("1", torch.tensor([[0.0, 0.0, 3.0, 4.0]], dtype=torch.float64), None, torch.ones(1))
    det.image_size = (8, 8)
    path = write_package_hdf5(tmp_path / "f.hdf5", [(det, np.ones((1, 3), np.float64))])
    with h5py.File(path, "r") as f:
        kinds = {name: f[name].dtype for name in ("image_features", "image_bb", "spatial_features", "pos_boxes")}
    assert kinds == {"image_features": np.float32, "image_bb": np.float32, "spatial_features": np.float32,
                     "pos_boxes": np.int64}  # fmt: skip
    empty = write_package_hdf5(tmp_path / "e.hdf5", [])
    with h5py.File(empty, "r") as f:
        assert f["image_features"].shape == (0, 0) and f["image_features"].dtype == np.float32
        assert f["image_bb"].shape == (0, 4) and f["image_bb"].dtype == np.float32
        assert f["pos_boxes"].shape == (0, 2)


def test_reading_hdf5_needs_h5py_and_says_so(monkeypatch):
    import sys

    from lightning_wsg.detection.hdf5 import _h5py

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"^reading HDF5 region features needs h5py \(pip install h5py\)$"):
        _h5py()


def test_tsv_labels_vocabulary_bounds_and_a_file_of_empty_images(tmp_path):
    from lightning_wsg.detection.tsv import write_tsv

    names = ["a", "b"]
    (tmp_path / "v.txt").write_text("a\nb\n")
    det, features = _featured("1", 2, 0, (64, 48))
    det.labels = ["b", "a"]
    write_tsv(tmp_path / "f.tsv", [(det, features.astype(np.float64))], class_names=names)  # float64 in
    store = TsvDetections(tmp_path / "f.tsv", tmp_path / "v.txt")
    assert store.class_names == names and store["1"].labels == ["b", "a"]
    assert np.array_equal(store.features("1").numpy(), features)  # written as float32
    (tmp_path / "v1.txt").write_text("a\n")  # objects_id 1 is one past this vocabulary
    with pytest.raises(DetectionFormatError, match=rf"^{tmp_path / 'f.tsv'}:1: objects_id outside the 1-class vocabulary$"):
        TsvDetections(tmp_path / "f.tsv", tmp_path / "v1.txt")
    row = (tmp_path / "f.tsv").read_text()
    (tmp_path / "twice.tsv").write_text(row + row)
    with pytest.raises(DetectionFormatError, match=rf"^{tmp_path / 'twice.tsv'}:2: image 1 appears twice$"):
        TsvDetections(tmp_path / "twice.tsv")
    fields = row.rstrip("\n").split("\t")
    (tmp_path / "n.tsv").write_text("\t".join(fields[:3] + ["3"] + fields[4:]) + "\n")
    with pytest.raises(DetectionFormatError, match=rf"^{tmp_path / 'n.tsv'}:1: num_boxes=3 but boxes hold 8 floats$"):
        TsvDetections(tmp_path / "n.tsv")
    flipped = Detections("9", torch.tensor([[5.0, 0.0, 1.0, 1.0]]), None, torch.ones(1))
    write_tsv(tmp_path / "b.tsv", [(flipped, np.zeros((1, 2), np.float32))])
    with pytest.raises(DetectionFormatError, match=rf"^{tmp_path / 'b.tsv'}:1: image 9: a box has x2 < x1"):
        TsvDetections(tmp_path / "b.tsv")
    none = Detections("0", torch.zeros(0, 4), None, torch.ones(0))
    write_tsv(tmp_path / "e.tsv", [(none, np.zeros((0, 2), np.float32))])
    empty = TsvDetections(tmp_path / "e.tsv")
    assert empty.feature_dim is None and empty.features("0").shape == (0, 0)
