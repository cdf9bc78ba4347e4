"""Paper Figure 5: the same c4 channels before the AllSpark module (after map_in) and after it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from allspark.errors import InputError
from allspark.viz.figure import new_figure, save_figure


def bottleneck_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model's AllSpark module; a clear error for the baselines, which have none."""
    bottleneck = getattr(model, "allspark", None)
    if bottleneck is None:
        raise InputError("this model has no AllSpark module (method sup/semi, ablation 'none'): "
                         "use an AllSpark checkpoint")
    return bottleneck


@torch.no_grad()
def feature_channels(model: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c4 of one normalised image (3, H, W) after map_in and after the whole module, each (C, h, w);
    the module runs as at inference: the image's own channels are the keys (METHODS.md 1.3)."""
    bottleneck = bottleneck_of(model)
    c4 = model.encoder(image[None])[-1]  # (1, C, h, w)
    return bottleneck.map_in(c4)[0], bottleneck(c4)[0]


def pick_channels(num_channels: int, count: int) -> list[int]:
    """`count` channel indices spread evenly over 0..num_channels-1."""
    count = min(count, num_channels)
    return sorted({int(round(i)) for i in np.linspace(0, num_channels - 1, count)})


def plot_features(image: np.ndarray, before: torch.Tensor, after: torch.Tensor, channels: Sequence[int],
                  out: str | Path, size: tuple[int, int] = (1600, 500), title: str = "") -> Path:
    """Row 1: the image, then each channel after map_in; row 2: the same channels after AllSpark."""
    num = before.shape[0]
    bad = [c for c in channels if not 0 <= c < num]
    if bad:
        raise InputError(f"channel indices must be in 0..{num - 1}; got {bad}")
    fig = new_figure(size)
    axes = fig.subplots(2, len(channels) + 1, squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image", fontsize="small")
    axes[1, 0].set_visible(False)
    for col, channel in enumerate(channels, start=1):
        for row, (maps, name) in enumerate(((before, "before"), (after, "after"))):
            ax = axes[row, col]
            ax.imshow(maps[channel].float().cpu().numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(f"ch {channel} {name}", fontsize="small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "c4 channels before (after map_in) and after the AllSpark module")
    return save_figure(fig, out)
