"""The one place that imports CARLA's ``carla`` module, plus the CARLA errors and connection helpers.

Everything else receives the module object from :func:`import_carla` (or a test's stand-in), so
``carla_client`` imports, and ``--world builtin`` runs, on machines without CARLA.
"""
import logging
from typing import Any, Tuple

from bridge.errors import BridgeError, BridgeTimeoutError

logger = logging.getLogger(__name__)

#: how to start a server, quoted in connection errors.
SERVER_COMMAND = "./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}"

INSTALL_HINT = (
    "install the CARLA client library that matches your server's version into this interpreter: "
    "for CARLA 0.9.16, `pip install carla==0.9.16` (Python 3.10-3.12); for CARLA 0.9.10-0.9.15, "
    "`pip install carla==0.9.x` where PyPI has a wheel for your Python (3.7 for most), or install "
    "the .whl/.egg shipped in the server package under PythonAPI/carla/dist/ (`pip install <whl>` "
    "or `easy_install <egg>`)")


class CarlaUnavailableError(BridgeError):
    """The ``carla`` client module cannot be imported into this interpreter."""


class CarlaConnectionError(ConnectionError, BridgeError):
    """No CARLA server answered at host:port within the timeout."""


class CarlaSetupError(BridgeError):
    """The world cannot be prepared: unknown blueprint, no free spawn point, map not found..."""


class CarlaTimeoutError(BridgeTimeoutError):
    """The server did not complete a tick in time (it hung, crashed, or is badly overloaded)."""


class SensorTimeoutError(CarlaTimeoutError):
    """A sensor delivered no data for the frame just ticked within the timeout."""


def import_carla() -> Any:
    """Imports and returns the ``carla`` module.

    Raises:
        CarlaUnavailableError: it is not installed, or built for another Python.
    """
    try:
        import carla  # the only import of carla in the project
    except ImportError as e:
        raise CarlaUnavailableError("cannot import the CARLA client module 'carla' ({}); {}".format(
            e, INSTALL_HINT)) from e
    return carla


def module_version(carla: Any) -> str:
    """The client library's version (0.9.16's module has ``__version__ = None``)."""
    version = getattr(carla, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib import metadata  # Python 3.8+
        return metadata.version("carla")
    except Exception:  # 3.6/3.7, an egg on the path, or a stand-in module: not worth failing for
        return "unknown"


def connect(carla: Any, host: str, port: int, timeout: float) -> Tuple[Any, str]:
    """Opens a client with ``timeout`` on every call and checks that a server answers.

    Returns:
        The ``carla.Client`` and the server's version string.

    Raises:
        CarlaConnectionError: nothing answered within ``timeout`` seconds.
    """
    client = carla.Client(host, port)
    client.set_timeout(timeout)
    try:
        server_version = client.get_server_version()
    except RuntimeError as e:  # libcarla's "time-out of 2000ms while waiting for the simulator"
        raise CarlaConnectionError(
            "no CARLA server answered at {}:{} within {:g} s ({}). Start one first, e.g. `{}` in "
            "the CARLA directory (or `docker run ... carlasim/carla:<version>`), wait until it "
            "listens, and check --host/--port; a slow machine may need a larger "
            "--carla-timeout".format(host, port, timeout, e, SERVER_COMMAND.format(port=port))
        ) from e
    client_version = client.get_client_version()
    if str(client_version) != str(server_version):
        logger.warning("CARLA client library %s talks to server %s: install the matching client "
                       "(`pip install carla==%s`) if anything misbehaves", client_version,
                       server_version, server_version)
    return client, str(server_version)


def tick(world: Any, timeout: float, where: str) -> int:
    """``world.tick()`` with an explicit timeout; returns the new frame id.

    0.9.16 reads ``seconds=0.0`` as "use the client timeout" but older releases took it literally or
    had no argument at all, so the timeout is always passed, falling back for the oldest.

    Raises:
        CarlaTimeoutError: the server did not finish the tick in time.
    """
    try:
        try:
            return int(world.tick(timeout))
        except TypeError:  # Boost.Python's ArgumentError: a release whose tick() takes no timeout
            return int(world.tick())
    except RuntimeError as e:
        raise CarlaTimeoutError(
            "the CARLA server at {} did not complete a tick within {:g} s ({}): did it crash or "
            "hang? is it overloaded (raise --carla-timeout)? did another client switch it out of "
            "synchronous mode?".format(where, timeout, e)) from e


def destroy_commands(carla: Any, actors: Any) -> list:
    """``carla.command.DestroyActor`` for each actor, by id (works for every actor type)."""
    return [carla.command.DestroyActor(int(actor.id)) for actor in actors]


def set_still(carla: Any, actor: Any) -> None:
    """Zeroes an actor's linear and angular velocity (``set_velocity`` before 0.9.10)."""
    zero = carla.Vector3D(0.0, 0.0, 0.0)
    linear = getattr(actor, "set_target_velocity", None) or getattr(actor, "set_velocity")
    angular = (getattr(actor, "set_target_angular_velocity", None)
               or getattr(actor, "set_angular_velocity"))
    linear(zero)
    angular(zero)


def vehicle_control(carla: Any, throttle: float, steer: float, brake: float, hand_brake: bool,
                    reverse: bool) -> Any:
    """A ``carla.VehicleControl``, clipped to CARLA's ranges."""
    return carla.VehicleControl(throttle=_clip(throttle, 0.0, 1.0), steer=_clip(steer, -1.0, 1.0),
                                brake=_clip(brake, 0.0, 1.0), hand_brake=bool(hand_brake),
                                reverse=bool(reverse))


def _clip(value: float, low: float, high: float) -> float:
    return min(max(float(value), low), high)


def location_tuple(vector: Any) -> Tuple[float, float, float]:
    return (float(vector.x), float(vector.y), float(vector.z))


def transform(carla: Any, x: float = 0.0, y: float = 0.0, z: float = 0.0, pitch: float = 0.0,
              yaw: float = 0.0, roll: float = 0.0) -> Any:
    return carla.Transform(carla.Location(x=float(x), y=float(y), z=float(z)),
                           carla.Rotation(pitch=float(pitch), yaw=float(yaw), roll=float(roll)))
