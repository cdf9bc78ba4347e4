"""The `latest` checkpoint of a run directory: a pair of files, the weights (stamped with the iteration) and the
training state, written one after the other. The previous complete pair stays (as `previous.*`, hard links) until
the new one is whole, so a run killed between the two writes resumes from the newest complete pair."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from allspark.config.schema import Config
from allspark.errors import CheckpointError
from allspark.runs.atomic import atomic_write
from allspark.runs.folder import KEPT, RunFolder
from allspark.runs.weights_file import read_weights, save_weights, weights_metadata


def _keep(source: Path, target: Path) -> None:
    """Make `target` hold `source`'s bytes, atomically: a hard link (no copy), or a copy where links do not work."""
    tmp = target.with_name(f".{target.name}.keep")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _weights_iteration(path: Path) -> int | None:
    """The iteration stamped in a checkpoint's weights file; None when it is missing or unreadable."""
    try:
        return int(weights_metadata(path)["iteration"])
    except Exception:  # a missing, torn or foreign file is simply not part of a complete pair
        return None


def _state_iteration(path: Path) -> int | None:
    """The iteration of a training state file, read without loading its tensors (mmap); None when unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"])
    except Exception:  # as above
        return None


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run saved a training state it could continue from (a run that never took a step has none)."""
    return any(RunFolder(run_dir).state(name).is_file() for name in ("latest", KEPT))


def save_checkpoint(run_dir: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config, state: dict) -> None:
    """Write `latest`: weights (stamped with the iteration) then the training state, each atomically, keeping the
    previous complete pair until both are written. `state` holds plain types and tensors only (optimizer, epoch,
    iteration, RNG, best score)."""
    run = RunFolder(run_dir)
    weights, state_path, kept_weights, kept_state = run.weights(), run.state(), run.weights(KEPT), run.state(KEPT)
    if weights.is_file() and state_path.is_file():
        stamp = _weights_iteration(weights)
        if stamp is not None and stamp == _state_iteration(state_path):  # complete: keep it meanwhile
            _keep(weights, kept_weights)
            _keep(state_path, kept_state)
    save_weights(weights, state_dict, cfg, extra={"iteration": str(state["iteration"])})
    atomic_write(state_path, lambda tmp: torch.save(state, tmp))
    kept_weights.unlink(missing_ok=True)
    kept_state.unlink(missing_ok=True)


def newest_pair(run_dir: str | Path) -> tuple[Path, Path] | None:
    """(weights, state) of the newest complete pair among `latest` and `previous` (their iterations match), or None
    when the run has no state file yet. A state file without weights of its iteration is an error naming both."""
    run = RunFolder(run_dir)
    pairs = [(run.weights(name), run.state(name)) for name in ("latest", KEPT)]
    states = {path: _state_iteration(path) for _, path in pairs if path.is_file()}
    if not states:
        return None
    stamps = {_weights_iteration(weights): weights for weights, _ in pairs if weights.is_file()}
    complete = [(iteration, path) for path, iteration in states.items() if iteration is not None and iteration in stamps]
    if not complete:
        found = ", ".join(f"{path.name} (iteration {'unreadable' if i is None else i})" for path, i in states.items())
        raise CheckpointError(f"{run.weights().parent}: no complete checkpoint pair: {found}, weights at "
                              f"iterations {sorted(i for i in stamps if i is not None) or 'none'}; delete the "
                              "checkpoints folder to restart the run")
    iteration, state_path = max(complete)
    return stamps[iteration], state_path


def load_checkpoint(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(model state, training state) of the newest complete pair (newest_pair), or None when the run has no state
    file yet: what a resumed run continues from."""
    pair = newest_pair(run_dir)
    if pair is None:
        return None
    model_state, _ = read_weights(pair[0])
    return model_state, torch.load(pair[1], map_location="cpu", weights_only=True)


def ema_weights(run_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """(the pair's weights file, the EMA teacher's tensors) of the newest complete pair (newest_pair, as resume
    chooses), or None when the run has no state file or trains without an EMA teacher. The tensors are the averaged
    ones only: load them over the student of that weights file with strict=False (the memory stays the student's)."""
    pair = newest_pair(run_dir)
    if pair is None:
        return None
    ema = torch.load(pair[1], map_location="cpu", weights_only=True).get("ema")
    return (pair[0], ema) if ema else None
