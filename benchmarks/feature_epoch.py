"""A training epoch at Flickr30K scale in feature mode, on this CPU: time, data wait, compute.

The real Flickr30K Entities annotations (``--root``: 29,783 training images, 148,915 captions)
with generated region features (``--boxes`` x ``--dim`` float16 per image, random values, COCO
class labels) written once into a native store, the paper's towers (feature tower, GloVe + LSTM:
the packaged 50-d GloVe, as no 300-d file is at hand), the WordNet teacher, batch 32. Times
``--steps`` training steps after ``--warmup`` (the statistics pass over the training features
included in the set-up time), splits each into data wait (the loader) and compute, and
extrapolates to the epoch's steps. Prints a markdown row and writes ``--json``.

Usage::

    python benchmarks/feature_epoch.py --root <unpacked Flickr30K Entities annotations>
    python benchmarks/feature_epoch.py --root R --steps 50 --num-workers 0   # a quick try
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback, Trainer

from lightning_wsg.callbacks import FeatureStatistics
from lightning_wsg.contrastive_distillation import ContrastiveDistillationLoss
from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.data.flickr30k_entities import read_split
from lightning_wsg.detection.base import Detections, DetectionStore
from lightning_wsg.detection.native import write_native
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.lexicon.classes import COCO80
from lightning_wsg.models import FeatureRegionEncoder, LstmPhraseEncoder, Teacher


class GeneratedFeatures(DetectionStore):
    """Boxes, COCO labels, scores and random features per image, the same for a seed and id."""

    def __init__(self, image_ids: list[str], boxes: int, dim: int, seed: int = 0) -> None:
        super().__init__("generated", {}, None)
        self.ids, self.boxes, self.feature_dim, self.seed = list(image_ids), boxes, dim, seed

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, image_id: str) -> Detections:
        rng = np.random.default_rng([self.seed, int(image_id), 0])
        xy = rng.uniform(0, 400, (self.boxes, 2)).astype(np.float32)
        box = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(10, 100, (self.boxes, 2)).astype(np.float32)], 1))
        labels = [COCO80[i] for i in rng.integers(0, len(COCO80), self.boxes)]
        scores = torch.from_numpy(rng.uniform(0.3, 1.0, self.boxes).astype(np.float32))
        return Detections(image_id, box, labels, scores, image_size=(500, 500))

    def features(self, image_id: str) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(image_id), 1])
        return torch.from_numpy(rng.standard_normal((self.boxes, self.feature_dim), dtype=np.float32))


class StepTimer(Callback):
    """Per training step: the wait for the batch (previous step's end to this start) and compute."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.computes: list[float] = []
        self._end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        if self._end is not None:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.computes.append(self._end - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="unpacked Flickr30K Entities annotations")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the native store goes (kept)")
    parser.add_argument("--boxes", type=int, default=30, help="boxes per image (the paper's 30)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="feature_epoch-"))
    store_dir = work / f"flickr-generated-{args.boxes}x{args.dim}.native"
    ids = sorted({i for split in ("train", "val", "test") for i in read_split(args.root, split)})

    t0 = time.perf_counter()
    if not (store_dir / "features.json").is_file():
        write_native(GeneratedFeatures(ids, args.boxes, args.dim), store_dir, {"source": {"generated": 0}})
    store_s = time.perf_counter() - t0

    dm = Flickr30kEntitiesDataModule(
        str(args.root), None, str(store_dir), batch_size=32, num_workers=args.num_workers, max_proposals=args.boxes,
        read_features=True, feature_dim=args.dim, require_labels=True,
    )
    model = GroundingModule(
        FeatureRegionEncoder(feature_dim=args.dim),
        LstmPhraseEncoder("glove-6b-50d", hidden_size=300),
        ContrastiveDistillationLoss(Teacher("wordnet"), kd_weight_initial=1.0, kd_weight_every=500, kd_weight_unit="steps"),
    )
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[FeatureStatistics(), timer],
    )  # fmt: skip
    t1 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t1
    waits, computes = timer.waits[args.warmup :], timer.computes[args.warmup :]
    step = statistics.mean(w + c for w, c in zip(waits, computes[1:]))
    wait, compute = statistics.mean(waits), statistics.mean(computes)
    pairs = len(dm.datasets["train"])
    steps_per_epoch = math.floor(pairs / 32)
    result = {
        "train_pairs": pairs,
        "train_images": len({e.image_id for e in dm.datasets["train"].entries}),
        "boxes": args.boxes,
        "dim": args.dim,
        "num_workers": args.num_workers,
        "torch_threads": args.threads,
        "timed_steps": len(computes),
        "step_ms": round(1000 * step, 1),
        "data_wait_ms": round(1000 * wait, 1),
        "compute_ms": round(1000 * compute, 1),
        "data_wait_share": round(wait / step, 4),
        "steps_per_epoch": steps_per_epoch,
        "epoch_minutes_extrapolated": round(steps_per_epoch * step / 60, 1),
        "store_write_s": round(store_s, 1),
        "fit_s_including_setup": round(fit_s, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print("| pairs | step ms (data wait + compute) | data wait share | epoch (extrapolated) |\n|---|---|---|---|")
    print(
        f"| {pairs:,} | {result['step_ms']} ({result['data_wait_ms']} + {result['compute_ms']}) | "
        f"{100 * result['data_wait_share']:.1f}% | {result['epoch_minutes_extrapolated']} min |"
    )
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
