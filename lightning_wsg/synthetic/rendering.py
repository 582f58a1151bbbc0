"""Drawing a scene: its categories and attributes, shapes, textures, a cluttered background, placement.

Every function draws from the image's own generator in a fixed order: the world's bytes for a
seed depend on that order, so a change here changes every generated world.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import _CATS, CATEGORIES, COLOURS, PAIRS, PARTNER, SIZES, TEXTURES


def _shape_mask(cat: str, w: int, h: int, flip: bool) -> np.ndarray:
    """A boolean ``[h, w]`` mask of the category's shape filling a ``w x h`` patch."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    W, H = w - 1, h - 1
    if cat == "ball":
        d.ellipse((0, 0, W, H), fill=1)
    elif cat == "box":
        d.rectangle((0, 0, W, H), fill=1)
    elif cat == "kite":
        d.polygon([(W / 2, 0), (W, H * 0.4), (W / 2, H), (0, H * 0.4)], fill=1)
    elif cat == "star":
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        d.polygon([(W / 2 + r * W / 2 * np.cos(a), H / 2 - r * H / 2 * np.sin(a)) for a, r in zip(ang, rad)], fill=1)
    elif cat == "ring":
        d.ellipse((0, 0, W, H), fill=1)
        d.ellipse((W * 0.27, H * 0.27, W * 0.73, H * 0.73), fill=0)
    elif cat == "cross":
        d.rectangle((W * 0.33, 0, W * 0.67, H), fill=1)
        d.rectangle((0, H * 0.33, W, H * 0.67), fill=1)
    elif cat == "car":
        d.rectangle((0, H * 0.3, W, H * 0.72), fill=1)
        d.polygon([(W * 0.22, H * 0.35), (W * 0.33, 0), (W * 0.67, 0), (W * 0.78, H * 0.35)], fill=1)
        d.ellipse((W * 0.06, H * 0.5, W * 0.38, H), fill=1)
        d.ellipse((W * 0.62, H * 0.5, W * 0.94, H), fill=1)
    elif cat == "fish":
        d.ellipse((0, 0, W * 0.72, H), fill=1)
        d.polygon([(W * 0.6, H / 2), (W, 0), (W, H)], fill=1)
    elif cat == "hat":
        d.polygon([(W * 0.25, H * 0.7), (W * 0.32, 0), (W * 0.68, 0), (W * 0.75, H * 0.7)], fill=1)
        d.rectangle((0, H * 0.62, W, H), fill=1)
    mask = np.asarray(img, dtype=bool)
    return mask[:, ::-1] if flip else mask


