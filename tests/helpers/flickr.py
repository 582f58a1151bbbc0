"""Flickr30K Entities on disk for tests: the real annotations, placeholder images,
ground-truth proposals, and a tiny generated dataset in the real layout.

Example (in a test)::

    tiny = make_tiny_flickr(tmp_path)
    dm = Flickr30kEntitiesDataModule(tiny.root, tiny.image_dir, tiny.detections, num_workers=0)
"""

from __future__ import annotations

import os
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from lightning_wsg.boxes import union_box
from lightning_wsg.data.flickr30k_entities import parse_annotation
from lightning_wsg.detection.formats import Detections, write_jsonl

__all__ = [
    "SHARED_DATA",
    "FLICKR_FILES",
    "SPLIT_FILES",
    "TinyFlickr",
    "TEST_CACHE",
    "extract_flickr_root",
    "cached_flickr_root",
    "annotation_sizes",
    "make_placeholder_images",
    "write_gt_proposals",
    "make_tiny_flickr",
]

REPO = Path(__file__).resolve().parents[2]
#: the shared, read-only data folder (``$LIGHTNING_WSG_SHARED_DATA`` overrides it)
SHARED_DATA = Path(os.environ.get("LIGHTNING_WSG_SHARED_DATA", REPO.parent / "shared" / "data"))
FLICKR_FILES = SHARED_DATA / "flickr30k_entities"
#: where :func:`cached_flickr_root` keeps the unpacked release (``$LIGHTNING_WSG_TEST_CACHE`` overrides it)
TEST_CACHE = Path(os.environ.get("LIGHTNING_WSG_TEST_CACHE", Path(tempfile.gettempdir()) / "lightning_wsg-test-cache"))
SPLIT_FILES = ("train.txt", "val.txt", "test.txt", "UNRELATED_CAPTIONS")


def extract_flickr_root(dest: str | Path, source: str | Path = FLICKR_FILES) -> Path:
    """Unpack the real ``annotations.tar.gz`` into ``dest`` and copy the split files there.

    Returns ``dest``: a root in the real layout (``Annotations/``, ``Sentences/``,
    ``train.txt``, ``val.txt``, ``test.txt``, ``UNRELATED_CAPTIONS``).
    """
    dest, source = Path(dest), Path(source)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(source / "annotations.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    for name in SPLIT_FILES:
        shutil.copyfile(source / name, dest / name)
    return dest


def cached_flickr_root(cache: str | Path = TEST_CACHE, source: str | Path = FLICKR_FILES) -> Path:
    """A real-format root unpacked once per machine under ``cache`` and reused afterwards.

    Unpacking (and later deleting) 63,000 small files costs minutes on a busy disk, so
    the root is kept between test sessions, keyed by the archive's size and mtime. It is
    built in a temporary sibling and renamed into place, so that a concurrent or
    interrupted session never sees a partial tree. Treat it as read-only.
    """
    cache, source = Path(cache), Path(source)
    stat = (source / "annotations.tar.gz").stat()
    root = cache / f"flickr30k_entities-{stat.st_size}-{stat.st_mtime_ns}"
    if (root / ".complete").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
    extract_flickr_root(partial, source)
    (partial / ".complete").touch()
    try:
        partial.rename(root)
    except OSError:  # another session finished first
        shutil.rmtree(partial, ignore_errors=True)
    return root


def annotation_sizes(root: str | Path, image_ids: list[str]) -> dict[str, tuple[int, int]]:
    """``image_id -> (width, height)`` as the annotations give them."""
    sizes = {}
    for image_id in image_ids:
        ann = parse_annotation(Path(root) / "Annotations" / f"{image_id}.xml")
        sizes[image_id] = (ann.width, ann.height)
    return sizes


def make_placeholder_images(
    image_dir: str | Path, sizes: dict[str, tuple[int, int]], noise: bool = False, seed: int = 0
) -> Path:
    """Write ``<image_id>.jpg`` of the exact ``(width, height)`` for each id.

    Flat colours by default (fast); ``noise=True`` writes random noise.
    """
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for image_id, (width, height) in sizes.items():
        if noise:
            pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy()
            img = Image.fromarray(pixels)
        else:
            img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
        img.save(image_dir / f"{image_id}.jpg", quality=75)
    return image_dir


def _random_boxes(rng: random.Random, width: int, height: int, n: int) -> list[list[float]]:
    boxes = []
    for _ in range(n):
        x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
        boxes.append([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)])
    return boxes


