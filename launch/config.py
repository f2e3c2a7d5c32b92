"""The launcher's configuration: configs/default.yaml, a user file merged over it, ``a.b=value`` overrides."""
from __future__ import annotations

import copy
import dataclasses
import datetime
from pathlib import Path
from typing import Any, Iterable

import yaml

from bridge.errors import ConfigError, UnknownKeyError
from launch.interpreters import find_sim_python, find_trainer_python
from launch.overrides import apply_overrides  # noqa: F401  (also this module's API)
from launch.overrides import read_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
#: console: auto = the live panel in a terminal, plain progress lines otherwise.
CONSOLE_MODES = ("auto", "live", "plain", "off")


@dataclasses.dataclass(frozen=True)
class Interpreters:
    sim_python: str | None
    trainer_python: str | None


@dataclasses.dataclass(frozen=True)
class CarlaSection:
    """CARLA server i (one per carla_client) listens on ``port + i * port_stride``."""

    executable: str | None
    host: str
    port: int
    port_stride: int
    tm_port: int
    extra_args: tuple[str, ...]
    start_timeout: float
    stop_timeout: float

    def rpc_port(self, index: int) -> int:
        return self.port + index * self.port_stride


@dataclasses.dataclass(frozen=True)
class ClientsSection:
    module: str
    count: int
    host: str
    base_port: int
    sensors: str | None
    seed: int
    npc_vehicles: int
    circuits: int
    extra_args: tuple[str, ...]
    ready_timeout: float
    stop_timeout: float

    def endpoint(self, index: int, host: str | None = None) -> str:
        """Where carla_client ``index`` listens: ``tcp://(host or self.host):(base_port + index)``
        (an IPv6 address in brackets)."""
        host = host or self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"tcp://{host}:{self.base_port + index}"

    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(self.count)]


@dataclasses.dataclass(frozen=True)
class RestartSection:
    max_in_window: int
    window_seconds: float
    max_total: int
    backoff_initial: float
    backoff_max: float


@dataclasses.dataclass(frozen=True)
class TrainerSection:
    module: str
    config: str
    overrides: tuple[str, ...]
    stop_timeout: float


@dataclasses.dataclass(frozen=True)
class TensorBoardSection:
    enabled: bool
    host: str
    port: int
    reload_interval: float
    extra_args: tuple[str, ...]
    ready_timeout: float
    stop_timeout: float


@dataclasses.dataclass(frozen=True)
class ClusterSection:
    """Where the sims run: ``local`` (children of the launcher) or ``ray`` (one Ray actor per sim)."""

    kind: str
    address: str | None
    sim_resource: str
    max_restarts: int
    ready_timeout: float
    #: ray: where each sim's bridge listens. loopback: ``clients.host`` (every sim node must be the
    #: trainer's host); node: the IP address of the node that hosts the sim, which needs ``curve``.
    bind: str = "loopback"


#: cluster.bind choices: the sims listen on clients.host (loopback by default) or on their node's IP.
CLUSTER_BINDS = ("loopback", "node")

