"""What chaos.py compares between a run left alone and the same run killed and restarted: every tensor (and
metadata string) of latest.safetensors and best.safetensors, every entry of latest.state.pt (EMA teacher, optimizer,
RNG, position) and metrics.jsonl without its timing fields; differences counted in tensors, bytes and lines."""
from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

TIMING = ("step_time",)  # metrics fields that measure time, not training
FILES = ("checkpoints/latest.safetensors", "checkpoints/best.safetensors", "checkpoints/latest.state.pt")


def _flat(value, prefix: str = ""):
    """(dotted key, leaf) of nested dicts and lists, as a state file holds them."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _flat(item, f"{prefix}{index}.")
    else:
        yield prefix[:-1], value


def _entries(path: Path) -> dict:
    """A checkpoint file's tensors and metadata (safetensors) or its flattened contents (state file)."""
    if path.suffix == ".pt":
        return dict(_flat(torch.load(path, map_location="cpu", weights_only=True)))
    with safe_open(str(path), framework="pt") as handle:
        return {**{f"metadata.{k}": v for k, v in (handle.metadata() or {}).items()},
                **{key: handle.get_tensor(key) for key in handle.keys()}}


def _bytes_differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Bytes that differ between two tensors (all of the larger when dtype or shape differ)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return max(a.numel() * a.element_size(), b.numel() * b.element_size())
    return int((a.reshape(-1).view(torch.uint8) != b.reshape(-1).view(torch.uint8)).sum())


def _compare_file(whole: Path, killed: Path, counts: Counter, names: list[str]) -> None:
    """Add one file's differences to `counts` (tensors, bytes, memory/ema tensors, other values) and `names`."""
    if not killed.is_file():
        counts["files missing"] += 1
        names.append(f"{killed.name}: missing")
        return
    left, right = _entries(whole), _entries(killed)
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            differing = _bytes_differing(a, b)
            if differing:
                counts["tensors"] += 1
                counts["bytes"] += differing
                counts["memory tensors"] += "memory" in key
                counts["ema tensors"] += key.startswith("ema.")
                names.append(f"{killed.name}: {key} ({differing} bytes)")
        elif a != b or type(a) is not type(b):
            counts["values"] += 1
            names.append(f"{killed.name}: {key} ({str(a)[:60]} != {str(b)[:60]})")


def _records(path: Path) -> list[dict]:
    """metrics.jsonl's records without the timing fields."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records]


def compare(whole: Path, killed: Path) -> tuple[dict[str, int], list[str]]:
    """({what: how many differ}, the differing entries named) between two run directories."""
    counts, names = Counter(tensors=0, bytes=0, values=0), []
    for name in FILES:
        _compare_file(whole / name, killed / name, counts, names)
    left, right = _records(whole / "metrics.jsonl"), _records(killed / "metrics.jsonl")
    matcher = difflib.SequenceMatcher(a=[json.dumps(r) for r in left], b=[json.dumps(r) for r in right], autojunk=False)
    lines = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")
    counts["metrics lines"] = lines
    if lines:
        names.append(f"metrics.jsonl: {lines} of {len(left)} lines")
    return dict(counts), names
