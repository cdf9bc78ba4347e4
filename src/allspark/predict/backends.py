"""What runs predict's model: PyTorch, or the graph `allspark export` wrote, under onnxruntime's CPU provider
(the same masks, about twice as fast on the CPU: BENCHMARKS.md "Predict throughput (CPU)").

An export is used for a weights file only when it was made from that very file: `allspark export` records the
file's SHA-256 in the graph's metadata (SOURCE_KEY) and the engine hashes the weights again and compares. The
content, not size and mtime: a run copied to another machine keeps its export, and a checkpoint rewritten in
place (training overwrites best.safetensors) never meets an export of its older self. Hashing reads the file
once (about 0.1 s per 100 MB), less than loading it into PyTorch, which the ONNX engine then skips.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from allspark.config.loading import config_from_dict
from allspark.config.schema import Config
from allspark.data.layouts import class_names_and_palette
from allspark.distributed import resolve_device
from allspark.errors import EngineError
from allspark.models.weights import load_model
from allspark.runs.weights_file import CONFIG_KEY, resolve_weights

ENGINES = ("auto", "torch", "onnx")  # `predict --engine`: PyTorch or an `allspark export` graph under onnxruntime
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the graph's input (1, 3, H, W) and output (1, K, H, W)
SOURCE_KEY = "source_sha256"  # metadata: SHA-256 of the weights file the graph was exported from


def export_path(weights: str | Path) -> Path:
    """Where `allspark export` writes by default and the engine looks: beside the weights, suffix .onnx
    (runs/x/checkpoints/best.safetensors -> best.onnx)."""
    return Path(weights).with_suffix(".onnx")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel:
    """An exported graph as a model callable: logits (N, K, H, W) for normalised images (N, 3, H, W) on the
    CPU, one image per run (the graph's batch is 1; inference is per image, so no result depends on N).
    The session uses as many threads as torch (`--threads`)."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime  # here: an optional dependency (the `export` extra)
        except ImportError:
            raise EngineError(f"{path}: onnxruntime is not installed (pip install 'allspark-seg[export]')") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's load errors (Fail, InvalidProtobuf, ...) derive from Exception only
            raise EngineError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {key: json.loads(value) for key, value in props.items()}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(image[None].numpy())})[0]
                  for image in images.detach().float().cpu()]
        return torch.from_numpy(np.concatenate(logits))


@dataclass
class Engine:
    """A loaded model and what it needs around it; `note` says in one line which engine runs and why."""
    name: str  # "torch" or "onnx"
    model: Callable[[torch.Tensor], torch.Tensor]  # logits (N, K, H, W) for normalised images (N, 3, H, W)
    cfg: Config
    device: torch.device
    class_names: list[str]
    palette: np.ndarray
    note: str


def _open_export(path: Path, weights: Path | None, device, explicit: bool) -> Engine:
    """The ONNX engine for `path`; with `weights`, only if the export was made from them. EngineError says why not."""
    if device == "auto":
        cuda = torch.cuda.is_available() and not explicit  # engine onnx asked for: auto means the CPU
    else:
        cuda = torch.device(device).type == "cuda"
    if cuda:
        raise EngineError(f"the ONNX engine runs on the CPU only; got device {device}")
    if not path.is_file():
        made_by = f"; `allspark export --checkpoint {weights}` writes it" if weights else ""
        raise EngineError(f"no ONNX export at {path}{made_by}")
    model = OnnxModel(path)
    if CONFIG_KEY not in model.metadata:
        raise EngineError(f"{path}: not an `allspark export` graph (no {CONFIG_KEY} in its metadata)")
    if weights is not None and model.metadata.get(SOURCE_KEY) != file_sha256(weights):
        raise EngineError(f"{path} was not exported from the current {weights} (the SHA-256 it records differs "
                          f"or is missing); "
                          f"`allspark export --force --checkpoint {weights}` renews it")
    cfg = config_from_dict(model.metadata[CONFIG_KEY], where=f"{path} (embedded config)")
    names, palette = class_names_and_palette(cfg)
    names = model.metadata.get("class_names", names)
    palette = np.asarray(model.metadata.get("palette", palette), dtype=np.uint8)
    return Engine("onnx", model, cfg, torch.device("cpu"), names, palette, f"engine: onnxruntime, {path}")


def load_engine(checkpoint: str | Path, engine: str = "auto", which: str = "best",
                device: str | torch.device = "auto") -> Engine:
    """The model for `checkpoint` (run directory, weights file, or an `allspark export` .onnx file).

    "onnx": the export itself, or the one at `export_path(weights)` made from these weights, on the CPU;
    EngineError when that is impossible. "torch": PyTorch on `device`. "auto": the ONNX engine where it can
    run (onnxruntime installed, a matching export, the CPU: `device` cpu, or auto on a machine without
    CUDA), else PyTorch. Every option of the Predictor works with either: both are the same callable."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if Path(checkpoint).suffix == ".onnx":
        if engine == "torch":
            raise EngineError(f"{checkpoint}: an ONNX export runs with engine onnx or auto; PyTorch needs the "
                              ".safetensors weights or the run directory")
        return _open_export(Path(checkpoint), None, device, explicit=True)
    weights = resolve_weights(checkpoint, which)
    why = "engine torch asked for"
    if engine != "torch":
        try:
            return _open_export(export_path(weights), weights, device, explicit=engine == "onnx")
        except EngineError as err:
            if engine == "onnx":
                raise
            why = str(err)
    device = resolve_device(device)
    model, cfg = load_model(weights, device=device)
    return Engine("torch", model, cfg, device, *class_names_and_palette(cfg), f"engine: PyTorch on {device} ({why})")
