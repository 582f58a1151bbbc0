"""Inference cost: grounding on cached proposals vs grounding with a detector in the loop.

On the same images, in one run, time per image of

* ``cached``: test-time grounding as this project does it: image backbone + RoIAlign +
  region-phrase scoring on proposals read from the cache (no detector);
* ``torchvision``: the project's torchvision backend (Faster R-CNN ResNet-50 FPN v2,
  ``lightning_wsg.detection.torchvision``) run on the image first (boxes only), then the
  same grounding; random weights cost the same time as trained ones, and the score
  threshold is 0 so it returns up to ``--proposals`` boxes;
* ``mmdet``: the same with the project's MMDetection backend (mmdet's own
  ``faster-rcnn_r50_fpn_1x_coco.py``, random weights), when ``import mmdet`` works.

Each pipeline runs in its own process (spawned one after the other), so the peak resident
memory (``resource.getrusage`` max RSS) is that pipeline's alone. Batch size 1, after
``--warmup`` untimed images.

Usage::

    python benchmarks/inference_cost.py --images 8 --threads 2
    python benchmarks/inference_cost.py --device cuda --images 100 --backbone resnet50
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCE = "a [man] in [a red shirt] is throwing [a frisbee] to [his dog] on [the grass]"


def _make_images(folder: Path, n: int, width: int, height: int) -> list[Path]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        img = Image.fromarray(rng.integers(60, 200, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
            draw.rectangle([x, y, x + int(rng.integers(30, 200)), y + int(rng.integers(30, 200))],
                           fill=tuple(int(v) for v in rng.integers(0, 255, 3)))  # fmt: skip
        path = folder / f"img{k:03d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def _max_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _detector(kind: str, args: argparse.Namespace, device):
    """A proposal function ``path -> boxes`` built from the project's own detector backends."""
    if kind == "torchvision":
        from lightning_wsg.detection.torchvision import TorchvisionBackend

        backend = TorchvisionBackend(
            weights=None, categories=["__background__", *[f"class{i}" for i in range(90)]],
            score_threshold=0.0, max_boxes=args.proposals,
            min_size=args.detector_min_size, max_size=args.detector_max_size,
        )  # fmt: skip
    elif kind == "mmdet":
        from lightning_wsg.detection.mmdet import MMDetectionBackend

        backend = MMDetectionBackend(
            score_threshold=0.0, max_boxes=args.proposals,
            image_scale=(args.detector_max_size, args.detector_min_size),
        )  # fmt: skip
    else:
        raise ValueError(kind)
    backend.load(device)

    def detect(path: str):
        return backend.detect([("image", Path(path))])[0].boxes

    return detect


def _run(kind: str, paths: list[str], args: argparse.Namespace, queue) -> None:
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    from lightning_wsg.detection.grid import box_grid
    from lightning_wsg.grounding_module import GroundingModule
    from lightning_wsg.models import PhraseEncoder, RegionEncoder

    device = torch.device(args.device)
    model = GroundingModule(
        RegionEncoder(args.backbone, pretrained=False, hidden_dim=1024, embed_dim=512),
        PhraseEncoder("all-MiniLM-L6-v2", pretrained=False, hidden_dim=1024, embed_dim=512),
    ).eval().to(device)  # fmt: skip  (no loss: inference only)
    detect = _detector(kind, args, device) if kind != "cached" else None
    rng = np.random.default_rng(1)
    cache = {}  # the "detection cache": boxes per image computed beforehand (not timed)
    for p in paths:
        with Image.open(p) as img:
            w, h = img.size
        grid = box_grid(w, h)
        cache[p] = grid[torch.as_tensor(rng.choice(len(grid), size=min(args.proposals, len(grid)), replace=False))]
    rss_ready = _max_rss_mib()
    times = []
    with torch.inference_mode():
        for k, p in enumerate([paths[0]] * args.warmup + paths):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with Image.open(p) as img:
                pil = img.convert("RGB")
            proposals = detect(p).cpu() if detect is not None else cache[p]
            if len(proposals) == 0:
                proposals = cache[p]
            out = model.ground(pil, SENTENCE, proposals=proposals, top_k=0, image_size=args.image_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= args.warmup:
                times.append(time.perf_counter() - start)
            assert len(out) == 5
    queue.put(
        {
            "pipeline": kind,
            "ms_per_image": 1000 * float(np.mean(times)),
            "ms_std": 1000 * float(np.std(times)),
            "peak_rss_mib": _max_rss_mib(),
            "rss_after_setup_mib": rss_ready,
            "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        }
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="timed images")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--width", type=int, default=500, help="image width (Flickr30K: about 500x375)")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=512, help="grounding network input side")
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--detector-min-size", type=int, default=800)
    parser.add_argument("--detector-max-size", type=int, default=1333)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    kinds = ["cached", "torchvision"]
    try:
        import mmdet  # noqa: F401

        kinds.append("mmdet")
    except ImportError:
        print("mmdet not importable: MMDetection row skipped", file=sys.stderr)
    rows = []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in _make_images(Path(tmp), args.images, args.width, args.height)]
        for kind in kinds:
            queue = ctx.Queue()
            proc = ctx.Process(target=_run, args=(kind, paths, args, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                print(f"{kind}: failed (exit {proc.exitcode})", file=sys.stderr)
                continue
            rows.append(queue.get())
    base = next((r for r in rows if r["pipeline"] == "cached"), None)
    print(
        f"\n{args.images} images {args.width}x{args.height}, backbone {args.backbone} at {args.image_size} px, "
        f"{args.proposals} proposals, detector input {args.detector_min_size}/{args.detector_max_size}, "
        f"device {args.device}, {args.threads} threads, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| pipeline | ms / image | x cached | peak RSS (MiB) |" + (" peak CUDA (MiB) |" if args.device != "cpu" else "")
    )
    print("|---|---:|---:|---:|" + ("---:|" if args.device != "cpu" else ""))
    for r in rows:
        ratio = r["ms_per_image"] / base["ms_per_image"] if base else float("nan")
        r["ratio_to_cached"] = ratio
        line = (
            f"| {r['pipeline']} | {r['ms_per_image']:.0f} ± {r['ms_std']:.0f} | {ratio:.2f} | {r['peak_rss_mib']:.0f} |"
        )
        if args.device != "cpu":
            line += f" {r['peak_cuda_mib']:.0f} |"
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
