"""Detection files: JSON Lines round trip and errors, bottom-up-attention TSV with a vocabulary."""

from __future__ import annotations

import base64
import re
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.flickr import SHARED_DATA
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


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _tsv_row(image_id: str, boxes: np.ndarray, ids: np.ndarray | None = None, layout: str = "plain") -> str:
    n = len(boxes)
    w, h = "500", "375"
    feats = _b64(np.zeros((n, 8), np.float32))
    base = [image_id, w, h, str(n), _b64(boxes.astype(np.float32)), feats]
    if ids is None:
        return "\t".join(base)
    labels = [_b64(ids.astype(np.int64)), _b64(np.linspace(0.9, 0.5, n, dtype=np.float32))]
    attrs = [_b64(np.zeros(n, np.int64)), _b64(np.ones(n, np.float32))]
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
        (4, _b64(np.zeros(5, np.uint8)), "field 'boxes' is not base64 float32"),  # 5 bytes: no whole float
        (6, _b64(np.array([0, 1], np.int64)), "num_boxes=3 but 2 objects_id and 3 objects_conf"),
        (7, _b64(np.array([0.9], np.float32)), "num_boxes=3 but 3 objects_id and 1 objects_conf"),
        (6, "@@", "field 'objects_id' is not base64 int64"),
        # stray characters are refused, not dropped (dropping them would read these three floats)
        (7, _b64(np.array([0.9, 0.8, 0.7], np.float32)) + "!!", "field 'objects_conf' is not base64 float32"),
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
               _featured("7", 0, 2, (10, 20))]  # fmt: skip
    names = [f"class{i}" for i in range(3)][::-1]  # labels are written as their index in this list
    path = tmp_path / "f.tsv"
    from lightning_wsg.detection.tsv import write_tsv

    write_tsv(path, records, class_names=names)
    assert not (tmp_path / "f.tsv.tmp").exists()
    (tmp_path / "vocab.txt").write_text("\n".join(names) + "\n")
    store = TsvDetections(path, tmp_path / "vocab.txt")
    assert list(store) == ["1000092795", "abc", "7"] and store.feature_dim == 5
    for det, features in records:
        back = store[det.image_id]
        assert back.image_size == det.image_size
        assert torch.equal(back.boxes, det.boxes.float())
        assert back.labels == det.labels
        assert torch.allclose(back.scores, det.scores)
        assert np.array_equal(store.features(det.image_id).numpy(), features.reshape(len(det), 5))
    rows = path.read_text().splitlines()
    assert [len(r.split("\t")) for r in rows] == [10, 10, 10]
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
