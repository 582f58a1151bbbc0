"""A feature-mode grounding world built from the real Flickr30K Entities annotations.

The shape world (:mod:`lightning_wsg.synthetic`) has captions with a few dozen nouns. This
world keeps everything about language and scenes REAL and simulates only what needs images:

* real: the images chosen (from the official splits), their ``Annotations/*.xml`` and
  ``Sentences/*.txt`` copied verbatim, so what an object is (a chain with its boxes), which
  chains share an image and how the captions name them are Flickr30K's own;
* simulated: per image up to ``proposals`` region proposals with a feature vector each, and a
  detector's class probabilities over a real vocabulary (COCO-80 or Visual Genome's 1,600).

The feature model (per image, from its own seeded generator; ``D = feature_dim``):

* a chain's identity: its head word ``h`` (the commonest last word of its mentions) gives
  ``id(h) = normalise(A glove(h) + own(h))``, ``A`` a fixed random ``D x 50`` projection of the
  word's 50-d GloVe vector (related words look alike: dog, puppy) and ``own(h)`` a random unit
  vector of the word alone (they are still told apart);
* an object (one annotated box) is ``normalise(id(h) + 0.5 type(t) + 0.6 colour(c) + 0.35 u)``:
  its Flickr phrase type, the colour words of its mentions and ``u``, the instance's own
  look (two men in one image differ); a box of several chains sums their objects;
* the background is the image's scene words (its ``scene`` phrases' heads: "a street") or a
  random vector; a proposal's feature mixes the objects it overlaps with the background in
  proportion to how well it frames them (``quality = inter / area(proposal) * sqrt(inter /
  area(object))``), plus noise.

Proposals: a jittered box on each annotated box (IoU >= 0.7; missed at rate ``miss_rate``), a
union box on most chains of several boxes (the evaluation's ground truth is the union), one to
three partial boxes (IoU 0.15-0.5) per object, then background boxes up to ``proposals``.

The simulated detector never uses the teacher's WordNet reading. A chain's class is found by an
independent table: a word of its mentions that IS a class name (plural forms and a short
synonym table, ``SYNONYMS``), the commonest such word winning; chains typed ``people`` with no
such word are ``person`` when the vocabulary has it. A box's probabilities over the classes
(foreground columns; ``1 - sum`` is the background) put ``Beta(8, 2) x quality`` on the
class of the object it frames (wrong class at rate ``wrong_rate``), a share of the rest on the
background and the remainder on three random classes; an object with no class, and background
boxes, get mostly background. Top-1 labels and scores follow from the probabilities.

Written to ``out_dir``: ``Annotations/``, ``Sentences/``, ``train.txt`` / ``val.txt`` /
``test.txt`` (the chosen ids), ``regions.native/`` (the native store: features, boxes, labels,
scores and class probabilities; or ``regions.tsv`` + ``regions_vocab.txt`` with ``--format
tsv``, top-1 labels only), ``classes.txt``, ``provenance.jsonl`` (per proposal its kind,
``tight`` / ``group`` / ``partial`` / ``background``, and the chains it frames: for error
analysis, never for training) and, last, ``world.json`` (arguments and statistics).

CLI: ``python -m lightning_wsg.synthetic features --flickr ROOT --out DIR [--num-train 4000 ...]``
(:func:`lightning_wsg.synthetic.cli.features_main`).
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..boxes import box_iou
from ..data.flickr30k_entities import parse_annotation, parse_sentence
from ..detection.cache import _progress
from ..detection.formats import Detections, DetectionStore, write_tsv
from .feature_inputs import (
    COLOUR_WORDS,
    SYNONYMS,
    _annotation_files,
    _choose,
    _ClassTable,
    _detector_class,
    _vocabulary,
)
from .rendering import _iou1

__all__ = ["FeatureWorldConfig", "SYNONYMS", "build_feature_world", "read_provenance"]

VERSION = 1
_KINDS = ("tight", "group", "partial", "background")


@dataclass(frozen=True)
class FeatureWorldConfig:
    """Every setting of a feature world (stored in ``world.json``; the same config, the same bytes)."""

    num_train: int = 4000
    num_val: int = 500
    num_test: int = 1000
    seed: int = 0
    feature_dim: int = 128
    proposals: int = 30
    vocabulary: str = field(
        default="coco", metadata={"help": "'coco' or a class-name file (one class a line, e.g. vg_objects_vocab.txt)"}
    )
    format: Literal["native", "tsv"] = field(
        default="native", metadata={"help": "'native' (features + class probabilities) or 'tsv' (top-1 labels only)"}
    )
    feature_noise: float = 0.25
    miss_rate: float = 0.05
    wrong_rate: float = 0.08

    def check(self) -> None:
        if min(self.num_train, self.num_val, self.num_test) < 0 or self.num_train + self.num_val + self.num_test == 0:
            raise ValueError(f"image counts must be >= 0 and not all 0: {self}")
        if self.feature_dim < 8 or self.proposals < 4:
            raise ValueError(f"feature_dim must be >= 8 and proposals >= 4, got {self.feature_dim}, {self.proposals}")
        if self.format not in ("native", "tsv"):
            raise ValueError(f"format must be 'native' or 'tsv', got {self.format!r}")
        for name in ("miss_rate", "wrong_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


# ----------------------------------------------------------------------------- vectors
class _Vectors:
    """Deterministic unit vectors per word, type and colour; GloVe projected for head words."""

    def __init__(self, dim: int, seed: int) -> None:
        from ..models.embeddings import GloveEmbeddings

        self.dim, self.seed = dim, seed
        self.glove = GloveEmbeddings()
        self.projection = np.random.default_rng([seed, 1]).standard_normal((dim, GloveEmbeddings.dim)) / np.sqrt(dim)
        self._cache: dict[str, np.ndarray] = {}

    def random(self, key: str) -> np.ndarray:
        if key not in self._cache:
            v = np.random.default_rng([self.seed, 2, zlib.crc32(key.encode())]).standard_normal(self.dim)
            self._cache[key] = v / np.linalg.norm(v)
        return self._cache[key]

    def identity(self, word: str) -> np.ndarray:
        key = "id:" + word
        if key not in self._cache:
            own = self.random("word:" + word)
            g = self.glove.vector(word)
            sem = self.projection @ g.numpy() if g is not None else np.zeros(self.dim)
            sem = sem / max(np.linalg.norm(sem), 1e-8)
            v = sem + own
            self._cache[key] = v / np.linalg.norm(v)
        return self._cache[key]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-8)


# ------------------------------------------------------------------------------- image
def _chains(sentences: list[tuple[list[str], list]], boxed: set[str]) -> dict[str, dict]:
    """Per boxed chain: its mentions' words, head word, first type and colour words."""
    mentions: dict[str, list[list[str]]] = {}
    types: dict[str, Counter] = {}
    for words, phrases in sentences:
        for p in phrases:
            if p.chain_id in boxed:
                mentions.setdefault(p.chain_id, []).append([w.lower() for w in words[p.start : p.end]])
                types.setdefault(p.chain_id, Counter()).update(p.types[:1])
    out = {}
    for chain in sorted(boxed):  # set order follows string hashing: world.json must not
        ms = mentions.get(chain, [])
        heads = Counter(m[-1] for m in ms if m)
        colours = sorted({w for m in ms for w in m if w in COLOUR_WORDS})
        out[chain] = {
            "mentions": ms,
            "head": heads.most_common(1)[0][0] if heads else f"<chain {chain}>",
            "type": types[chain].most_common(1)[0][0] if chain in types else "other",
            "colours": colours,
        }
    return out


