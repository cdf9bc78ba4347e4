"""Run a trained model on new images: the `Predictor` API, and the files `allspark predict` writes."""
from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from allspark.config import WHOLE_IMAGE_MODES
from allspark.data.colors import colorize, legend_entries, legend_image, overlay
from allspark.data.io import read_image, rgb_array
from allspark.data.layouts import IMAGE_EXTS
from allspark.data.transforms import normalize_image
from allspark.engine.evaluate import eval_window
from allspark.engine.inference import predict_probs, window_stride
from allspark.engine.onnx_engine import load_engine
from allspark.engine.tiled import tiled_rows, window_grid

MIN_SIDE = 32  # the encoder's coarsest stage is 1/32 of the input; its first attention needs >= 29 px
DEFAULT_MAX_PIXELS = 1024 * 1024  # whole-image MiT-B0 inference at 1024x1024 peaks near 1.2 GB on the CPU
TILE_WINDOW = 512  # tile side for models predicted whole (at least their training crop)
LEGEND_FILES = ("legend.png", "legend.json")


def _size(pixels: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(H, W) of a uint8 (H, W, 3) array or a (3, H, W) tensor."""
    return tuple(pixels.shape[1:]) if isinstance(pixels, torch.Tensor) else pixels.shape[:2]


class Predictor:
    """Segment images with a trained model, without the CLI.

    `predict(image)` accepts a PIL image (any mode; 16-bit grey is scaled to 8 bits), a uint8 numpy
    array (H, W, 3) (or (H, W), taken as grey), or a float tensor (3, H, W) already normalised like the
    training data (ImageNet mean/std); it returns the class-index mask (H, W) as numpy (uint8 for up to
    256 classes, else int64). `mode` is "whole" or "sliding" (default: the config's eval mode, "whole"
    for "center", whose prediction would not cover the image); `window` defaults to the eval crop size;
    `device` is auto (CUDA when available), cpu or cuda, as `--device` everywhere. `checkpoint` is a run
    directory, a weights file or an `allspark export` .onnx file; `engine` (auto, torch, onnx) picks PyTorch or
    that graph under onnxruntime (see `allspark.engine.onnx_engine.load_engine`); `engine_note` says which runs.

    Images of more than `max_pixels` pixels (default DEFAULT_MAX_PIXELS; after the largest of `scales`) go in tiles
    unless `tile="off"`: sliding windows of `tile_window` px (the sliding window, `window`, or the
    larger of TILE_WINDOW and the training crop), one at a time, flip and scales applied per window,
    so memory stays bounded whatever the image size (see `allspark.engine.tiled`)."""

    def __init__(self, checkpoint, device: str | torch.device = "auto", mode: str | None = None,
                 window: int | None = None, stride_ratio: float | None = None, flip: bool = False,
                 scales: Sequence[float] = (1.0,), which: str = "best", tile: str = "auto",
                 max_pixels: int | None = None, engine: str = "auto"):
        loaded = load_engine(checkpoint, engine, which, device)
        model, cfg, device = loaded.model, loaded.cfg, loaded.device
        mode = mode or ("whole" if cfg.eval.mode == "center" else cfg.eval.mode)
        if mode not in WHOLE_IMAGE_MODES:
            raise ValueError(f"Predictor mode must be one of {', '.join(WHOLE_IMAGE_MODES)}; got {mode!r} "
                             "(centre crop predicts only part of the image)")
        self.model, self.cfg, self.device = model, cfg, device
        if tile not in ("auto", "off"):
            raise ValueError(f"tile must be 'auto' or 'off'; got {tile!r}")
        self.options = dict(mode=mode, window=window or eval_window(cfg),
                            stride_ratio=stride_ratio or cfg.eval.stride_ratio, flip=flip, scales=tuple(scales))
        whole_tile = window or max(TILE_WINDOW, cfg.model.crop_size)
        self.tile_window = self.options["window"] if mode == "sliding" else whole_tile
        self.tile, self.max_pixels = tile, max_pixels or DEFAULT_MAX_PIXELS
        self.class_names, self.palette = loaded.class_names, loaded.palette
        self.engine, self.engine_note = loaded.name, loaded.note

    @property
    def num_classes(self) -> int:
        return self.cfg.model.num_classes

    def pixels(self, image) -> np.ndarray | torch.Tensor:
        """A uint8 array (H, W, 3) or a normalised float tensor (3, H, W), checked; raises ValueError
        for wrong types and for images under MIN_SIDE px on a side (after the smallest scale, in whole mode)."""
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
                raise ValueError(f"tensor images must be normalised float (3, H, W); got {image.dtype} "
                                 f"{tuple(image.shape)}")
            pixels = image.float()
        else:
            if isinstance(image, Image.Image):
                image = rgb_array(image, getattr(image, "filename", "") or "image")
            if not isinstance(image, np.ndarray):
                raise TypeError(f"expected a PIL image, numpy array or tensor; got {type(image).__name__}")
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"numpy images must be uint8 (H, W, 3); got {image.dtype} {image.shape}")
            pixels = image
        (h, w), scale = _size(pixels), min(self.options["scales"])
        scale = scale if self.options["mode"] == "whole" else 1  # sliding windows are padded to full size
        if min(h, w) * scale < MIN_SIDE:
            at = f" at scale {scale:g}" if scale != 1 else ""
            raise ValueError(f"image is {w}x{h} px{at}; the model needs at least {MIN_SIDE} px on each side")
        return pixels

    def tiling(self, height: int, width: int) -> int | None:
        """The tile window for an image of this size, or None when it is predicted in one piece."""
        pixels = height * width * max(self.options["scales"]) ** 2
        return self.tile_window if self.tile == "auto" and pixels > self.max_pixels else None

    def tiling_note(self, height: int, width: int) -> str:
        """What `predict` does with an image of this size, for the log."""
        window = self.tiling(height, width)
        if window is None:
            return f"{width}x{height} px predicted whole"
        tops, lefts = window_grid(height, width, window, self.options["stride_ratio"])
        stride = window_stride(window, self.options["stride_ratio"])
        return (f"{width}x{height} px > {self.max_pixels} pixels (--max-pixels), sliding window {window} "
                f"stride {stride}, {len(tops) * len(lefts)} windows")

    def _tiled_rows(self, pixels, window: int):
        """`tiled_rows` over one image: each window cropped, normalised, padded and predicted alone."""
        def predict_window(top: int, left: int) -> torch.Tensor:
            if isinstance(pixels, torch.Tensor):
                crop = pixels[:, top:top + window, left:left + window]
            else:
                crop = normalize_image(np.ascontiguousarray(pixels[top:top + window, left:left + window]))
            crop = F.pad(crop, (0, window - crop.shape[-1], 0, window - crop.shape[-2]))  # 0 = mean colour
            options = dict(self.options, mode="whole")
            return predict_probs(self.model, crop[None].to(self.device), **options)[0].cpu()

        h, w = _size(pixels)
        return tiled_rows(predict_window, h, w, window, self.options["stride_ratio"])

    def predict_probs_batch(self, images: Sequence) -> torch.Tensor:
        """Probabilities (N, K, H, W) for images of one size; inference is per image, so the
        batch never changes any image's result. Tiled images (see `tiling`) go one at a time,
        but the result holds every image's (K, H, W) floats."""
        pixels = [self.pixels(image) for image in images]
        h, w = _size(pixels[0])
        window = self.tiling(h, w)
        if window is None:
            batch = torch.stack([p if isinstance(p, torch.Tensor) else normalize_image(p) for p in pixels])
            return predict_probs(self.model, batch.to(self.device), **self.options).cpu()
        probs = torch.empty(len(pixels), self.num_classes, h, w)
        for out, image in zip(probs, pixels):
            for top, rows in self._tiled_rows(image, window):
                out[:, top:top + rows.shape[1]] = rows
        return probs

    def predict_probs(self, image) -> np.ndarray:
        """Softmax probabilities (K, H, W), float32."""
        return self.predict_probs_batch([image])[0].numpy()

    def masks_from_probs(self, probs: torch.Tensor) -> np.ndarray:
        return probs.argmax(1).numpy().astype(self.mask_dtype)  # (N, H, W)

    @property
    def mask_dtype(self) -> type:
        return np.uint8 if self.num_classes <= 256 else np.int64

    def predict_masks(self, images: Sequence) -> list[np.ndarray]:
        """Class-index masks (H, W) of images of one size; tiled images never hold (K, H, W) floats."""
        pixels = [self.pixels(image) for image in images]
        h, w = _size(pixels[0])
        window = self.tiling(h, w)
        if window is None:
            return list(self.masks_from_probs(self.predict_probs_batch(pixels)))
        masks = []
        for image in pixels:
            mask = np.empty((h, w), dtype=self.mask_dtype)
            for top, rows in self._tiled_rows(image, window):
                mask[top:top + rows.shape[1]] = rows.argmax(0).numpy()
            masks.append(mask)
        return masks

    def predict(self, image) -> np.ndarray:
        """Class-index mask (H, W)."""
        return self.predict_masks([image])[0]


def expand_inputs(inputs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files, not recursive) and glob patterns -> (files, problems)."""
    files, problems = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not found:
                problems.append(f"{text}: folder has no image files ({', '.join(IMAGE_EXTS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                problems.append(f"{text}: pattern matches no files")
            files.extend(found)
        else:
            problems.append(f"{text}: no such file or folder")
    return files, problems


def output_paths(out: Path, source: Path) -> dict[str, Path]:
    return {kind: out / f"{source.stem}{suffix}.png" for kind, suffix in (("mask", ""), ("color", "_color"),
                                                                           ("overlay", "_overlay"))}


@dataclass
class _Item:
    path: Path
    image: np.ndarray


def _batches(items: Iterator[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Consecutive images of equal size, at most batch_size at a time."""
    batch: list[_Item] = []
    for item in items:
        if batch and (len(batch) == batch_size or item.image.shape != batch[0].image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def write_outputs(predictor: Predictor, item: _Item, mask: np.ndarray, out: Path, alpha: float) -> None:
    paths = output_paths(out, item.path)
    # uint8 masks give mode "L" PNGs; more than 256 classes give 32-bit mode "I"
    Image.fromarray(mask if mask.dtype == np.uint8 else mask.astype(np.int32)).save(paths["mask"])
    color = colorize(mask, predictor.palette)
    Image.fromarray(color).save(paths["color"])
    Image.fromarray(overlay(item.image, color, alpha)).save(paths["overlay"])


def run_predict(predictor: Predictor, files: Sequence[Path], out: Path, batch_size: int = 1,
                alpha: float = 0.5) -> tuple[int, list[str]]:
    """Segment `files` into `out`; returns (images written, problems: one line per skipped file)."""
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    progress = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr)

    def readable() -> Iterator[_Item]:
        for path in files:
            try:
                image = read_image(path)
                predictor.pixels(image)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                problems.append(f"{path}: skipped, {getattr(err, 'problem', err)}")
                progress.update(1)
                continue
            if predictor.tiling(*image.shape[:2]):
                progress.write(f"allspark predict: {path}: {predictor.tiling_note(*image.shape[:2])}", file=sys.stderr)
            yield _Item(path, image)

    written = 0
    for batch in _batches(readable(), batch_size):
        masks = predictor.predict_masks([item.image for item in batch])
        for item, mask in zip(batch, masks):
            write_outputs(predictor, item, mask, out, alpha)
            written += 1
        progress.update(len(batch))
    progress.close()
    return written, problems


def write_legend(out: Path, palette: np.ndarray, names: Sequence[str]) -> None:
    """LEGEND_FILES in `out`: a swatch per class with its index and name, and the same as JSON."""
    png, sidecar = (out / name for name in LEGEND_FILES)
    legend_image(palette, names).save(png)
    sidecar.write_text(json.dumps(legend_entries(palette, names), indent=1) + "\n")
