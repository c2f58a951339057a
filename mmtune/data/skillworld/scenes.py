"""SkillWorld scenes: the vocabulary of a picture, the digit image split, and rendering.

A *scene* is a JSON-able dict of the facts a question is about; the picture is rendered from
it with random (seeded) jitter that is *not* part of the facts:

- grid scene: ``{"kind": "grid", "cells": [obj | None] * 4, "query": {...}}``, cells in
  :data:`POSITIONS` order, ``obj = {"shape", "color", "size"}``;
- digit scene: ``{"kind": "digits", "digits": [{"value", "index"}, ...], "query": {...}}``,
  one digit, or two digits ordered left, right; ``index`` points into
  ``sklearn.datasets.load_digits()``.

``query`` holds the question's parameters (and ``options`` for multiple choice), so a
scene alone is enough to re-derive the gold steps and answer (see ``verifier.py``).
"""

from __future__ import annotations

import importlib.util
import random
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")

# Base RGB per colour; each object gets +-SHADE_JITTER per channel, which keeps the four
# hues far apart (the task is colour naming, not shade discrimination).
RGB = {"red": (215, 45, 45), "green": (45, 185, 70), "blue": (55, 95, 230), "yellow": (230, 205, 45)}
SHADE_JITTER = 20
BACKGROUND = (22, 22, 30)
BG_JITTER = 6
# Object side as a fraction of the cell side: small and large never overlap (0.30-0.40 vs
# 0.70-0.80), so "size" is a clean fact, while the jitter stops it being a pixel count.
SIZE_FRAC = {"small": 0.35, "large": 0.75}
SIZE_JITTER = 0.05
CELL_MARGIN = 0.05  # keeps objects off the cell border, so cells never touch visually
SUPERSAMPLE_TO = 128  # draw at >=128 px and box-downsample: anti-aliased shapes stay legible at 32 px

# Digits: a fixed split of the 1797 sklearn digit images, independent of the run seed, so
# target images are unseen by corpus and generic data for *every* seed.
DIGIT_SPLIT_SEED = 1797
TARGET_DIGIT_FRACTION = 0.3
SINGLE_DIGIT_FRAC = (0.60, 0.75)  # digit side / image side
PAIR_DIGIT_FRAC = (0.80, 0.95)  # digit side / half-image side


def _jitter(rgb: tuple[int, int, int], amount: int, rng: random.Random) -> tuple[int, int, int]:
    span = 2 * amount + 1  # int(random() * span) is randint(-amount, amount) at a quarter of the cost
    return tuple(min(255, max(0, c + int(rng.random() * span) - amount)) for c in rgb)  # type: ignore[return-value]


def encode_png(im: Image.Image) -> bytes:
    """A minimal RGB PNG encoder.

    Why not ``Image.save``: PIL's PNG plugin costs ~170 us per call on tiny images, which
    dominated generation time; this writes the same standard PNG (one IDAT) in ~40 us.
    zlib level 1: these images are ~0.3 KB anyway, and level 6 costs twice the time.
    """
    w, h = im.size
    raw = np.frombuffer((im if im.mode == "RGB" else im.convert("RGB")).tobytes(), np.uint8)
    scan = np.zeros((h, 1 + 3 * w), np.uint8)  # each scanline starts with filter byte 0 (None)
    scan[:, 1:] = raw.reshape(h, 3 * w)
    rows = scan.tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- grid
def render_grid(cells: list[dict | None], rng: random.Random, size: int = 32) -> bytes:
    """Render a 2x2 grid scene to PNG bytes (``size`` x ``size``)."""
    f = max(1, SUPERSAMPLE_TO // size)
    side_px = size * f
    half = side_px / 2
    im = Image.new("RGB", (side_px, side_px), _jitter(BACKGROUND, BG_JITTER, rng))
    draw = ImageDraw.Draw(im)
    for i, obj in enumerate(cells):
        if obj is None:
            continue
        side = half * (SIZE_FRAC[obj["size"]] + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
        margin = half * CELL_MARGIN
        slack = max(0.0, half - side - 2 * margin)
        x = (i % 2) * half + margin + rng.uniform(0, slack)
        y = (i // 2) * half + margin + rng.uniform(0, slack)
        fill = _jitter(RGB[obj["color"]], SHADE_JITTER, rng)
        if obj["shape"] == "circle":
            draw.ellipse([x, y, x + side, y + side], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([x, y, x + side, y + side], fill=fill)
        else:  # triangle, apex up
            draw.polygon([(x + side / 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    if f > 1:
        im = im.reduce(f)  # box average: fast anti-aliasing
    return encode_png(im)


# --------------------------------------------------------------------------- digits
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled digits (1797 x 8 x 8, values 0..16) and labels, offline.

    Reads ``sklearn/datasets/data/digits.csv.gz`` directly (what ``load_digits`` parses):
    importing sklearn itself (and scipy with it) costs seconds, the file ~20 ms.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.exists():
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(int)


@lru_cache(maxsize=1)
def _digits() -> tuple[list[Image.Image], np.ndarray]:
    images, labels = _load_digits()
    # 0..16 grey levels -> 0..255 alpha masks, as PIL images once (fromarray per use is slow)
    masks = np.clip(images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return [Image.fromarray(m, "L") for m in masks], labels


@lru_cache(maxsize=1)
def digit_pools() -> dict[str, dict[int, tuple[int, ...]]]:
    """``{"corpus": {digit: indices}, "target": {digit: indices}}``: a fixed, stratified split.

    Per digit class, the class's image indices are shuffled with ``DIGIT_SPLIT_SEED + class``
    and the first ``round(TARGET_DIGIT_FRACTION * n)`` go to the targets (val and test);
    the rest feed the corpus and the generic mix. The two pools are disjoint.
    """
    _, labels = _digits()
    pools: dict[str, dict[int, tuple[int, ...]]] = {"corpus": {}, "target": {}}
    for cls in range(10):
        idx = [int(i) for i in np.flatnonzero(labels == cls)]
        random.Random(DIGIT_SPLIT_SEED + cls).shuffle(idx)
        k = round(TARGET_DIGIT_FRACTION * len(idx))
        pools["target"][cls] = tuple(sorted(idx[:k]))
        pools["corpus"][cls] = tuple(sorted(idx[k:]))
    return pools


def render_digits(indices: list[int], rng: random.Random, size: int = 32) -> bytes:
    """Render one digit (scaled to 60-75% of the image) or two side by side (left, right)."""
    masks, _ = _digits()
    im = Image.new("RGB", (size, size), _jitter(BACKGROUND, BG_JITTER, rng))
    ink = _jitter((235, 235, 235), SHADE_JITTER, rng)
    if len(indices) == 1:
        boxes = [(0, size, SINGLE_DIGIT_FRAC)]
    else:  # left half, right half
        boxes = [(0, size // 2, PAIR_DIGIT_FRAC), (size // 2, size - size // 2, PAIR_DIGIT_FRAC)]
    for index, (x0, width, (lo, hi)) in zip(indices, boxes):
        side = max(4, round(width * rng.uniform(lo, hi)))
        x = x0 + rng.randint(0, max(0, width - side))
        y = rng.randint(0, max(0, size - side))
        mask = masks[index].resize((side, side), Image.BILINEAR)
        im.paste(ink, (x, y, x + side, y + side), mask)
    return encode_png(im)


def render_scene(scene: dict, rng: random.Random, size: int = 32) -> bytes:
    """PNG bytes for a grid or digit scene."""
    if scene["kind"] == "grid":
        return render_grid(scene["cells"], rng, size)
    return render_digits([d["index"] for d in scene["digits"]], rng, size)
