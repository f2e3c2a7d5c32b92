"""The two ways ``--world carla084`` talks to a 0.8.4 server, behind one small interface.

A *link* requests episodes and exchanges frames; it hands the world backend measurements (a
``Measurements`` protobuf message, ours or the PythonClient's: both have the same fields) and each
sensor's data already converted to our observation arrays:

- ``WireLink``: our client of the protocol (carla_client/carla084/wire.py), Python 3.6 and later.
- ``PythonClientLink``: the user's installed 0.8.4 PythonClient (``carla.client``,
  ``carla.settings``, ``carla.sensor``), which works on Python 3.5/3.6 only (PEP 479).
"""
import importlib
import logging
import sys
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from bridge.schema import VehicleControl
from carla_client.carla084.errors import (EpisodeLostError, EpisodeRefusedError,
                                          LegacyClientUnavailableError, LegacyConnectionError,
                                          LegacyError, LegacyProtocolError, LegacyTimeoutError)
from carla_client.carla084.ini import IMAGE_TYPES, LevelSettings, build_ini, sensor_sections
from carla_client.carla084.payloads import decode_camera, decode_lidar, depth_metres
from carla_client.carla084.wire import WireClient
from carla_client.sensors import CAMERA_DEPTH, CAMERA_RGB, CAMERA_SEMANTIC, LIDAR, SensorConfig

logger = logging.getLogger(__name__)

SERVER_HINT = ("is a CARLA 0.8.4 server running there? Start one with `./CarlaUE4.sh -carla-server "
               "-carla-world-port={port} -benchmark -fps=20`, or ours with `python -m "
               "carla_client.carla084_server --port {port}`")


class EpisodeScene(NamedTuple):
    map_name: str
    start_spots: int
    sensors: Tuple[str, ...]


def to_observation(sensor: SensorConfig, bgra: Optional[np.ndarray] = None,
                   points: Optional[np.ndarray] = None) -> np.ndarray:
    """A camera's BGRA pixels or a LiDAR's (n, 3) points as the observation array of our spec."""
    if sensor.type == CAMERA_RGB:
        return np.array(bgra, dtype=np.uint8, copy=True)
    if sensor.type == CAMERA_DEPTH:
        return depth_metres(bgra)
    if sensor.type == CAMERA_SEMANTIC:
        return np.array(bgra[..., 2], dtype=np.uint8, copy=True)
    assert sensor.type == LIDAR, sensor.type  # event sensors never reach here
    out = np.zeros((len(points), 4), dtype=np.float32)
    out[:, :3] = points
    return out


def _check_scene(wanted: Sequence[SensorConfig], created: Sequence[str], port: int) -> None:
    missing = [s for s in wanted if not s.is_event and s.name not in created]
    if missing:
        hint = ("a server without LiDAR (our carla084_server) leaves LIDAR_RAY_CAST sensors out: "
                "remove them from the sensor config" if all(s.type == LIDAR for s in missing) else
                "the server refused these sensors or the whole settings file: see the server's log")
        raise EpisodeRefusedError(
            "the 0.8.4 server at port {} did not create sensor(s) {} (its SceneDescription lists "
            "{}); {}".format(port, [s.name for s in missing], list(created), hint))