def _jitter(rng: np.random.Generator, box: np.ndarray, width: int, height: int, lo: float, hi: float) -> np.ndarray:
    """A box whose IoU with ``box`` lies in ``[lo, hi]`` (shifted and rescaled), clipped to the image."""
    w, h = box[2] - box[0], box[3] - box[1]
    limit = np.array([width, height, width, height], np.float64)
    for _ in range(60):
        scale = rng.uniform(0.02, 0.6) if hi < 0.9 else 0.04
        c = (box[:2] + box[2:]) / 2 + rng.normal(0, scale, 2) * (w, h)
        g = np.exp(rng.normal(0, 0.6 if hi < 0.9 else 0.05, 2)) * (w, h)
        out = np.clip(np.concatenate([c - g / 2, c + g / 2]), 0, limit)
        if out[2] - out[0] >= 2 and out[3] - out[1] >= 2:
            iou = _iou1(out, box)
            if lo <= iou <= hi:
                return out
    return np.array(box, np.float64) if hi >= 0.9 else None


def _quality(prop: np.ndarray, obj: np.ndarray) -> float:
    """How well a proposal frames an object: share of the proposal on it x sqrt(share of it covered)."""
    iw = max(0.0, min(prop[2], obj[2]) - max(prop[0], obj[0]))
    ih = max(0.0, min(prop[3], obj[3]) - max(prop[1], obj[1]))
    inter = iw * ih
    a_p = max((prop[2] - prop[0]) * (prop[3] - prop[1]), 1e-6)
    a_o = max((obj[2] - obj[0]) * (obj[3] - obj[1]), 1e-6)
    return inter / a_p * np.sqrt(inter / a_o)


