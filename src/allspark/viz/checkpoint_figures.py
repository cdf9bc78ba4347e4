"""The figures drawn from a trained checkpoint (paper Figures 5-7), each one call from the checkpoint and the input
images to the PNG: what `allspark viz features|grouping|memory` runs, and what a Python user calls."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from allspark.data.io import read_image
from allspark.data.layouts import class_names_and_palette
from allspark.data.normalize import normalize_image
from allspark.distributed import resolve_device
from allspark.errors import InputError
from allspark.models.weights import load_model
from allspark.predict.outputs import expand_inputs
from allspark.progress import progress_bar
from allspark.viz.features import feature_channels, pick_channels, plot_features
from allspark.viz.grouping import grouping_counts, plot_grouping
from allspark.viz.memory import memory_maps, plot_memory


def _load(checkpoint, which: str, device: str):
    """(model, cfg, device): the checkpoint's model on `device` (auto, cpu or cuda, as `--device`)."""
    device = resolve_device(device)
    model, cfg = load_model(checkpoint, which=which, device=device)
    return model, cfg, device


def readable_images(inputs: Iterable[str], problems: list[str], limit: int | None = None
                    ) -> list[tuple[Path, np.ndarray]]:
    """(file, RGB uint8) of the first `limit` images among files, folders and globs; each input or file that
    cannot be read adds a line to `problems`."""
    files, found = expand_inputs(inputs)
    problems.extend(found)
    images = []
    for path in files[:limit]:
        try:
            images.append((path, read_image(path)))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: skipped, {getattr(err, 'problem', err)}")
    return images


def features_figure(checkpoint, image: str, out, size: tuple[int, int], channels: Sequence[int] | None = None,
                    num_channels: int = 6, which: str = "best", device: str = "auto") -> list[str]:
    """Figure 5 of `image`: c4 `channels` (default `num_channels` spread evenly) before and after the AllSpark
    module. Returns the problems met; ValueError when the image cannot be read."""
    problems: list[str] = []
    found = readable_images([image], problems, limit=1)
    if not found:
        raise InputError(f"no readable image in {image}" + "".join(f"; {line}" for line in problems))
    model, _, device = _load(checkpoint, which, device)
    path, pixels = found[0]
    before, after = feature_channels(model, normalize_image(pixels).to(device))
    plot_features(pixels, before, after, channels or pick_channels(before.shape[0], num_channels), out, size,
                  title=f"{path.name}: c4 before / after AllSpark")
    return problems


def grouping_figure(checkpoint, inputs: Iterable[str], out, size: tuple[int, int], max_images: int | None = None,
                    which: str = "best", device: str = "auto") -> list[str]:
    """Figure 6 over the readable images among `inputs` (at most `max_images`): channels assigned to each class.
    Returns the problems met; ValueError when no image can be read."""
    problems: list[str] = []
    images = readable_images(inputs, problems, max_images)
    if not images:
        raise InputError("no readable images among the inputs" + "".join(f"; {line}" for line in problems))
    model, cfg, device = _load(checkpoint, which, device)
    tensors = [normalize_image(pixels).to(device) for _, pixels in images]
    counts = grouping_counts(model, progress_bar(tensors, desc="grouping", unit="img"),
                             cfg.model.num_classes, probs=cfg.model.grouping == "probs")
    plot_grouping(counts, len(tensors), class_names_and_palette(cfg)[0], out, size)
    return problems


def memory_figure(checkpoint, out, size: tuple[int, int], channels: Sequence[int] | None = None, num_channels: int = 8,
                  which: str = "best", device: str = "auto") -> list[str]:
    """Figure 7: the Semantic Memory's `channels` per class slot. Returns the problems met (none: no inputs)."""
    model, cfg, _ = _load(checkpoint, which, device)
    maps = memory_maps(model)
    plot_memory(maps, channels or pick_channels(maps.shape[1], num_channels), class_names_and_palette(cfg)[0], out, size)
    return []
