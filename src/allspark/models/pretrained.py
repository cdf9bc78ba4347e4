"""Pretrained encoder weights from any of their sources: an original file (`mit_bX.pth`, DINOv2's
`dinov2_vits14_pretrain.pth`), a Hugging Face directory or hub id, or the encoder of one of our own `.safetensors`
checkpoints or run folders (an `allspark pretrain` run's encoder file, another run's best checkpoint)."""
from __future__ import annotations

from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub.errors import HFValidationError, HfHubHTTPError, RepositoryNotFoundError

from allspark.encoders.base import Encoder
from allspark.encoders.registry import family_holding, sizes_of
from allspark.encoders.specs import encoder_spec
from allspark.errors import ConfigError, ConversionError
from allspark.models.convert import Converted, load_exact, read_checkpoint, rename_keys
from allspark.runs.folder import ENCODER, RunFolder
from allspark.runs.weights_file import read_weights, resolve_weights

# the transformers config fields that fix an encoder's weights shapes, compared with the registry's
_SHAPE_FIELDS = ("hidden_sizes", "depths", "hidden_size", "num_hidden_layers", "patch_size", "num_register_tokens")


def _original_to_ours(encoder: Encoder, state: dict) -> Converted:
    """An original release file's keys in our encoder's names, through its family's rules."""
    if encoder.original_keys is not None:
        return rename_keys(state, encoder.original_keys, encoder.weights_prefix, dropped=encoder.original_dropped)
    raise ConfigError(f"model.pretrained: {encoder.name} weights load from a Hugging Face folder or hub id "
                      "(no original file layout is read for this family)", "model.pretrained")


