"""Key conversion into our layout by rules: an encoder family's original names (its `original_keys`), the
authors' release checkpoints (ModelBuilder layout: MiT encoder + decoder) and UniMatch V2's DPT checkpoints
(DINOv2 encoder + DPT head). Every key of the source is either placed or reported; nothing is dropped silently."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from allspark.encoders.dinov2 import DINOv2Encoder
from allspark.encoders.mit import MiTEncoder
from allspark.errors import ConversionError

# The release's decoder (SemiDecoder: `allspark` + SegFormerHead `decoder`) -> our segmenter.
# The attention weights map 1:1: METHODS.md 1.1 fixes the release's head-major q/k/v and
# channel-major `out_u` inputs, so no permutation is needed.
_RELEASE_DECODER_RULES = [
    (r"decoder\.allspark\.(?P<m>map_in\.0|map_out\.0|attn_norm)\.(?P<p>weight|bias)", "allspark.{m}.{p}"),
    (r"decoder\.allspark\.encoder_norm\.(?P<p>weight|bias)", "allspark.out_norm.{p}"),
    (r"decoder\.allspark\.attn\.(?P<m>q|k|v|out)_u\.weight", "allspark.attn.{m}_u.weight"),
    (r"decoder\.allspark\.attn\.(?P<m>q|k|v|out)_l2u\.weight", "allspark.attn.{m}_l.weight"),
    (r"decoder\.allspark\.attn\.kv_queue", "allspark.memory.queue"),
    (r"decoder\.allspark\.attn\.queue_ptr", "allspark.memory.ptr"),
    (r"decoder\.decoder\.linear_c(?P<i>[1-4])\.proj\.(?P<p>weight|bias)", "head.linear_c{i}.{p}"),
    (r"decoder\.decoder\.linear_fuse\.conv\.weight", "head.fuse.weight"),
    (r"decoder\.decoder\.linear_fuse\.bn\.(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)",
     "head.fuse_bn.{p}"),
    (r"decoder\.decoder\.linear_pred\.(?P<p>weight|bias)", "head.classifier.{p}"),
]

# UniMatch V2's DPT head (`head.*`) -> ours (models/dpt.py); {s} is the level (the digit n minus 1)
_DPT_RULES = [
    (r"projects\.(?P<i>[0-3])\.(?P<p>weight|bias)", "projects.{i}.{p}"),
    (r"resize_layers\.(?P<i>[013])\.(?P<p>weight|bias)", "resizes.{i}.{p}"),
    (r"scratch\.layer(?P<n>[1-4])_rn\.weight", "refines.{s}.weight"),
    (r"scratch\.refinenet(?P<n>[1-4])\.out_conv\.(?P<p>weight|bias)", "fusions.{s}.project.{p}"),
    (r"scratch\.refinenet(?P<n>[1-3])\.resConfUnit1\.(?P<c>conv[12])\.(?P<p>weight|bias)", "fusions.{s}.skip_unit.{c}.{p}"),
    (r"scratch\.refinenet(?P<n>[1-4])\.resConfUnit2\.(?P<c>conv[12])\.(?P<p>weight|bias)", "fusions.{s}.path_unit.{c}.{p}"),
    (r"scratch\.output_conv\.0\.(?P<p>weight|bias)", "out_conv.{p}"),
    (r"scratch\.output_conv\.2\.(?P<p>weight|bias)", "classifier.{p}"),
]
# what the release builds but its forward never reads: the deepest fusion block's skip unit
_DPT_UNUSED = re.compile(r"scratch\.refinenet4\.resConfUnit1\.")

_LIST_LIMIT = 20


@dataclass
class Converted:
    """Tensors under our names, where each came from (for error messages), and the source keys no rule took."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    unconsumed: list[str] = field(default_factory=list)

    def put(self, key: str, tensor: torch.Tensor, source: str) -> None:
        self.tensors[key] = tensor
        self.origin[key] = source


def _apply_rules(key: str, tensor: torch.Tensor, rules, out: Converted, prefix: str = "", source: str = "") -> bool:
    """Place `key` under `prefix` through the first matching rule (`source` + key names it in
    errors); return False when no rule matches."""
    for pattern, template, *split in rules:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        names = match.groupdict()
        if "n" in names:
            names["s"] = int(names["n"]) - 1
        if split:
            parts = split[0]
            for i, (part, rows) in enumerate(zip(parts, tensor.chunk(len(parts), dim=0))):  # (P*C, ...) -> P x (C, ...)
                out.put(prefix + template.format(part=part, **names), rows, f"{source}{key} (part {i + 1} of {len(parts)})")
        else:
            out.put(prefix + template.format(**names), tensor, source + key)
        return True
    return False


def rename_keys(state: dict[str, torch.Tensor], rules, prefix: str = "", source: str = "",
                dropped: tuple[str, ...] = ()) -> Converted:
    """A state dict's keys in our names under `prefix` through `rules` (an encoder family's `original_keys`);
    keys starting with one of `dropped` (weights with no place in ours, e.g. a classifier) are left out."""
    out = Converted()
    for key, tensor in state.items():
        if key.startswith(dropped):
            continue
        if not _apply_rules(key, tensor, rules, out, prefix, source):
            out.unconsumed.append(source + key)
    return out


