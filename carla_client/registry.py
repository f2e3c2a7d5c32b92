"""The world-backend registry: name -> factory, its options, and what it needs to run.

One table answers every question about a world kind: ``python -m carla_client --world NAME`` builds
it (and adds its options to the command line), the launcher knows which server flags it takes, and
``python -m launch doctor`` checks its interpreter versions and client libraries. Backends are imported
only when built, so the registry itself loads under any sim interpreter without CARLA installed.

A third-party backend registers itself from its own module::

    from carla_client.registry import BackendInfo, BackendOption, register
    register(BackendInfo("mysim", "my simulator", "mysim.world:make_world",
                         options=(BackendOption("--mysim-map", "map", "Town01", "map to load"),)))

and is found by ``python -m carla_client`` when that module is named in ``$CARLA_CLIENT_BACKENDS``
(comma-separated module names imported at start-up). Its server is checked with the compliance suite
that ships in ``carla_client.compliance``.
"""
import importlib
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from bridge.errors import SpecError

#: environment variable naming extra modules that register backends when imported.
PLUGINS_ENV = "CARLA_CLIENT_BACKENDS"


class BackendOption(NamedTuple):
    """A command-line option one backend adds to ``python -m carla_client``.

    ``dest`` is the key under which the factory finds the parsed value in ``config.backend_options``.
    """

    flag: str
    dest: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    choices: Optional[Tuple[Any, ...]] = None
    metavar: Optional[str] = None


class BackendInfo(NamedTuple):
    """One world kind.

    Attributes:
        name: the ``--world`` value.
        summary: one line for ``--help`` and ``launch doctor``.
        factory: ``"module:function"``; ``function(config, sensors)`` returns a WorldBackend, where
            ``config`` is carla_client's ClientConfig and ``sensors`` the parsed sensor configs.
        options: extra command-line options of this backend.
        python: (lowest, highest) sim interpreter versions as (major, minor) tuples; None = no bound.
        requires: client-library modules the sim interpreter must import (``launch doctor`` checks).
        requires_any: groups of modules of which at least one must import (alternative clients).
        server_args: arguments a simulator server executable of this kind is started with by the
            launcher; ``{port}`` is replaced by its port. Empty: no external server.
        server_flags: the common carla_client flags this backend reads (``--host``, ``--port``,
            ``--tm-port``); the launcher passes exactly these.
        ports_per_server: TCP ports one server uses from its port upwards.
        standin: a command that serves this kind without the real simulator (``{port}`` replaced),
            quoted in advice when no server answers; empty if there is none.
    """

    name: str
    summary: str
    factory: str
    options: Tuple[BackendOption, ...] = ()
    python: Tuple[Optional[Tuple[int, int]], Optional[Tuple[int, int]]] = (None, None)
    requires: Tuple[str, ...] = ()
    requires_any: Tuple[Tuple[str, ...], ...] = ()
    server_args: Tuple[str, ...] = ()
    server_flags: Tuple[str, ...] = ()
    ports_per_server: int = 0
    standin: str = ""

    @property
    def needs_server(self) -> bool:
        return bool(self.server_flags)

    def python_supported(self, version: Sequence[int]) -> bool:
        """Whether a sim interpreter of ``version`` (major, minor, ...) can run this backend."""
        low, high = self.python
        key = tuple(version[:2])
        return (low is None or key >= low) and (high is None or key <= high)

    def python_range(self) -> str:
        low, high = ("{}.{}".format(*v) if v else None for v in self.python)
        if low and high:
            return "Python {} to {}".format(low, high)
        if low:
            return "Python >= {}".format(low)
        return "Python <= {}".format(high) if high else "any Python"

    def server_argv(self, port: int) -> List[str]:
        return [arg.format(port=port) for arg in self.server_args]

    def start_hint(self, port: int) -> str:
        """How to start a server of this kind on ``port``, for error messages."""
        hint = "`./CarlaUE4.sh {}`".format(" ".join(self.server_argv(port)))
        if self.standin:
            hint += " (or without the simulator: `{}`)".format(self.standin.format(port=port))
        return hint

    def build(self, config: Any, sensors: Sequence[Any]) -> Any:
        """Imports the factory and builds the world.

        Raises:
            SpecError: the factory cannot be imported (its error names the module).
        """
        module_name, _, function = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
            make = getattr(module, function)
        except (ImportError, AttributeError) as e:
            raise SpecError("world {!r}: cannot load its factory {}: {}".format(
                self.name, self.factory, e)) from e
        return make(config, sensors)


