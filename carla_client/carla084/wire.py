"""Our own client of the CARLA 0.8.4 protocol (``--legacy-client wire``): any Python from 3.6 on.

It follows the protocol's message sequence: on the world port ``RequestNewEpisode`` ->
``SceneDescription``, ``EpisodeStart`` -> ``EpisodeReady``; then it connects the stream port (frames:
``Measurements``, sensor messages, an empty message) and the control port (one ``Control`` per
frame). A new episode closes the stream and control connections and reuses the world connection.
Unlike the 0.8.4 PythonClient it never relies on ``StopIteration`` inside a generator (PEP 479), has
a deadline on every read, and tells a dropped connection from a stalled one.
"""
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from google.protobuf.message import DecodeError

from carla_client.carla084 import schema
from carla_client.carla084.errors import (EpisodeLostError, EpisodeRefusedError,
                                          LegacyConnectionError, LegacyProtocolError)
from carla_client.carla084.framing import FramedSocket
from carla_client.carla084.payloads import sensor_id_of

logger = logging.getLogger(__name__)

#: connection attempts for the stream and control ports, which the server opens asynchronously
#: after EpisodeReady (the 0.8.4 client makes 10 attempts 1 s apart; ours are quicker).
PORT_ATTEMPTS = 50
PORT_RETRY_SECONDS = 0.2


class SceneSensor(NamedTuple):
    id: int
    type: int
    name: str


class Scene(NamedTuple):
    """What the server announced for the requested episode."""

    map_name: str
    start_spots: List[Any]          # schema.Transform messages
    sensors: Dict[str, SceneSensor]  # by name


def parse(cls: Any, data: bytes, what: str) -> Any:
    """Parses a protobuf message, a LegacyProtocolError if it does not parse."""
    message = cls()
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError) as e:
        raise LegacyProtocolError("{} does not parse: {}".format(what, e)) from e
    return message


