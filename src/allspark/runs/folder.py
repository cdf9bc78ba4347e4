"""The one place that names what a run directory holds (timm's CheckpointSaver is the model): its config, logs,
metrics, lock, checkpoints and eval.json. Everything else asks a RunFolder for a path."""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = ("best", "latest")  # what `--which` may name
KEPT = "previous"  # the complete pair before `latest`, the fallback when `latest` does not load (runs.checkpoints)
PAIRS = ("latest", KEPT)  # the checkpoint pairs a run resumes from, newest first
ENCODER = "encoder"  # `allspark pretrain`'s result: the encoder alone, what `model.pretrained=RUN` loads


class RunFolder:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def of_weights(cls, weights: str | Path) -> RunFolder | None:
        """The run folder a weights file sits in (RUN/checkpoints/x.safetensors), or None for a loose file."""
        weights = Path(weights)
        return cls(weights.parent.parent) if weights.parent.name == "checkpoints" else None

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def replaced_config(self, iteration: int, number: int = 0) -> Path:
        """Where config.yaml goes when a different one replaces it at `iteration` (a number when that is taken)."""
        return self.root / (f"config.{iteration}.{number}.yaml" if number else f"config.{iteration}.yaml")

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def lock(self) -> Path:
        """Holds the pid, host and start time of the training that has the run directory."""
        return self.root / ".lock"

    @property
    def pretrain_options(self) -> Path:
        """`allspark pretrain`'s own options (the images, objective, schedule), checked on resume."""
        return self.root / "pretrain.json"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    def weights(self, name: str = "latest") -> Path:
        return self.root / "checkpoints" / f"{name}.safetensors"

    def state(self, name: str = "latest") -> Path:
        """The training state beside the weights of checkpoint `name` (latest and previous only)."""
        return self.root / "checkpoints" / f"{name}.state.pt"
