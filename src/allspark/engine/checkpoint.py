"""The `latest` checkpoint of a run directory: the weights file (stamped with the iteration) and the training
state beside it, each written atomically, read back together."""
from __future__ import annotations

from pathlib import Path

import torch

from allspark.config import Config
from allspark.models.weights import (CheckpointError, atomic_write, checkpoint_paths, read_weights, save_weights,
                                     weights_metadata)


def save_checkpoint(run_dir: str | Path, state_dict: dict[str, torch.Tensor], cfg: Config, state: dict) -> None:
    """Write `latest`: weights (stamped with the iteration) then the training state, each atomically.
    `state` holds plain types and tensors only (optimizer, epoch, iteration, RNG, best score)."""
    weights, state_path = checkpoint_paths(run_dir)
    save_weights(weights, state_dict, cfg, extra={"iteration": str(state["iteration"])})
    atomic_write(state_path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(model state, training state) of `latest`, or None when the run has no state file yet."""
    weights, state_path = checkpoint_paths(run_dir)
    if not state_path.is_file():
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    stamp = weights_metadata(weights).get("iteration") if weights.is_file() else None
    if stamp != str(state["iteration"]):
        raise CheckpointError(f"{weights} (iteration {stamp}) does not match {state_path} (iteration {state['iteration']}); "
                              "the run was killed between the two writes: delete both to restart the run")
    model_state, _ = read_weights(weights)
    return model_state, state
