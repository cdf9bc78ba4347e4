"""Reading a run configuration: YAML files and presets (`base:` underneath), `key=value` overrides, named
recipes, and the types of the values (numbers in scientific notation too, which YAML 1.1 leaves strings).

Every error names the key and where it was set (the file, or `command line`), so a typo in a 60-line YAML is found
at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from allspark.config.schema import METHOD_ABLATION, Config, ModelConfig
from allspark.config.validation import check_values, validate
from allspark.errors import ConfigError
from allspark.presets import RECIPES, find_preset, listed_presets


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false, so `amp: off` stays the string "off"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


def load_yaml(text: str):
    """Parse YAML text with `_Loader`."""
    return yaml.load(text, Loader=_Loader)


# what YAML 1.1 leaves a string but people write for numbers: 1e-3, 5E4, 2e+5 (no dot before the exponent)
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _from_scientific(text: str, hint: type, key: str) -> float | int:
    """`text` in scientific notation as a float, or as an int when `hint` is int and the value is whole (2e5)."""
    value = float(text)
    if hint is float:
        return value
    if not value.is_integer():
        raise ConfigError(f"key '{key}' expects int, got {text!r} (not a whole number)", key)
    return int(value)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return `value` converted to `hint` where lossless (int -> float), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return _from_scientific(value.strip(), hint, key)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"key '{key}' expects {hint.__name__}, got {value!r}", key)
    if not isinstance(value, hint):
        raise ConfigError(f"key '{key}' expects {hint.__name__}, got {value!r} ({type(value).__name__})", key)
    return value


def _build(cls: type, data: dict, prefix: str):
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        keys = (section,) if section else ()
        raise ConfigError(f"section '{section or '<top>'}' must be a mapping, got {data!r}", *keys)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"unknown key '{key}' (known: {', '.join(sorted(names))})", key)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, prefix + name)
    return cls(**kwargs)


def config_from_dict(data: dict, where: str = "<config>", command_line: Sequence[str] = ()) -> Config:
    """Build and validate a Config from a nested mapping (missing keys take defaults; a missing model.ablation
    the method's, METHOD_ABLATION). Errors start with `where`, or with "command line" for a key among
    `command_line` (the overridden keys)."""
    try:
        data = expand_recipe(data or {})
        cfg = _build(Config, data, "")
        if "ablation" not in ((data or {}).get("model") or {}):
            cfg.model.ablation = METHOD_ABLATION.get(cfg.method, cfg.model.ablation)
        validate(cfg)
    except ConfigError as err:
        given = any(_related(key, other) for key in err.keys for other in command_line)
        raise ConfigError(f"{'command line' if given else where}: {err}", *err.keys) from None
    return cfg


def expand_recipe(data: dict, over: bool = False) -> dict:
    """`data` with a named recipe (`recipe: unimatch_v2`) replaced by its keys (RECIPES); for method sup only the
    recipe's train and data keys. The config's own keys stay over the recipe's, or with `over` (a `recipe=NAME`
    override) the recipe's over those set so far."""
    name = data.get("recipe")
    if not isinstance(name, str):
        return data
    if name not in RECIPES:
        raise ConfigError(f"key 'recipe' names no recipe: {name!r} (known: {', '.join(RECIPES)}; or a mapping of "
                          "recipe keys)", "recipe")
    named = RECIPES[name]
    expanded = dict(data)
    for section in ("train", "data"):
        own = data.get(section) or {}
        if not isinstance(own, dict):
            return data  # _build reports the malformed section
        expanded[section] = {**own, **named[section]} if over else {**named[section], **own}
    if data.get("method") == "sup":
        expanded.pop("recipe")
    else:
        expanded["recipe"] = dict(named["recipe"])
    return expanded


def model_config_from_dict(data: dict, where: str = "<model config>") -> ModelConfig:
    """Build and validate a ModelConfig on its own: the model's keys need no method."""
    try:
        model = _build(ModelConfig, data or {}, "model.")
        check_values(Config(model=model), "model.")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}", *err.keys) from None
    return model


def _related(key: str, other: str) -> bool:
    """True when one key is the other or a section holding it ('train' and 'train.lr')."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `train.lr=0.01` into ('train.lr', 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from None
    return key, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of the nested mapping `data` with each `key=value` set."""
    data = load_yaml(yaml.safe_dump(data or {}))
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[parts[-1]] = value
        if key == "recipe":
            try:
                data = expand_recipe(data, over=True)  # so that later overrides can change its keys
            except ConfigError as err:
                raise ConfigError(f"command line: {err}", *err.keys) from None
    return data


def resolve_source(source: str | Path) -> Path | str:
    """A YAML path, a preset file shipped in the package (`demo`, `pascal/base`) or the name of a generated protocol
    preset (`pascal/original/183/allspark`, allspark.presets.protocols), returned as it is."""
    path = Path(source)
    if path.is_file():
        return path
    preset = find_preset(str(source))
    if preset is not None:
        return preset if isinstance(preset, Path) else str(source)
    close = difflib.get_close_matches(str(source), listed_presets(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "`allspark presets` lists them"
    raise ConfigError(f"config '{source}' is neither a file nor a preset; {hint}")


def load_yaml_with_base(source: Path | str, chain: tuple[str, ...] = ()) -> dict:
    """Read a YAML file or a generated preset (resolve_source); a top-level `base: other.yaml` (relative to the file)
    or `base: camvid/allspark` (a preset) is merged underneath. `chain`: the files whose `base:` led here, so that a
    cycle is one line naming its files."""
    name = str(source.resolve() if isinstance(source, Path) else source)
    if name in chain:
        cycle = " -> ".join((*chain[chain.index(name):], name))
        raise ConfigError(f"{chain[0]}: `base:` goes round in a cycle: {cycle}; remove one of these `base:` lines")
    if isinstance(source, str):
        data = expand_recipe(find_preset(source))
        where = Path(".")
    else:
        try:
            data = load_yaml(source.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping")
        data = expand_recipe(data)  # here too, so that a file's overrides and a later file's keys go on top
        where = source.parent
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return data
    beside = (where / str(base)).resolve()
    below = beside if isinstance(source, Path) and beside.is_file() else resolve_source(base)
    return _merge(load_yaml_with_base(below, (*chain, name)), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML file or preset, apply `key=value` overrides, validate."""
    path = resolve_source(source)
    data = apply_overrides(load_yaml_with_base(path), overrides)
    return config_from_dict(data, where=str(path), command_line=override_keys(overrides))


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The keys that `key=value` overrides set: an error about one of them is blamed on the command line."""
    return [parse_override(text)[0] for text in overrides]
