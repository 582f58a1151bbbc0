"""A detection-cache run that a test can kill at an exact moment (and its fake pieces).

Run as a script, it fills a cache through the real :class:`DetectionCache` callback
(``setup`` with a stand-in trainer and datamodule: no Lightning fit, so the child starts
fast) with a backend that appends every image it detects to a log file, one line each
and flushed, so the calls survive a SIGKILL. ``--pause`` stops the child at one moment of
the ``--pause-shard``-th shard write and waits there for the parent's SIGKILL:

* ``mid-write``: half of the shard's bytes are in the file being written;
* ``before-rename``: the whole shard is in its temporary file, not yet renamed.

The hooks wrap ``torch.save`` and ``os.replace`` in the child only: the library has no
test hooks. Usage (what ``tests/detection/test_cache_kill.py`` runs)::

    python tests/helpers/cache_kill.py CACHE IMAGES LOG --pause mid-write --ready READY_FILE
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from lightning_wsg.detection import DetectionCache, Detections, DetectorBackend
from lightning_wsg.detection.cache import file_digest

LABELS = ["man", "dog", "car"]
SHARD_SIZE = 4


class LoggingBackend(DetectorBackend):
    """Reads each image and returns one whole-image box; logs every detected id to ``log``."""

    name = "logging"

    def __init__(self, log: Path) -> None:
        self.log = Path(log)
        self.batch_size = 1

    def settings(self, digest=file_digest) -> dict:
        return {"backend": self.name, "version": 1}

    def load(self, device=None) -> None:
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    @property
    def class_names(self) -> list[str]:
        return LABELS

    def detect(self, images):
        out = []
        for image_id, path in images:
            with Image.open(path) as img:
                w, h = img.size
            with self.log.open("a") as fh:  # one flushed line per call: the count survives a kill
                fh.write(f"{image_id}\n")
                fh.flush()
                os.fsync(fh.fileno())
            k = int(image_id[3:])
            out.append(Detections(image_id, torch.tensor([[0.0, 0.0, w, h]]), [LABELS[k % 3]], torch.tensor([0.5])))
        return out


class FakeDataModule:
    """What :class:`DetectionCache` asks of a datamodule: one split over a folder of images."""

    def __init__(self, image_dir: Path) -> None:
        self.image_dir = Path(image_dir)
        self.detections = None
        self.supplied = None

    def splits_for(self, stage):
        return ["train"]

    def image_paths(self, split):
        return {p.stem: p for p in sorted(self.image_dir.glob("*.png"))}

    def use_detections(self, detections, splits=None):
        self.supplied = detections


def fake_trainer(datamodule: FakeDataModule) -> SimpleNamespace:
    """One process: ``broadcast`` and ``barrier`` are no-ops, as in Lightning's single-device strategy."""
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj, barrier=lambda name=None: None, root_device="cpu")
    return SimpleNamespace(datamodule=datamodule, strategy=strategy, global_rank=0, world_size=1)


def make_images(folder: Path, n: int = 10) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", (8 + k, 6 + k), (k * 20, 0, 0)).save(folder / f"img{k:02d}.png")
    return {p.stem: p for p in sorted(folder.glob("*.png"))}


def run(cache_dir: Path, image_dir: Path, log: Path) -> tuple[DetectionCache, FakeDataModule]:
    """One real ``DetectionCache.setup`` (what every stage of a fit runs)."""
    dm = FakeDataModule(image_dir)
    callback = DetectionCache(LoggingBackend(log), cache_dir, shard_size=SHARD_SIZE, progress_bar=False)
    callback.setup(fake_trainer(dm), None, "fit")
    return callback, dm


def _pause(ready: Path) -> None:
    ready.write_text(str(os.getpid()))
    while True:  # the parent kills us here
        time.sleep(1)


def _install_pause(moment: str, shard: int, ready: Path) -> None:
    writes = {"n": 0}
    if moment == "mid-write":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not isinstance(obj, dict) or "offsets" not in obj:  # not a shard
                return real_save(obj, f, *args, **kwargs)
            writes["n"] += 1
            if writes["n"] < shard:
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _pause(ready)

        torch.save = save
    elif moment == "before-rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(".pt"):
                writes["n"] += 1
                if writes["n"] >= shard:
                    _pause(ready)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    else:
        raise SystemExit(f"unknown pause {moment!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--pause", choices=["mid-write", "before-rename"])
    parser.add_argument("--pause-shard", type=int, default=2)
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args(argv)
    if args.pause:
        _install_pause(args.pause, args.pause_shard, args.ready)
    run(args.cache_dir, args.image_dir, args.log)
    print("FINISHED WITHOUT PAUSING", file=sys.stderr)


if __name__ == "__main__":
    main()