#: sections that name a choice: ``cluster=ray`` on the command line is short for ``cluster.kind=ray``.
SHORTHANDS = {"cluster": "cluster.kind"}


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """The resolved configuration (see launch/configs/default.yaml for every key's meaning)."""

    run_name: str | None
    runs_dir: str
    interpreters: Interpreters
    world: str
    carla: CarlaSection
    clients: ClientsSection
    restart: RestartSection
    trainer: TrainerSection
    tensorboard: TensorBoardSection
    cluster: ClusterSection
    console: str = "auto"
    view: bool = False
    curve: str | None = None

    @property
    def world_kind(self) -> str:
        """A registered world kind (carla_client/registry.py); ``auto`` is ``carla`` when a CARLA
        executable is configured, else ``builtin``."""
        if self.world == "auto":
            return "carla" if self.carla.executable else "builtin"
        return self.world


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> LaunchConfig:
    """Reads the defaults, merges ``path`` over them and applies ``overrides``.

    Raises:
        ConfigError (a ValueError): a file that is not a mapping, a malformed override or a value of
            the wrong type; UnknownKeyError for an unknown key.
    """
    raw = _read_yaml(DEFAULT_CONFIG)
    if path is not None:
        raw = merge(raw, _read_yaml(Path(path)), str(path))
    raw = apply_overrides(raw, overrides, shorthands=SHORTHANDS)
    return from_dict(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a launcher config must be a YAML mapping")
    return data


def merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    """``update`` deep-merged over a copy of ``base``; keys unknown to ``base`` are errors."""
    result = copy.deepcopy(base)
    for key, value in update.items():
        if key not in result:
            raise UnknownKeyError(f"{where}: unknown key {key!r}; known: {sorted(result)}")
        if isinstance(result[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a mapping")
            result[key] = merge(result[key], value, f"{where}: {key}")
        else:
            result[key] = value
    return result


def from_dict(raw: dict[str, Any]) -> LaunchConfig:
    """Builds the typed config, checking every value's type and range.

    Raises:
        ConfigError (a ValueError): wrong type, an out-of-range value or an unknown world.
    """
    def section(cls: type, data: dict[str, Any], where: str) -> Any:
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                raise ConfigError(f"{where}.{field.name} is missing")
            values[field.name] = _coerce(data[field.name], field.type, f"{where}.{field.name}")
        return cls(**values)

    extra = set(raw) - {f.name for f in dataclasses.fields(LaunchConfig)}
    if extra:
        raise UnknownKeyError(f"unknown keys {sorted(extra)}")
    config = LaunchConfig(
        run_name=_coerce(raw.get("run_name"), "str | None", "run_name"),
        runs_dir=_coerce(raw.get("runs_dir"), "str", "runs_dir"),
        interpreters=section(Interpreters, raw["interpreters"], "interpreters"),
        world=_coerce(raw.get("world"), "str", "world"),
        carla=section(CarlaSection, raw["carla"], "carla"),
        clients=section(ClientsSection, raw["clients"], "clients"),
        restart=section(RestartSection, raw["restart"], "restart"),
        trainer=section(TrainerSection, raw["trainer"], "trainer"),
        tensorboard=section(TensorBoardSection, raw["tensorboard"], "tensorboard"),
        console=_coerce(raw.get("console", "auto"), "str", "console"),
        view=_coerce(raw.get("view", False), "bool", "view"),
        cluster=section(ClusterSection, raw["cluster"], "cluster"),
        curve=_coerce(raw.get("curve"), "str | None", "curve"),
    )
    if config.console not in CONSOLE_MODES:
        raise ConfigError(f"console must be one of {', '.join(CONSOLE_MODES)}, not {config.console!r}")
    if config.cluster.kind not in ("local", "ray"):
        raise ConfigError(f"cluster must be local or ray, not {config.cluster.kind!r}")
    if config.cluster.max_restarts < 0:
        raise ConfigError("cluster.max_restarts must be 0 or more")
    check_bind(config)
    # imported here: the trainer reads this module (read_yaml, overrides) and never imports the sim
    # package; only the launcher's own configuration names a world kind.
    from carla_client import registry

    if config.world != "auto" and config.world not in registry.names():
        raise ConfigError(f"world must be auto or one of {', '.join(registry.names())} "
                          f"(carla_client/registry.py), not {config.world!r}")
    if config.clients.count < 1:
        raise ConfigError("clients.count must be at least 1")
    if config.clients.npc_vehicles < 0 or config.clients.circuits < 1:
        raise ConfigError("clients.npc_vehicles must be >= 0 and clients.circuits >= 1")
    for name, port in (("clients.base_port", config.clients.base_port),
                       ("carla.port", config.carla.port), ("tensorboard.port", config.tensorboard.port)):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{name} must be a TCP port (1-65535), not {port}")
    if config.clients.base_port + config.clients.count - 1 > 65535:
        raise ConfigError("clients.base_port + clients.count exceeds 65535")
    if config.carla.port_stride < 1 or config.carla.rpc_port(config.clients.count - 1) + 2 > 65535:
        raise ConfigError("carla.port_stride must be positive and the CARLA ports below 65536")
    if config.run_name is not None and (not config.run_name or "/" in config.run_name
                                        or config.run_name in (".", "..")):
        raise ConfigError(f"run_name must be a plain directory name, not {config.run_name!r}")
    return config


def check_bind(config: LaunchConfig) -> None:
    """Secure by default: a sim listens beyond loopback only with CurveZMQ keys (``curve: DIR``).

    Raises:
        ConfigError: an unknown ``cluster.bind``; ``cluster.bind: node`` outside ``cluster=ray`` or
            without ``curve``. (A non-loopback ``clients.host`` without ``curve`` is refused when a
            run starts, launch.placement.check_client_ports, so that ``launch doctor`` can report it.)
    """
    bind = config.cluster.bind
    if bind not in CLUSTER_BINDS:
        raise ConfigError(f"cluster.bind must be one of {', '.join(CLUSTER_BINDS)}, not {bind!r}")
    if bind == "node" and config.cluster.kind != "ray":
        raise ConfigError("cluster.bind=node places each sim's bridge on its Ray node's address: it "
                          "needs cluster=ray (locally, set clients.host instead)")
    if bind == "node" and not config.curve:
        raise ConfigError("cluster.bind=node makes every sim listen on its node's network address, "
                          "and the bridge never does that without CurveZMQ: make keys with `python -m "
                          "bridge.keys DIR` and set curve=DIR (docs/scale.md: the same DIR on every "
                          "node), or keep cluster.bind=loopback")


def _coerce(value: Any, type_name: Any, where: str) -> Any:
    """Checks ``value`` against a dataclass annotation written as a string (``int``, ``str | None``...)."""
    type_name = str(type_name)
    if value is None:
        if "None" in type_name:
            return None
        raise ConfigError(f"{where} must not be empty")
    base = type_name.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif base.startswith("tuple"):
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
    else:
        raise AssertionError(f"unhandled annotation {type_name}")  # internal invariant
    raise ConfigError(f"{where} must be {base}, not {value!r}")


# -------------------------------------------------------------------------------- resolving

def find_input(path: str) -> Path:
    """An input file: absolute, else relative to the current directory if it exists there, else the repo."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate.resolve()
    in_repo = REPO_ROOT / candidate
    return in_repo if in_repo.exists() else candidate.resolve()


def resolve_interpreters(config: LaunchConfig, launcher_python: str) -> tuple[str | None, str, str, str]:
    """Chooses the sim-side and trainer-side interpreters (launch.interpreters' order).

    Returns:
        (sim python or None, where it came from, trainer python, where it came from).
    """
    sim, sim_from = find_sim_python(config.interpreters.sim_python, "interpreters.sim_python")
    trainer, trainer_from = find_trainer_python(config.interpreters.trainer_python,
                                                "interpreters.trainer_python", launcher_python)
    return sim, sim_from, trainer, trainer_from


def default_run_name(runs_dir: Path, now: datetime.datetime | None = None) -> str:
    """A timestamp name not used yet under ``runs_dir`` (``-2``, ``-3``... appended on a clash)."""
    base = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    name, n = base, 1
    while (runs_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name
