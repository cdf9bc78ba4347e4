"""Our one weights format: a safetensors file holding the model state (memory included) and,
in its metadata, the full resolved Config, so a single file is enough to rebuild the model."""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from allspark.config.loading import config_from_dict
from allspark.config.schema import Config, config_to_dict
from allspark.errors import CheckpointError, DiskFullError
from allspark.models.segmenter import AllSparkSegmenter
from allspark.run_folder import RunFolder

FORMAT = "allspark-seg/1"
CONFIG_KEY = "allspark_config"  # the metadata key holding the full Config as JSON (weights and ONNX exports)


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place,
    so a run killed mid-write never leaves a truncated checkpoint behind. The file gets the
    mode of any new file (0666 less the umask), whatever mode `write` creates its file with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the OS applies the umask
    mode = tmp.stat().st_mode
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # safetensors writes a fresh file of mode 0600 over ours
        os.replace(tmp, path)
    except Exception as err:
        full = _disk_full(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(f"{path}: no space left on its device ({free / 2**20:.1f} MiB free in {path.parent}); "
                                f"{'the previous file is kept, ' if path.exists() else ''}free some space and run "
                                "again") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable(folder: str | Path) -> None:
    """Prove, before work that ends by writing into `folder`, that it can be made and written: its nearest existing
    ancestor is a folder that takes a file (probed, then removed). Creates nothing; raises OSError naming the
    folder at fault (not a hidden temporary file at the end)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    probe = existing / f".allspark-write-test.{secrets.token_hex(4)}"
    try:
        probe.touch()
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(existing)) from None
    probe.unlink()


def _disk_full(err: Exception, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or a writer that hides it (safetensors names os error 28,
    torch.save only an 'unexpected pos') while under a MiB is left."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "os error 28" in str(err) or shutil.disk_usage(folder).free < 2**20


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


def load_model(path_or_run: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """Rebuild the model from a weights file or run directory; returns (model in eval mode, cfg). The file holds
    every weight, so `model.pretrained` is not read."""
    state, cfg = read_weights(resolve_weights(path_or_run, which))
    model = AllSparkSegmenter(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata strings of a safetensors file, without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}
