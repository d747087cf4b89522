"""Loading `configs/NAME.py:ARG` files and `--config.field=value` overrides.

Config files follow big_vision's convention: a module with `get_config(arg)` returning an
`ml_collections.ConfigDict`. This mirrors absl's `config_flags` for commands that use argparse.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from vasa_jax.errors import ConfigError


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()):
    """`path/to/file.py[:arg]` → ConfigDict, with `field.sub=value` overrides applied."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path} (give e.g. configs/synthtalk.py:tiny)")
    module_spec = importlib.util.spec_from_file_location(f"_vasa_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config(arg) function")
    try:
        config = module.get_config(arg or None)
    except ValueError as err:
        raise ConfigError(f"{path}:{arg}: {err}") from None
    for item in overrides:
        key, sep, raw = item.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like --config.field=value")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p] if p in node else None
            if node is None:
                break
        if node is None or leaf not in node:
            raise ConfigError(f"unknown config field {key!r} in override {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        old = node[leaf]
        if isinstance(old, bool) != isinstance(value, bool) or (
                isinstance(old, (int, float)) and not isinstance(value, (int, float))):
            raise ConfigError(f"config field {key!r} expects {type(old).__name__}, got {raw!r}")
        node[leaf] = type(old)(value) if isinstance(old, float) else value
    return config


def set_fields(config, fields):
    """Sets dotted fields ({"loss.cross_id": 0.5, "steps": 4}) on a ConfigDict in place and
    returns it (the Python-side twin of `--config.loss.cross_id=0.5`)."""
    for key, value in dict(fields).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
