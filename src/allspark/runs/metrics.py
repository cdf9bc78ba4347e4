"""metrics.jsonl (one JSON object per line, written by rank 0) and its mirror in TensorBoard scalars."""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from allspark.errors import InputError
from allspark.runs.atomic import atomic_write_text
from allspark.runs.folder import RunFolder


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


def truncate_metrics(run_dir: str | Path, iteration: int, evaluated: bool = True) -> None:
    """Drop records past `iteration` (written after the checkpoint a resumed run restarts from), if any, and with
    `evaluated` False the validation record at `iteration` too (the checkpoint came before its epoch's end, so the
    resumed run evaluates there again)."""
    path = RunFolder(run_dir).metrics
    if path.is_file():
        kept = [r for r in read_metrics(path)
                if r["iter"] < iteration or r["iter"] == iteration and (evaluated or r["split"] != "val")]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
