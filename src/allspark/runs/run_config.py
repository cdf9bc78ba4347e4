"""The run folder's config.yaml: what a resumed run may change, and the saved config replaced only once a run
has started (the old one kept under the iteration it applied up to)."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import yaml

from allspark.config.loading import config_from_dict, load_yaml
from allspark.config.schema import Config, config_to_dict, with_absolute_paths
from allspark.distributed import DistInfo, broadcast_object, on_main
from allspark.errors import ConfigError
from allspark.precision import Precision, resolve_amp
from allspark.runs.atomic import atomic_write_text
from allspark.runs.checkpoints import has_checkpoint
from allspark.runs.folder import RunFolder

# keys a run may change on resume without --force-config: they cannot change what it computes (resume is exact
# whatever the loader workers; logging and checkpoint intervals only say when lines and files are written)
RESULT_NEUTRAL_KEYS = ("data.workers", "train.log_every", "train.checkpoint_every")


def flatten(data: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_diff(old: Config, new: Config) -> list[str]:
    """Lines 'key: old -> new' for every differing key."""
    a, b = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def saved_config(run_dir: str | Path) -> Config | None:
    """The run directory's config.yaml (None where there is none), its relative paths made absolute. A config saved
    before `train.optimizer_kernel` existed ran the default kernel, `exact`, and is read so."""
    saved = RunFolder(run_dir).config
    if not saved.is_file():
        return None
    data = load_yaml(saved.read_text())
    if isinstance(data, dict) and isinstance(data.get("train"), dict):
        data["train"].setdefault("optimizer_kernel", "exact")
    # an older run may hold relative paths: they were typed in the folder the run is continued from
    return with_absolute_paths(config_from_dict(data, where=str(saved)))


def saved_amp(run_dir: str | Path) -> str | None:
    """The concrete precision a run with a checkpoint started in (what `train.amp: auto` continues in), else None."""
    saved = saved_config(run_dir) if has_checkpoint(run_dir) else None
    return saved.train.amp if saved is not None and saved.train.amp != "auto" else None


def run_precision(cfg: Config, info: DistInfo) -> tuple[Config, Precision]:
    """`cfg` with `train.amp` made concrete, once per run and alike on every rank, and why: auto picks by the
    device (allspark.precision), or continues a resumed run in the mode it started in, so the resume is exact."""
    saved = broadcast_object(on_main(info, lambda: saved_amp(cfg.run_dir)))
    precision = resolve_amp(cfg.train.amp, info.device, saved=saved)
    return replace(cfg, train=replace(cfg.train, amp=precision.mode)), precision


def check_run_dir(cfg: Config, force_config: bool = False) -> list[str]:
    """The lines 'key: old -> new' where `cfg` differs from the run directory's config.yaml. A difference is
    refused (naming the keys) only when the run has a checkpoint to continue from, a key can change the result
    (not one of RESULT_NEUTRAL_KEYS) and `force_config` is not given. Writes nothing, so a start that fails later
    leaves the directory as it was."""
    old = saved_config(cfg.run_dir)
    if old is None:
        return []
    diff = config_diff(old, cfg)
    blocking = [line for line in diff if line.split(":")[0] not in RESULT_NEUTRAL_KEYS]
    if blocking and not force_config and has_checkpoint(cfg.run_dir):
        raise ConfigError(f"run directory {cfg.run_dir} was started with a different config; differing keys:\n  "
                          + "\n  ".join(blocking) + "\nuse another run_dir, or pass --force-config to continue "
                          "anyway")
    return diff


def write_run_config(cfg: Config, iteration: int = 0) -> None:
    """Write run_dir/config.yaml (atomically), once the run has been built and its checkpoint accepted; a
    different config.yaml already there is kept as config.<iteration>.yaml, the iteration it applied up to."""
    run = RunFolder(cfg.run_dir)
    path, text = run.config, yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if path.is_file() and path.read_text() != text:
        number = 0
        while run.replaced_config(iteration, number).exists():
            number += 1
        os.replace(path, run.replaced_config(iteration, number))
    atomic_write_text(path, text)
