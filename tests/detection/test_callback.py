"""DetectionCache in real Trainer runs: each image detected once across stages and runs,
resume after a kill, a new cache for a changed setting, and a 2-process DDP fill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers.flickr import make_tiny_flickr
from helpers.model import tiny_model
from helpers.trainer import quiet_trainer
from PIL import Image
from pytorch_lightning import Trainer

from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.detection import DetectionCache, Detections, DetectorBackend, open_detections
from lightning_wsg.detection.cache import CachedDetections, file_digest

REPO = Path(__file__).resolve().parents[2]
LABELS = ("man", "dog", "car", "shirt", "box")


def fake_detections(image_id: str, path: Path, n_boxes: int = 5) -> Detections:
    """Deterministic boxes inside the image: the whole image plus seeded random boxes."""
    with Image.open(path) as img:
        w, h = img.size
    gen = torch.Generator().manual_seed(int(image_id) % (2**31))
    xy = torch.rand(n_boxes - 1, 2, generator=gen) * torch.tensor([w / 2, h / 2])
    wh = (torch.rand(n_boxes - 1, 2, generator=gen) * 0.5 + 0.1) * torch.tensor([w, h])
    boxes = torch.cat([torch.tensor([[0.0, 0.0, w, h]]), torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w, h]))], 1)])
    scores = torch.linspace(0.9, 0.2, n_boxes)
    labels = [LABELS[(int(image_id) + i) % len(LABELS)] for i in range(n_boxes)]
    return Detections(image_id, boxes, labels, scores)


class CountingBackend(DetectorBackend):
    """A fake detector that counts every image it detects and every model load.

    ``fail_after=k`` raises after ``k`` images (a run killed mid-way).
    """

    name = "counting"

    def __init__(self, version: int = 0, fail_after: int | None = None) -> None:
        self.version = version
        self.fail_after = fail_after
        self.batch_size = 2
        self.calls: Counter[str] = Counter()
        self.loads = 0

    def settings(self, digest=file_digest) -> dict:
        return {"backend": self.name, "version": self.version}

    def load(self, device=None) -> None:
        self.loads += 1
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    @property
    def class_names(self) -> list[str]:
        return list(LABELS)

    def detect(self, images):
        out = []
        for image_id, path in images:
            if self.fail_after is not None and sum(self.calls.values()) >= self.fail_after:
                raise RuntimeError("simulated kill")
            self.calls[image_id] += 1
            out.append(fake_detections(image_id, path))
        return out


def datamodule(tiny, detections=None) -> Flickr30kEntitiesDataModule:
    return Flickr30kEntitiesDataModule(
        tiny.root, tiny.image_dir, detections, batch_size=4, num_workers=0, image_size=64, max_proposals=10
    )


def trainer(tmp_path: Path, callback: DetectionCache) -> Trainer:
    return quiet_trainer(
        tmp_path,
        limit_train_batches=1,
        limit_val_batches=1,
        limit_test_batches=1,
        enable_checkpointing=False,
        callbacks=[callback],
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny"), n_images=12, seed=1)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_each_image_is_detected_once_across_fit_test_and_a_second_fit(tiny, model, tmp_path):
    backend = CountingBackend()
    callback = DetectionCache(backend, tmp_path / "cache", shard_size=3, progress_bar=False)
    fit_images = set(tiny.splits["train"]) | set(tiny.splits["val"])

    dm = datamodule(tiny)
    trainer(tmp_path, callback).fit(model, datamodule=dm)
    assert set(backend.calls) == fit_images and set(backend.calls.values()) == {1}
    assert backend.loads == 1 and not backend.loaded  # freed after detecting
    assert isinstance(dm.store, CachedDetections) and dm.store.path == callback.cache.path
    assert set(dm.datasets) == {"train", "val"}
    assert callback.cache.path.parent == tmp_path / "cache" / DetectionCache.default_namespace(dm)

    trainer(tmp_path, callback).test(model, datamodule=dm)  # only the test images are new
    assert set(backend.calls) == fit_images | set(tiny.splits["test"]) and set(backend.calls.values()) == {1}
    assert backend.loads == 2

    # a new process's view: fresh datamodule, fresh backend object, same settings
    fresh = CountingBackend()
    for run in ("fit", "test"):
        t = trainer(tmp_path, DetectionCache(fresh, tmp_path / "cache", shard_size=3, progress_bar=False))
        getattr(t, run)(model, datamodule=datamodule(tiny))
    assert fresh.calls == Counter() and fresh.loads == 0  # the detector was never built

    manifest = json.loads((callback.cache.path / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 12 and manifest["counts"]["boxes"] == 12 * 5
    assert manifest["class_names"] == list(LABELS) and manifest["backend"] == "counting"
    assert manifest["settings"]["version"] == 0 and manifest["fingerprint"] == callback.cache.fingerprint
    # the datasets read exactly what the detector returned
    image_id = tiny.splits["test"][0]
    expected = fake_detections(image_id, tiny.image_dir / f"{image_id}.jpg")
    got = open_detections(callback.cache.path)[image_id]
    assert torch.equal(got.boxes, expected.boxes) and got.labels == expected.labels
    assert torch.equal(got.scores, expected.scores)


def test_a_killed_run_resumes_and_detects_only_the_missing_images(tiny, model, tmp_path):
    cache_dir = tmp_path / "cache"
    killed = CountingBackend(fail_after=7)  # shards of 3: two complete shards, then the kill
    callback = DetectionCache(killed, cache_dir, shard_size=3, progress_bar=False)
    with pytest.raises(RuntimeError, match="simulated kill"):
        trainer(tmp_path, callback).fit(model, datamodule=datamodule(tiny))
    cache = callback.cache
    done = set(cache.open())
    assert len(done) == 6 and set(killed.calls) >= done
    # a leftover temporary file of a writer killed in the middle of a rename
    (cache.shard_dir / ".deadbeef.pt.tmp-otherhost-1-abcd").write_bytes(b"partial")

    resumed = CountingBackend()
    trainer(tmp_path, DetectionCache(resumed, cache_dir, shard_size=3, progress_bar=False)).fit(
        model, datamodule=datamodule(tiny)
    )
    fit_images = set(tiny.splits["train"]) | set(tiny.splits["val"])
    assert set(resumed.calls) == fit_images - done and set(resumed.calls.values()) == {1}
    assert set(cache.open()) == fit_images


def test_a_changed_detector_setting_starts_a_new_cache(tiny, model, tmp_path):
    first, second = CountingBackend(version=1), CountingBackend(version=2)
    cb1 = DetectionCache(first, tmp_path / "cache", progress_bar=False)
    cb2 = DetectionCache(second, tmp_path / "cache", progress_bar=False)
    trainer(tmp_path, cb1).test(model, datamodule=datamodule(tiny))
    trainer(tmp_path, cb2).test(model, datamodule=datamodule(tiny))
    assert set(first.calls) == set(second.calls) == set(tiny.splits["test"])
    assert cb1.cache.path != cb2.cache.path and cb1.cache.path.parent == cb2.cache.path.parent
    assert sorted(p.name for p in cb1.cache.path.parent.iterdir() if p.is_dir()) == sorted(
        [cb1.cache.path.name, cb2.cache.path.name]
    )


def test_a_cache_shared_with_another_dataset_of_the_same_images_is_read_as_a_view(tiny, model, tmp_path):
    backend = CountingBackend()
    callback = DetectionCache(backend, tmp_path / "cache", progress_bar=False)
    dm = datamodule(tiny)
    trainer(tmp_path, callback).test(model, datamodule=dm)
    # another dataset (say RefCOCOg beside RefCOCO on COCO) adds an image this one does not know
    foreign = Detections("424242", torch.tensor([[0.0, 0.0, 5.0, 5.0]]), ["dog"], torch.ones(1))
    callback.cache.write_shard([foreign], list(LABELS))
    dm = datamodule(tiny)
    trainer(tmp_path, callback).test(model, datamodule=dm)  # no "unknown image" error
    assert "424242" in open_detections(callback.cache.path) and "424242" not in dm.store
    assert set(dm.store) == set(tiny.splits["test"]) and set(backend.calls.values()) == {1}


def test_image_collections_get_their_own_namespace(tiny, tmp_path):
    dm = datamodule(tiny)
    other = Flickr30kEntitiesDataModule(tiny.root, tmp_path / "images", None)  # same ids, other images
    ns = DetectionCache.default_namespace(dm)
    assert ns.startswith("images-") and ns != DetectionCache.default_namespace(other)
    assert ns == DetectionCache.default_namespace(datamodule(tiny))


def test_a_missing_checkpoint_fails_before_anything_is_detected(tiny, model, tmp_path):
    from lightning_wsg.detection import TorchvisionBackend

    backend = TorchvisionBackend(weights=None, checkpoint=tmp_path / "missing.pt", categories=["__background__", "man"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        trainer(tmp_path, DetectionCache(backend, tmp_path / "cache", progress_bar=False)).test(
            model, datamodule=datamodule(tiny)
        )
    assert not backend.loaded


def test_without_detections_or_callback_the_error_says_what_to_do(tiny, model, tmp_path):
    t = trainer(tmp_path, DetectionCache(CountingBackend(), tmp_path / "cache", progress_bar=False))
    t.callbacks = [c for c in t.callbacks if not isinstance(c, DetectionCache)]
    with pytest.raises(RuntimeError, match="data.detections is null and no DetectionCache"):
        t.test(model, datamodule=datamodule(tiny))


def test_a_detections_file_in_the_datamodule_is_replaced_by_the_cache(tiny, model, tmp_path):
    dm = datamodule(tiny, detections=tiny.detections)
    backend = CountingBackend()
    callback = DetectionCache(backend, tmp_path / "cache", progress_bar=False)
    with pytest.warns(UserWarning, match="is ignored"):
        trainer(tmp_path, callback).test(model, datamodule=dm)
    assert dm.store.path == callback.cache.path and set(backend.calls) == set(tiny.splits["test"])


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from pytorch_lightning import Trainer
    from helpers.flickr import TinyFlickr
    from test_callback import CountingBackend, datamodule, tiny_model
    from lightning_wsg.detection import DetectionCache

    class LoggingBackend(CountingBackend):
        def detect(self, images):
            out = super().detect(images)
            with open(os.path.join({log!r}, f"pid{{os.getpid()}}.txt"), "a") as fh:
                fh.writelines(f"{{image_id}}\\n" for image_id, _ in images)
            return out

    if __name__ == "__main__":
        tiny = TinyFlickr(Path({root!r}), Path({images!r}), None, {{}}, {{}}, set())
        trainer = Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=1,
            limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir={out!r},
            callbacks=[DetectionCache(LoggingBackend(), {cache!r}, shard_size=4, progress_bar=False, poll_seconds=0.2)],
        )
        trainer.fit(tiny_model(), datamodule=datamodule(tiny))
        # one file a rank: two processes printing to one pipe can interleave their lines
        Path({done!r}, f"rank{{trainer.global_rank}}").touch()
    """
)


