"""A tiny AllSpark checkpoint (MiT-B0, 3 classes, crop 64) with a folder layout and known palette,
shared by the predict, viz and export tests."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.cli import main
from allspark.config.loading import config_from_dict
from allspark.models import build_model
from allspark.runs.weights_file import save_weights

PALETTE = np.array([[10, 20, 30], [200, 0, 0], [0, 220, 40]], dtype=np.uint8)


def tiny_checkpoint(folder: Path, ablation: str = "full") -> Path:
    """Write classes.txt (names + colours) and a randomly initialised model's weights; return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("".join(f"c{i} {r} {g} {b}\n" for i, (r, g, b) in enumerate(PALETTE)))
    cfg = config_from_dict({"method": "allspark" if ablation != "none" else "semi",
                            "model": {"encoder": "mit_b0", "num_classes": 3, "crop_size": 64, "ablation": ablation},
                            "data": {"layout": "folder", "root": str(folder)}})
    torch.manual_seed(0)
    model = build_model(cfg)
    path = folder / "tiny.safetensors"
    save_weights(path, model.state_dict(), cfg)
    return path


def write_images(folder: Path, sizes) -> list[Path]:
    """Random RGB PNGs of the given (height, width) sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run_cli(argv) -> int:
    """Run `allspark ARGV...` in-process and return its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code