def write_gt_proposals(
    path: str | Path,
    root: str | Path,
    image_ids: list[str],
    extra: int = 10,
    seed: int = 0,
    labels: tuple[str, ...] = ("man", "woman", "shirt", "dog", "street", "tree"),
) -> Path:
    """Write a detections JSONL whose proposals hold every ground-truth box of each image.

    Per image the proposals are: every annotated box, the union box of every chain
    (so that the union-box upper bound is exactly 1.0), then ``extra`` random boxes.
    Labels are drawn from ``labels``; ground-truth boxes score in ``[0.5, 1)`` and random
    ones in ``[0.01, 0.5)``, so that ``max_proposals`` keeps the ground truth first.
    """
    rng = random.Random(seed)
    records = []
    for image_id in image_ids:
        ann = parse_annotation(Path(root) / "Annotations" / f"{image_id}.xml")
        gt: list[list[float]] = []
        for chain_boxes in ann.boxes.values():
            for box in [*chain_boxes.tolist(), union_box(chain_boxes).tolist()]:
                if box not in gt:
                    gt.append(box)
        boxes = gt + _random_boxes(rng, ann.width, ann.height, extra)
        scores = [rng.uniform(0.5, 1.0) for _ in gt] + [rng.uniform(0.01, 0.5) for _ in range(extra)]
        records.append(
            Detections(
                image_id,
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                [rng.choice(labels) for _ in boxes],
                torch.tensor(scores, dtype=torch.float32),
            )
        )
    write_jsonl(path, records)
    return Path(path)


# --- a tiny generated dataset --------------------------------------------------------

_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
_NOUNS = {"people": "man", "animals": "dog", "vehicles": "car", "clothing": "shirt", "other": "box"}
_SIZES = ((96, 72), (80, 96), (64, 64), (112, 80))


@dataclass
class TinyFlickr:
    """What :func:`make_tiny_flickr` wrote.

    Attributes:
        root: the release folder (``Annotations/``, ``Sentences/``, split files,
            ``UNRELATED_CAPTIONS``).
        image_dir: the ``<image_id>.jpg`` folder.
        detections: the proposals JSONL (every image; labels and scores).
        splits: split name -> image ids.
        sizes: image id -> ``(width, height)``.
        unrelated: the sentence ids (``"<image_id>#<index>"``) listed as unrelated.
    """

    root: Path
    image_dir: Path
    detections: Path
    splits: dict[str, list[str]]
    sizes: dict[str, tuple[int, int]]
    unrelated: set[str]


