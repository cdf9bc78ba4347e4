"""The `Predictor`: a trained model on new images, without the CLI; images too large for one piece go in tiles."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from allspark.config.schema import MIN_CROP, WHOLE_IMAGE_MODES
from allspark.data.io import rgb_array
from allspark.data.normalize import normalize_image
from allspark.precision import Precision, autocast, resolve_amp
from allspark.predict.backends import load_engine
from allspark.predict.tiled import tiled_rows, window_grid
from allspark.predict.windows import eval_window, predict_probs, window_stride

DEFAULT_MAX_PIXELS = 1024 * 1024  # whole-image MiT-B0 inference at 1024x1024 peaks near 1.2 GB on the CPU
TILE_WINDOW = 512  # tile side for models predicted whole (at least their training crop)


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
    that graph under onnxruntime (see `allspark.predict.backends.load_engine`); `engine_note` says which runs.
    `amp` (auto, off, bf16, fp16) is the PyTorch engine's precision (`allspark.precision`); `precision` says which.

    Images of more than `max_pixels` pixels (default DEFAULT_MAX_PIXELS; after the largest of `scales`) go in tiles
    unless `tile="off"`: sliding windows of `tile_window` px (the sliding window, `window`, or the
    larger of TILE_WINDOW and the training crop), one at a time, flip and scales applied per window,
    so memory stays bounded whatever the image size (see `allspark.predict.tiled`)."""

    def __init__(self, checkpoint, device: str | torch.device = "auto", mode: str | None = None,
                 window: int | None = None, stride_ratio: float | None = None, flip: bool = False,
                 scales: Sequence[float] = (1.0,), which: str = "best", tile: str = "auto",
                 max_pixels: int | None = None, engine: str = "auto", amp: str = "auto"):
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
        self.precision = (resolve_amp(amp, device, key="amp") if loaded.name == "torch"
                          else Precision("off", "the ONNX graph runs in fp32"))

    @property
    def num_classes(self) -> int:
        return self.cfg.model.num_classes

    def pixels(self, image) -> np.ndarray | torch.Tensor:
        """A uint8 array (H, W, 3) or a normalised float tensor (3, H, W), checked; raises ValueError
        for wrong types and for images under MIN_CROP px on a side (after the smallest scale, in whole mode)."""
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
        if min(h, w) * scale < MIN_CROP:
            at = f" at scale {scale:g}" if scale != 1 else ""
            raise ValueError(f"image is {w}x{h} px{at}; the model needs at least {MIN_CROP} px on each side")
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
            with autocast(self.device, self.precision.mode):
                return predict_probs(self.model, crop[None].to(self.device), **options)[0].cpu()

        h, w = _size(pixels)
        return tiled_rows(predict_window, h, w, window, self.options["stride_ratio"])

    def _checked(self, images: Sequence) -> tuple[list, tuple[int, int], int | None]:
        """(checked pixels, (H, W), tile window or None) of images of one size: whether they go whole or in tiles."""
        pixels = [self.pixels(image) for image in images]
        size = _size(pixels[0])
        return pixels, size, self.tiling(*size)

    def predict_probs_batch(self, images: Sequence) -> torch.Tensor:
        """Probabilities (N, K, H, W) for images of one size; inference is per image, so the
        batch never changes any image's result. Tiled images (see `tiling`) go one at a time,
        but the result holds every image's (K, H, W) floats."""
        pixels, (h, w), window = self._checked(images)
        if window is None:
            batch = torch.stack([p if isinstance(p, torch.Tensor) else normalize_image(p) for p in pixels])
            with autocast(self.device, self.precision.mode):
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
        pixels, (h, w), window = self._checked(images)
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