class WireLink(object):
    """Our own protocol client (see wire.py)."""

    name = "wire"

    def __init__(self, host: str, port: int, timeout: float, sensors: Sequence[SensorConfig]
                 ) -> None:
        self.host, self.port, self.sensors = host, port, tuple(sensors)
        try:
            self._client = WireClient(host, port, timeout, connect_attempts=3)
        except LegacyConnectionError as e:
            raise LegacyConnectionError("{}: {}".format(e, SERVER_HINT.format(port=port))) from e

    def new_episode(self, level: LevelSettings) -> EpisodeScene:
        scene = self._client.load_settings(build_ini(self.sensors, level))
        _check_scene(self.sensors, list(scene.sensors), self.port)
        return EpisodeScene(scene.map_name, len(scene.start_spots), tuple(scene.sensors))

    def start(self, index: int) -> None:
        self._client.start_episode(index)

    def read(self, timeout: float) -> Tuple[Any, Dict[str, np.ndarray]]:
        measurements, raw = self._client.read_data(timeout)
        observation = {}
        for sensor in self.sensors:
            message = raw.get(sensor.name)
            if message is None:
                continue
            if sensor.type == LIDAR:
                observation[sensor.name] = to_observation(sensor,
                                                          points=decode_lidar(message).points)
            else:
                observation[sensor.name] = to_observation(sensor, decode_camera(message).bgra)
        return measurements, observation

    def send(self, control: VehicleControl) -> None:
        self._client.send_control(steer=control.steer, throttle=control.throttle,
                                  brake=control.brake, hand_brake=control.hand_brake,
                                  reverse=control.reverse)

    def lost(self) -> bool:
        return self._client.control_connection_closed()

    def close(self) -> None:
        self._client.close()


def import_pythonclient() -> Any:
    """The installed 0.8.4 PythonClient as a namespace (client, settings, sensor, tcp modules).

    Raises:
        LegacyClientUnavailableError: ``carla.client`` does not import (CARLA 0.9's ``carla`` has
            no such module).
    """
    try:
        modules = {name: importlib.import_module("carla." + name)
                   for name in ("client", "settings", "sensor", "tcp")}
        modules["client"].make_carla_client  # noqa: B018 -- the 0.8.4 API, not 0.9's
    except (ImportError, AttributeError, RuntimeError) as e:
        raise LegacyClientUnavailableError(
            "--legacy-client pythonclient needs CARLA 0.8.4's PythonClient (`carla.client`) in this "
            "interpreter: `pip install -e <CARLA_0.8.4>/PythonClient` on Python 3.5/3.6, or use "
            "--legacy-client wire (any Python): {}".format(e)) from e
    return type("PythonClient", (), modules)


def pythonclient_usable() -> bool:
    """Whether ``auto`` picks the PythonClient: importable, and on a Python it works on (< 3.7)."""
    if sys.version_info >= (3, 7):
        return False  # its frame reader raises StopIteration in a generator (PEP 479)
    try:
        import_pythonclient()
    except LegacyClientUnavailableError:
        return False
    return True


