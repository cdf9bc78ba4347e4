"""Built-in synthetic dataset: textured shapes on textured backgrounds with exact masks (demo and tests).

Each class has its own shape, hue and texture, so a tiny model learns it in a few hundred CPU
iterations; size, position, rotation, colour and occlusion vary per object. Two class tables: the demo's
(SHAPES) and a source set (SOURCE_SHAPES) sharing no shape, hue or texture with the demo's classes, to
pretrain an encoder with labels on other objects. Written in the folder layout (`images/`, `masks/`,
`classes.txt`, `train.txt`, `val.txt`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from allspark.progress import progress_bar

# name, hue (0..1), texture: one row per object class; background is class 0.
SHAPES = (
    ("disk", 0.0, "plain"),
    ("square", 0.33, "stripes"),
    ("triangle", 0.62, "checker"),
    ("ring", 0.15, "plain"),
    ("cross", 0.8, "dots"),
    ("diamond", 0.48, "stripes"),
    ("bar", 0.08, "checker"),
)
# The source set's classes: other shapes, textures and hues (each at least 0.13 from the demo's 0.0, 0.33, 0.62).
SOURCE_SHAPES = (
    ("star", 0.16, "rings"),
    ("crescent", 0.47, "grid"),
    ("ell", 0.75, "noise"),
    ("cross", 0.87, "dots"),
)
CLASS_TABLES = {"demo": SHAPES, "source": SOURCE_SHAPES}
HUE_JITTER = 0.06  # an object's hue is its class hue give or take this
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
    if name == "star":  # five rounded points, from 0.4 r to r
        return np.hypot(u, v) < r * (0.7 + 0.3 * np.cos(5 * np.arctan2(v, u)))
    if name == "crescent":  # a disk less an offset smaller disk
        return (u * u + v * v < r * r) & ((u - 0.45 * r) ** 2 + v * v > (0.8 * r) ** 2)
    if name == "ell":  # a square less one corner square
        return (np.maximum(np.abs(u), np.abs(v)) < 0.8 * r) & ((u < -0.2 * r) | (v > 0.2 * r))
    return (np.abs(u) < r) & (np.abs(v) < 0.35 * r)  # bar


def _frame(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in an object's frame: centred on (cx, cy), rotated by `angle`."""
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    return u, v


