"""Our one weights format: a safetensors file holding the model state (memory included) and,
in its metadata, the full resolved Config, so a single file is enough to rebuild the model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from allspark.config.loading import config_from_dict
from allspark.config.schema import Config, config_to_dict
from allspark.errors import CheckpointError
from allspark.runs.atomic import atomic_write
from allspark.runs.folder import RunFolder

FORMAT = "allspark-seg/1"
CONFIG_KEY = "allspark_config"  # the metadata key holding the full Config as JSON (weights and ONNX exports)


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config,
                 extra: dict[str, str] | None = None) -> None:
    """Write `state_dict` (tensors only) with the config (and `extra` strings) in the metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    metadata = {**(extra or {}), "format": FORMAT, CONFIG_KEY: json.dumps(config_to_dict(cfg))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Config]:
    """Read a weights file written by save_weights; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        metadata = weights_metadata(path)
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); expected allspark weights "
                              "(.safetensors) or a run directory") from None
    if metadata.get("format") != FORMAT or CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path}: safetensors file without allspark-seg metadata (format {metadata.get('format')!r}); "
                              "convert release checkpoints with `allspark convert-official`")
    cfg = config_from_dict(json.loads(metadata[CONFIG_KEY]), where=f"{path} (embedded config)")
    return state, cfg


def resolve_weights(path_or_run: str | Path, which: str = "best") -> Path:
    """A weights file, or a run directory (its `which` checkpoint, falling back to `latest`)."""
    path = Path(path_or_run)
    if path.is_dir():
        run = RunFolder(path)
        for name in (which, "latest"):
            if run.weights(name).is_file():
                return run.weights(name)
        raise FileNotFoundError(f"run directory {path} has no {run.weights(which).relative_to(path)} or "
                                f"{run.weights('latest').name}")
    return path


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata strings of a safetensors file, without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}
