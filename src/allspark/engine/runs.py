"""A run directory: its lock, resolved config, metrics.jsonl, TensorBoard scalars, train.log (written by rank 0)."""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import time
import weakref
from pathlib import Path
from typing import IO

import yaml
from torch.utils.tensorboard import SummaryWriter

from allspark.config.loading import config_from_dict, load_yaml
from allspark.config.schema import Config, config_to_dict, with_absolute_paths
from allspark.engine.checkpoint import has_checkpoint
from allspark.errors import ConfigError, InputError
from allspark.models.weights import atomic_write
from allspark.run_folder import RunFolder

# keys a run may change on resume without --force-config: they cannot change what it computes (resume is exact
# whatever the loader workers; logging and checkpoint intervals only say when lines and files are written)
RESULT_NEUTRAL_KEYS = ("data.workers", "train.log_every", "train.checkpoint_every")
_HELD_LOCKS: weakref.WeakSet = weakref.WeakSet()


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the inherited lock files: an flock lasts while any
    process holds its file open, and orphaned workers of a killed run would otherwise keep it for seconds."""
    for handle in list(_HELD_LOCKS):
        handle.close()


os.register_at_fork(after_in_child=_close_inherited_locks)


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
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def lock_run_dir(run_dir: str | Path) -> IO[str]:
    """Hold an exclusive lock on `run_dir` until the returned file is closed or this process ends, however
    it ends (an flock on run_dir/.lock, so a killed run leaves no stale lock); if another process holds it,
    raise ConfigError naming that process (pid, host, start time)."""
    path = RunFolder(run_dir).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run directory {run_dir} is in use by {holder}; wait for that run to end, "
                          "or use another run_dir") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD_LOCKS.add(handle)
    return handle


class _RunLogHandler(logging.FileHandler):
    """train.log: a line that cannot be written (a full disk) is dropped quietly; stderr still shows it."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup_logger(run_dir: Path | None, name: str = "allspark", console: bool = True) -> logging.Logger:
    """Logger writing to run_dir/train.log (when given) and, with `console` (rank 0 of a torchrun), to stderr."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler()] if console else []
    if run_dir is not None:
        handlers.append(_RunLogHandler(RunFolder(run_dir).log))
    for handler in handlers or [logging.NullHandler()]:  # no handler at all would print warnings anyway
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def json_safe(value):
    """`value` (a scalar or list) with non-finite floats as None, which JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


class MetricsWriter:
    """Appends one JSON line per record to metrics.jsonl and mirrors the scalars to TensorBoard."""

    def __init__(self, run_dir: Path, class_names: list[str] | None = None, purge_after: int = 0):
        """`purge_after`: the iteration a run resumes from; TensorBoard drops its events past it, as
        truncate_metrics does for metrics.jsonl, so a resumed run logs no step twice."""
        self.path = RunFolder(run_dir).metrics
        self.class_names = class_names
        self.tb = SummaryWriter(str(RunFolder(run_dir).tensorboard), purge_step=purge_after + 1 if purge_after else None)

    def write(self, record: dict) -> None:
        """record: {'split': 'train'|'val', 'iter', 'epoch', ...scalars, optional 'iou': list}."""
        with self.path.open("a") as handle:
            handle.write(json.dumps({k: json_safe(v) for k, v in record.items()}) + "\n")
        split, step = record["split"], record["iter"]
        for key, value in record.items():
            if key in ("split", "iter", "epoch") or not isinstance(value, (int, float)):
                continue
            self.tb.add_scalar(f"{split}/{key}", value, step)
        for index, value in enumerate(record.get("iou", [])):
            name = self.class_names[index] if self.class_names else str(index)
            if math.isfinite(value):
                self.tb.add_scalar(f"{split}_iou/{name}", value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file or a run directory's; a missing file or a line that is not a JSON
    object is an error naming it (file:line)."""
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).metrics
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path} (expected a run directory or its metrics.jsonl)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not a JSON object ({err})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def truncate_metrics(run_dir: str | Path, iteration: int) -> None:
    """Drop records past `iteration` (written after the checkpoint a resumed run restarts from), if any."""
    path = RunFolder(run_dir).metrics
    if path.is_file():
        kept = [r for r in read_metrics(path) if r["iter"] <= iteration]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