def _texture(kind: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness pattern in [0, 1] over the object's frame (`rng` draws the noise texture only)."""
    if kind == "stripes":
        return (np.sin(u * (2 * np.pi / period)) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        return ((np.mod(u, period) - period / 2) ** 2 + (np.mod(v, period) - period / 2) ** 2
                < (period / 3) ** 2).astype(np.float32)
    if kind == "rings":  # concentric about the object's centre
        return (np.sin(np.hypot(u, v) * (2 * np.pi / period)) > 0).astype(np.float32)
    if kind == "grid":  # thin lines along both axes
        return ((np.mod(u, period) < period / 4) | (np.mod(v, period) < period / 4)).astype(np.float32)
    if kind == "noise":  # a random value per pixel
        return (rng.random(u.shape) < 0.5).astype(np.float32)
    return np.full(u.shape, 0.5, np.float32)


def _background(rng: np.random.Generator, height: int, width: int, textures: tuple[str, ...]) -> np.ndarray:
    """Random base colour, two random low-frequency waves, distractor blobs and pixel noise; (H, W, 3) float.

    The blobs (ellipses of random colour and of one of `textures`, the class table's) belong to the
    background, so texture and colour alone do not tell an object from clutter."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.broadcast_to(rng.uniform(40, 200, size=3), (height, width, 3)).astype(np.float32)
    shade = np.zeros((height, width), np.float32)
    for _ in range(2):
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8) * max(height, width)
        shade += 18 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * (2 * np.pi / period) + rng.uniform(0, 6.3))
    image = image + shade[..., None]
    side = min(height, width)
    for _ in range(rng.integers(0, 2, endpoint=True)):
        a, b = rng.uniform(0.05, 0.25) * side, rng.uniform(0.02, 0.08) * side  # elongated: never disk-like
        cy, cx, angle = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, np.pi)
        u, v = _frame(x, y, cx, cy, angle)
        inside = (u / a) ** 2 + (v / b) ** 2 < 1
        kind = textures[int(rng.integers(len(textures)))]
        pattern = _texture(kind, u, v, rng.uniform(3, 8), rng)
        image[inside] = (_random_colour(rng) * (0.6 + 0.4 * pattern[..., None]))[inside]
    return image + rng.normal(0, 10, size=(height, width, 3))


def _random_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    """A colour of random saturation and brightness, (3,) float; its hue is `hue` give or take
    HUE_JITTER, or anything when `hue` is None."""
    hue = rng.uniform(0, 1) if hue is None else hue + rng.uniform(-HUE_JITTER, HUE_JITTER)
    return _hsv(hue, rng.uniform(0.35, 1.0), rng.uniform(90, 250))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB (3,) float of a smooth hue wheel: hue in [0, 1), saturation in [0, 1], value in [0, 255]."""
    wave = 0.5 + 0.5 * np.cos(2 * np.pi * (hue - np.array([0.0, 1 / 3, 2 / 3])))  # R, G, B in [0, 1]
    return value * (1 - saturation + saturation * wave)


def class_table(classes: str) -> tuple[tuple[str, float, str], ...]:
    """The (name, hue, texture) rows of CLASS_TABLES[`classes`]."""
    if classes not in CLASS_TABLES:
        raise ValueError(f"classes must be one of {', '.join(CLASS_TABLES)}; got {classes!r}")
    return CLASS_TABLES[classes]


def render_scene(rng: np.random.Generator, height: int, width: int, num_classes: int,
                 classes: str = "demo") -> tuple[np.ndarray, np.ndarray]:
    """One scene of the `classes` table's first num_classes - 1 classes: image (H, W, 3) uint8 and its exact
    mask (H, W) uint8 (0 = background)."""
    table = class_table(classes)
    image = _background(rng, height, width, tuple(dict.fromkeys(kind for _, _, kind in table)))
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    for _ in range(rng.integers(3, 6, endpoint=True)):
        cls = int(rng.integers(1, num_classes))
        name, hue, kind = table[cls - 1]
        r = rng.uniform(0.12, 0.32) * side
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        reach = 1.2 * r  # every shape fits in a disk of this radius, at any rotation
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        u, v = _frame(x, y, cx, cy, angle)
        inside = _shape(name, u, v, r)
        pattern = _texture(kind, u, v, max(r / 3, 3.0), rng)
        base = _random_colour(rng, hue)
        pixels = base * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 6, size=(*pattern.shape, 3))
        image[y0:y1, x0:x1][inside] = pixels[inside]
        mask[y0:y1, x0:x1][inside] = cls
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_synthetic(root: str | Path, num_train: int = 200, num_val: int = 50, size: int | tuple[int, int] = 128,
                       seed: int = 0, num_classes: int = 5, progress: bool = False,
                       classes: str = "demo") -> Path:
    """Write the dataset of the `classes` table (demo | source) under `root`; `size` is a side or (width, height).
    Returns `root`."""
    table = class_table(classes)
    if not 2 <= num_classes <= len(table) + 1:
        raise ValueError(f"num_classes must be in [2, {len(table) + 1}] (background + up to {len(table)} {classes} "
                         f"shapes); got {num_classes}")
    width, height = (size, size) if isinstance(size, int) else size
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    palette = [("background", (0, 0, 0))] + [(name, _hsv(hue, 0.8, 230).astype(int))
                                             for name, hue, _ in table[: num_classes - 1]]
    (root / "classes.txt").write_text("".join(f"{name} {r} {g} {b}\n" for name, (r, g, b) in palette))
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for index in progress_bar(range(count), desc=f"synthetic {split}", enabled=progress):
            image, mask = render_scene(rng, height, width, num_classes, classes)
            stem = f"{split}_{index:05d}"
            Image.fromarray(image).save(root / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
            lines.append(f"images/{stem}.jpg masks/{stem}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


# What each list written by `write_bad_samples` holds, for the error tests and benchmarks/studies/bad_inputs.py.
BAD_SAMPLES = {"truncated": "truncated JPEG", "value": "mask value 7 of 3 classes", "rgb": "RGB mask",
               "size": "mask size mismatch", "missing": "missing image file", "three": "three-field list line",
               "empty": "empty list"}


def write_bad_samples(root: str | Path) -> dict[str, str]:
    """One list per kind of bad sample (BAD_SAMPLES) under ROOT/bad, beside a synthetic folder dataset of 3
    classes: {kind: list path relative to root}. The bad pair is listed twice, so the first batch holds it."""
    root = Path(root)
    bad = root / "bad"
    bad.mkdir()
    image, mask_file = "images/train_00000.jpg", "masks/train_00000.png"
    raw = (root / image).read_bytes()
    (bad / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    mask = np.array(Image.open(root / mask_file))
    Image.fromarray(np.full_like(mask, 7)).save(bad / "value7.png")
    Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(bad / "rgb.png")
    Image.fromarray(mask[:40]).save(bad / "short.png")
    lines = {"truncated": f"bad/truncated.jpg {mask_file}", "value": f"{image} bad/value7.png",
             "rgb": f"{image} bad/rgb.png", "size": f"{image} bad/short.png",
             "missing": f"images/absent.jpg {mask_file}", "three": f"{image} {mask_file} extra"}
    for kind, line in lines.items():
        (bad / f"{kind}.txt").write_text(f"{line}\n{line}\n")
    (bad / "empty.txt").write_text("\n")
    return {kind: f"bad/{kind}.txt" for kind in BAD_SAMPLES}
