"""Training throughput: images/s, step time split into data wait and compute, peak memory,
and whether the data pipeline keeps up with the training step.

Builds the model, datamodule and trainer through the ``lightning`` CLI (any configs and
overrides after ``--``; by default the built-in synthetic world of ``cli_configs/demo.yaml``,
kept small), trains ``--warmup + --steps`` steps with a timing callback, then iterates the
training loader alone for ``--loader-batches`` batches:

* data wait: from the end of one training step to the start of the next (fetching the
  batch from the loader, moving it to the device, Lightning's hooks);
* compute: the training step itself (forward, backward, optimizer step; the device is
  synchronised at both ends, so the split is exact on a GPU);
* loader throughput: images/s the loader delivers on its own, against the images/s the
  training step consumes (``compute`` only): a ratio below 1 means the pipeline starves
  training (more ``data.num_workers``, a smaller ``data.image_size``, or the detection cache);
* peak memory: the device's peak allocated memory on a GPU, the process's peak resident
  set on the CPU (loader worker processes not included).

Usage::

    .venv/bin/python benchmarks/training_throughput.py                         # CPU, demo world
    .venv/bin/python benchmarks/training_throughput.py --json out.json -- --data.num_workers 2
    .venv/bin/python benchmarks/training_throughput.py -- --config cli_configs/flickr.yaml \\
        --config cli_configs/model/resnet_bert.yaml --config cli_configs/model/paper.yaml \\
        --config cli_configs/model/gpu.yaml --config cli_configs/trainer/ddp.yaml --trainer.devices 1  # one GPU, bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from lightning_wsg.cli import main as cli_main  # noqa: E402


class StepTimer(Callback):
    """Wall-clock data wait and compute of every training step (device synchronised)."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.computes: list[float] = []
        self.batch_sizes: list[int] = []
        self._end: float | None = None
        self._start = 0.0

    @staticmethod
    def _sync(pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the peak is counted from here: CUDA is set up only now (resetting it before
        # trainer.fit fails with "Invalid device argument")
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()
        if self._end is not None:
            self.waits.append(self._start - self._end)
        self.batch_sizes.append(len(batch))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self._end = time.perf_counter()
        self.computes.append(self._end - self._start)


def default_args(world: Path) -> list[str]:
    """The demo world, kept small: 120 training images (600 pairs), a CPU-sized model."""
    return [
        "--config", str(REPO / "cli_configs" / "demo.yaml"),
        f"--data.init_args.root={world}",
        "--data.init_args.num_train=120", "--data.init_args.num_val=10", "--data.init_args.num_test=10",
        "--data.init_args.batch_size=16", "--data.init_args.num_workers=0",
    ]  # fmt: skip


def measure_loader(loader: Any, batches: int) -> tuple[float, int]:
    """Images/s the loader delivers alone (the first batch, worker start-up, not counted)."""
    it = iter(loader)
    next(it)
    images, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            images += len(next(it))
        except StopIteration:
            break
    return images / max(time.perf_counter() - t0, 1e-9), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, compile, workers)")
    parser.add_argument("--loader-batches", type=int, default=20, help="batches read from the loader alone")
    parser.add_argument("--world", type=Path, default=None, help="where the demo world is kept (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="after --: lightning CLI configs and overrides")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    cli_args = [a for a in args.cli if a != "--"]
    world = args.world or Path(tempfile.gettempdir()) / "lightning_wsg_bench_world"
    if not any(a == "--config" or a.startswith("--config=") for a in cli_args):
        cli_args = default_args(world) + cli_args
    cli_args += [
        f"--trainer.max_steps={args.warmup + args.steps}",
        "--trainer.max_epochs=-1",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='wsg_bench_')}",
    ]
    # sys.argv stays as it is: under DDP Lightning starts the other processes with it
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    cli = cli_main(cli_args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    timer = StepTimer()
    trainer.callbacks.append(timer)
    cuda = trainer.strategy.root_device.type == "cuda"
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return

    w = args.warmup
    waits, computes, sizes = timer.waits[w - 1 :], timer.computes[w:], timer.batch_sizes[w:]
    steps = min(len(waits), len(computes))
    waits, computes, sizes = waits[:steps], computes[:steps], sizes[:steps]
    world_size = trainer.world_size
    step = statistics.mean(w_ + c for w_, c in zip(waits, computes))
    batch = statistics.mean(sizes)
    train_ips = batch * world_size / step
    consume_ips = batch / statistics.mean(computes)  # per process
    loader_ips, _ = measure_loader(dm.train_dataloader(), args.loader_batches)
    if cuda:
        peak = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**20
        device = torch.cuda.get_device_name(trainer.strategy.root_device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    region = model.hparams.region_encoder["init_args"]
    results = {
        "device": device,
        "processes": world_size,
        "precision": str(trainer.precision),
        "channels_last": bool(region.get("channels_last", False)),
        "compile_backbone": bool(region.get("compile", False)),
        "backbone": region.get("backbone"),
        "batch_size_per_process": batch,
        "image_size": dm.image_size,
        "num_workers": dm.num_workers,
        "pin_memory": dm.pin_memory,
        "timed_steps": steps,
        "train_images_per_s": round(train_ips, 2),
        "step_ms": round(1000 * step, 1),
        "data_wait_ms": round(1000 * statistics.mean(waits), 1),
        "compute_ms": round(1000 * statistics.mean(computes), 1),
        "data_wait_share": round(statistics.mean(waits) / step, 3),
        "loader_images_per_s": round(loader_ips, 2),
        "step_consumes_images_per_s": round(consume_ips, 2),
        "loader_over_consumption": round(loader_ips / consume_ips, 2),
        "peak_memory_mib": round(peak, 1),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(results, indent=2))
    print()
    print("| device | precision | batch | workers | images/s | step ms | data wait ms | compute ms "
          "| loader img/s | step needs img/s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    r = results
    print(
        f"| {r['device']} | {r['precision']} | {r['batch_size_per_process']:g} x {r['processes']} | {r['num_workers']} "
        f"| {r['train_images_per_s']} | {r['step_ms']} | {r['data_wait_ms']} | {r['compute_ms']} "
        f"| {r['loader_images_per_s']} | {r['step_consumes_images_per_s']} | {r['peak_memory_mib']} |"
    )
    verdict = "keeps up with" if r["loader_over_consumption"] >= 1 else "STARVES"
    print(f"\nthe data pipeline {verdict} training (loader / step consumption = {r['loader_over_consumption']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
