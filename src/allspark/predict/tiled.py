"""Sliding-window inference in bands of rows, for images too large to predict whole: one window at a
time goes through the model and finished rows leave the accumulator, so memory grows with the window
and the image width, never with the image's area. Window placement is `window_starts`'s (METHODS.md 3)."""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from allspark.predict.windows import window_starts, window_stride


def window_grid(height: int, width: int, window: int, stride_ratio: float) -> tuple[list[int], list[int]]:
    """(tops, lefts) of the window x window windows over an image zero-padded to at least one window."""
    stride = window_stride(window, stride_ratio)
    return window_starts(max(height, window), window, stride), window_starts(max(width, window), window, stride)


def tiled_rows(predict_window: Callable[[int, int], torch.Tensor], height: int, width: int, window: int,
               stride_ratio: float) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, probabilities (K, rows, width)) for consecutive blocks of finished rows: each pixel's
    softmax probabilities averaged over the windows that cover it, as a whole-image sliding window gives.

    `predict_window(top, left)` returns the probabilities (K, window, window) of that window of the image
    zero-padded on the bottom and right to at least one window. Only one band (K, window, padded width)
    of sums is held, plus a copy of its unfinished rows while they move up."""
    tops, lefts = window_grid(height, width, window, stride_ratio)
    padded_width = max(width, window)
    band = count = None
    band_top = 0
    for top in tops:
        if band is not None:
            done = top - band_top
            yield band_top, (band[:, :done] / count[:done])[:, :, :width]
            for sums in (band, count.unsqueeze(0)):  # shift the unfinished rows up, clear the rest
                sums[:, :window - done] = sums[:, done:].clone()
                sums[:, window - done:] = 0
            band_top = top
        for left in lefts:
            probs = predict_window(top, left)  # (K, window, window)
            if band is None:
                band = probs.new_zeros(probs.shape[0], window, padded_width)
                count = probs.new_zeros(window, padded_width)
            band[:, :, left:left + window] += probs
            count[:, left:left + window] += 1
    rows = min(window, height - band_top)
    yield band_top, (band[:, :rows] / count[:rows])[:, :, :width]
