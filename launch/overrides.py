"""``section.key=value`` overrides: the one syntax of the launcher's and the trainer's command lines.

A value is read as YAML (``true``, ``3``, ``[1, 2]``, ``null``; an empty value is null), with one fix:
YAML 1.1 reads ``1e-4`` (no dot) as a string, so a string that is a number becomes a float. A key whose
value is a list (or that the caller names in ``list_keys``) also takes ``a,b,c``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import yaml

from bridge.errors import ConfigError, UnknownKeyError

__all__ = ["ConfigError", "UnknownKeyError", "apply_overrides", "parse_value", "read_yaml"]


def _scalar(text: str) -> Any:
    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read {text!r} as a value: {e}") from e
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_value(text: str, as_list: bool = False) -> Any:
    """An override's value; with ``as_list``, ``a,b,c`` is a list too (``[a, b]`` always is).

    Raises:
        ConfigError: the text is not valid YAML.
    """
    if as_list and not text.lstrip().startswith("["):
        return [_scalar(part) for part in text.split(",") if part.strip()]
    return _scalar(text)


def apply_overrides(config: dict[str, Any], overrides: Iterable[str],
                    open_sections: Collection[str] = (), list_keys: Collection[str] = (),
                    shorthands: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Returns a copy of ``config`` with each ``a.b.c=value`` applied, in order.

    Every key must already exist, so a typo fails loudly instead of being ignored, except under an
    ``open_sections`` entry (e.g. ``ppo``, whose keys are keyword arguments passed on), where new keys
    and sections may be added. ``shorthands`` maps a key to the one it stands for (the launcher's
    ``cluster=ray`` is ``cluster.kind=ray``).

    Raises:
        UnknownKeyError: a key that does not exist outside the open sections.
        ConfigError: a malformed item, a key that names a section, or a value that is not YAML.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = (shorthands or {}).get(key.strip(), key.strip())
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} must look like key=value or section.key=value")
        node = config
        for depth, part in enumerate(parts):
            path = ".".join(parts[:depth + 1])
            is_open = any(path == s or path.startswith(s + ".") for s in open_sections)
            if part not in node and not is_open:
                raise UnknownKeyError(f"override {item!r}: unknown key {path!r}; known here: "
                                      f"{sorted(node)}")
            if depth < len(parts) - 1:
                if is_open and node.get(part) is None:
                    node[part] = {}  # a new (or empty) section inside an open one
                if not isinstance(node[part], dict):
                    raise ConfigError(f"override {item!r}: {path!r} is not a section")
                node = node[part]
        current = node.get(parts[-1])
        if isinstance(current, dict):
            raise ConfigError(f"override {item!r}: {key!r} is a section; set one of its keys")
        node[parts[-1]] = parse_value(text, key in list_keys or isinstance(current, list))
    return config


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content (the launcher's and the trainer's configs).

    Raises:
        ConfigError (a ValueError): the file is not valid YAML (one line: where and what).
        OSError: the file cannot be read.
    """
    with open(path) as f:
        try:
            return yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from e
