"""``python -m lightning_wsg.features``: make and convert per-box region features.

Usage::

    # a source in the field's formats -> the native store (fast random reads)
    python -m lightning_wsg.features convert data/flickr30k_vg.tsv data/flickr30k_vg.native \\
        --vocabulary data/vg_objects_vocab.txt
    python -m lightning_wsg.features convert data/flickr30k_h5 data/flickr30k_h5.native
    # features of your own proposals from a frozen ImageNet backbone (RoIAlign, mean over the
    # grid), written as a bottom-up-attention TSV (with a vocabulary of its labels) or HDF5
    python -m lightning_wsg.features extract --images outputs/demo/world/images \\
        --detections outputs/demo/world/detections.jsonl --out outputs/demo/world/features.tsv

The conversion shows a progress bar, resumes where a killed run stopped, and checks every
shard against the source when it reads it back (:func:`lightning_wsg.detection.native.convert`).
Then ``--data.detections data/flickr30k_vg.native``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from .detection.base import Detections, DetectionStore
from .detection.native import convert
from .detection.sources import open_detections
from .detection.tsv import write_tsv

__all__ = ["extract_features", "main"]


def extract_features(
    images: Mapping[str, Path],
    store: DetectionStore,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | None = "efficientnet-lite0-imagenet",
    out_index: int | list[int] = -2,
    roi_size: int = 4,
    image_size: int = 256,
    batch_size: int = 16,
) -> Iterator[tuple[Detections, np.ndarray]]:
    """Per image of ``images`` that has boxes in ``store``: its detections (with the image size)
    and ``[N, C]`` float32 features, RoIAlign of a frozen backbone averaged over the grid.

    ``weights``: a local state-dict file or a packaged name (the default: ImageNet
    EfficientNet-Lite0, offline); ``None`` downloads timm's pretrained weights.
    """
    from .boxes import scale_boxes
    from .data.images import image_input, read_pixels
    from .models import RegionEncoder

    encoder = RegionEncoder(
        backbone, pretrained=weights is None, pretrained_path=weights, out_index=out_index, roi_size=roi_size,
        hidden_dim=1, embed_dim=1, freeze_backbone=True,
    ).eval()  # fmt: skip
    ids = [i for i in sorted(images) if i in store and len(store[i])]
    for start in range(0, len(ids), batch_size):
        chunk, tensors, rois, dets = ids[start : start + batch_size], [], [], []
        for image_id in chunk:
            pixels = read_pixels(images[image_id])  # the network input the dataset gives the image tower
            height, width = pixels.shape[-2:]
            tensors.append(image_input(pixels, image_size))
            det = store[image_id]
            det.image_size = (int(width), int(height))
            rois.append(scale_boxes(det.boxes.float(), image_size / width, image_size / height))
            dets.append(det)
        R = max(len(r) for r in rois)
        roi_boxes = torch.zeros(len(rois), R, 4)
        mask = torch.zeros(len(rois), R, dtype=torch.bool)
        for n, r in enumerate(rois):
            roi_boxes[n, : len(r)], mask[n, : len(r)] = r, True
        with torch.no_grad():
            pooled = encoder.pooled_features(torch.stack(tensors), roi_boxes, mask).numpy()
        offset = 0
        for det in dets:
            yield det, pooled[offset : offset + len(det)]
            offset += len(det)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_wsg.features", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="a TSV / HDF5 source with features -> a native store folder")
    conv.add_argument("source", type=Path, help="bottom-up-attention TSV, .h5 / .hdf5 file, or a folder of them")
    conv.add_argument("folder", type=Path, help="the native store to write (resumed when it exists)")
    conv.add_argument("--vocabulary", type=Path, default=None, help="names the TSV's objects_id (vg_objects_vocab.txt)")
    conv.add_argument("--shard-size", type=int, default=1024, help="images per shard")
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    ext = sub.add_parser("extract", help="features of a detections source's boxes from a frozen backbone")
    ext.add_argument("--images", type=Path, required=True, help="folder of <image_id>.<suffix> images")
    ext.add_argument("--suffix", default=".jpg", help="image file suffix")
    ext.add_argument("--detections", type=Path, required=True, help="the boxes (any detections source)")
    ext.add_argument("--out", type=Path, required=True, help="a .tsv (labels kept, vocabulary beside) or .hdf5 file")
    ext.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    ext.add_argument("--weights", default="efficientnet-lite0-imagenet", help="state-dict file or packaged name")
    ext.add_argument("--out-index", type=int, default=-2, help="the backbone stage pooled")
    ext.add_argument("--image-size", type=int, default=256, help="images are resized to this square")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.command == "extract":
        _extract(args)
    elif args.no_progress:
        convert(args.source, args.folder, args.vocabulary, args.shard_size)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("converting shards"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task("convert", total=None)
            convert(
                args.source, args.folder, args.vocabulary, args.shard_size,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
    print(f"{args.out if args.command == 'extract' else args.folder}: done in {time.perf_counter() - start:.1f} s")


def _extract(args: argparse.Namespace) -> None:
    store = open_detections(args.detections)
    images = {p.name[: -len(args.suffix)]: p for p in args.images.glob(f"*{args.suffix}")}
    records = extract_features(images, store, args.backbone, args.weights, args.out_index, image_size=args.image_size)
    if args.out.suffix.lower() == ".tsv":
        names = sorted({label for i in store for label in (store[i].labels or [])})
        if names and all(store[i].labels is not None for i in store):
            vocabulary = args.out.with_name(f"{args.out.stem}_vocab.txt")
            vocabulary.write_text("\n".join(names) + "\n")
            write_tsv(args.out, records, names)
            print(f"labels named by {vocabulary} (--data.vocabulary)")
        else:
            write_tsv(args.out, records)
    elif args.out.suffix.lower() in (".h5", ".hdf5"):
        from .detection.hdf5 import write_hdf5

        write_hdf5(args.out, list(records))
    else:
        raise SystemExit(f"--out {args.out}: expected a .tsv, .h5 or .hdf5 file")


if __name__ == "__main__":
    main()
