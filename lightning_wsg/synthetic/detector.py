"""The simulated detector: jittered true boxes, misses, wrong labels, loose duplicates, false boxes.

Its labels are category names only (or, with ``caption_nouns="varied"``, the COCO class each
category stands for): never the attributes the captions use to tell objects apart.
"""

from __future__ import annotations

import numpy as np

from .rendering import _clip, _iou1
from .vocabulary import _CATS, detector_name


def _detect(
    rng: np.random.Generator, objs: list[dict], s: int, d: float, st: dict, nouns: str = "category"
) -> tuple[list, list, list]:
    """Simulated detector: jittered true boxes, misses, wrong labels, loose duplicates, false boxes."""
    boxes, labels, scores, kinds = [], [], [], []
    other = lambda c: [k for k in _CATS if k != c][rng.integers(len(_CATS) - 1)]

    def add(box, label, score, kind):
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            boxes.append(box)
            labels.append(label)
            scores.append(min(max(float(score), 0.01), 1.0))
            kinds.append(kind)

    truths = [o["box"].tolist() for o in objs]
    for t, o in zip(truths, objs):
        c, w, h = o["category"], t[2] - t[0], t[3] - t[1]
        st["objects"] += 1
        if rng.random() < 0.14 * d:
            st["missed"] += 1
        else:
            for _ in range(10):  # jitter by a few pixels, IoU >= 0.55 guaranteed
                b = _clip(np.add(t, rng.normal(0, (0.015 + 0.07 * d) * np.sqrt(w * h), 4)), s)
                if _iou1(b, t) >= 0.55:
                    break
            else:
                b = list(t)
            wrong = rng.random() < 0.2 * d
            st["wrong"] += wrong
            st["tight_iou"].append(_iou1(b, t))
            add(b, other(c) if wrong else c, rng.uniform(0.3, 0.8) if wrong else rng.uniform(0.55, 1.0), "tight")
        for _ in range(min(3, rng.poisson(0.4 + 2.4 * d))):  # loose duplicates, IoU 0.3-0.6
            for _ in range(30):
                f = (rng.uniform(0.2, 0.6, 2) * rng.choice([-1, 1], 2)).tolist()
                g = (rng.uniform(0.8, 1.8, 2) if rng.random() < 0.5 else rng.uniform(0.45, 1.0, 2)).tolist()
                cx, cy = (t[0] + t[2]) / 2 + f[0] * w, (t[1] + t[3]) / 2 + f[1] * h
                b = _clip([cx - g[0] * w / 2, cy - g[1] * h / 2, cx + g[0] * w / 2, cy + g[1] * h / 2], s)
                if 0.3 <= _iou1(b, t) <= 0.6:
                    add(b, c if rng.random() < 0.8 else other(c), rng.uniform(0.2, 0.9), "dup")
                    break
    for i, o in enumerate(objs):  # group boxes around two objects of one category
        for j in range(i + 1, len(objs)):
            if o["category"] == objs[j]["category"] and rng.random() < 0.5:
                u = [
                    min(truths[i][0], truths[j][0]),
                    min(truths[i][1], truths[j][1]),
                    max(truths[i][2], truths[j][2]),
                    max(truths[i][3], truths[j][3]),
                ]
                add(_clip(np.add(u, rng.normal(0, 1.0, 4)), s), o["category"], rng.uniform(0.2, 0.7), "group")
    target = int(rng.integers(10, 31))
    goal = len(boxes) + max(target - len(boxes), int(rng.poisson(1 + 4 * d)))
    for _ in range(400):  # false boxes on the background
        if len(boxes) >= goal:
            break
        side, asp = rng.uniform(0.1, 0.45) * s, rng.uniform(0.6, 1.6)
        w, h = side * np.sqrt(asp), side / np.sqrt(asp)
        x, y = rng.uniform(0, s - w), rng.uniform(0, s - h)
        b = [x, y, x + w, y + h]
        if max(_iou1(b, t) for t in truths) < 0.25:
            add(b, _CATS[rng.integers(len(_CATS))], rng.uniform(0.02, 0.45), "false")
    order = sorted(range(len(boxes)), key=lambda k: (kinds[k] == "tight", scores[k]), reverse=True)[:30]
    order = sorted(order, key=lambda k: -scores[k])
    return [boxes[k] for k in order], [detector_name(labels[k], nouns) for k in order], [scores[k] for k in order]
