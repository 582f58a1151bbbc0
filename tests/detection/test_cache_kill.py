"""The detection cache under a real SIGKILL, and its damaged files.

A child process fills a cache through the real ``DetectionCache.setup`` and is killed
(SIGKILL: no cleanup, no ``finally``) half-way through writing a shard, or with a shard
whole in its temporary file but not yet renamed. The resumed run must detect each image
that no complete shard holds exactly once, none of the others, and no reader may ever see
a partial shard. Then the damaged files: a truncated shard, an unreadable manifest, a
manifest that disagrees with its settings or its folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers.cache_kill import SHARD_SIZE, make_images, run

from lightning_wsg.detection import DetectionFormatError, ShardedCache, open_detections
from lightning_wsg.detection.cache import fingerprint

CHILD = Path(__file__).resolve().parents[1] / "helpers" / "cache_kill.py"
IDS = [f"img{k:02d}" for k in range(10)]  # 3 shards of 4, 4, 2 images


def _calls(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _cache_folder(cache_dir: Path) -> Path:
    (folder,) = [p.parent for p in cache_dir.glob("*/*/manifest.json")]
    return folder


def _kill_child_at(moment: str, cache_dir: Path, image_dir: Path, log: Path, tmp_path: Path) -> None:
    """Start the child, wait until it stands at ``moment`` of its second shard, SIGKILL it."""
    ready = tmp_path / f"ready-{moment}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(CHILD), str(cache_dir), str(image_dir), str(log), "--pause", moment]
    proc = subprocess.Popen([*args, "--ready", str(ready)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a hung child must not hang the suite (not a speed check)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"the child exited ({proc.returncode}) before pausing at {moment}:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child never reached {moment}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("moment", ["mid-write", "before-rename"])
def test_a_sigkilled_fill_resumes_detecting_each_missing_image_once(moment, tmp_path):
    images = make_images(tmp_path / "images")
    cache_dir, log = tmp_path / "cache", tmp_path / "calls.log"
    _kill_child_at(moment, cache_dir, tmp_path / "images", log, tmp_path)

    killed_calls = _calls(log)
    assert sorted(killed_calls) == IDS[: 2 * SHARD_SIZE] and set(killed_calls.values()) == {1}
    folder = _cache_folder(cache_dir)
    whole = sorted(p.name for p in (folder / "shards").iterdir() if not p.name.startswith("."))
    temps = [p for p in (folder / "shards").iterdir() if ".tmp-" in p.name]
    assert len(whole) == 1 and len(temps) == 1  # the killed shard exists only as a temporary file
    if moment == "mid-write":
        assert 0 < temps[0].stat().st_size
    # a reader (another job, a DataLoader worker) sees the complete shard only, and reads it
    store = open_detections(folder)
    assert sorted(store) == IDS[:SHARD_SIZE]
    assert all(len(store[i]) == 1 for i in store)

    callback, dm = run(cache_dir, tmp_path / "images", log)  # the resumed run, a fresh callback
    resumed_calls = _calls(log) - killed_calls
    assert sorted(resumed_calls) == IDS[SHARD_SIZE:] and set(resumed_calls.values()) == {1}
    assert callback.detected == len(IDS) - SHARD_SIZE
    assert not [p for p in (folder / "shards").iterdir() if ".tmp-" in p.name]  # the dead writer's file is gone
    store = dm.supplied
    assert sorted(store) == IDS
    for image_id in images:
        k = int(image_id[3:])
        assert store[image_id].boxes.tolist() == [[0.0, 0.0, 8.0 + k, 6.0 + k]]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"images": 10, "boxes": 10, "shards": 3}

    run(cache_dir, tmp_path / "images", log)  # complete: nothing detected again
    assert _calls(log) == killed_calls + resumed_calls


@pytest.fixture
def filled(tmp_path) -> tuple[Path, Path, Path]:
    """A complete cache of 10 images (3 shards) filled by the callback; its folder, images, log."""
    make_images(tmp_path / "images")
    cache_dir, log = tmp_path / "cache", tmp_path / "calls.log"
    run(cache_dir, tmp_path / "images", log)
    assert sorted(_calls(log)) == IDS
    return _cache_folder(cache_dir), tmp_path / "images", log


def test_a_truncated_shard_is_an_error_naming_it_and_deleting_it_redoes_its_images(filled):
    folder, image_dir, log = filled
    shard = next(p for p in sorted((folder / "shards").glob("*.pt")) if len(torch.load(p)["offsets"]) == 5)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        DetectionFormatError, match=rf"{re.escape(str(shard))}: unreadable detection-cache shard .*delete it"
    ):
        open_detections(folder)
    before = _calls(log)
    with pytest.raises(
        DetectionFormatError, match=rf"{re.escape(str(shard))}: unreadable .*next run detects its images again"
    ):
        run(folder.parents[1], image_dir, log)
    assert _calls(log) == before  # the error comes before any detection
    shard.unlink()  # what the message says to do
    run(folder.parents[1], image_dir, log)
    again = _calls(log) - before
    assert sum(again.values()) == SHARD_SIZE and set(again.values()) == {1}
    assert sorted(open_detections(folder)) == IDS


@pytest.mark.parametrize(
    "content", [b'{"fingerprint": "ab', b"[1, 2]", b"\xff\xfe\x00garbage"], ids=["cut", "list", "bytes"]
)
def test_an_unreadable_manifest_is_named_by_readers_and_rewritten_by_the_writer(filled, content, caplog):
    folder, image_dir, log = filled
    manifest = folder / "manifest.json"
    manifest.write_bytes(content)
    with pytest.raises(
        DetectionFormatError,
        match=rf"{re.escape(str(manifest))}: unreadable detection-cache manifest .*writes it again from its shards, or delete the folder",
    ):
        open_detections(folder)
    before = _calls(log)
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        _, dm = run(folder.parents[1], image_dir, log)
    assert any(
        f"{manifest} is unreadable" in r.getMessage() and "writing it again" in r.getMessage() for r in caplog.records
    )
    assert _calls(log) == before  # the shards were fine: nothing detected again
    assert sorted(dm.supplied) == IDS
    rebuilt = json.loads(manifest.read_text())
    assert rebuilt["counts"] == {"images": 10, "boxes": 10, "shards": 3} and rebuilt["class_names"] == [
        "man",
        "dog",
        "car",
    ]
    assert rebuilt["fingerprint"] == fingerprint(rebuilt["settings"]) and folder.name.endswith(
        rebuilt["fingerprint"][:16]
    )


def test_a_manifest_whose_settings_do_not_match_its_fingerprint_is_refused(filled):
    folder, image_dir, log = filled
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"]["version"] = 2  # edited by hand: the shards were not made by version 2
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(
        DetectionFormatError,
        match=rf"{re.escape(str(manifest_path))}: the recorded settings hash to .*delete the folder",
    ):
        open_detections(folder)
    with pytest.raises(DetectionFormatError, match="edited by hand"):
        run(folder.parents[1], image_dir, log)


def test_a_folder_holding_another_settings_manifest_is_refused(filled, tmp_path):
    folder, image_dir, log = filled
    other = ShardedCache(tmp_path / "elsewhere", {"backend": "logging", "version": 99})
    other.ensure_manifest()
    shutil.copy(other.manifest_path, folder / "manifest.json")  # a consistent manifest, for another setting
    before = _calls(log)
    with pytest.raises(
        DetectionFormatError,
        match=rf"{re.escape(str(folder / 'manifest.json'))}: written for the detector setting with fingerprint {other.fingerprint[:16]}"
        rf", but this folder belongs to .*delete the folder {re.escape(str(folder))}",
    ):
        run(folder.parents[1], image_dir, log)
    assert _calls(log) == before
