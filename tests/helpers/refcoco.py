"""The refer layout on disk for tests: real expressions, placeholder images, ground-truth
proposals, and a tiny generated dataset.

The shared data holds every expression of the real evaluation splits as CSV (``uid, ref_id,
img_id, sent_id, sent, bbox``; no ann_id, no image size) and phraseloceval's test
conversions (with the official tokens and the category). :func:`build_refer_root` turns them
into ``<root>/<dataset>/refs(<split_by>).p`` (a protocol-2 pickle, as the refer API ships
it) and ``<root>/<dataset>/instances.json``: ann_ids are synthesised, one per ref (as in the
real files, where each ref names one annotation; two refs may hold equal boxes); image sizes
are placeholders just large enough to hold the image's boxes.

Example (in a test)::

    real = build_refer_root(tmp_path, "refcoco", "unc", ["testA", "testB"])
    tiny = make_tiny_refer(tmp_path)
    dm = RefCOCODataModule(tiny.root, tiny.image_dir, tiny.detections, num_workers=0)
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from helpers.flickr import SHARED_DATA
from lightning_wsg.boxes import coco_to_corners
from lightning_wsg.data.refcoco import available_splits
from lightning_wsg.detection.formats import Detections, write_jsonl

__all__ = [
    "PHRASELOCEVAL_FILES",
    "REFCOCO_FILES",
    "ReferRoot",
    "TinyRefer",
    "build_refer_root",
    "make_placeholder_images",
    "make_tiny_refer",
    "read_csv_split",
    "read_phraseloceval",
    "write_gt_proposals",
    "write_refer",
]

REFCOCO_FILES = SHARED_DATA / "refcoco"
#: (dataset, split_by, split) -> the phraseloceval conversion holding that split
PHRASELOCEVAL_FILES = {
    ("refcoco", "unc", "testA"): "phraseloceval_refcoco_annotation_test.json.gz",
    ("refcoco", "unc", "testB"): "phraseloceval_refcoco_annotation_test.json.gz",
    ("refcoco+", "unc", "testA"): "phraseloceval_refcoco+_annotation_testA.json.gz",
    ("refcoco+", "unc", "testB"): "phraseloceval_refcoco+_annotation_testB.json.gz",
    ("refcocog", "umd", "test"): "phraseloceval_refcocog_annotation_test.json.gz",
}


def read_csv_split(dataset: str, split_by: str, split: str, source: str | Path = REFCOCO_FILES) -> list[dict]:
    """The rows of ``<dataset>_<split_by>_<split>.csv.gz`` (``bbox`` parsed to floats)."""
    path = Path(source) / f"{dataset}_{split_by}_{split}.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["bbox"] = [float(v) for v in json.loads(row["bbox"])]
    return rows


def read_phraseloceval(name: str, source: str | Path = REFCOCO_FILES) -> dict[str, dict]:
    """A phraseloceval conversion, keyed by ``phraseId`` (the refer ``sent_id``)."""
    with gzip.open(Path(source) / name, "rt", encoding="utf-8") as fh:
        return {str(rec["phraseId"]): rec for rec in json.load(fh)}


@dataclass
class ReferRoot:
    """What :func:`write_refer` wrote.

    Attributes:
        root: the refer data folder (``<root>/<dataset>/refs(<split_by>).p``, ``instances.json``).
        dataset: the dataset folder name.
        split_by: the refs file's split author.
        sizes: image id -> placeholder ``(width, height)``.
        file_names: image id -> ``file_name`` of ``instances.json``.
        boxes: image id -> the referred COCO ``[x, y, w, h]`` boxes of the image (one per ref).
        categories: image id -> the category name of each box of ``boxes``.
        counts: split -> number of expressions written.
    """

    root: Path
    dataset: str
    split_by: str
    sizes: dict[str, tuple[int, int]]
    file_names: dict[str, str]
    boxes: dict[str, list[list[float]]]
    categories: dict[str, list[str]]
    counts: dict[str, int] = field(default_factory=dict)


def write_refer(
    root: str | Path,
    dataset: str,
    split_by: str,
    rows_by_split: dict[str, list[dict]],
    tokens: dict[str, list[str]] | None = None,
    categories: dict[str, str] | None = None,
    sizes: dict[str, tuple[int, int]] | None = None,
    distractors: bool = False,
) -> ReferRoot:
    """Write a refer-layout dataset from expression rows (the CSV columns).

    Args:
        root: the refer data folder (created).
        dataset: ``refcoco``...; ``split_by``: ``unc``...
        rows_by_split: split -> rows with ``ref_id, img_id, sent_id, sent, bbox`` (floats).
        tokens: sent_id -> official tokens; others get ``sent`` split on whitespace.
        categories: sent_id -> category name; others are ``"object"``.
        sizes: image id -> ``(width, height)``; default the smallest integer size holding
            every box of the image.
        distractors: also write one unreferred annotation per image (as the real file has).
    """
    root = Path(root)
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    tokens, categories = tokens or {}, categories or {}
    ann_of: dict[int, int] = {}  # ref_id -> ann_id
    cat_ids: dict[str, int] = {}
    anns: list[dict] = []
    refs: dict[int, dict] = {}
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    box_categories: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, int] = {}
    for split, rows in rows_by_split.items():
        counts[split] = len(rows)
        for row in rows:
            image_id, sent_id, box = str(row["img_id"]), str(row["sent_id"]), list(row["bbox"])
            category = categories.get(sent_id, "object")
            cat_id = cat_ids.setdefault(category, len(cat_ids) + 1)
            ref_id = int(row["ref_id"])
            if ref_id not in ann_of:
                ann_of[ref_id] = len(anns) + 1
                anns.append({"id": ann_of[ref_id], "image_id": int(image_id), "category_id": cat_id, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": 0, "segmentation": []})  # fmt: skip
                boxes[image_id].append(box)
                box_categories[image_id].append(category)
            ann_id = ann_of[ref_id]
            ref = refs.setdefault(
                ref_id,
                {
                    "ref_id": ref_id,
                    "ann_id": ann_id,
                    "image_id": int(image_id),
                    "category_id": cat_id,
                    "split": split,
                    # the refs' own file_name carries an ann suffix: only instances.json names files
                    "file_name": f"COCO_train2014_{int(image_id):012d}_{ann_id}.jpg",
                    "sent_ids": [],
                    "sentences": [],
                },
            )
            if ref["image_id"] != int(image_id) or anns[ann_id - 1]["bbox"] != box or ref["split"] != split:
                raise ValueError(f"ref {ref_id}: rows disagree on its box or split")
            words = tokens.get(sent_id) or row["sent"].split()
            ref["sent_ids"].append(int(sent_id))
            ref["sentences"].append(
                {"tokens": list(words), "raw": row["sent"], "sent": row["sent"], "sent_id": int(sent_id)}
            )
    if sizes is None:
        sizes = {
            i: (max(1, max(math.ceil(b[0] + b[2]) for b in bs)), max(1, max(math.ceil(b[1] + b[3]) for b in bs)))
            for i, bs in boxes.items()
        }
    file_names = {i: f"COCO_train2014_{int(i):012d}.jpg" for i in boxes}
    images = [{"id": int(i), "file_name": file_names[i], "width": sizes[i][0], "height": sizes[i][1]} for i in boxes]
    if distractors:
        for i in boxes:
            w, h = sizes[i]
            anns.append({"id": len(anns) + 1, "image_id": int(i), "category_id": 1, "bbox": [0.0, 0.0, w / 2, h / 2],
                         "area": w * h / 4, "iscrowd": 0, "segmentation": []})  # fmt: skip
    instances = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": n, "supercategory": n} for n, c in cat_ids.items()],
    }
    with (folder / f"refs({split_by}).p").open("wb") as fh:
        pickle.dump(list(refs.values()), fh, protocol=2)
    (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    return ReferRoot(root, dataset, split_by, sizes, file_names, dict(boxes), dict(box_categories), counts)


def build_refer_root(
    root: str | Path, dataset: str, split_by: str, splits: list[str], source: str | Path = REFCOCO_FILES
) -> ReferRoot:
    """A refer-layout root from the real expressions of ``splits``.

    Tokens and categories come from phraseloceval where it covers the split (the official
    tokens); elsewhere tokens are ``sent`` split on whitespace and the category ``"object"``.
    """
    available_splits(dataset, split_by)
    rows_by_split = {split: read_csv_split(dataset, split_by, split, source) for split in splits}
    tokens: dict[str, list[str]] = {}
    categories: dict[str, str] = {}
    for name in {PHRASELOCEVAL_FILES.get((dataset, split_by, s)) for s in splits} - {None}:
        for sent_id, rec in read_phraseloceval(name, source).items():
            tokens[sent_id] = list(rec["phrase"])
            categories[sent_id] = rec["categories"][0] if rec["categories"] else "object"
    return write_refer(root, dataset, split_by, rows_by_split, tokens, categories)


def make_placeholder_images(image_dir: str | Path, refer: ReferRoot, seed: int = 0) -> Path:
    """Write a flat-colour JPEG of the placeholder size for every image of ``refer``."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for image_id, (width, height) in refer.sizes.items():
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (width, height), colour).save(image_dir / refer.file_names[image_id], quality=50)
    return image_dir


