"""Paper Figure 7: Semantic Memory channels, reshaped to the token grid, one row per class slot."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from allspark.errors import InputError
from allspark.viz.features import bottleneck_of
from allspark.viz.figure import new_figure, save_figure


def memory_maps(model: torch.nn.Module) -> torch.Tensor:
    """The memory as maps (K, C, h, w) on the token grid it was built for."""
    bottleneck = bottleneck_of(model)
    h, w = bottleneck.token_grid
    queue = bottleneck.memory.queue.detach().float().cpu()  # (K, C, d)
    return queue.view(*queue.shape[:2], h, w)


def plot_memory(maps: torch.Tensor, channels: Sequence[int], class_names: Sequence[str], out: str | Path,
                size: tuple[int, int] = (1200, 1200), title: str = "") -> Path:
    """Grid: rows are class slots, columns the chosen channel indices."""
    num_classes, num_channels = maps.shape[:2]
    bad = [c for c in channels if not 0 <= c < num_channels]
    if bad:
        raise InputError(f"channel indices must be in 0..{num_channels - 1}; got {bad}")
    fig = new_figure(size)
    axes = fig.subplots(num_classes, len(channels), squeeze=False)
    for k in range(num_classes):
        for col, channel in enumerate(channels):
            ax = axes[k, col]
            ax.imshow(maps[k, channel].numpy(), cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(f"ch {channel}", fontsize="small")
        axes[k, 0].set_ylabel(class_names[k], fontsize="small", rotation=0, ha="right", va="center")
    fig.suptitle(title or "Semantic Memory: channels per class slot")
    return save_figure(fig, out)