def _simulate_image(image_id: str, xml: bytes, txt: bytes, cfg: FeatureWorldConfig, vec: _Vectors,
                    table: _ClassTable, tmp: Path) -> tuple[Detections, np.ndarray, list[dict], dict]:  # fmt: skip
    """One image's proposals, features, class probabilities, provenance and statistics."""
    rng = np.random.default_rng([cfg.seed, 3, zlib.crc32(image_id.encode())])
    xml_path = tmp / f"{image_id}.xml"
    xml_path.write_bytes(xml)
    ann = parse_annotation(xml_path)
    sentences = [parse_sentence(line, f"Sentences/{image_id}.txt", n) for n, line in
                 enumerate(txt.decode("utf-8").splitlines(), 1) if line.strip()]  # fmt: skip
    W, H, D, C = ann.width, ann.height, cfg.feature_dim, len(table.names)
    chains = _chains(sentences, set(ann.boxes))
    # one object per distinct annotated box (a box may belong to several chains)
    objects: dict[tuple, dict] = {}
    for chain, boxes in sorted(ann.boxes.items()):
        for b in boxes.double().numpy():
            key = tuple(np.round(b, 1))
            objects.setdefault(key, {"box": b, "chains": []})["chains"].append(chain)
    scene_heads = [ws[p.end - 1].lower() for ws, ps in sentences for p in ps if "scene" in p.types]
    background = _unit(sum((vec.identity(h) for h in scene_heads), vec.random("bg:" + image_id)))
    for obj in objects.values():
        parts = []
        for chain in obj["chains"]:
            ch = chains[chain]
            colour = sum((vec.random("colour:" + c) for c in ch["colours"]), np.zeros(D))
            parts.append(vec.identity(ch["head"]) + 0.5 * vec.random("type:" + ch["type"]) + 0.6 * _unit(colour))
        obj["vector"] = _unit(sum(parts) + 0.35 * _unit(rng.standard_normal(D)))
        classes = [_detector_class(chains[c], table) for c in obj["chains"]]
        obj["class"] = next((c for c in classes if c is not None), None)
    obj_list = list(objects.values())
    props: list[tuple[np.ndarray, str]] = []
    for obj in obj_list:
        if rng.random() >= cfg.miss_rate:
            props.append((_jitter(rng, obj["box"], W, H, 0.7, 1.0), "tight"))
    for chain, boxes in sorted(ann.boxes.items()):
        if len(boxes) > 1 and rng.random() < 0.8:
            b = boxes.double().numpy()
            union = np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])
            props.append((_jitter(rng, union, W, H, 0.7, 1.0), "group"))
    for obj in obj_list:
        for _ in range(1 + min(2, int(rng.poisson(0.8)))):
            b = _jitter(rng, obj["box"], W, H, 0.15, 0.5)
            if b is not None:
                props.append((b, "partial"))
    rng.shuffle(props)  # which proposals the cap drops must not depend on the kind order alone
    props.sort(key=lambda p: _KINDS.index(p[1]) if p[1] != "partial" else 2)
    props = props[: cfg.proposals]
    truths = [o["box"] for o in obj_list]
    for _ in range(400):
        if len(props) >= cfg.proposals:
            break
        side = rng.uniform(0.08, 0.6) * np.sqrt(W * H)
        asp = np.exp(rng.normal(0, 0.5))
        w, h = min(side * np.sqrt(asp), W - 1), min(side / np.sqrt(asp), H - 1)
        x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
        b = np.array([x, y, x + w, y + h])
        if all(_iou1(b, t) < 0.3 for t in truths):
            props.append((b, "background"))
    boxes = np.stack([p[0] for p in props])
    feats = np.zeros((len(props), D), np.float32)
    probs = np.zeros((len(props), C), np.float32)
    provenance = []
    for i, (b, kind) in enumerate(props):
        q = np.array([_quality(b, o["box"]) for o in obj_list]) if obj_list else np.zeros(0)
        mix = sum((qi * o["vector"] for qi, o in zip(q, obj_list) if qi > 0.02), np.zeros(D))
        weight = float(min(q.sum(), 1.0))
        feats[i] = _unit(mix + (1.2 - weight) * background + cfg.feature_noise * _unit(rng.standard_normal(D)))
        best = int(np.argmax(q)) if len(q) else -1
        quality = float(q[best]) if best >= 0 else 0.0
        cls = obj_list[best]["class"] if best >= 0 and quality > 0.05 else None
        row = np.zeros(C, np.float64)
        if cls is not None:
            if kind == "tight" and rng.random() < cfg.wrong_rate:
                cls = int(rng.integers(C))
            row[cls] = rng.beta(8, 2) * min(1.0, quality)
            rest = 1.0 - row[cls]
            bg = rest * rng.uniform(0.3, 0.9)
        else:
            bg = rng.uniform(0.6, 0.95) if kind == "background" or best < 0 else rng.uniform(0.4, 0.8)
            rest = 1.0
        others = rng.choice(C, size=min(3, C), replace=False)
        row[others] += (rest - bg if cls is not None else 1.0 - bg) * rng.dirichlet(np.ones(len(others)))
        probs[i] = row
        frames = [c for o, qi in zip(obj_list, q) if qi > 0.02 for c in o["chains"]]
        provenance.append({"kind": kind, "chains": sorted(set(frames)), "box": [round(float(v), 2) for v in b]})
    labels_idx = probs.argmax(1)
    det = Detections(
        image_id, torch.tensor(boxes, dtype=torch.float32), [table.names[c] for c in labels_idx],
        torch.tensor(probs.max(1), dtype=torch.float32), class_probs=torch.tensor(probs), image_size=(W, H),
    )  # fmt: skip
    stats = {"chains": chains, "objects": len(obj_list), "kinds": Counter(k for _, k in props),
             "classes": [o["class"] for o in obj_list], "sentences": sentences, "boxes": ann.boxes}  # fmt: skip
    return det, feats, provenance, stats