class PythonClientLink(object):
    """The user's 0.8.4 PythonClient: ``make_carla_client``, ``CarlaSettings``, ``read_data``,
    ``send_control``, the way the original 0.8.4 training code drove the server."""

    name = "pythonclient"

    def __init__(self, host: str, port: int, timeout: float, sensors: Sequence[SensorConfig],
                 module: Any = None) -> None:
        self.carla = module or import_pythonclient()
        self.host, self.port, self.timeout, self.sensors = host, port, timeout, tuple(sensors)
        self._context = self.carla.client.make_carla_client(host, port, timeout=timeout)
        try:
            self._client = self._context.__enter__()
        except self.carla.tcp.TCPConnectionError as e:
            raise LegacyConnectionError("cannot connect to the 0.8.4 server at {}:{}: {}; {}".format(
                host, port, e, SERVER_HINT.format(port=port))) from e
        self._closed = False

    def _settings(self, level: LevelSettings) -> Any:
        settings = self.carla.settings.CarlaSettings()
        settings.set(SynchronousMode=level.synchronous,
                     SendNonPlayerAgentsInfo=level.send_non_player_agents,
                     NumberOfVehicles=level.vehicles, NumberOfPedestrians=level.pedestrians,
                     WeatherId=level.weather, QualityLevel=level.quality,
                     SeedVehicles=level.seed_vehicles, SeedPedestrians=level.seed_pedestrians)
        for name, keys in sensor_sections(self.sensors):
            values = dict(keys)
            kind = values.pop("SensorType")
            sensor = (self.carla.sensor.Camera(name) if kind == "CAMERA"
                      else self.carla.sensor.Lidar(name))
            sensor.set_position(values.pop("PositionX"), values.pop("PositionY"),
                                values.pop("PositionZ"))
            sensor.set_rotation(values.pop("RotationPitch"), values.pop("RotationYaw"),
                                values.pop("RotationRoll"))
            sensor.set(**values)
            settings.add_sensor(sensor)
        return settings

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs a PythonClient call, turning its exceptions into ours."""
        try:
            return call(*args, **kwargs)
        except self.carla.tcp.TCPConnectionError as e:
            text = str(e)
            if "timed out" in text:
                raise LegacyTimeoutError("0.8.4 PythonClient {}: {}".format(what, text)) from e
            if what in ("read_data", "send_control"):
                raise EpisodeLostError("0.8.4 PythonClient {}: the server closed the connection, "
                                       "the episode is over: {}".format(what, text)) from e
            raise LegacyConnectionError("0.8.4 PythonClient {}: {}".format(what, text)) from e
        except RuntimeError as e:
            if "StopIteration" in str(e):
                raise LegacyClientUnavailableError(
                    "the 0.8.4 PythonClient's frame reader fails on Python >= 3.7 (PEP 479, "
                    "carla-simulator/carla#545): use --legacy-client wire") from e
            if "start episode" in str(e):
                raise EpisodeRefusedError("0.8.4 PythonClient {}: {}".format(what, e)) from e
            raise LegacyConnectionError("0.8.4 PythonClient {}: {}".format(what, e)) from e

    def new_episode(self, level: LevelSettings) -> EpisodeScene:
        scene = self._call("load_settings", self._client.load_settings, self._settings(level))
        names = [s.name for s in scene.sensors]
        _check_scene(self.sensors, names, self.port)
        return EpisodeScene(scene.map_name, len(scene.player_start_spots), tuple(names))

    def start(self, index: int) -> None:
        self._call("start_episode", self._client.start_episode, index)

    def read(self, timeout: float) -> Tuple[Any, Dict[str, np.ndarray]]:
        measurements, data = self._call("read_data", self._client.read_data)
        observation = {}
        for sensor in self.sensors:
            item = data.get(sensor.name)
            if item is None:
                continue
            if sensor.type == LIDAR:
                observation[sensor.name] = to_observation(sensor, points=np.asarray(
                    item.point_cloud.array, dtype=np.float32).reshape(-1, 3))
            else:
                if item.type not in IMAGE_TYPES:
                    raise LegacyProtocolError("sensor {!r}: unknown image type {!r}".format(
                        sensor.name, item.type))
                pixels = np.frombuffer(item.raw_data, dtype=np.uint8)
                observation[sensor.name] = to_observation(
                    sensor, pixels.reshape(item.height, item.width, 4))
        return measurements, observation

    def send(self, control: VehicleControl) -> None:
        self._call("send_control", self._client.send_control, steer=control.steer,
                   throttle=control.throttle, brake=control.brake,
                   hand_brake=control.hand_brake, reverse=control.reverse)

    def lost(self) -> bool:
        return False  # the PythonClient does not expose its sockets; the idle timer decides

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._context.__exit__(None, None, None)
            except LegacyError:
                raise
            except Exception as e:  # a PythonClient failing to disconnect changes nothing for us
                logger.debug("PythonClient disconnect: %s", e)


def resolve_kind(kind: str, module: Any = None) -> str:
    """``auto`` -> ``pythonclient`` when a usable PythonClient is installed (or given), else ``wire``."""
    if kind == "auto":
        return "pythonclient" if module is not None or pythonclient_usable() else "wire"
    return kind


def open_link(kind: str, host: str, port: int, timeout: float,
              sensors: Sequence[SensorConfig], module: Any = None) -> Any:
    """Opens a link of ``kind`` (``auto``, ``pythonclient`` or ``wire``)."""
    kind = resolve_kind(kind, module)
    if kind == "pythonclient":
        return PythonClientLink(host, port, timeout, sensors, module)
    if kind == "wire":
        return WireLink(host, port, timeout, sensors)
    raise ValueError("legacy client must be auto, pythonclient or wire, not {!r}".format(kind))
