"""The model's input contract: RGB uint8 pixels become float (3, H, W) with ImageNet's mean and standard deviation.
Training, evaluation, predict and the exported graph's metadata all read it here (no augmentation library)."""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SCALE = (1 / (255 * np.array(IMAGENET_STD))).astype(np.float32)[:, None, None]  # (3, 1, 1)
_SHIFT = (-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32)[:, None, None]


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ImageNet mean/std.

    In NumPy, single-threaded: torch's intra-op threads made this 10x slower in a busy main process.
    """
    planes = image.transpose(2, 0, 1).astype(np.float32)  # (3, H, W), contiguous copy
    planes *= _SCALE
    planes += _SHIFT
    return torch.from_numpy(planes)
