"""The release's random rescale as an albumentations step: an integer long side drawn uniformly in
[int(L * low), int(L * high)], the image resized by PIL's bilinear filter (which antialiases when
shrinking: OpenCV's INTER_LINEAR samples 2x2 pixels and aliases), the mask by PIL's nearest."""
from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from albumentations.core.type_definitions import Targets
from PIL import Image


def rescaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the longer side `long_side` and the aspect ratio kept (rounded half up)."""
    if height > width:
        return long_side, int(width * long_side / height + 0.5)
    return int(height * long_side / width + 0.5), long_side


class LongSideRescale(A.DualTransform):
    """Resize so the long side becomes a random integer in [int(L * low), int(L * high)], L the input's.

    Drawn from the step's own `py_random`, so the Compose's seeding (and per-step reseeding) governs it.
    Works on uint8 images (H, W[, C]) and uint8 masks (H, W)."""

    _targets = (Targets.IMAGE, Targets.MASK)

    def __init__(self, ratio_range: tuple[float, float] = (0.5, 2.0), p: float = 1.0):
        super().__init__(p=p)
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be 0 < low <= high; got {ratio_range}")
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        longest = max(height, width)
        long_side = self.py_random.randint(int(longest * self.ratio_range[0]), int(longest * self.ratio_range[1]))
        return {"size": rescaled_size(height, width, long_side)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return _pil_resize(img, size, Image.Resampling.BILINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return _pil_resize(mask, size, Image.Resampling.NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("ratio_range",)


def _pil_resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if array.dtype != np.uint8:
        raise TypeError(f"LongSideRescale works on uint8 arrays; got {array.dtype}")
    return np.array(Image.fromarray(array).resize((size[1], size[0]), resample))
