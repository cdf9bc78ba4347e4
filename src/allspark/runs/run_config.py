"""The run folder's config.yaml: what a resumed run may change, and the saved config replaced only once a run
has started (the old one kept under the iteration it applied up to)."""
from __future__ import annotations

import os

import yaml

from allspark.config.loading import config_from_dict, load_yaml
from allspark.config.schema import Config, config_to_dict, with_absolute_paths
from allspark.errors import ConfigError
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


def check_run_dir(cfg: Config, force_config: bool = False) -> list[str]:
    """The lines 'key: old -> new' where `cfg` differs from the run directory's config.yaml. A difference is
    refused (naming the keys) only when the run has a checkpoint to continue from, a key can change the result
    (not one of RESULT_NEUTRAL_KEYS) and `force_config` is not given. Writes nothing, so a start that fails later
    leaves the directory as it was."""
    saved = RunFolder(cfg.run_dir).config
    if not saved.is_file():
        return []
    # an older run may hold relative paths: they were typed in the folder the run is continued from
    old = with_absolute_paths(config_from_dict(load_yaml(saved.read_text()), where=str(saved)))
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
