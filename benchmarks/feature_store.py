"""Region-feature sources: converter throughput and random-order reads of the native store.

Generates ``--images`` images of ``--boxes`` boxes with ``--dim``-d float32 features (random
values) as a bottom-up-attention TSV and as a BAN / MAF HDF5 file, converts each into the native
store (``lightning_wsg.detection.native.convert``, with its read-back check) and times it, then
reads whole images' features from each source in a random order: once to warm the page cache,
then timed. Prints a markdown table and writes ``--json``.

Usage::

    python benchmarks/feature_store.py                       # 2,000 images x 100 boxes x 2048
    python benchmarks/feature_store.py --images 200 --dim 256  # a quick try
"""

from __future__ import annotations

import argparse
import base64
import json
import pickle
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lightning_wsg.detection.native import convert
from lightning_wsg.detection.sources import open_detections


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 400, (n, 2)).astype(np.float32)
    wh = rng.uniform(10, 100, (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], axis=1)


def write_sources(folder: Path, images: int, boxes: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """The same generated features as a TSV and as an HDF5 file (with its index)."""
    import h5py

    rng = np.random.default_rng(seed)
    tsv, h5 = folder / "features.tsv", folder / "features.hdf5"
    with tsv.open("w") as out, h5py.File(h5, "w") as f:
        feats = f.create_dataset("image_features", (images * boxes, dim), dtype="float32", chunks=(boxes, dim))
        bb = f.create_dataset("image_bb", (images * boxes, 4), dtype="float32")
        f.create_dataset("pos_boxes", data=np.array([[i * boxes, (i + 1) * boxes] for i in range(images)]))
        for i in range(images):
            x = rng.standard_normal((boxes, dim), dtype=np.float32)
            b = _boxes(rng, boxes)
            feats[i * boxes : (i + 1) * boxes] = x
            bb[i * boxes : (i + 1) * boxes] = b
            fields = [
                str(i),
                "500",
                "500",
                str(boxes),
                base64.b64encode(b.tobytes()).decode(),
                base64.b64encode(x.tobytes()).decode(),
            ]
            out.write("\t".join(fields) + "\n")
    with (folder / "features_imgid2idx.pkl").open("wb") as fh:
        pickle.dump({i: i for i in range(images)}, fh)
    return tsv, h5


def random_reads(store, order: list[str]) -> float:
    """Images per second reading each image's whole feature block in ``order``."""
    for image_id in order:  # warm the page cache (and each reader's open files)
        store.features(image_id)
    start = time.perf_counter()
    total = 0.0
    for image_id in order:
        total += float(store.features(image_id)[0, 0])
    return len(order) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as in DataLoader workers)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the files go (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="feature_store-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        tsv, h5 = write_sources(work, args.images, args.boxes, args.dim)
        print(f"generated {args.images} images in {time.perf_counter() - t0:.1f} s under {work}")
        rows = {}
        for name, source in (("TSV", tsv), ("HDF5", h5)):
            target = work / f"{name.lower()}.native"
            shutil.rmtree(target, ignore_errors=True)
            start = time.perf_counter()
            convert(source, target)
            rows[name] = {"convert_images_per_s": args.images / (time.perf_counter() - start)}
        order = [str(i) for i in range(args.images)]
        random.Random(0).shuffle(order)
        for name, source in (("TSV", tsv), ("HDF5", h5), ("native", work / "tsv.native")):
            store = open_detections(source)
            rows.setdefault(name, {})["random_read_images_per_s"] = random_reads(store, order)
        result = {
            "images": args.images,
            "boxes": args.boxes,
            "dim": args.dim,
            "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
            "sizes_mb": {
                p.name: round(sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*"))) / 2**20)
                for p in (tsv, h5, work / "tsv.native")
            },
            "rows": {k: {m: round(v, 1) for m, v in r.items()} for k, r in rows.items()},
        }
        print("| source | convert to native, images/s | random-order reads, images/s |\n|---|---:|---:|")
        for name, r in result["rows"].items():
            conv = f"{r['convert_images_per_s']:,.0f}" if "convert_images_per_s" in r else "-"
            print(f"| {name} | {conv} | {r['random_read_images_per_s']:,.0f} |")
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
