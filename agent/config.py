"""Training configuration: a YAML file plus ``key.sub=value`` overrides from the command line."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "ppo.yaml"

#: keys whose value is a list; on the command line they may be given comma-separated.
LIST_KEYS = {"endpoints", "env.camera_size", "policy.net_arch"}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Reads a YAML config (the default one if ``path`` is None) and applies ``overrides``.

    Raises:
        ValueError: the file is not a mapping, or an override is malformed or names an unknown key.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    return apply_overrides(config, overrides)


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; a learning rate is meant
            return float(value)
        except ValueError:
            pass
    return value


def parse_value(key: str, text: str) -> Any:
    """YAML-parses an override's value; list keys accept ``a,b,c``."""
    if key in LIST_KEYS and not text.lstrip().startswith("["):
        return [_scalar(part) for part in text.split(",") if part.strip()]
    return _scalar(text)


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``config`` with each ``a.b.c=value`` applied.

    Only existing keys may be overridden, except inside the open sections (``reward``, ``ppo``,
    ``env``, ``policy``), so a typo fails loudly instead of being silently ignored.

    Raises:
        ValueError: malformed override, or an unknown top-level key.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value or section.key=value")
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        if len(parts) == 1 and parts[0] not in config:
            raise ValueError(f"override {item!r}: unknown key {parts[0]!r}; known: {sorted(config)}")
        node[parts[-1]] = parse_value(key, text)
    return config


def save_config(config: dict[str, Any], path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
