"""Training configuration: a YAML file plus ``key.sub=value`` overrides from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from bridge.errors import BridgeError, ConfigError
from bridge.transport import parse_tcp_endpoint
from launch.overrides import apply_overrides as apply_key_values
from launch.overrides import read_yaml

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
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    return apply_overrides(config, overrides)


#: the largest camera side, as on the sim side (carla_client.sensors.MAX_CAMERA_SIDE).
MAX_CAMERA_SIDE = 4096
#: keys the trainer itself adds to the config it saves next to a run (read back by --resume).
RECORDED_KEYS = ("resolved_device",)
#: sections whose values may be null where the default is not (their APIs take None).
_NULLABLE_SECTIONS = ("env", "ppo", "policy")


def check_config(config: dict[str, Any]) -> None:
    """Checks every key and value type before anything is started or written.

    Known keys: those of the default config, and in each section the parameters of what receives it
    (``CarlaBridgeEnv``, ``stable_baselines3.PPO``, ``RewardConfig``, the policy's four). A value must
    have the type of its default (ints and floats are both numbers).

    Raises:
        ConfigError (a ValueError): one sentence naming the first unknown or ill-typed key.
    """
    defaults = read_yaml(DEFAULT_CONFIG)
    _check_mapping(config, defaults, _section_parameters(), "")
    endpoints = config.get("endpoints")
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not endpoints:
        raise ConfigError("endpoints: name at least one sim side, e.g. "
                          "endpoints=tcp://127.0.0.1:5556")
    for endpoint in endpoints:
        if not isinstance(endpoint, str):
            raise ConfigError(f"endpoints: {endpoint!r} is not an address")
        if endpoint.startswith("tcp://"):
            try:
                parse_tcp_endpoint(endpoint)
            except BridgeError as e:
                raise ConfigError(f"endpoints: {e}") from e
        elif not endpoint.partition("://")[1]:
            raise ConfigError(f"endpoints: {endpoint!r} is not tcp://HOST:PORT (nor ipc://PATH)")
    for key in ("total_timesteps", "checkpoint_every", "torch_threads"):
        if key in config and config[key] is not None and config[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {config[key]}")
    size = (config.get("env") or {}).get("camera_size")
    if size is not None and (len(size) != 2 or not all(
            isinstance(v, int) and 1 <= v <= MAX_CAMERA_SIDE for v in size)):
        raise ConfigError(f"env.camera_size must be [height, width], each 1-{MAX_CAMERA_SIDE}, "
                         f"got {size!r}")


def _section_parameters() -> dict[str, dict[str, Any]]:
    """Each open section's known keys and their defaults, read from what receives them."""
    import dataclasses
    import inspect

    from stable_baselines3 import PPO

    from agent.env import CarlaBridgeEnv
    from agent.reward import RewardConfig

    def parameters(function: Any, skip: set[str]) -> dict[str, Any]:
        return {name: (None if p.default is inspect.Parameter.empty else p.default)
                for name, p in inspect.signature(function).parameters.items()
                if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    return {
        "env": parameters(CarlaBridgeEnv.__init__, {"self", "endpoint", "client_factory", "reward"}),
        "ppo": parameters(PPO.__init__, {"self", "policy", "env", "policy_kwargs", "seed", "device",
                                         "verbose", "_init_setup_model"}),
        "reward": {f.name: f.default for f in dataclasses.fields(RewardConfig)},
        "policy": {"cnn_dim": 128, "state_dim": 64, "net_arch": [64, 64], "log_std_init": 0.0},
    }


def _check_mapping(config: dict[str, Any], defaults: dict[str, Any],
                   sections: dict[str, dict[str, Any]], where: str) -> None:
    if not isinstance(config, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {config!r}")
    for key, value in config.items():
        path = f"{where}{key}"
        if where == "" and key in sections:
            known = {**sections[key], **(defaults.get(key) or {})}
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a section (key: value lines), got {value!r}")
            for sub, sub_value in value.items():
                if sub not in known:
                    raise ConfigError(f"unknown key {path}.{sub}; known in {path}: "
                                     f"{', '.join(sorted(known))}")
                if sub_value is None and key in _NULLABLE_SECTIONS:
                    continue
                _check_type(f"{path}.{sub}", sub_value, known[sub])
            continue
        if key not in defaults:
            if where == "" and key in RECORDED_KEYS:
                continue
            raise ConfigError(f"unknown key {path}; known: {', '.join(sorted(defaults))}")
        _check_type(path, value, defaults[key])


def _check_type(path: str, value: Any, default: Any) -> None:
    """``value`` must be of ``default``'s type (no check where the default is None)."""
    if default is None:
        return
    # a number is a number: a default of 15 (minutes, say) does not make 0.5 wrong
    kinds = {bool: (bool,), int: (int, float), float: (int, float), str: (str,), list: (list, tuple),
             tuple: (list, tuple), dict: (dict,)}
    expected = next((k for t, k in kinds.items() if type(default) is t), None)
    if expected is None:
        return  # e.g. a schedule object: whatever receives it checks it
    if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
        raise ConfigError(f"{path} must be {type(default).__name__} (like its default {default!r}), "
                         f"got {value!r}")


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