class _MemoryStore(DetectionStore):
    """The simulated detections with their features, for the native-store writer."""

    def __init__(self, path: Path, records: dict[str, Detections], feats: dict[str, np.ndarray], names: list[str]):
        super().__init__(path, records, names)
        self._feats = feats
        self.feature_dim = next(iter(feats.values())).shape[1] if feats else 0

    def features(self, image_id: str) -> torch.Tensor:
        return torch.from_numpy(self._feats[image_id])


# ------------------------------------------------------------------------------- stats
def _upper_bound(det: Detections, stats: dict) -> tuple[int, int]:
    """Evaluable phrases of an image and how many have a proposal with IoU >= 0.5 to their union box."""
    n = hit = 0
    for _, phrases in stats["sentences"]:
        for p in phrases:
            if p.chain_id in stats["boxes"]:
                b = stats["boxes"][p.chain_id]
                union = torch.cat([b[:, :2].min(0).values, b[:, 2:].max(0).values])[None]
                n += 1
                hit += bool((box_iou(union, det.boxes) >= 0.5).any())
    return n, hit


def _summary(per_image: dict, splits: dict, table: _ClassTable) -> dict:
    heads, chain_counts, boxes_per_chain, classed = Counter(), [], [], []
    same_class_images = 0
    class_images: Counter = Counter()
    pair_images: Counter = Counter()
    kinds: Counter = Counter()
    for det, stats in per_image.values():
        chains = stats["chains"]
        heads.update(ch["head"] for ch in chains.values())
        chain_counts.append(len(chains))
        boxes_per_chain += [len(b) for b in stats["boxes"].values()]
        cls = [c for c in stats["classes"] if c is not None]
        classed += [c is not None for c in stats["classes"]]
        same_class_images += len(cls) > len(set(cls))
        present = sorted(set(cls))
        class_images.update(present)
        pair_images.update((a, b) for i, a in enumerate(present) for b in present[i + 1 :])
        kinds.update(stats["kinds"])
    n = max(1, len(per_image))
    # a pair "co-occurs" when it is in most images holding either class (the shape world's pairs)
    strong = {p for p, k in pair_images.items() if k >= 0.5 * min(class_images[p[0]], class_images[p[1]]) and k >= 20}
    strong_images = sum(
        any((a, b) in strong for a in {c for c in s["classes"] if c is not None}
            for b in {c for c in s["classes"] if c is not None} if a < b)
        for _, s in per_image.values()
    )  # fmt: skip
    name = table.names
    return {
        "images": len(per_image),
        "splits": splits,
        "distinct_heads": len(heads),
        "top_heads": heads.most_common(25),
        "chains_per_image": round(float(np.mean(chain_counts)), 3),
        "boxes_per_chain": round(float(np.mean(boxes_per_chain)), 3),
        "chains_with_several_boxes": round(float(np.mean(np.array(boxes_per_chain) > 1)), 4),
        "objects_with_a_detector_class": round(float(np.mean(classed)), 4),
        "images_with_two_objects_of_one_class": round(same_class_images / n, 4),
        "top_class_pairs": [[name[a], name[b], k] for (a, b), k in pair_images.most_common(10)],
        "images_with_a_strongly_cooccurring_pair": round(strong_images / n, 4),
        "proposal_kinds_per_image": {k: round(kinds[k] / n, 2) for k in _KINDS},
    }