def _texture(colour, texture: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An ``[h, w, 3]`` fill: the colour, with dark stripes or dots."""
    fill = np.empty((h, w, 3), np.float32)
    fill[:] = colour
    if texture == "plain":
        return fill
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dark = np.asarray(colour, np.float32) * 0.3
    if texture == "striped":
        t = rng.uniform(0, np.pi)
        on = ((xx * np.cos(t) + yy * np.sin(t)) // 2.5) % 2 == 0
    else:
        on = ((xx % 6.0 - 2.5) ** 2 + (yy % 6.0 - 2.5) ** 2) <= 2.6
    fill[on] = dark
    return fill


def _background(rng: np.random.Generator, s: int) -> tuple[np.ndarray, str]:
    """Low-saturation clutter: tinted grey, gradient, noise, stripes, faint shapes."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    base = rng.uniform(70, 190) + rng.uniform(-18, 18, 3)
    t = rng.uniform(0, 2 * np.pi)
    img = (base + (rng.uniform(-25, 25) * ((xx * np.cos(t) + yy * np.sin(t)) / s))[..., None]).astype(np.float32)
    kind = "noisy"
    if rng.random() < 0.5:
        t, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        img += (rng.uniform(8, 18) * np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period))[..., None]
        kind = "striped"
    for _ in range(rng.integers(2, 7)):
        w, h = (int(v) for v in rng.integers(max(4, s // 16), max(5, s // 3), 2))
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        m = _shape_mask(_CATS[rng.integers(len(_CATS))], w, h, False)
        alpha = rng.uniform(0.1, 0.25)
        patch = img[y : y + h, x : x + w]
        patch[m] = (1 - alpha) * patch[m] + alpha * rng.uniform(0, 255, 3)
    img += rng.standard_normal((s, s, 1), np.float32) * np.float32(rng.uniform(5, 14))
    img += rng.random((s, s, 3), np.float32) * np.float32(12) - np.float32(6)
    return img, kind


def _iou1(a, b) -> float:
    """IoU of two corner boxes (plain floats; the hot path of the detector)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _clip(b, s: int) -> list[float]:
    return [min(max(float(v), 0.0), float(s)) for v in b]


def _scene_categories(rng: np.random.Generator, distractor_rate: float, pair_rate: float) -> tuple[list, str | None]:
    """Categories of one scene (a distractor category appears twice) and that category."""
    cats: list[str] = []
    if rng.random() < pair_rate:
        cats += list(PAIRS[rng.integers(len(PAIRS))])
    dup = None
    if rng.random() < distractor_rate:
        dup = cats[rng.integers(2)] if cats and rng.random() < 0.6 else _CATS[rng.integers(len(_CATS))]
        cats += [dup] if dup in cats else [dup, dup]
    n = max(int(rng.integers(2, 6)), len(cats))
    while len(cats) < n:
        free = [c for c in _CATS if c not in cats]
        c = free[rng.integers(len(free))]
        p = PARTNER.get(c)
        if p is None or p in cats or rng.random() < 0.15:
            cats.append(c)
        elif n - len(cats) >= 2:
            cats += [c, p]
    return cats, dup


def _attributes(rng: np.random.Generator, cats: list[str], dup: str | None) -> list[dict]:
    objs, dup_colours = [], []
    for c in cats:
        colours = [k for k in COLOURS if k not in dup_colours] if c == dup else list(COLOURS)
        colour = colours[rng.integers(len(colours))]
        if c == dup:
            dup_colours.append(colour)
        texture = TEXTURES[rng.choice(3, p=[0.6, 0.2, 0.2])]
        objs.append({"category": c, "colour": colour, "size": list(SIZES)[rng.integers(2)], "texture": texture})
    return objs


def _place(rng: np.random.Generator, objs: list[dict], s: int) -> list[dict]:
    """Give objects masks and positions overlapping little (box IoU < 0.05); drop those that do not fit."""
    placed: list[dict] = []
    for o in objs:
        for attempt in range(60):
            size = "small" if attempt >= 40 else o["size"]
            side = rng.uniform(*SIZES[size]) * s
            asp = CATEGORIES[o["category"]][1] * rng.uniform(0.9, 1.1)
            w, h = max(6, round(side * np.sqrt(asp))), max(6, round(side / np.sqrt(asp)))
            x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            mask = _shape_mask(o["category"], w, h, bool(rng.random() < 0.5))
            ys, xs = np.nonzero(mask)
            box = np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], np.float64)
            if all(_iou1(box.tolist(), p["box"].tolist()) < 0.05 for p in placed):
                placed.append(o | {"size": size, "box": box, "mask": mask, "xy": (x, y)})
                break
    if len(placed) < 2:
        raise RuntimeError("could not place two objects; is the image size too small?")
    return placed


def _render(rng: np.random.Generator, objs: list[dict], s: int) -> tuple[Image.Image, str]:
    img, kind = _background(rng, s)
    for o in objs:
        (x, y), m = o["xy"], o["mask"]
        h, w = m.shape
        fill = _texture(COLOURS[o["colour"]], o["texture"], h, w, rng)
        img[y : y + h, x : x + w][m] = fill[m]
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)), kind
