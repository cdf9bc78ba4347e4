"""The images `allspark pretrain` learns from (a folder, searched recursively, or a list file whose first field is
an image; labels unused) and their augmentation: random resized crop and flip, as SimMIM's pretraining."""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import torch
from torch.utils.data import DataLoader, Dataset

from allspark.data.io import list_root, read_image, read_list
from allspark.data.loaders import AugmentedSampler, _leave_stop_signals_to_the_trainer
from allspark.data.normalize import normalize_image
from allspark.data.transforms import seed_steps
from allspark.distributed import derive_seed
from allspark.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CROP_SCALE = (0.67, 1.0)  # SimMIM's RandomResizedCrop scale (Xie et al. 2022, their data config); ratio 3/4..4/3


def image_paths(source: str | Path) -> list[Path]:
    """The images of `source`: every image file under a folder (sorted), or the first field of each line of a list
    file, read against the list's data root (data.io.list_root). An empty source is a DataError naming it."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise DataError(source, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
        return paths
    entries = read_list(source, need_masks=False)  # DataError for a missing or empty list
    root = list_root(source, entries) or source.absolute().parent
    return [root / image for image, _ in entries]


class PretrainImages(Dataset):
    """Augmented crops (3, S, S) of `paths`, read by AugmentedSampler's (index, seed) keys: a sample's crop and flip
    depend on its seed alone, so a resumed run sees the very images an uninterrupted one does."""

    def __init__(self, paths: list[Path], crop: int):
        self.paths = paths
        self.compose = A.Compose([A.RandomResizedCrop(size=(crop, crop), scale=CROP_SCALE), A.HorizontalFlip(p=0.5)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        seed_steps(self.compose, seed)
        image = read_image(self.paths[index])  # DataError naming the file when it does not decode
        return {"image": normalize_image(self.compose(image=image)["image"])}


def pretrain_loader(paths: list[Path], crop: int, batch_size: int, seed: int, workers: int, rank: int = 0,
                    world_size: int = 1) -> DataLoader:
    """This rank's share of full batches of `paths`, reshuffled each epoch (set_epoch) from `seed`."""
    sampler = AugmentedSampler(len(paths), None, rank, world_size, seed=seed)
    if len(sampler) < batch_size:
        raise DataError(paths[0].parent, f"{len(paths)} images for {world_size} process(es) is fewer than one batch "
                        f"of {batch_size} (--batch-size)")
    return DataLoader(PretrainImages(paths, crop), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(derive_seed(seed, rank)),
                      worker_init_fn=_leave_stop_signals_to_the_trainer)
