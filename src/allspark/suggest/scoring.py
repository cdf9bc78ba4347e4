"""Scoring images for suggestion: each image read and shrunk, one forward pass giving its probabilities and its
pooled encoder feature, its row of score parts; the pool scored a batch at a time into the store."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from allspark.config.schema import MIN_CROP
from allspark.data.io import IGNORE_INDEX, read_image, read_list, read_mask
from allspark.data.normalize import normalize_image
from allspark.errors import DataError
from allspark.progress import progress_bar
from allspark.suggest.selection import (class_balanced_uncertainty, combined_score, entropy_map, image_rarity,
                                        present_classes)
from allspark.suggest.store import Stamp, appending, stamp

Batch = list[tuple[int, Stamp | None, np.ndarray]]  # (list index, file stamp, uint8 pixels (H, W, 3)), one size


def labeled_class_counts(root: Path, list_path: Path | None, num_classes: int) -> np.ndarray | None:
    """Pixel counts per class over the labeled masks (None without a readable labeled list), mask by mask."""
    if list_path is None or not list_path.is_file():
        return None
    counts = np.zeros(num_classes, np.int64)
    for _, mask_rel in read_list(list_path, need_masks=True):
        mask = read_mask(root / mask_rel).ravel()
        counts += np.bincount(mask[(mask != IGNORE_INDEX) & (mask < num_classes)], minlength=num_classes)
    return counts


def load_pixels(path: Path, max_side: int) -> np.ndarray:
    """The image as uint8 (H, W, 3), shrunk so its longer side is at most `max_side` (scoring needs no more)."""
    image = read_image(path)
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if min(image.shape[:2]) < MIN_CROP:
        raise DataError(path, f"image is {image.shape[1]}x{image.shape[0]} px; the model needs at least {MIN_CROP} "
                        "px on each side")
    return image


class LastFeature:
    """A forward hook on the encoder keeping its last feature map averaged over space, L2-normalised (N, C); a
    context manager that removes the hook on leaving."""

    def __init__(self, encoder: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = encoder.register_forward_hook(self)

    def __enter__(self) -> LastFeature:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def __call__(self, module, inputs, output) -> None:
        last = output[-1] if isinstance(output, (list, tuple)) else output
        pooled = last.float().mean(dim=(2, 3))
        self.value = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def probs_and_features(model: torch.nn.Module, images: torch.Tensor, hook: LastFeature
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, K, H, W) and pooled encoder features (N, C) of normalised images, one pass."""
    probs = torch.softmax(model(images).float(), dim=1)
    return probs.cpu().numpy(), hook.value.cpu().numpy()


def predict_one(model: torch.nn.Module, path: Path, max_side: int, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, probabilities (K, H, W), pooled feature) of one image: the chosen and the labeled images' pass."""
    pixels = load_pixels(path, max_side)
    with LastFeature(model.encoder) as hook:
        probs, feats = probs_and_features(model, normalize_image(pixels)[None].to(device), hook)
    return pixels, probs[0], feats[0]


def anchor_features(model: torch.nn.Module, root: Path, labeled: Sequence[tuple[str, str | None]], max_side: int,
                    device) -> np.ndarray:
    """Pooled features (N, C) of the labeled images: what the chosen ones should differ from."""
    return np.stack([predict_one(model, root / image, max_side, device)[2] for image, _ in labeled])


def measure(prob: np.ndarray) -> dict:
    """What the store keeps of one image's probabilities (K, H, W): its class-balanced uncertainty and predicted
    pixels per class, as strings; the rarity lift depends on the labeled masks and is applied when ranking."""
    uncertainty, counts = class_balanced_uncertainty(entropy_map(prob), prob.argmax(0), prob.shape[0])
    return {"uncertainty": repr(uncertainty), "counts": "|".join(str(int(count)) for count in counts)}


def score_row(stored: dict, rarity: np.ndarray, names: Sequence[str]) -> dict:
    """One image's score parts from its stored row and the rarity (K,) of each class, as strings."""
    counts = np.array([float(count) for count in stored["counts"].split("|")])
    lift = image_rarity(counts, rarity)
    return {"uncertainty": stored["uncertainty"], "rarity": repr(lift),
            "score": repr(combined_score(float(stored["uncertainty"]), lift)),
            "classes": "|".join(names[c] for c in np.flatnonzero(present_classes(counts)))}


def _batches(root: Path, entries: Sequence[tuple[str, str | None]], indices: Sequence[int], batch_size: int,
             max_side: int) -> Iterator[Batch]:
    """The images `entries[i]`, i in `indices`, read one at a time and grouped: at most `batch_size`, one size."""
    batch: Batch = []
    for index in indices:
        stamped = stamp(root / entries[index][0])  # before reading: a file changed meanwhile is scored again
        pixels = load_pixels(root / entries[index][0], max_side)
        if batch and (len(batch) == batch_size or pixels.shape != batch[0][2].shape):
            yield batch
            batch = []
        batch.append((index, stamped, pixels))
    if batch:
        yield batch


def score_pool(model: torch.nn.Module, root: Path, entries: Sequence[tuple[str, str | None]], out: Path,
               indices: Sequence[int], batch_size: int = 1, max_side: int = 1024, device: torch.device | str = "cpu",
               rank: int = 0, progress: bool = True) -> int:
    """Score the images `entries[i]` for i in `indices`, appending each batch's rows and features to this rank's
    files in the store as soon as they are computed; returns how many were scored (none: no file is touched)."""
    if not indices:
        return 0
    bar = progress_bar(total=len(indices), desc=f"suggest (rank {rank})" if rank else "suggest", unit="img",
                       enabled=progress)
    with LastFeature(model.encoder) as hook, bar, appending(out, rank) as append:
        for batch in _batches(root, entries, indices, batch_size, max_side):
            images = torch.stack([normalize_image(pixels) for _, _, pixels in batch]).to(device)
            probs, feats = probs_and_features(model, images, hook)
            rows = [{"image": entries[index][0], "bytes": stamped[0], "mtime_ns": stamped[1], **measure(prob)}
                    for (index, stamped, _), prob in zip(batch, probs)]
            append(rows, feats)
            bar.update(len(batch))
    return len(indices)