@pytest.mark.slow
def test_ddp_two_processes_fill_the_cache_with_each_image_detected_once(tiny, tmp_path):
    log, done = tmp_path / "log", tmp_path / "done"
    log.mkdir()
    done.mkdir()
    script = tmp_path / "ddp_fill.py"
    script.write_text(
        DDP_SCRIPT.format(
            tests=str(REPO / "tests"),
            log=str(log),
            root=str(tiny.root),
            images=str(tiny.image_dir),
            out=str(tmp_path / "out"),
            cache=str(tmp_path / "cache"),
            done=str(done),
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "detection"), str(REPO / "tests")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert sorted(p.name for p in done.iterdir()) == ["rank0", "rank1"], proc.stdout[-3000:]
    per_process = {p.name: p.read_text().split() for p in log.iterdir()}
    assert len(per_process) == 2  # both ranks detected a share
    detected = [i for ids in per_process.values() for i in ids]
    fit_images = set(tiny.splits["train"]) | set(tiny.splits["val"])
    assert sorted(detected) == sorted(fit_images)  # each image once, over both ranks
    cache_dirs = [p for p in (tmp_path / "cache").glob("*/*") if p.is_dir()]
    assert len(cache_dirs) == 1
    store = open_detections(cache_dirs[0])
    assert set(store) == fit_images
    assert not list((cache_dirs[0] / "shards").glob(".*.tmp-*"))
    runs = cache_dirs[0] / ".runs"
    assert not runs.exists() or not any(runs.iterdir())  # rank 0 removed the run's marks


def test_cli_configs_stack_a_detector_fragment(tiny, tmp_path, monkeypatch):
    from lightning_wsg.cli import main

    monkeypatch.chdir(tmp_path)
    configs = REPO / "cli_configs"
    cli = main(
        [
            "fit",
            "--config", str(configs / "flickr.yaml"),
            "--config", str(REPO / "tests" / "configs" / "tiny_model.yaml"),
            "--config", str(configs / "detector" / "precomputed.yaml"),
            f"--data.init_args.root={tiny.root}",
            f"--data.init_args.image_dir={tiny.image_dir}",
            f"--trainer.callbacks.backend.init_args.path={tiny.detections}",
            "--trainer.callbacks.cache_dir=cache",
            "--trainer.default_root_dir=out",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--model.phrase_encoder.pretrained=false",
            "--model.phrase_encoder.config_overrides={num_hidden_layers: 1}",
            "--model.loss.teacher.matching=lexical",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 1
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, DetectionCache)]
    assert callback.cache.path.resolve().is_relative_to((tmp_path / "cache").resolve())
    assert set(open_detections(callback.cache.path)) == set(tiny.splits["train"]) | set(tiny.splits["val"])
