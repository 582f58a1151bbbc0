"""Per-box region features written in the real formats: bottom-up-attention TSV and BAN / MAF HDF5."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import numpy as np

from lightning_wsg.detection.formats import open_detections


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def box_features(boxes: np.ndarray, size: tuple[int, int], dim: int, seed: int) -> np.ndarray:
    """Features that say where each box is (its relative corners) plus noise: learnable, float32."""
    rng = np.random.default_rng(seed)
    w, h = size
    rel = boxes / np.array([w, h, w, h], np.float32)
    out = rng.normal(0.0, 0.1, (len(boxes), dim)).astype(np.float32)
    out[:, :4] += rel * 3 + 7  # far from zero mean and unit scale: the normalisation matters
    return out


def features_of(detections: Path, sizes: dict[str, tuple[int, int]], dim: int = 16) -> dict[str, dict]:
    """Per image of a proposals JSONL: boxes, class ids (into ``labels``), scores and features."""
    store = open_detections(detections)
    names = sorted({label for image_id in store for label in (store[image_id].labels or [])})
    out = {}
    for k, image_id in enumerate(sorted(store)):
        det = store[image_id]
        boxes = det.boxes.numpy().astype(np.float32)
        out[image_id] = {
            "boxes": boxes,
            "ids": np.array([names.index(label) for label in det.labels], np.int64),
            "scores": det.scores.numpy().astype(np.float32),
            "features": box_features(boxes, sizes[image_id], dim, seed=k),
            "size": sizes[image_id],
        }
    return {"images": out, "names": names}


def write_tsv(path: Path, data: dict) -> Path:
    """A bottom-up-attention TSV with labels (the six fields, then objects_id, objects_conf, attrs)."""
    lines = []
    for image_id, d in data["images"].items():
        n = len(d["boxes"])
        row = [image_id, str(d["size"][0]), str(d["size"][1]), str(n), b64(d["boxes"]), b64(d["features"])]
        row += [b64(d["ids"]), b64(d["scores"]), b64(np.zeros(n, np.int64)), b64(np.ones(n, np.float32))]
        lines.append("\t".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_vocabulary(path: Path, data: dict) -> Path:
    path.write_text("\n".join(data["names"]) + "\n")
    return path


def write_hdf5(path: Path, data: dict, image_ids: list[str] | None = None, fixed: bool = False) -> Path:
    """A BAN / MAF-style HDF5 file (image_features, image_bb, spatial_features, pos_boxes) and
    its ``<stem>_imgid2idx.pkl`` index (integer image ids, as the pipelines pickle them).

    The images lie in the file rotated by one against ``image_ids`` (the index's order): no
    image sits at its own position, so a reader that ignored the index would read another
    image's rows. ``fixed``: the fixed-size variant instead, ``[num_images, K, ...]`` without
    ``pos_boxes``, each image's first ``K`` boxes (``K`` the fewest of any image).
    """
    import h5py

    ids = image_ids if image_ids is not None else list(data["images"])
    stored = ids[1:] + ids[:1]
    keep = min(len(data["images"][i]["boxes"]) for i in ids) if fixed else None
    feats, boxes, spatial, pos, row = [], [], [], [], 0
    for image_id in stored:
        d = data["images"][image_id]
        w, h = d["size"]
        bb = d["boxes"][:keep]
        rel = bb / np.array([w, h, w, h], np.float32)
        spatial.append(np.concatenate([rel, rel[:, 2:] - rel[:, :2]], axis=1))
        feats.append(d["features"][:keep])
        boxes.append(bb)
        pos.append([row, row + len(bb)])
        row += len(bb)
    index = {int(image_id): stored.index(image_id) for image_id in ids}
    join = np.stack if fixed else np.concatenate
    with h5py.File(path, "w") as f:
        f.create_dataset("image_features", data=join(feats))
        f.create_dataset("image_bb", data=join(boxes))
        f.create_dataset("spatial_features", data=join(spatial))
        if not fixed:
            f.create_dataset("pos_boxes", data=np.array(pos, np.int64))
    with path.with_name(f"{path.stem}_imgid2idx.pkl").open("wb") as fh:
        pickle.dump(index, fh)
    return path
