"""Built-in synthetic dataset: textured shapes on textured backgrounds with exact masks (demo and tests).

Each class has its own shape, hue and texture, so a tiny model learns it in a few hundred CPU
iterations; size, position, rotation, colour and occlusion vary per object. Written in the folder
layout (`images/`, `masks/`, `classes.txt`, `train.txt`, `val.txt`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

# name, base colour (RGB), texture: one row per object class; background is class 0.
SHAPES = (
    ("disk", (220, 60, 50), "plain"),
    ("square", (60, 170, 70), "stripes"),
    ("triangle", (50, 90, 220), "checker"),
    ("ring", (230, 200, 40), "plain"),
    ("cross", (200, 70, 200), "dots"),
    ("diamond", (40, 200, 210), "stripes"),
    ("bar", (250, 140, 30), "checker"),
)
MAX_CLASSES = len(SHAPES) + 1


def _shape(name: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside test in the object's rotated frame (u, v), radius r."""
    if name == "disk":
        return u * u + v * v < r * r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8 * r
    if name == "triangle":  # apex at (0, -r), base at v = r / 2
        return (v <= r / 2) & (v >= -r + np.sqrt(3) * np.abs(u))
    if name == "ring":
        d2 = u * u + v * v
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    if name == "cross":
        return ((np.abs(u) < 0.3 * r) & (np.abs(v) < r)) | ((np.abs(v) < 0.3 * r) & (np.abs(u) < r))
    if name == "diamond":
        return np.abs(u) + np.abs(v) < r
    return (np.abs(u) < r) & (np.abs(v) < 0.35 * r)  # bar


def _texture(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Brightness pattern in [0, 1] over the object's frame."""
    if kind == "stripes":
        return (np.sin(u * (2 * np.pi / period)) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        return ((np.mod(u, period) - period / 2) ** 2 + (np.mod(v, period) - period / 2) ** 2
                < (period / 3) ** 2).astype(np.float32)
    return np.full(u.shape, 0.5, np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation base tint, two random low-frequency waves, and pixel noise; (H, W, 3) float."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    tint = rng.uniform(70, 170) + rng.uniform(-20, 20, size=3)
    shade = np.zeros((height, width), np.float32)
    for _ in range(2):
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8) * max(height, width)
        shade += 18 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * (2 * np.pi / period) + rng.uniform(0, 6.3))
    return tint + shade[..., None] + rng.normal(0, 10, size=(height, width, 3))


def render_scene(rng: np.random.Generator, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (H, W, 3) uint8 and its exact mask (H, W) uint8 (0 = background)."""
    image = _background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    for _ in range(rng.integers(1, 4, endpoint=True)):
        cls = int(rng.integers(1, num_classes))
        name, colour, kind = SHAPES[cls - 1]
        r = rng.uniform(0.12, 0.3) * side
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        reach = 1.2 * r  # every shape fits in a disk of this radius, at any rotation
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        inside = _shape(name, u, v, r)
        pattern = _texture(kind, u, v, period=max(r / 3, 3.0))
        base = np.clip(np.array(colour) * rng.uniform(0.8, 1.2) + rng.uniform(-25, 25, size=3), 0, 255)
        pixels = base * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 6, size=(*pattern.shape, 3))
        image[y0:y1, x0:x1][inside] = pixels[inside]
        mask[y0:y1, x0:x1][inside] = cls
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_synthetic(root: str | Path, num_train: int = 200, num_val: int = 50, size: int | tuple[int, int] = 128,
                       seed: int = 0, num_classes: int = 5, progress: bool = False) -> Path:
    """Write the dataset under `root`; `size` is a side or (width, height). Returns `root`."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}] (background + up to {len(SHAPES)} shapes); "
                         f"got {num_classes}")
    width, height = (size, size) if isinstance(size, int) else size
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    palette = [("background", (0, 0, 0))] + [(name, colour) for name, colour, _ in SHAPES[: num_classes - 1]]
    (root / "classes.txt").write_text("".join(f"{name} {r} {g} {b}\n" for name, (r, g, b) in palette))
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for index in tqdm(range(count), desc=f"synthetic {split}", disable=not progress):
            image, mask = render_scene(rng, height, width, num_classes)
            stem = f"{split}_{index:05d}"
            Image.fromarray(image).save(root / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
            lines.append(f"images/{stem}.jpg masks/{stem}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root