def release_to_ours(state: dict[str, torch.Tensor]) -> Converted:
    """A release ModelBuilder state dict (`backbone.*`, `decoder.allspark.*`, `decoder.decoder.*`,
    already unwrapped) -> `AllSparkSegmenter` names."""
    out = Converted()
    for key, tensor in state.items():
        if key.startswith("backbone."):
            placed = _apply_rules(key.removeprefix("backbone."), tensor, MiTEncoder.original_keys, out, "encoder.",
                                  "backbone.")
        else:
            placed = _apply_rules(key, tensor, _RELEASE_DECODER_RULES, out)
        if not placed:
            out.unconsumed.append(key)
    return out


def unimatch_v2_to_ours(state: dict[str, torch.Tensor]) -> tuple[Converted, list[str]]:
    """A UniMatch V2 DPT state dict (`backbone.*` DINOv2, `head.*` DPT; unwrapped) -> `AllSparkSegmenter` names,
    and the keys left out on purpose (weights the release's forward never reads)."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    out = rename_keys(backbone, DINOv2Encoder.original_keys, "encoder.backbone.", "backbone.")
    dropped = []
    for key, tensor in state.items():
        if key.startswith("backbone."):
            continue
        inner = key.removeprefix("head.")
        if key.startswith("head.") and _DPT_UNUSED.match(inner):
            dropped.append(key)
        elif not (key.startswith("head.") and _apply_rules(inner, tensor, _DPT_RULES, out, "head.", "head.")):
            out.unconsumed.append(key)
    return out, dropped


def unwrap_checkpoint(obj: Any, where: str, entry: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside a `{"model": ...}` or `{"state_dict": ...}` wrapper (or the named `entry`, e.g.
    UniMatch V2's `model_ema`), `module.` prefixes removed."""
    if entry is not None:
        if not (isinstance(obj, dict) and isinstance(obj.get(entry), dict)):
            found = ", ".join(str(k) for k in obj) if isinstance(obj, dict) else type(obj).__name__
            raise ConversionError(f"{where}: no entry '{entry}' holding a state dict (found: {found})")
        obj = obj[entry]
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{where}: expected a state dict (optionally under 'model' or 'state_dict'), "
                              f"found {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{where}: key '{key}' holds a {type(value).__name__}, expected a tensor")
        state[key.removeprefix("module.")] = value
    return state


def read_checkpoint(source: str | Path | dict, entry: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where for messages) from a `.pth` path (read without running code from it) or an in-memory mapping;
    `entry` picks one of several state dicts (UniMatch V2 saves `model` and `model_ema`)."""
    if isinstance(source, dict):
        return unwrap_checkpoint(source, "<state dict>", entry), "<state dict>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # garbage read as a pickle of an odd protocol warns before it fails
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # garbage bytes fail in many ways (unpickling, index, key, EOF, zip errors)
        raise ConversionError(f"{path}: not a checkpoint that can be read safely ({_why_unreadable(err)})") from None
    return unwrap_checkpoint(obj, str(path), entry), str(path)


def _why_unreadable(err: Exception) -> str:
    """torch.load's failure in a few words, without its advice to load the file in a way that runs its code."""
    text = str(err)
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    _, unpickler, detail = text.partition("WeightsUnpickler error:")
    if unpickler:
        detail = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        global_name = re.match(r"Unsupported global: GLOBAL (\S+)", detail)
        if global_name:
            return f"it holds a {global_name[1]} object besides tensors, and reading one could run code from the file"
        return f"not tensors in PyTorch's format: {detail}"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    if isinstance(err, RuntimeError) and first:  # a damaged zip archive
        return first.removeprefix("PytorchStreamReader ")
    return f"not in PyTorch's format: {type(err).__name__} {first}".strip()


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_LIST_LIMIT]
    more = f", ... ({len(items) - len(shown)} more)" if len(items) > len(shown) else ""
    return f"{title} ({len(items)}): {', '.join(shown)}{more}"


def load_exact(module: nn.Module, converted: Converted, where: str) -> None:
    """Load `converted` into `module` only if every key is placed, none is missing and all shapes
    agree; otherwise raise ConversionError listing each problem with its source key."""
    expected = module.state_dict()
    unexpected = [f"{converted.origin[k]} -> {k}" for k in converted.tensors if k not in expected]
    problems = []
    if converted.unconsumed or unexpected:
        problems.append(_listing("keys in the checkpoint that the model does not have",
                                 converted.unconsumed + unexpected))
    missing = sorted(k for k in expected if k not in converted.tensors)
    if missing:
        problems.append(_listing("model keys the checkpoint does not provide", missing))
    mismatched = [f"{converted.origin[k]}: checkpoint {tuple(t.shape)} vs model {tuple(expected[k].shape)}"
                  for k, t in converted.tensors.items() if k in expected and t.shape != expected[k].shape]
    if mismatched:
        problems.append(_listing("shapes that differ from the model config", mismatched))
    if problems:
        raise ConversionError(f"{where}: checkpoint does not match the model; " + "; ".join(problems))
    module.load_state_dict(converted.tensors, strict=True)