def build_feature_world(flickr_root: str | Path, out_dir: str | Path, config: FeatureWorldConfig | None = None,
                        progress: bool = True) -> dict:  # fmt: skip
    """Build the world (see the module docstring) and return its statistics (also in ``world.json``)."""
    from ..detection.native import write_native

    cfg = config or FeatureWorldConfig()
    cfg.check()
    start = time.perf_counter()
    root, out = Path(flickr_root), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "world.json").exists() and not (out / ".building").exists():
        raise FileExistsError(f"{out} is not empty and holds no feature world; refusing to write into it")
    names = _vocabulary(cfg)
    table = _ClassTable([n.split(",")[0].strip() for n in names])
    chosen = _choose(root, cfg)
    wanted = {i for ids in chosen.values() for i in ids}
    out.mkdir(parents=True, exist_ok=True)
    (out / ".building").touch()
    (out / "world.json").unlink(missing_ok=True)
    for sub in ("Annotations", "Sentences", "regions.native", ".xml"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("Annotations", "Sentences", ".xml"):
        (out / sub).mkdir()
    files: dict[str, dict[str, bytes]] = {}
    for folder, image_id, data in _annotation_files(root, wanted):
        (out / folder / f"{image_id}.{'xml' if folder == 'Annotations' else 'txt'}").write_bytes(data)
        files.setdefault(image_id, {})[folder] = data
    missing = sorted(i for i in wanted if len(files.get(i, {})) != 2)
    if missing:
        raise FileNotFoundError(f"{root}: no Annotations/Sentences files for {len(missing)} images, e.g. {missing[:3]}")
    vec = _Vectors(cfg.feature_dim, cfg.seed)
    per_image, feats, provenance = {}, {}, {}
    ids = sorted(wanted)
    with _progress(progress, "simulating regions", len(ids)) as advance:
        for image_id in ids:
            det, f, prov, stats = _simulate_image(
                image_id, files[image_id]["Annotations"], files[image_id]["Sentences"], cfg, vec, table, out / ".xml"
            )
            per_image[image_id], feats[image_id], provenance[image_id] = (det, stats), f, prov
            advance(1)
    shutil.rmtree(out / ".xml")
    splits = {}
    for split, split_ids in chosen.items():
        (out / f"{split}.txt").write_text("".join(i + "\n" for i in split_ids), encoding="utf-8")
        counts = np.array([_upper_bound(*per_image[i]) for i in split_ids] or [(0, 0)])
        splits[split] = {"images": len(split_ids), "phrases_with_box": int(counts[:, 0].sum()),
                         "upper_bound": round(float(counts[:, 1].sum() / max(1, counts[:, 0].sum())), 4)}  # fmt: skip
    (out / "classes.txt").write_text("".join(n + "\n" for n in table.names), encoding="utf-8")
    records = {i: per_image[i][0] for i in ids}
    if cfg.format == "native":
        store = _MemoryStore(out / "regions.native", records, feats, table.names)
        write_native(store, out / "regions.native", {"source": "lightning_wsg.synthetic.feature_world", "config": asdict(cfg)})
    else:
        (out / "regions_vocab.txt").write_text("".join(n + "\n" for n in table.names), encoding="utf-8")
        write_tsv(out / "regions.tsv", ((records[i], feats[i]) for i in ids), class_names=table.names)
    with (out / "provenance.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"image_id": i, "proposals": provenance[i]}) + "\n" for i in ids)
    stats = _summary(per_image, splits, table)
    meta = {"version": VERSION, "generator": "lightning_wsg.synthetic.feature_world", "config": asdict(cfg), "stats": stats}
    tmp = out / "world.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "world.json")
    (out / ".building").unlink()
    return stats | {"seconds": round(time.perf_counter() - start, 1)}


def world_is_complete(out_dir: str | Path, config: FeatureWorldConfig) -> bool:
    """Whether ``out_dir`` holds a finished feature world built with ``config``."""
    try:
        meta = json.loads((Path(out_dir) / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("version") == VERSION and meta.get("config") == asdict(config)


def read_provenance(root: str | Path) -> dict[str, list[dict]]:
    """``image_id -> [{"kind", "chains"}, ...]``, one per proposal in store order."""
    path = Path(root) / "provenance.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a world written by lightning_wsg.synthetic.feature_world?")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            out[str(record["image_id"])] = list(record["proposals"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a provenance record ({err!r})") from err
    return out
