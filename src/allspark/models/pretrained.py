"""Pretrained encoder weights from any of their sources: an original `mit_bX.pth` ImageNet file, a Hugging Face
directory or hub id, or the encoder of one of our own `.safetensors` checkpoints."""
from __future__ import annotations

from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HFValidationError, HfHubHTTPError, RepositoryNotFoundError
from transformers import SegformerModel


from allspark.errors import ConfigError
from allspark.models.convert import Converted, load_exact, mit_to_hf, read_checkpoint
from allspark.models.encoders import MIT_SIZES, MiTEncoder
from allspark.models.weights import read_weights


def load_pretrained_encoder(encoder: MiTEncoder, source: str) -> None:
    """Load weights into `encoder` from an original `mit_bX.pth` file, a Hugging Face directory or hub id,
    or the encoder of one of our own `.safetensors` checkpoints (e.g. a SupBaseline run to fine-tune from);
    every key must match (errors list the ones that do not)."""
    if Path(source).suffix == ".safetensors":
        state, _ = read_weights(source)
        tensors = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        load_exact(encoder, Converted(tensors=tensors, origin={k: f"encoder.{k}" for k in tensors}), source)
        return
    if Path(source).is_file():
        state, where = read_checkpoint(source)
        load_exact(encoder, mit_to_hf(state, drop_head=True), where)
        return
    if not Path(source).is_dir():
        _check_hub(source)
    try:
        hf, info = SegformerModel.from_pretrained(source, output_loading_info=True)
    except OSError as err:
        raise ConfigError(f"model.pretrained {source!r} is not a file, and loading it as a Hugging Face "
                          f"directory or hub id failed: {err}", "model.pretrained") from None
    # transformers fills missing weights with random ones; a classification or segmentation head is dropped.
    extra = sorted(k for k in info["unexpected_keys"] if not k.startswith(("classifier.", "decode_head.")))
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if extra or missing:
        raise ConfigError(f"model.pretrained {source!r}: encoder weights missing or misshapen: {missing}; "
                          f"unknown weights: {extra}", "model.pretrained")
    found = (tuple(hf.config.hidden_sizes), tuple(hf.config.depths))
    if found != MIT_SIZES[encoder.name]:
        raise ConfigError(f"model.pretrained {source!r} holds an encoder with widths {found[0]} and depths "
                          f"{found[1]}; model.encoder {encoder.name} expects {MIT_SIZES[encoder.name]}",
                          "model.pretrained")
    state = hf.state_dict()
    load_exact(encoder, Converted(tensors=state, origin={k: k for k in state}), source)


HUB_TIMEOUT_S = 10.0


def _check_hub(source: str) -> None:
    """Fail fast on a hub id that is neither in the local Hugging Face cache nor reachable (offline, no DNS):
    `from_pretrained` would retry for half a minute and then raise a long traceback."""
    hint = "set model.pretrained=null (random init) or to a local folder / mit_bX.pth file"
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
