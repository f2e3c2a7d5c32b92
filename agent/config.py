"""Training configuration: a YAML file plus ``key.sub=value`` overrides from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from bridge.errors import ConfigError
from launch.overrides import apply_overrides as apply_key_values

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "ppo.yaml"

#: keys whose value is a list; on the command line they may be given comma-separated.
LIST_KEYS = {"endpoints", "env.camera_size", "policy.net_arch"}
#: sections whose keys are passed on as keyword arguments: overrides may add keys there.
OPEN_SECTIONS = ("env", "reward", "policy", "ppo")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Reads a YAML config (the default one if ``path`` is None) and applies ``overrides``.

    Raises:
        ConfigError (a ValueError): the file is not a mapping, or an override is malformed;
            UnknownKeyError when it names an unknown key.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    return apply_overrides(config, overrides)


def apply_overrides(config: dict[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``config`` with each ``a.b.c=value`` applied (launch.overrides' syntax).

    Only existing keys may be overridden, except inside the open sections (``reward``, ``ppo``,
    ``env``, ``policy``), so a typo fails loudly instead of being silently ignored.

    Raises:
        UnknownKeyError: a key that does not exist outside the open sections (a ConfigError).
        ConfigError: a malformed override (a ValueError).
    """
    return apply_key_values(config, items, open_sections=OPEN_SECTIONS, list_keys=LIST_KEYS)


def save_config(config: dict[str, Any], path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