def _xml(image_id: str, size: tuple[int, int], objects: list[tuple[list[int], list[int] | None, str]]) -> str:
    parts = [
        "<annotation>",
        f"\t<filename>{image_id}.jpg</filename>",
        f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n\t\t<depth>3</depth>\n\t</size>",
    ]
    for names, box, flags in objects:
        parts.append("\t<object>")
        parts.extend(f"\t\t<name>{n}</name>" for n in names)
        if box is not None:
            coords = "".join(f"\n\t\t\t<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
            parts.append(f"\t\t<bndbox>{coords}\n\t\t</bndbox>")
        else:
            parts.append(flags)
        parts.append("\t</object>")
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_tiny_flickr(
    tmp: str | Path,
    n_images: int = 24,
    seed: int = 0,
    split_sizes: tuple[int, int] | None = None,
    extra_proposals: int = 6,
) -> TinyFlickr:
    """Generate a small Flickr30K Entities dataset in the real on-disk layout.

    Each image is a grey canvas with two to three coloured rectangles; each rectangle
    is one chain (``"a red man"``), one chain owns two rectangles, and one rectangle is
    also named by a second chain (several names on one object). The captions mark the
    phrases with the real markup, including a scene chain (``<scene>1``, no box), a
    notvisual phrase (chain 0) and a phrase with two types. The detections hold every
    annotated box, every chain's union box and ``extra_proposals`` random boxes, labelled
    with the colour name (random boxes: ``"background"``). Deterministic for a seed.

    Args:
        tmp: output folder (created).
        n_images: number of images (at least 3).
        seed: random seed.
        split_sizes: ``(val, test)`` image counts; default one sixth each.
        extra_proposals: random proposals per image.
    """
    if n_images < 3:
        raise ValueError("make_tiny_flickr needs at least 3 images")
    tmp = Path(tmp)
    root, image_dir = tmp / "flickr30k_entities", tmp / "images"
    for folder in (root / "Annotations", root / "Sentences", image_dir):
        folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ids = [str(7_000_000 + 37 * i) for i in range(n_images)]
    sizes: dict[str, tuple[int, int]] = {}
    records = []
    for k, image_id in enumerate(ids):
        width, height = _SIZES[rng.randrange(len(_SIZES))]
        sizes[image_id] = (width, height)
        img = Image.new("RGB", (width, height), (128, 128, 128))
        base = 100 * (k + 1)  # chain ids unique over the dataset, as in the release
        colours = rng.sample(sorted(_COLOURS), rng.choice((2, 3)))
        chains = []  # (chain id, colour, type, [inclusive boxes])
        objects = []
        for c, colour in enumerate(colours):
            ptype = rng.choice(sorted(_NOUNS))
            boxes = []
            for _ in range(2 if c == 0 else 1):  # the first chain owns two boxes
                w, h = rng.randint(12, width // 2), rng.randint(12, height // 2)
                x, y = rng.randint(1, width - w), rng.randint(1, height - h)
                boxes.append([x, y, x + w - 1, y + h - 1])
                img.paste(_COLOURS[colour], (x - 1, y - 1, x - 1 + w, y - 1 + h))
            chains.append((str(base + c + 1), colour, ptype, boxes))
        alias = str(base + 9)  # a second chain naming the last rectangle
        scene = str(base + 10)
        for c, (chain_id, _, _, boxes) in enumerate(chains):
            for box in boxes:
                names = [chain_id, alias] if c == len(chains) - 1 else [chain_id]
                objects.append((names, box, ""))
        objects.append(([scene], None, "\t\t<scene>1</scene>\n\t\t<nobndbox>0</nobndbox>"))
        img.save(image_dir / f"{image_id}.jpg", quality=90)
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, (width, height), objects))

        sentences = []
        for s in range(5):
            first, *rest = rng.sample(chains, len(chains))
            cid, colour, ptype, _ = first
            line = f"[/EN#{cid}/{ptype} a {colour} {_NOUNS[ptype]}] is next to "
            line += " and ".join(f"[/EN#{c}/{t} the {col} {_NOUNS[t]}]" for c, col, t, _ in rest)
            if s % 2 == 0:
                line += f" in [/EN#{scene}/scene the grey room]"
            if s == 1:
                line += f" near [/EN#0/notvisual it] with [/EN#{alias}/other/people the other one]"
            sentences.append(line + " .")
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(sentences) + "\n")

        gt = []
        for _, colour, _, boxes in chains:
            corners = [[x1 - 1.0, y1 - 1.0, float(x2), float(y2)] for x1, y1, x2, y2 in boxes]
            gt.extend((b, colour) for b in corners)
            if len(corners) > 1:
                gt.append((union_box(torch.tensor(corners)).tolist(), colour))
        rand = _random_boxes(rng, width, height, extra_proposals)
        boxes = [b for b, _ in gt] + rand
        records.append(
            Detections(
                image_id,
                torch.tensor(boxes, dtype=torch.float32),
                [lab for _, lab in gt] + ["background"] * len(rand),
                torch.tensor([round(rng.uniform(0.05, 1.0), 3) for _ in boxes], dtype=torch.float32),
            )
        )

    n_val, n_test = split_sizes if split_sizes is not None else (max(1, n_images // 6),) * 2
    n_train = n_images - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split_sizes {split_sizes} leave no training image out of {n_images}")
    splits = {"train": ids[:n_train], "val": ids[n_train : n_train + n_val], "test": ids[n_train + n_val :]}
    for split, split_ids in splits.items():
        (root / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
    unrelated = {f"{splits['train'][0]}#4"}
    lines = ["# format: <imageID> <sentence number>"]
    lines += [f"{image_id} {int(index) + 1}" for image_id, index in (u.split("#") for u in sorted(unrelated))]
    (root / "UNRELATED_CAPTIONS").write_text("\n".join(lines) + "\n")
    detections = tmp / "detections.jsonl"
    write_jsonl(detections, records)
    return TinyFlickr(root, image_dir, detections, splits, sizes, unrelated)
