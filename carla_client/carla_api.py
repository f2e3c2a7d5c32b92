"""The one place that imports CARLA's ``carla`` module, plus the CARLA errors and connection helpers.

Everything else receives the module object from :func:`import_carla` (or a test's stand-in), so
``carla_client`` imports, and ``--world builtin`` runs, on machines without CARLA.
"""
import contextlib
import logging
import warnings
from typing import Any, Iterator, Optional, Tuple, Type

from bridge.errors import ActorLostError, BridgeError, BridgeTimeoutError

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


class CarlaActorLostError(ActorLostError):
    """An actor of ours is gone (another client destroyed it): the episode ends, reset rebuilds."""


#: what libcarla's RuntimeError messages contain for each kind of failure (client 0.9.10-0.9.16).
_TIMEOUT_MARKS = ("time-out", "timed out", "timeout")
_DESTROYED_MARKS = ("destroyed actor", "actor is already destroyed", "actor not found")
_CONNECTION_MARKS = ("connection refused", "connection reset", "broken pipe", "end of file",
                     "not connected")


def translate(error: BaseException, doing: str, where: str,
              default: Optional[Type[BridgeError]] = None) -> BridgeError:
    """Our typed error for a ``RuntimeError`` that libcarla raised while ``doing`` something.

    Time-outs become CarlaTimeoutError, "operate on a destroyed actor" CarlaActorLostError, a
    dropped or refused connection (rpclib/asio's "Connection refused", "Connection reset by peer",
    "Broken pipe", "End of file") CarlaConnectionError, and anything else ``default``
    (CarlaSetupError unless told otherwise). The message says what we were doing, at which server,
    and what libcarla said.
    """
    text = str(error)
    lowered = text.lower()
    if any(mark in lowered for mark in _TIMEOUT_MARKS):
        return CarlaTimeoutError(
            "the CARLA server at {} did not answer in time while {} ({}): did it crash or hang? is "
            "it overloaded (raise --carla-timeout)?".format(where, doing, text))
    if any(mark in lowered for mark in _DESTROYED_MARKS):
        return CarlaActorLostError(
            "an actor of ours was destroyed by someone else while {} at {} ({}): this episode is "
            "over; the next reset spawns the ego and its sensors again".format(doing, where, text))
    if any(mark in lowered for mark in _CONNECTION_MARKS):
        return CarlaConnectionError(
            "lost the connection to the CARLA server at {} while {} ({}): did it crash or restart? "
            "start it again, e.g. `{}`".format(where, doing, text,
                                              SERVER_COMMAND.format(port=where.rsplit(":", 1)[-1])))
    cls = default or CarlaSetupError
    return cls("CARLA at {} failed while {}: {}".format(where, doing, text))


def is_libcarla_error(error: BaseException) -> bool:
    """True for the plain ``RuntimeError`` libcarla raises (not RecursionError and the like)."""
    return type(error) is RuntimeError


@contextlib.contextmanager
def calling(doing: str, where: str, default: Optional[Type[BridgeError]] = None
            ) -> Iterator[None]:
    """Turns libcarla's ``RuntimeError`` raised inside the block into our typed error (translate)."""
    try:
        yield
    except RuntimeError as e:
        if not is_libcarla_error(e):
            raise
        raise translate(e, doing, where, default) from e


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
    """The client library's version: ``carla.__version__`` where set (0.9.16's is None), else the
    installed distribution's (``importlib.metadata`` on 3.8+, ``pkg_resources`` on 3.6/3.7), else
    "unknown" (an egg put on sys.path by hand, or a stand-in module)."""
    version = getattr(carla, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib import metadata  # Python 3.8+
    except ImportError:
        metadata = None
    if metadata is not None:
        try:
            return metadata.version("carla")
        except Exception:  # PackageNotFoundError: no installed distribution, not worth failing for
            return "unknown"
    try:
        with warnings.catch_warnings():  # newer setuptools deprecate pkg_resources (still works)
            warnings.simplefilter("ignore")
            import pkg_resources  # setuptools: the 3.6/3.7 way
        return pkg_resources.get_distribution("carla").version
    except Exception:  # no setuptools, or no distribution: not worth failing for
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
    had no argument at all (0.9.5-0.9.7), so the timeout is always passed, falling back for the
    oldest (whose tick then waits for the client timeout set by ``set_timeout``).

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