def write_gt_proposals(path: str | Path, refer: ReferRoot, extra: int = 5, seed: int = 0) -> Path:
    """A detections JSONL: per image every referred box (scores in [0.5, 1)), then ``extra``
    random boxes (scores in [0.01, 0.5)), labelled with the category name / ``"background"``."""
    rng = random.Random(seed)
    records = []
    for image_id, boxes in refer.boxes.items():
        width, height = refer.sizes[image_id]
        unique = list(dict.fromkeys(map(tuple, boxes)))
        gt = coco_to_corners(torch.tensor(unique, dtype=torch.float32)).tolist()
        names = [refer.categories[image_id][boxes.index(list(b))] for b in unique]
        rand = []
        for _ in range(extra):
            x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
            y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
            rand.append([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)])
        scores = [rng.uniform(0.5, 1.0) for _ in gt] + [rng.uniform(0.01, 0.5) for _ in rand]
        records.append(
            Detections(
                image_id,
                torch.tensor(gt + rand, dtype=torch.float32),
                names + ["background"] * len(rand),
                torch.tensor(scores, dtype=torch.float32),
            )
        )
    write_jsonl(path, records)
    return Path(path)


# --- a tiny generated dataset --------------------------------------------------------

_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
_NOUNS = ("man", "dog", "car", "cup")
_SIZES = ((96, 72), (80, 96), (64, 64), (112, 80))


