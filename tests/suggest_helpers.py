"""The fixtures of the suggest tests: a model whose predictions are fixed by the image's colour, plain-colour
images and list files."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.config.loading import config_from_dict
from allspark.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from allspark.suggest import run as suggest_module
from allspark.suggest.run import suggest

MEAN = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
STD = torch.tensor(IMAGENET_STD)[None, :, None, None]


class _Pixels(torch.nn.Module):
    """The 'encoder': the pixels in [0, 1], one feature map (the features are the image's mean colour)."""

    def forward(self, images):
        return [images * STD + MEAN]


class ColourModel(torch.nn.Module):
    """Logits of class c = 8 x channel c of the pixels in [0, 1]: a grey pixel is uniform (most uncertain), a pure
    red one certain class 0; the same colours permuted give permuted probabilities (the same entropy)."""

    def __init__(self, stop_after: int | None = None, gain: float = 8.0):
        super().__init__()
        self.encoder = _Pixels()
        self.register_buffer("gain", torch.tensor(gain))  # another gain: another model
        self.calls, self.stop_after = 0, stop_after

    def forward(self, images):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # a kill in the middle of the scoring
        return self.gain * self.encoder(images)[-1]


def colour_image(root: Path, name: str, colour, size: int = 32) -> str:
    (root / "images").mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size, size, 3), np.uint8) + np.array(colour, np.uint8)
    Image.fromarray(pixels).save(root / "images" / name)
    return f"images/{name}"


def write_list(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.fixture
def fixed_model(tmp_path, monkeypatch):
    """suggest() with ColourModel as the run's model; returns a function making it (stop_after for a kill, gain for
    another model)."""
    weights = tmp_path / "fake.safetensors"
    weights.write_bytes(b"stands for a checkpoint")
    cfg = config_from_dict({"model": {"encoder": "mit_b0", "num_classes": 3, "crop_size": 32},
                            "data": {"layout": "folder", "root": str(tmp_path / "data")}})
    holder = {"model": ColourModel()}
    monkeypatch.setattr(suggest_module, "load_teacher",
                        lambda checkpoint, which, device: (holder["model"], cfg, weights, "the fixed model"))

    def use(stop_after=None, gain=8.0):
        holder["model"] = ColourModel(stop_after, gain)
    return use


def run_suggest(tmp_path, lines, count, strategy="both", labeled=None, out="out", **kwargs):
    """suggest() on the lines as OUT (under tmp_path); (the chosen images, best first, the Suggestion)."""
    root = tmp_path / "data"
    result = suggest("fake", tmp_path / out, count, list_path=write_list(tmp_path / "pool.txt", lines), root=root,
                     labeled_list=labeled, strategy=strategy, device="cpu", progress=False, **kwargs)
    return [line.split()[0] for line in result.suggested.read_text().splitlines()], result