_REGISTRY = {}  # type: Dict[str, BackendInfo]
_plugins_loaded = False


def register(info: BackendInfo, replace: bool = False) -> BackendInfo:
    """Adds a world kind. Raises SpecError for a taken name (unless ``replace``) or clashing flags."""
    if info.name in _REGISTRY and not replace:
        raise SpecError("a world backend named {!r} is already registered".format(info.name))
    for other in _REGISTRY.values():
        if other.name == info.name:
            continue
        for option in info.options:
            clash = [o for o in other.options if o.flag == option.flag and o != option]
            if clash:
                raise SpecError("world {!r}: option {} is already defined differently by world "
                                "{!r}".format(info.name, option.flag, other.name))
    _REGISTRY[info.name] = info
    return info


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise SpecError("${} names {!r}, which cannot be imported: {}".format(
                PLUGINS_ENV, name, e)) from e


def names() -> List[str]:
    """Registered world kinds, built-in ones first."""
    _load_plugins()
    return list(_REGISTRY)


def get(name: str) -> BackendInfo:
    """The world kind ``name``. Raises SpecError naming the known kinds."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError("unknown world {!r}; known: {}".format(name, ", ".join(_REGISTRY))) from None


def all_options() -> List[BackendOption]:
    """Every backend option once (backends may share an option, e.g. a server timeout)."""
    seen = {}  # type: Dict[str, BackendOption]
    for info in (get(n) for n in names()):
        for option in info.options:
            seen.setdefault(option.flag, option)
    return list(seen.values())


# -- the built-in kinds -------------------------------------------------------------------------

register(BackendInfo(
    name="builtin",
    summary="the built-in deterministic world inside carla_client (no server)",
    factory="carla_client.worlds:builtin",
    python=((3, 6), None)))

register(BackendInfo(
    name="carla",
    summary="a CARLA 0.9.x server through its `carla` Python API",
    factory="carla_client.worlds:carla",
    python=((3, 6), None),
    requires=("carla",),
    server_args=("-RenderOffScreen", "-carla-rpc-port={port}"),
    server_flags=("--host", "--port", "--tm-port"),
    ports_per_server=3))

register(BackendInfo(
    name="carla084",
    summary="a CARLA 0.8.4 server (or python -m carla_client.carla084_server) through its "
            "PythonClient or our own client of its protocol",
    factory="carla_client.worlds:carla084",
    options=(
        BackendOption("--legacy-client", "legacy_client", "auto",
                      "0.8.4 client: the installed PythonClient (carla.client), our own client of "
                      "the protocol (wire), or the PythonClient when importable (default: %(default)s)",
                      choices=("auto", "pythonclient", "wire")),
        BackendOption("--server-timeout", "server_timeout", 10.0,
                      "the 0.8.4 server's ServerTimeOut in seconds (set in its own settings file); "
                      "our per-frame wait uses it as the step budget (default: %(default)s)",
                      type=float, metavar="SECONDS"),
        BackendOption("--weather", "weather", 1, "0.8.4 WeatherId, 0-14 (default: %(default)s)",
                      type=int, metavar="ID"),
        BackendOption("--vehicles", "vehicles", 0,
                      "0.8.4 NumberOfVehicles (default: %(default)s)", type=int, metavar="N"),
        BackendOption("--pedestrians", "pedestrians", 0,
                      "0.8.4 NumberOfPedestrians (default: %(default)s)", type=int, metavar="N"),
        BackendOption("--quality", "quality", "Low", "0.8.4 QualityLevel (default: %(default)s)",
                      choices=("Low", "Epic")),
    ),
    python=((3, 5), (3, 12)),
    requires_any=(("google.protobuf", "carla.client"),),
    server_args=("-carla-server", "-carla-world-port={port}", "-benchmark", "-fps=20"),
    server_flags=("--host", "--port"),
    ports_per_server=3,
    standin="python -m carla_client.carla084_server --port {port}"))