@dataclass
class TinyRefer:
    """What :func:`make_tiny_refer` wrote.

    Attributes:
        refer: the refer root and what it holds (sizes, boxes...).
        image_dir: the images (``COCO_train2014_%012d.jpg``).
        detections: the proposals JSONL (every referred box, labelled with its colour).
        splits: split -> the sent_ids written (as strings).
    """

    refer: ReferRoot
    image_dir: Path
    detections: Path
    splits: dict[str, list[str]]

    @property
    def root(self) -> Path:
        return self.refer.root


def make_tiny_refer(
    tmp: str | Path,
    dataset: str = "refcoco",
    split_by: str = "unc",
    images_per_split: int = 3,
    train_images: int = 8,
    seed: int = 0,
    extra_proposals: int = 4,
) -> TinyRefer:
    """Generate a small refer-layout dataset with every split of ``dataset`` / ``split_by``.

    Each image is a grey canvas with two or three coloured rectangles; each rectangle is a
    referred object (category = its noun) with two or three expressions ("red man", "the red
    man on the left"...). ``instances.json`` also holds an unreferred annotation per image.
    Deterministic for a seed.
    """
    tmp = Path(tmp)
    image_dir = tmp / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows_by_split: dict[str, list[dict]] = {}
    categories: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    labels: dict[tuple[str, tuple[float, ...]], str] = {}
    image_id, ref_id, sent_id = 100_000, 0, 0
    for split in available_splits(dataset, split_by):
        rows = rows_by_split.setdefault(split, [])
        for _ in range(train_images if split == "train" else images_per_split):
            image_id += 7
            width, height = _SIZES[rng.randrange(len(_SIZES))]
            sizes[str(image_id)] = (width, height)
            img = Image.new("RGB", (width, height), (128, 128, 128))
            for colour in rng.sample(sorted(_COLOURS), rng.choice((2, 3))):
                noun = rng.choice(_NOUNS)
                w, h = rng.randint(12, width // 2), rng.randint(12, height // 2)
                x, y = rng.randint(0, width - w), rng.randint(0, height - h)
                img.paste(_COLOURS[colour], (x, y, x + w, y + h))
                box = [float(x), float(y), float(w), float(h)]
                labels[(str(image_id), tuple(box))] = colour
                side = "left" if x + w / 2 < width / 2 else "right"
                sents = [f"{colour} {noun}", f"the {colour} {noun} on the {side}", f"{noun} {side}"]
                for sent in sents[: rng.choice((2, 3))]:
                    rows.append({"ref_id": ref_id, "img_id": image_id, "sent_id": sent_id, "sent": sent, "bbox": box})
                    categories[str(sent_id)] = noun
                    sent_id += 1
                ref_id += 1
            img.save(image_dir / f"COCO_train2014_{image_id:012d}.jpg", quality=90)
    refer = write_refer(
        tmp / "refer", dataset, split_by, rows_by_split, categories=categories, sizes=sizes, distractors=True
    )
    rng_det = random.Random(seed + 1)
    records = []
    for image_id_s, boxes in refer.boxes.items():
        width, height = refer.sizes[image_id_s]
        gt = coco_to_corners(torch.tensor(boxes, dtype=torch.float32)).tolist()
        rand = []
        for _ in range(extra_proposals):
            x1, x2 = sorted(rng_det.uniform(0, width) for _ in range(2))
            y1, y2 = sorted(rng_det.uniform(0, height) for _ in range(2))
            rand.append([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)])
        names = [labels[(image_id_s, tuple(b))] for b in boxes] + ["background"] * len(rand)
        scores = [round(rng_det.uniform(0.05, 1.0), 3) for _ in names]
        records.append(
            Detections(image_id_s, torch.tensor(gt + rand, dtype=torch.float32), names, torch.tensor(scores))
        )
    detections = tmp / "detections.jsonl"
    write_jsonl(detections, records)
    splits = {split: [str(r["sent_id"]) for r in rows] for split, rows in rows_by_split.items()}
    return TinyRefer(refer, image_dir, detections, splits)