class WireClient(object):
    """One client of a 0.8.4 server at ``host:port`` (world), ``port + 1`` (stream), ``port + 2`` (control).

    Args:
        host, port: the server's world port.
        timeout: seconds allowed for connecting and for each world-port answer.
        connect_attempts: tries for the world port (refused connections are retried).
    """

    def __init__(self, host: str, port: int, timeout: float = 15.0, connect_attempts: int = 1
                 ) -> None:
        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self._world = FramedSocket.connect(host, self.port, "world", self.timeout,
                                           attempts=connect_attempts)
        self._stream = None  # type: Optional[FramedSocket]
        self._control = None  # type: Optional[FramedSocket]
        self._scene = None  # type: Optional[Scene]
        self._requested = False
        self._by_id = {}  # type: Dict[int, SceneSensor]
        self._control_message = schema.Control()

    # -- episodes ---------------------------------------------------------------------------------

    def load_settings(self, ini_text: str) -> Scene:
        """Requests a new episode with these settings and returns the server's scene description.

        Raises:
            LegacyConnectionError / LegacyTimeoutError: the world connection failed or stalled.
            LegacyProtocolError: the answer does not parse.
        """
        self._close_episode_connections()
        world = self._live_world()
        world.send(schema.RequestNewEpisode(ini_file=ini_text).SerializeToString(), self.timeout)
        scene = parse(schema.SceneDescription, world.recv(self.timeout), "SceneDescription")
        sensors = {s.name: SceneSensor(int(s.id), int(s.type), s.name) for s in scene.sensors}
        self._scene = Scene(scene.map_name, list(scene.player_start_spots), sensors)
        self._by_id = {s.id: s for s in sensors.values()}
        self._requested = True
        return self._scene

    def start_episode(self, start_index: int) -> None:
        """Starts the requested episode at a start spot and connects the stream and control ports.

        Raises:
            EpisodeRefusedError: the server answered ``ready=false``.
            LegacyConnectionError / LegacyTimeoutError: as for load_settings.
        """
        if not self._requested:
            raise LegacyProtocolError("start_episode() needs load_settings() first (the 0.8.4 "
                                      "server would read a second request as an EpisodeStart)")
        self._requested = False
        world = self._live_world()
        world.send(schema.EpisodeStart(player_start_spot_index=int(start_index))
                   .SerializeToString(), self.timeout)
        ready = parse(schema.EpisodeReady, world.recv(self.timeout), "EpisodeReady")
        if not ready.ready:
            raise EpisodeRefusedError("the 0.8.4 server at {}:{} refused to start the episode "
                                      "(EpisodeReady.ready is false)".format(self.host, self.port))
        self._stream = FramedSocket.connect(self.host, self.port + 1, "stream", self.timeout,
                                            PORT_ATTEMPTS, PORT_RETRY_SECONDS)
        self._control = FramedSocket.connect(self.host, self.port + 2, "control", self.timeout,
                                             PORT_ATTEMPTS, PORT_RETRY_SECONDS)

    # -- frames -----------------------------------------------------------------------------------

    def read_data(self, timeout: float) -> Tuple[Any, Dict[str, bytes]]:
        """One frame: the Measurements message and each sensor's raw message by sensor name.

        Raises:
            EpisodeLostError: the stream connection was closed (the server ended the episode).
            LegacyTimeoutError: no complete frame within ``timeout`` seconds.
            LegacyProtocolError: unparsable measurements or an unknown sensor id.
        """
        stream = self._episode_socket(self._stream, "stream")
        try:
            measurements = parse(schema.Measurements, stream.recv(timeout), "Measurements")
            sensors = {}  # type: Dict[str, bytes]
            while True:
                message = stream.recv(timeout)
                if not message:
                    break
                sensor = self._by_id.get(sensor_id_of(message))
                if sensor is None:
                    raise LegacyProtocolError("sensor id {:#x} is not in this episode's scene "
                                              "description".format(sensor_id_of(message)))
                sensors[sensor.name] = message
        except LegacyConnectionError as e:
            self._close_episode_connections()
            raise EpisodeLostError("the 0.8.4 server closed the stream connection: the episode is "
                                   "over ({})".format(e)) from e
        return measurements, sensors

    def send_control(self, steer: float, throttle: float, brake: float, hand_brake: bool,
                     reverse: bool) -> None:
        """Sends this frame's control.

        Raises:
            EpisodeLostError: the server closed the control connection (it does after
                ``ServerTimeOut`` without a control); the episode is over.
        """
        control = self._episode_socket(self._control, "control")
        message = self._control_message  # refilled, not rebuilt: the same bytes
        message.steer, message.throttle, message.brake = steer, throttle, brake
        message.hand_brake, message.reverse = hand_brake, reverse
        try:
            control.send(message.SerializeToString(), self.timeout)
        except LegacyConnectionError as e:
            self._close_episode_connections()
            raise EpisodeLostError("the 0.8.4 server closed the control connection, as it does "
                                   "when no control arrives within its ServerTimeOut: the episode "
                                   "is over ({})".format(e)) from e

    def control_connection_closed(self) -> bool:
        """Whether the server has closed the control connection (checked without blocking)."""
        if self._control is None or self._control.closed:
            return True
        try:
            if self._control.readable():  # the server never writes here: readable means closed
                self._control.poll()
        except LegacyConnectionError:
            self._close_episode_connections()
            return True
        return False

    # -- plumbing ---------------------------------------------------------------------------------

    def _live_world(self) -> FramedSocket:
        if self._world.closed:
            raise LegacyConnectionError("the world connection to {}:{} is closed".format(
                self.host, self.port))
        return self._world

    def _episode_socket(self, sock: Optional[FramedSocket], name: str) -> FramedSocket:
        if sock is None or sock.closed:
            raise EpisodeLostError("no {} connection: start an episode first (load_settings + "
                                   "start_episode)".format(name))
        return sock

    def _close_episode_connections(self) -> None:
        for sock in (self._stream, self._control):
            if sock is not None:
                sock.close()
        self._stream = self._control = None

    def close(self) -> None:
        """Closes all three connections. Idempotent."""
        self._close_episode_connections()
        self._world.close()

    def __enter__(self) -> "WireClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
