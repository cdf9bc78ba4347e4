"""The checkpoint pairs of a run directory: `latest`, the weights (stamped with the iteration) and the training
state, written one after the other, and `previous`, the complete pair before it, kept as a fallback. A run resumes
from the newest pair whose two files load and agree (a kill between the two writes, a file cut short or damaged
leaves the other pair), and says which."""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from allspark.config.schema import Config
from allspark.errors import CheckpointError
from allspark.runs.atomic import atomic_write
from allspark.runs.folder import KEPT, PAIRS, RunFolder
from allspark.runs.weights_file import read_weights, save_weights, weights_metadata


@dataclass(frozen=True)
class Pair:
    """A checkpoint pair that loaded: its name, weights file and contents, and why the newer pairs did not load."""

    name: str
    weights: Path
    model_state: dict[str, torch.Tensor]
    state: dict
    skipped: str = ""  # "latest: latest.state.pt does not load (...)" when an older pair is used

    @property
    def source(self) -> str:
        """Where a resume comes from, in words: the pair and, for an older one, why the newer was skipped."""
        return f"the {self.name} pair" + (f" ({self.skipped}; skipped)" if self.skipped else "")


def _keep(source: Path, target: Path) -> None:
    """Make `target` hold `source`'s bytes, atomically: a hard link (no copy), or a copy where links do not work."""
    tmp = target.with_name(f".{target.name}.keep")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _gist(err: Exception, path: Path) -> str:
    """The first clause of an error's text, without the path it starts with (the line names the file already)."""
    text = (str(err) or type(err).__name__).splitlines()[0].removeprefix(f"{path}: ")
    return re.split(r"\. |; ", text, maxsplit=1)[0][:160]


def _load(path: Path, load):
    """load(path), or CheckpointError saying in a few words why the file does not load."""
    if not path.is_file():
        raise CheckpointError(f"{path.name} is missing")
    try:
        return load(path)
    except Exception as err:  # whatever a torn or damaged file raises, the pair is not usable
        raise CheckpointError(f"{path.name} does not load ({_gist(err, path)})") from None


def _state(path: Path, lazy: bool) -> tuple[dict, int]:
    """A training state file's contents (lazy: memory-mapped, its tensors unread) and its iteration."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    return state, int(state["iteration"])


def _load_pair(run: RunFolder, name: str, lazy: bool = False) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """(model state, training state) of pair `name`, both files loaded whole and of one iteration; CheckpointError
    says why not. `lazy` reads headers only (model state None): a file cut short fails that way too."""
    weights = run.weights(name)
    stamp = _load(weights, weights_metadata).get("iteration")
    model_state = None if lazy else _load(weights, lambda path: read_weights(path)[0])
    state, iteration = _load(run.state(name), lambda path: _state(path, lazy))
    if stamp != str(iteration):
        raise CheckpointError(f"{weights.name} is of iteration {stamp}, {run.state(name).name} of {iteration} "
                              "(a save cut short)")
    return model_state, state


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run saved a training state it could continue from (a run that never took a step has none)."""
    return any(RunFolder(run_dir).state(name).is_file() for name in PAIRS)


def save_checkpoint(run_dir: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config, state: dict) -> None:
    """Write `latest`: weights (stamped with the iteration) then the training state, each atomically. A `latest`
    pair that loads becomes `previous` first (hard links); one that does not is overwritten, leaving `previous` as
    it is, so two complete pairs remain. `state` holds plain types and tensors only (optimizer, epoch, iteration,
    RNG, best score)."""
    run = RunFolder(run_dir)
    try:
        _load_pair(run, "latest", lazy=True)
    except CheckpointError:
        pass  # none yet, or torn or damaged: not worth keeping over `previous`
    else:
        _keep(run.weights(), run.weights(KEPT))
        _keep(run.state(), run.state(KEPT))
    save_weights(run.weights(), state_dict, cfg, extra={"iteration": str(state["iteration"])})
    atomic_write(run.state(), lambda tmp: torch.save(state, tmp))


def newest_pair(run_dir: str | Path) -> Pair | None:
    """The newest pair (latest, then previous) whose two files load whole and agree on the iteration, or None when
    the run has no state file yet. When none loads, a CheckpointError names each file and why."""
    run = RunFolder(run_dir)
    if not has_checkpoint(run_dir):
        return None
    skipped = []
    for name in PAIRS:
        try:
            model_state, state = _load_pair(run, name)
        except CheckpointError as err:
            skipped.append(f"{name}: {err}")
            continue
        return Pair(name, run.weights(name), model_state, state, "; ".join(skipped))
    raise CheckpointError(f"{run.weights().parent}: no checkpoint pair to resume from ({'; '.join(skipped)}); "
                          "train into a new run_dir (best.safetensors here stays as it is)")


def load_checkpoint(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(model state, training state) of newest_pair, or None when the run has no state file yet."""
    pair = newest_pair(run_dir)
    return None if pair is None else (pair.model_state, pair.state)


def ema_weights(run_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """(the pair's weights file, the EMA teacher's tensors) of newest_pair (the pair resume takes), or None when
    the run has no state file or trains without an EMA teacher. The tensors are the averaged ones only: load them
    over the student of that weights file with strict=False (the memory stays the student's)."""
    pair = newest_pair(run_dir)
    if pair is None or not pair.state.get("ema"):
        return None
    return pair.weights, pair.state["ema"]
