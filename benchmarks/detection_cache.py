"""Detection-cache throughput: how many images' detections per second it writes and reads.

Writes synthetic detections (``--boxes`` per image, labels over a ``--classes`` vocabulary,
optionally ``--probs`` class-probability vectors) for ``--images`` images in shards of
``--shard-size``, then opens the cache as a fresh reader (:func:`open_detections`) and
reads every image the way a dataset does (``store[image_id]``, touching boxes, scores and
labels and, with ``--probs``, the float32 probabilities), in file order and in random
order. The target is >= 20,000 images/s read without class probabilities; with 1,600-way
probabilities each image carries 100 x 1,600 values (320 KB as float16 on disk) and the
read is bound by that volume.

Usage::

    .venv/bin/python benchmarks/detection_cache.py                   # 30,000 images x 100 boxes
    .venv/bin/python benchmarks/detection_cache.py --images 2000 --probs --threads 1  # 1,600-way probs
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lightning_wsg.detection import Detections, ShardedCache, open_detections


def synthetic(n_images: int, n_boxes: int, classes: list[str], probs: bool, seed: int = 0) -> list[Detections]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n_images):
        xy = torch.rand(n_boxes, 2, generator=gen) * 400
        boxes = torch.cat([xy, xy + 1 + torch.rand(n_boxes, 2, generator=gen) * 200], 1)
        labels = torch.randint(len(classes), (n_boxes,), generator=gen).tolist()
        out.append(
            Detections(
                str(1_000_000_000 + k),
                boxes,
                [classes[i] for i in labels],
                torch.rand(n_boxes, generator=gen),
                torch.softmax(torch.randn(n_boxes, len(classes), generator=gen), 1) if probs else None,
            )
        )
    return out


def read_all(store, ids: list[str]) -> int:
    """Read every image as a dataset does: its boxes, scores and labels; returns the box count."""
    boxes = 0
    for image_id in ids:
        det = store[image_id]
        assert len(det.labels) == det.scores.shape[0] == det.boxes.shape[0]
        boxes += det.boxes.shape[0]
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--classes", type=int, default=1600)
    parser.add_argument("--probs", action="store_true", help="store a class-probability vector per box")
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=None, help="cache root (default: a temporary folder)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (DataLoader workers use 1; default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    classes = [f"class{i}" for i in range(args.classes)]
    root = args.dir or Path(tempfile.mkdtemp(prefix="wsg_cache_bench_"))
    try:
        t0 = time.perf_counter()
        dets = synthetic(args.images, args.boxes, classes, args.probs)
        gen_s = time.perf_counter() - t0
        cache = ShardedCache(root, {"backend": "benchmark", "n": args.images, "probs": args.probs}, args.shard_size)
        cache.ensure_manifest()

        t0 = time.perf_counter()
        for i in range(0, len(dets), args.shard_size):
            cache.write_shard(dets[i : i + args.shard_size], classes)
        write_s = time.perf_counter() - t0
        cache.update_manifest(classes)
        size = sum(p.stat().st_size for p in cache.shard_dir.glob("*.pt"))
        del dets

        t0 = time.perf_counter()
        store = open_detections(cache.path)
        open_s = time.perf_counter() - t0
        ids = list(store)
        t0 = time.perf_counter()
        boxes = read_all(store, ids)
        seq_s = time.perf_counter() - t0

        shuffled = ids[:]
        random.Random(0).shuffle(shuffled)
        t0 = time.perf_counter()
        fresh = open_detections(cache.path)
        read_all(fresh, shuffled)
        rnd_s = time.perf_counter() - t0

        n = args.images
        print(
            f"detection cache benchmark: {n} images x {args.boxes} boxes, {args.classes} classes, "
            f"class_probs={'yes' if args.probs else 'no'}, shards of {args.shard_size} "
            f"({(n + args.shard_size - 1) // args.shard_size} files, {size / 2**20:.1f} MiB) in {cache.path}"
        )
        print(f"  (synthesising the detections took {gen_s:.1f} s, not counted)")
        print(f"  write: {n / write_s:10,.0f} images/s  ({write_s:.2f} s)")
        print(f"  open:  {open_s * 1000:10.1f} ms for the index of {len(store)} images")
        print(
            f"  read:  {n / (open_s + seq_s):10,.0f} images/s  (open + every image in file order, {open_s + seq_s:.2f} s)"
        )
        print(f"  read:  {n / rnd_s:10,.0f} images/s  (open + every image in random order, {rnd_s:.2f} s)")
        assert boxes == n * args.boxes
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
