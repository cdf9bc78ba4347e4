"""Per-image inference: whole image, sliding window or centre crop, with optional flip and
multi-scale test-time augmentation, returning softmax probabilities (METHODS.md 3).

`model(images)` must return logits (N, K, h, w) at the input size and treat every image on its
own (METHODS.md 5), so any callable with that contract works here, not only the real segmenter.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from allspark.config.schema import EVAL_MODES, WINDOW_PLACEMENTS, Config
from allspark.errors import ConfigError


def eval_window(cfg: Config) -> int:
    """Sliding-window / centre-crop size: `eval.crop_size`, else the training crop."""
    return cfg.eval.crop_size or cfg.model.crop_size


def _pair(window: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(window, int):
        return window, window
    win_h, win_w = window
    return int(win_h), int(win_w)


def center_crop_box(h: int, w: int, window: int | Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the central window of an h x w image, clipped to the image.

    Centre-crop evaluation predicts and scores only this region: crop the ground-truth mask
    with `mask[..., top:bottom, left:right]` so it matches `predict_probs(mode="center")`."""
    win_h, win_w = _pair(window)
    crop_h, crop_w = min(win_h, h), min(win_w, w)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return top, left, top + crop_h, left + crop_w


def window_stride(window: int, stride_ratio: float, placement: str = "aligned") -> int:
    """Sliding-window step: `window * stride_ratio` rounded ("aligned") or truncated as the release does."""
    step = window * stride_ratio
    return max(1, int(step) if placement == "release" else round(step))


def window_starts(size: int, window: int, stride: int, placement: str = "aligned") -> list[int]:
    """Start offsets along one axis. "aligned": every `stride`, plus a last window aligned to the border
    (the image is padded to at least `window` first); "release": every `stride` while inside the image,
    each window clipped to the border, so the last one may be a narrow strip."""
    if placement == "release":
        return list(range(0, size, stride))
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return starts


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)


def _sliding_probs(model: Callable, images: torch.Tensor, window: tuple[int, int], stride_ratio: float,
                   placement: str = "aligned") -> torch.Tensor:
    """Probabilities summed over overlapping windows, divided by each pixel's window count."""
    n, _, h, w = images.shape
    win_h, win_w = window
    pad_h, pad_w = (max(win_h - h, 0), max(win_w - w, 0)) if placement == "aligned" else (0, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))  # zero = the mean colour after normalisation
    ph, pw = images.shape[-2:]
    total = None
    count = images.new_zeros((1, 1, ph, pw), dtype=torch.float32)
    for top in window_starts(ph, win_h, window_stride(win_h, stride_ratio, placement), placement):
        for left in window_starts(pw, win_w, window_stride(win_w, stride_ratio, placement), placement):
            bottom, right = min(top + win_h, ph), min(left + win_w, pw)
            probs = _softmax(_run_window(model, images[:, :, top:bottom, left:right], window))  # (N, K, h', w')
            if total is None:
                total = probs.new_zeros((n, probs.shape[1], ph, pw))
            total[:, :, top:bottom, left:right] += probs
            count[:, :, top:bottom, left:right] += 1
    return (total / count)[:, :, :h, :w]


def _run_window(model: Callable, crop: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """`model(crop)`; a clipped window the model cannot take is reported with its size."""
    try:
        return model(crop)
    except RuntimeError as err:
        if tuple(crop.shape[-2:]) == window:
            raise
        raise ConfigError(f"eval.window_placement 'release' clipped a window to {crop.shape[-2]}x{crop.shape[-1]} px, "
                          f"too small for the model ({str(err).splitlines()[0]}); use eval.window_placement=aligned "
                          "or another eval.crop_size") from None


def _single_probs(model: Callable, images: torch.Tensor, mode: str, window, stride_ratio: float,
                  placement: str) -> torch.Tensor:
    if mode == "sliding":
        return _sliding_probs(model, images, _pair(window), stride_ratio, placement)
    return _softmax(model(images))


@torch.no_grad()
def predict_probs(model: Callable, images: torch.Tensor, mode: str = "whole", window: int | Sequence[int] | None = None,
                  stride_ratio: float = 2 / 3, flip: bool = False, scales: Sequence[float] = (1.0,),
                  placement: str = "aligned") -> torch.Tensor:
    """Softmax probabilities (N, K, H, W), float32, for normalised images (N, 3, H, W).

    mode "whole" runs the model on the full image; "sliding" on window x window crops (METHODS.md 3);
    "center" predicts only the central window (see `center_crop_box`), so its output is
    (N, K, min(window, H), min(window, W)) and pixels outside it get no prediction.
    `flip` averages in the horizontally flipped prediction; `scales` resizes the input by each
    factor, predicts, resizes the probabilities back and averages them all. `placement` places the
    sliding windows (see `window_starts`)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"inference mode must be one of {', '.join(EVAL_MODES)}; got {mode!r}")
    if mode != "whole" and window is None:
        raise ValueError(f"inference mode {mode!r} needs a window size; got window=None")
    if placement not in WINDOW_PLACEMENTS:
        raise ValueError(f"window placement must be one of {', '.join(WINDOW_PLACEMENTS)}; got {placement!r}")
    if not 0 < stride_ratio <= 1:
        raise ValueError(f"stride_ratio must be in (0, 1]; got {stride_ratio}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W); got shape {tuple(images.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive factors; got {tuple(scales)}")
    if mode == "center":
        top, left, bottom, right = center_crop_box(images.shape[-2], images.shape[-1], window)
        images = images[:, :, top:bottom, left:right]
        mode = "whole"
    h, w = images.shape[-2:]
    total = None
    runs = 0
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        views = [(scaled, False)] + ([(scaled.flip(-1), True)] if flip else [])
        for view, flipped in views:
            probs = _single_probs(model, view, mode, window, stride_ratio, placement)
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            runs += 1
    return total / runs
