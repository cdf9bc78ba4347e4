"""`allspark export`: the per-image inference graph as ONNX with dynamic height and width.

Inference is per image (METHODS.md 1.3, 5): the AllSpark module attends to the image's own channels,
so the graph needs no memory and no other batch member. Exporter: torch.export-based
(`torch.onnx.export(..., dynamo=True)`, the default in torch 2.13); the TorchScript exporter
(`dynamo=False`) stops on `aten::mT`, which the attention uses.
"""
from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from allspark.config.schema import config_to_dict
from allspark.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from allspark.errors import DiskFullError
from allspark.predict.backends import INPUT_NAME, OUTPUT_NAME, SOURCE_KEY, OnnxModel
from allspark.runs.atomic import atomic_write
from allspark.runs.weights_file import CONFIG_KEY


REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"  # where the exporter notes skipped operators
TORCHVISION_NOTE = "torchvision is not installed"  # its note for each torchvision operator; our graphs use none


def _not_a_torchvision_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(TORCHVISION_NOTE)


@contextmanager
def _without_torchvision_notes():
    """Drop, while the exporter runs, the four notes it logs when torchvision is absent ("torchvision is not
    installed. Skipping torchvision::nms", ...): nothing a user of this package can act on. Other records pass."""
    logger = logging.getLogger(REGISTRATION_LOGGER)
    logger.addFilter(_not_a_torchvision_note)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_torchvision_note)


def export_size(model: torch.nn.Module) -> int:
    """About the bytes of `model`'s ONNX file: its parameters and buffers as stored (the graph's initialisers), a
    quarter more and 4 MiB for the graph and metadata (MiT-B0: 14.9 MB of weights, a 16.1 MB file)."""
    stored = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return int(stored * 1.25) + 4 * 2**20


def ensure_room(model: torch.nn.Module, out: str | Path) -> None:
    """Stop with DiskFullError, before the slow export, when OUT's file system has less free space than
    `export_size(model)`."""
    folder = Path(out).absolute().parent
    while not folder.exists():
        folder = folder.parent
    free, need = shutil.disk_usage(folder).free, export_size(model)
    if free < need:
        raise DiskFullError(f"{folder}: {free / 2**20:.1f} MiB free, but the ONNX file of this model needs about "
                            f"{need / 2**20:.0f} MiB; free some space or give OUT on another disk")


def export_onnx(model: torch.nn.Module, cfg, out: str | Path, example_size: int | None = None,
                class_names: Sequence[str] | None = None, palette: np.ndarray | None = None,
                source_sha256: str | None = None) -> Path:
    """Write `model` (on the CPU, eval mode) as ONNX: input "images" normalised float (1, 3, H, W),
    output "logits" (1, K, H, W), H and W dynamic. The metadata holds the config, the normalisation
    (`mean`, `std` on 0..1 RGB: input = (pixel / 255 - mean) / std), and if given the class names, palette
    and the SHA-256 of the weights file the model came from (SOURCE_KEY, checked by the predict engine)."""
    model = model.cpu().eval()
    side = example_size or cfg.model.crop_size
    example = torch.zeros(1, 3, side, side)
    height, width = torch.export.Dim("height"), torch.export.Dim("width")
    with _without_torchvision_notes():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes={"images": {2: height, 3: width}},
                                    verbose=False)
    metadata = {CONFIG_KEY: config_to_dict(cfg), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if class_names is not None:
        metadata["class_names"] = list(class_names)
    if palette is not None:
        metadata["palette"] = np.asarray(palette).tolist()
    if source_sha256 is not None:
        metadata[SOURCE_KEY] = source_sha256
    program.model.metadata_props.update({key: json.dumps(value) for key, value in metadata.items()})
    out = Path(out)
    atomic_write(out, lambda tmp: program.save(tmp))
    return out


@torch.no_grad()
def max_onnx_difference(model: torch.nn.Module, path: str | Path, sizes: Sequence[tuple[int, int]], seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| logit difference over random normalised images of `sizes`."""
    graph = OnnxModel(path)
    model = model.cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        images = torch.randn(1, 3, h, w, generator=generator)
        expected = model(images).numpy()
        got = graph(images).numpy()
        if got.shape != expected.shape:
            raise ValueError(f"{path}: ONNX logits have shape {got.shape} for a {h}x{w} input; expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