def _as_lists(fields: dict) -> dict:
    """Config fields with tuples as lists, so the registry's tuples compare equal to a loaded config's lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def load_pretrained_encoder(encoder: Encoder, source: str) -> None:
    """Load weights into `encoder` (of any family of allspark.encoders) from an original release file, a Hugging
    Face directory or hub id, or the encoder of one of our own `.safetensors` checkpoints (e.g. a SupBaseline run to
    fine-tune from) or run folder (`_run_weights`); every key must match (errors list the ones that do not)."""
    if (Path(source) / "checkpoints").is_dir():
        source = str(_run_weights(Path(source)))
    if Path(source).suffix == ".safetensors":
        _load_ours(encoder, source)
    elif Path(source).is_file():
        _load_original(encoder, source)
    else:
        _load_hugging_face(encoder, source)


def _run_weights(folder: Path) -> Path:
    """The weights a run folder gives an encoder: an `allspark pretrain` run's encoder file, else the run's best
    checkpoint (or its latest)."""
    run = RunFolder(folder)
    return run.weights(ENCODER) if run.weights(ENCODER).is_file() else resolve_weights(folder, "best")


def _load_ours(encoder: Encoder, source: str) -> None:
    """The encoder of one of our weights files; a file of another encoder is named (its config says which)."""
    state, cfg = read_weights(source)
    tensors = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    try:
        load_exact(encoder, Converted(tensors=tensors, origin={k: f"encoder.{k}" for k in tensors}), source)
    except ConversionError:
        held = encoder_spec(cfg.model.encoder)
        if held.name != encoder.name:
            raise _another_encoder(encoder, source, held.family, held.name, list(tensors)) from None
        raise


def _load_original(encoder: Encoder, source: str) -> None:
    """An original release file (`mit_b0.pth`, `dinov2_vits14_pretrain.pth`); a file of another family or size is
    named (each family tells its own keys, the sizes their shapes)."""
    state, where = read_checkpoint(source)
    try:
        load_exact(encoder, _original_to_ours(encoder, state), where)
    except (ConversionError, ConfigError):
        holder = family_holding(state)
        size = _size_held(holder, state) if holder is not None else None
        if holder is not None and not (type(encoder).holds_original(state) and size in (None, encoder.name)):
            raise _another_encoder(encoder, where, holder.family, size, list(state)) from None
        raise  # the encoder's own family and size, or no family's: every key that differs is listed


def _size_held(family: type[Encoder], state: dict) -> str | None:
    """The registered size of `family` whose weights have the names and shapes of `state` (original names), each
    built on the meta device (no memory); None when no size fits."""
    converted = rename_keys(state, family.original_keys, family.weights_prefix, dropped=family.original_dropped)
    shapes = {key: tuple(tensor.shape) for key, tensor in converted.tensors.items()}
    for spec in sizes_of(family):
        with torch.device("meta"):
            built = family(spec).state_dict()
        if {key: tuple(tensor.shape) for key, tensor in built.items()} == shapes:
            return spec.name
    return None


def _another_encoder(encoder: Encoder, where: str, family: str, size: str | None, keys: list[str]) -> ConversionError:
    """One short line for a file of another family or size than `encoder`, instead of every key that differs; the
    error's `held` is (family, size or None), for a caller whose options have other names (pretrain's --teacher)."""
    held = f"{size} weights ({family} family; " if size else f"{family} weights of no registered size ("
    fix = f"set model.encoder={size}, or model.pretrained" if size else "set model.pretrained"
    error = ConversionError(f"{where}: holds {held}keys such as {', '.join(keys[:3])}), not weights of model.encoder "
                            f"{encoder.name} ({encoder.family} family); {fix} to {encoder.name} weights")
    error.held = (family, size)
    return error


def _load_hugging_face(encoder: Encoder, source: str) -> None:
    """Load a Hugging Face directory or hub id through the encoder family's transformers class."""
    if encoder.transformers_class is None:
        raise ConfigError(f"model.pretrained {source!r} is not a file, and {encoder.name}'s family reads no Hugging "
                          "Face folder or hub id", "model.pretrained")
    if not Path(source).is_dir():
        _check_hub(source)
    try:
        hf, info = encoder.transformers_class.from_pretrained(source, output_loading_info=True)
    except OSError as err:
        raise ConfigError(f"model.pretrained {source!r} is not a file, and loading it as a Hugging Face "
                          f"directory or hub id failed: {err}", "model.pretrained") from None
    # transformers fills missing weights with random ones; a classification or segmentation head is dropped, and
    # so is the final norm of DINOv3 ConvNeXt's pooled output (`layer_norm`), which its stage maps never pass
    extra = sorted(k for k in info["unexpected_keys"] if not k.startswith(("classifier.", "decode_head.", "layer_norm.")))
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if extra or missing:
        raise ConfigError(f"model.pretrained {source!r}: encoder weights missing or misshapen: {missing}; "
                          f"unknown weights: {extra}", "model.pretrained")
    expected = {k: v for k, v in encoder.spec.hf.items() if k in _SHAPE_FIELDS}
    found = {k: getattr(hf.config, k, None) for k in expected}
    if _as_lists(found) != _as_lists(expected):
        raise ConfigError(f"model.pretrained {source!r} holds an encoder with {found}; model.encoder {encoder.name} "
                          f"expects {expected}", "model.pretrained")
    prefix = encoder.weights_prefix
    state = {prefix + k: v for k, v in hf.state_dict().items()}
    load_exact(encoder, Converted(tensors=state, origin={k: k.removeprefix(prefix) for k in state}), source)


HUB_TIMEOUT_S = 10.0


def _check_hub(source: str) -> None:
    """Fail fast on a hub id that is neither in the local Hugging Face cache nor reachable (offline, no DNS):
    `from_pretrained` would retry for half a minute and then raise a long traceback."""
    hint = "set model.pretrained=null (random init) or to a local folder or original weights file"
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(source, "config.json"), str):
            return
        huggingface_hub.HfApi().model_info(source, timeout=HUB_TIMEOUT_S)
    except HFValidationError:
        raise ConfigError(f"model.pretrained {source!r} is not a file, folder or Hugging Face hub id; {hint}") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model.pretrained {source!r}: no such file, folder or Hugging Face hub model; {hint}") from None
    except HfHubHTTPError:
        return  # the hub answered (e.g. a gated model): from_pretrained reports it
    except Exception as err:  # any other failure means no answer: offline mode, DNS, refused, timed out
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"model.pretrained {source!r}: not in the local Hugging Face cache and the hub cannot be "
                          f"reached ({reason}); {hint}") from None
