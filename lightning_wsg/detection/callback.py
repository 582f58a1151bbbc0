"""``DetectionCache``: the Lightning callback that runs the detector once per image.

Listed in ``trainer.callbacks`` (see ``cli_configs/detector/*.yaml``). At ``setup`` of every
stage it asks the datamodule which images the stage's splits use, detects only those no
cache shard holds, and points the datamodule at the cache folder. The datamodule's own
``setup`` runs first (Lightning calls the datamodule before the callbacks): with
``data.detections: null`` it only parses the splits and waits for
:meth:`~lightning_wsg.data.GroundingDataModule.use_detections`.

Under DDP rank 0 hashes the detector files and finds the missing images; every rank then
detects a disjoint share (whole shards, round-robin) on its own device and writes only its
own shards; each rank marks its share done in ``<cache>/.runs/<run id>/`` and waits until
every rank has (a file poll, so a detection longer than the process group's timeout does
not break a collective barrier), then all meet at ``trainer.strategy.barrier`` and check
that every needed image is in a complete shard. The cache folder must therefore be on a
file system every rank sees.

With ``box_features: true`` on the backend the shards also hold each box's RoI-head feature,
and a model whose region tower reads features (``FeatureRegionEncoder``) trains on them; such
a model with a backend that stores none is refused before anything is detected.

Example (Python)::

    trainer = Trainer(callbacks=[DetectionCache(TorchvisionBackend(), cache_dir="cache")])
    trainer.fit(model, datamodule=Flickr30kEntitiesDataModule(root, images, detections=None))
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from .backend import DetectorBackend
from .cache import ShardedCache
from .digests import file_digest
from .store import CachedDetections, plan_shards

__all__ = ["DetectionCache"]

logger = logging.getLogger("lightning_wsg")

_DATAMODULE_API = ("splits_for", "image_paths", "use_detections")


class DetectionCache(Callback):
    """Fill the detection cache of the images a stage needs, then feed it to the datamodule.

    Args:
        backend: the detector (:class:`~lightning_wsg.detection.MMDetectionBackend`,
            :class:`~lightning_wsg.detection.TorchvisionBackend`,
            :class:`~lightning_wsg.detection.PrecomputedBackend` or your own
            :class:`~lightning_wsg.detection.DetectorBackend`). It is built only when some
            image lacks detections, and freed after detecting.
        cache_dir: the cache root: ``<cache_dir>/<namespace>/<backend>-<fingerprint>/``
            holds one detector setting's detections of one image collection.
        namespace: the image collection's folder name. The cache is keyed by image id, and
            ids of different collections may collide (Flickr30K and COCO both use numbers),
            so the default is ``<image folder name>-<hash of its absolute path>`` of the
            datamodule's ``image_dir`` (RefCOCO, RefCOCO+ and RefCOCOg share COCO's). Set
            it to share a cache between copies of the same images at different paths.
        shard_size: images per shard file; a killed run redoes at most one shard per rank.
        device: where the detector runs (``None``: the trainer's device of this rank).
        progress_bar: show a rich progress bar (rank 0) while detecting.
        poll_seconds: under DDP, how often a rank that finished looks for the others' marks.
        wait_timeout_s: under DDP, give up waiting for the other ranks after this long
            (``None``: wait as long as they detect).
    """

    def __init__(
        self,
        backend: DetectorBackend,
        cache_dir: str | Path,
        namespace: str | None = None,
        shard_size: int = 512,
        device: str | None = None,
        progress_bar: bool = True,
        poll_seconds: float = 2.0,
        wait_timeout_s: float | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.backend = backend
        self.cache_dir = Path(cache_dir)
        self.namespace = namespace
        self.shard_size = int(shard_size)
        self.device = device
        self.progress_bar = progress_bar
        self.poll_seconds = float(poll_seconds)
        self.wait_timeout_s = wait_timeout_s
        #: the cache folder of the last setup (``None`` before)
        self.cache: ShardedCache | None = None
        #: images this rank detected at the last setup
        self.detected: int = 0

    # ------------------------------------------------------------------------ helpers
    @staticmethod
    def _datamodule(trainer: pl.Trainer):
        dm = trainer.datamodule
        if dm is None or not all(hasattr(dm, name) for name in _DATAMODULE_API):
            raise TypeError(
                "DetectionCache needs a GroundingDataModule (lightning_wsg.data) passed as the trainer's datamodule, "
                f"with {', '.join(_DATAMODULE_API)}; got {type(dm).__name__}"
            )
        return dm

    @staticmethod
    def default_namespace(datamodule) -> str:
        """``<image folder name>-<first 8 hex of the SHA-1 of its absolute path>``."""
        image_dir = getattr(datamodule, "image_dir", None)
        if image_dir is None:
            return type(datamodule).__name__
        path = Path(image_dir).resolve()
        return f"{path.name or 'images'}-{hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:8]}"

    def _device(self, trainer: pl.Trainer) -> torch.device:
        return torch.device(self.device) if self.device is not None else trainer.strategy.root_device

    def _wait_for_ranks(self, run_dir: Path, world_size: int) -> None:
        """Poll until every rank has left its mark in ``run_dir``."""
        start = last_note = time.monotonic()
        while True:
            marks = {p.stem for p in run_dir.glob("rank*.*")}
            if len(marks) >= world_size:
                return
            now = time.monotonic()
            if self.wait_timeout_s is not None and now - start > self.wait_timeout_s:
                logger.warning("detection cache: stopped waiting for ranks after %.0f s (%s)", now - start, run_dir)
                return
            if now - last_note > 600:
                waiting = sorted({f"rank{r}" for r in range(world_size)} - marks)
                logger.info("detection cache: waiting for %s to finish detecting (%s)", ", ".join(waiting), run_dir)
                last_note = now
            time.sleep(self.poll_seconds)

    # -------------------------------------------------------------------------- hooks
    def _check_box_features(self, pl_module: pl.LightningModule) -> None:
        """Refuse, before detecting, a detector without box features for a model that reads them."""
        model = getattr(pl_module, "model", None)
        tower = getattr(model, "region_encoder", None)
        if (
            tower is not None
            and not getattr(pl_module, "reads_images", True)
            and getattr(self.backend, "box_features", None) is False
        ):
            raise ValueError(
                f"the model's {type(tower).__name__} reads per-box features, but the {self.backend.name} detector "
                "does not store them: set box_features: true on the DetectionCache's backend "
                "(--trainer.callbacks.backend.init_args.box_features true)"
            )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = self._datamodule(trainer)
        self._check_box_features(pl_module)
        if getattr(dm, "detections", None) is not None:
            rank_zero_warn(
                f"data.detections={dm.detections} is ignored: the DetectionCache callback supplies the detections "
                "(set data.detections: null to skip reading it)"
            )
        strategy = trainer.strategy
        rank, world = trainer.global_rank, trainer.world_size
        splits = list(dm.splits_for(stage))
        images: dict[str, Path] = {}
        for split in splits:
            images.update(dm.image_paths(split))

        # rank 0 hashes the detector's files; all ranks then agree on one folder and one run id
        memo = self.cache_dir / "digests.json"
        payload: dict[str, Any] = {}
        rank0_error: BaseException | None = None
        if rank == 0:
            try:  # an error here (a missing checkpoint...) must reach every rank, not hang them
                settings = self.backend.settings(lambda p: file_digest(p, memo=memo))
                namespace = self.namespace or self.default_namespace(dm)
                cache = ShardedCache(self.cache_dir / namespace, settings, self.shard_size)
                cache.ensure_manifest()
                removed = cache.remove_stale_temp_files()
                if removed:
                    logger.info(
                        "detection cache: removed %d temporary files of killed runs in %s", removed, cache.shard_dir
                    )
                payload = {
                    "settings": settings,
                    "namespace": namespace,
                    "missing": cache.missing(images),
                    "run": uuid.uuid4().hex,
                }
            except Exception as err:  # noqa: BLE001 - re-raised below on rank 0
                rank0_error = err
                payload = {"error": f"{type(err).__name__}: {err}"}
        payload = strategy.broadcast(payload, src=0)
        if rank0_error is not None:
            raise rank0_error
        if "error" in payload:
            raise RuntimeError(f"DetectionCache: rank 0 failed to prepare the cache: {payload['error']}")
        cache = self.cache = ShardedCache(self.cache_dir / payload["namespace"], payload["settings"], self.shard_size)
        missing: list[str] = payload["missing"]

        self.detected = 0
        error: BaseException | None = None
        if missing:
            rank_zero_info(
                f"detection cache {cache.path}: {len(missing)} of {len(images)} images of {', '.join(splits)} lack "
                f"detections; running {self.backend.name} on them ({world} rank{'s' if world > 1 else ''})"
            )
            shards = plan_shards(missing, self.shard_size, world)[rank::world]
            try:
                if shards:
                    self.detected = cache.fill(
                        self.backend,
                        {i: images[i] for shard in shards for i in shard},
                        shards=shards,
                        device=self._device(trainer),
                        progress=self.progress_bar and rank == 0,
                        description=f"detecting ({self.backend.name}, rank {rank} of {world})"
                        if world > 1
                        else f"detecting ({self.backend.name})",
                    )
            except BaseException as err:  # noqa: BLE001 - re-raised after the other ranks are released
                error = err
            finally:
                self.backend.unload()
            if world > 1:
                run_dir = cache.path / ".runs" / payload["run"]
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / f"rank{rank}.{'failed' if error else 'done'}").write_text(repr(error) if error else "")
                if error is None:
                    self._wait_for_ranks(run_dir, world)
        strategy.barrier("detection_cache_filled")
        if error is not None:
            raise error
        if missing:
            still = cache.missing(missing)
            if still:
                raise RuntimeError(
                    f"detection cache {cache.path}: {len(still)} images still lack detections after detecting "
                    f"(e.g. {', '.join(still[:5])}): another rank failed, or the cache folder is not on a file "
                    "system every rank sees"
                )
            if rank == 0:
                manifest = cache.update_manifest(versions=self.backend.versions())  # class names from the shards
                shutil.rmtree(cache.path / ".runs" / payload["run"], ignore_errors=True)
                rank_zero_info(
                    f"detection cache {cache.path}: {manifest['counts']['images']} images, "
                    f"{manifest['counts']['boxes']} boxes in {manifest['counts']['shards']} shards"
                )
            strategy.barrier("detection_cache_manifest")
        else:
            rank_zero_info(f"detection cache {cache.path}: all {len(images)} images of {', '.join(splits)} cached")
        # this stage's images only: the cache may also hold another dataset's images of this folder
        dm.use_detections(CachedDetections(cache.path, only=images), splits)

    def state_dict(self) -> dict[str, Any]:
        return {"cache": str(self.cache.path) if self.cache is not None else None}
