"""Carla084World: the ``--world carla084`` backend, a CARLA 0.8.4 server in synchronous mode.

Each ``reset`` starts a new 0.8.4 episode (``load_settings`` + ``start_episode``) at a seeded start
spot and returns its first frame; each ``step`` sends one control and reads the next frame (one
``send_control`` per ``read_data``). Measurements map onto our spec (docs/carla084.md says what
0.8.4 cannot provide); collisions are the rises of the cumulative ``collision_*`` intensities and
lane invasions the upward crossings of a threshold by ``intersection_otherlane`` / ``_offroad``.

A 0.8.4 server drops an episode when no control reaches it within its ``ServerTimeOut``: a step that
finds the episode gone raises EpisodeLostError (a SessionError: the trainer's env ends the episode
as truncated and reconnects), and the next ``reset`` starts a new episode.
"""
import logging
import math
import random
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from bridge.errors import ProtocolError, SessionError, SpecError
from bridge.schema import LEAD_RANGE, MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from bridge.spec import Tick, WorldSpec
from carla_client.backend import WorldBackend
from carla_client.carla084.errors import EpisodeLostError, LegacyConnectionError, LegacyError
from carla_client.carla084.ini import LevelSettings
from carla_client.carla084.links import open_link, resolve_kind
from carla_client.sensors import (CAMERA_TYPES, COLLISION, LANE_INVASION, LIDAR, SensorConfig,
                                  default_sensors, observation_fields)

logger = logging.getLogger(__name__)

#: reset options (docs/carla084.md).
RESET_OPTIONS = {
    "start_index": "start at this player start spot instead of a seeded random one",
    "random_start": "true (the default): a seeded random start spot; false: start spot 0",
    "route_length": "metres of driving that count as route_completion 1.0 (default 1000)",
}
DEFAULT_ROUTE_LENGTH = 1000.0
#: 0.8.4's collision kinds -> our events' "other".
COLLISION_KINDS = (("collision_vehicles", "vehicle"), ("collision_pedestrians", "pedestrian"),
                   ("collision_other", "other"))
INVASION_KINDS = (("intersection_otherlane", "OtherLane"), ("intersection_offroad", "OffRoad"))
_WATCHED = tuple(name for name, _ in COLLISION_KINDS + INVASION_KINDS)
#: half the width of the band ahead of the ego in which another vehicle counts as the lead (metres).
LEAD_HALF_WIDTH = 1.75


class EpisodeLost(EpisodeLostError, SessionError):
    """The server ended the episode (ServerTimeOut); over the bridge a SessionError, so the trainer's
    env ends the episode as truncated, reconnects, and the next reset starts a new episode."""


class Carla084World(WorldBackend):
    """A CARLA 0.8.4 server's world, one frame per step.

    Args:
        host, port: the server's world port.
        sensors: sensor configs: cameras (RGB, depth, semantic segmentation), LiDAR, collision and
            lane-invasion sensors (the last two from measurements).
        tick_seconds: the server's frame time (start it with ``-benchmark -fps=1/tick``).
        seed: seeds start spots and NPC seeds until ``reset`` gives a seed.
        legacy_client: ``auto``, ``pythonclient`` or ``wire``.
        server_timeout: the server's ServerTimeOut in seconds: the wait for a frame, and the idle
            time after which the episode counts as lost.
        connect_timeout: seconds for connecting and for each world-port answer.
        weather, vehicles, pedestrians, quality: the settings file's level settings.
        invasion_threshold: the fraction of the car over a lane / off the road that counts as a
            lane invasion when crossed upwards.
        pythonclient_module: a stand-in for the PythonClient's modules (tests).
    """

    name = "carla084"
    version = "0.8.4"

    def __init__(self, host: str = "localhost", port: int = 2000,
                 sensors: Optional[Sequence[SensorConfig]] = None, tick_seconds: float = 0.05,
                 seed: int = 0, legacy_client: str = "auto", server_timeout: float = 10.0,
                 connect_timeout: float = 10.0, weather: int = 1, vehicles: int = 0,
                 pedestrians: int = 0, quality: str = "Low", invasion_threshold: float = 0.2,
                 pythonclient_module: Any = None) -> None:
        self.sensors = tuple(default_sensors() if sensors is None else sensors)
        for sensor in self.sensors:
            if sensor.type not in CAMERA_TYPES + (LIDAR, COLLISION, LANE_INVASION):
                raise SpecError("sensor {!r}: {} has no 0.8.4 equivalent".format(sensor.name,
                                                                                 sensor.type))
        if legacy_client not in ("auto", "pythonclient", "wire"):
            raise SpecError("legacy_client must be auto, pythonclient or wire, not {!r}".format(
                legacy_client))
        if not (0 <= int(weather) <= 14):
            raise SpecError("0.8.4 WeatherId must be in 0-14, not {}".format(weather))
        if not server_timeout > 0 or not tick_seconds > 0:
            raise SpecError("server_timeout and tick_seconds must be positive")
        self.host, self.port = host, int(port)
        self.client_kind = resolve_kind(legacy_client, pythonclient_module)
        self.version = "0.8.4 ({} client)".format(self.client_kind)
        self.tick_seconds = float(tick_seconds)
        self.legacy_client = legacy_client
        self.server_timeout = float(server_timeout)
        self.connect_timeout = float(connect_timeout)
        self.invasion_threshold = float(invasion_threshold)
        # Other vehicles' poses (for the lead-vehicle measurements) come only when asked for.
        self.level = LevelSettings(synchronous=True, weather=int(weather), vehicles=int(vehicles),
                                   pedestrians=int(pedestrians), quality=quality,
                                   send_non_player_agents=int(vehicles) > 0)
        self._module = pythonclient_module
        self._rng = random.Random(seed)
        self._report_collisions = any(s.type == COLLISION for s in self.sensors)
        self._observed = tuple(s for s in self.sensors if s.field() is not None)
        self._report_invasions = any(s.type == LANE_INVASION for s in self.sensors)
        self._spec = WorldSpec(tuple(observation_fields(self.sensors)), MEASUREMENT_SPEC,
                               VEHICLE_CONTROL_SPEC, self.tick_seconds)
        self._link = None  # type: Any
        self._in_episode = False
        self._last_read = 0.0
        self._previous = None  # type: Optional[Dict[str, float]]
        self._last_frame = None  # type: Optional[int]
        self._route_distance = 0.0
        self._route_length = DEFAULT_ROUTE_LENGTH
        self._last_observation = {}  # type: Dict[str, np.ndarray]

    def spec(self) -> WorldSpec:
        return self._spec

    # -- session ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Connects to the server's world port (idempotent)."""
        if self._link is None:
            self._link = open_link(self.client_kind, self.host, self.port, self.connect_timeout,
                                   self.sensors, self._module)
            logger.info("connected to the 0.8.4 server at %s:%d with the %s client", self.host,
                        self.port, self._link.name)

    def stop(self) -> None:
        """Disconnects (a 0.8.4 server needs no restoring: settings are per episode)."""
        link, self._link, self._in_episode = self._link, None, False
        if link is not None:
            link.close()

    # -- episodes ---------------------------------------------------------------------------------

    def reset(self, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None) -> Tick:
        """Starts a new episode at a seeded start spot and returns its first frame.

        Raises:
            SpecError: an unknown option or a bad value.
            LegacyConnectionError / LegacyTimeoutError / EpisodeRefusedError: the server failed;
                the next reset reconnects.
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise SpecError("unknown reset option(s) {}; the carla084 world knows {}".format(
                unknown, sorted(RESET_OPTIONS)))
        if seed is not None:
            self._rng = random.Random(seed)
        try:
            self._route_length = float(options.get("route_length", DEFAULT_ROUTE_LENGTH))
        except (TypeError, ValueError) as e:
            raise SpecError("route_length must be a number: {}".format(e)) from e
        if not (math.isfinite(self._route_length) and self._route_length > 0):
            raise SpecError("route_length must be positive")
        level = self.level._replace(seed_vehicles=self._rng.getrandbits(16),
                                    seed_pedestrians=self._rng.getrandbits(16))
        self._in_episode = False
        try:
            scene = self._new_episode(level)
            if scene.start_spots < 1:
                raise SpecError("the 0.8.4 server's map {!r} has no player start spots".format(
                    scene.map_name))
            index = self._rng.randrange(scene.start_spots)
            if not bool(options.get("random_start", True)):
                index = 0
            if "start_index" in options:
                index = int(options["start_index"])
                if not 0 <= index < scene.start_spots:
                    raise SpecError("start_index {} is not one of the map's {} start spots".format(
                        index, scene.start_spots))
            self._link.start(index)
            measurements, observation = self._link.read(self.server_timeout)
        except (LegacyError, SpecError):
            self.stop()  # a half-started episode would desync the world port: reconnect next time
            raise
        except OSError as e:
            self.stop()
            raise LegacyConnectionError("0.8.4 server at {}:{}: {}".format(
                self.host, self.port, e)) from e
        self._in_episode = True
        self._previous = None
        self._route_distance = 0.0
        self._last_observation = {}
        return self._tick(measurements, observation)

    def _new_episode(self, level: LevelSettings) -> Any:
        """load_settings on the open world connection; a dead one is replaced once."""
        reused = self._link is not None
        self.start()
        try:
            return self._link.new_episode(level)
        except LegacyConnectionError as e:
            if not reused:
                raise
            logger.info("the world connection is gone (%s): reconnecting", e)
            self.stop()
            self.start()
            return self._link.new_episode(level)

    def step(self, control: VehicleControl) -> Tick:
        """Sends ``control`` and returns the next frame.

        Raises:
            ProtocolError: step before reset.
            EpisodeLost: the server dropped the episode (ServerTimeOut): reset to go on.
            LegacyConnectionError / LegacyTimeoutError: the server failed or stalled.
        """
        if not self._in_episode or self._link is None:
            raise ProtocolError("step() without a running 0.8.4 episode: reset first")
        idle = time.monotonic() - self._last_read
        if idle > self.server_timeout or self._link.lost():
            self._lose("no control for {:.1f} s, longer than the server's ServerTimeOut "
                       "({:g} s)".format(idle, self.server_timeout) if idle > self.server_timeout
                       else "the server closed the control connection")
        try:
            self._link.send(control)
            measurements, observation = self._link.read(self.server_timeout)
        except EpisodeLostError as e:
            self._lose(str(e))
        except LegacyError:
            self.stop()
            raise
        return self._tick(measurements, observation)

    def _lose(self, why: str) -> None:
        self._in_episode = False
        logger.warning("0.8.4 episode lost at frame %s: %s. The server has dropped it; this episode "
                       "ends as truncated and the next reset starts a new one. If the trainer pauses "
                       "this long on purpose (a PPO update), start the server with a larger "
                       "ServerTimeOut (docs/carla084.md) and pass --server-timeout to match.",
                       self._last_frame, why)
        raise EpisodeLost("0.8.4 episode lost: {}; reset to start a new one".format(why))

    # -- measurements and events ------------------------------------------------------------------

    def _tick(self, measurements: Any, observation: Dict[str, np.ndarray]) -> Tick:
        self._last_read = time.monotonic()
        player = measurements.player_measurements
        frame = int(measurements.frame_number)
        if self._last_frame is not None and frame != self._last_frame + 1 and self._previous:
            logger.warning("0.8.4 frame jumped from %d to %d within an episode", self._last_frame,
                           frame)
        self._last_frame = frame
        for sensor in self._observed:  # a 0.8.4 frame may lack a sensor: keep its last image
            if sensor.name not in observation:
                observation[sensor.name] = self._last_observation.get(sensor.name)
                if observation[sensor.name] is None:
                    observation[sensor.name] = self._blank(sensor)
        self._last_observation = observation
        transform = player.transform
        location = transform.location
        x, y = location.x, location.y
        yaw = (transform.rotation.yaw + 180.0) % 360.0 - 180.0
        speed = player.forward_speed
        rad = math.radians(yaw)
        cos, sin = math.cos(rad), math.sin(rad)
        current = {name: getattr(player, name) for name in _WATCHED}
        if self._previous is not None:
            self._route_distance += speed * self.tick_seconds
            events = self._events(frame, current)
        else:
            events = []
        self._previous = current
        acc = player.acceleration
        m = {
            "location": np.array((x, y, location.z)),
            "yaw": yaw,
            "velocity": np.array((speed * cos, speed * sin, 0.0)),
            "speed": abs(speed),
            "acceleration": np.array((acc.x, acc.y, acc.z)),
            "lateral_offset": 0.0,   # 0.8.4 sends no lane geometry (docs/carla084.md)
            "heading_error": 0.0,
            "route_distance": self._route_distance,
            "route_completion": self._route_distance / self._route_length,
            "off_road": current["intersection_offroad"] > 0.5,
            "lead_distance": LEAD_RANGE,
            "lead_closing_speed": 0.0,
        }
        if len(measurements.non_player_agents):
            m["lead_distance"], m["lead_closing_speed"] = self._lead(measurements, x, y, rad,
                                                                     speed)
        return Tick(frame, int(measurements.game_timestamp) / 1000.0, observation, m, events)

    def _events(self, frame: int, current: Dict[str, float]) -> List[Dict[str, Any]]:
        events = []  # type: List[Dict[str, Any]]
        previous = self._previous
        if previous is None:
            return events
        if self._report_collisions:
            for name, kind in COLLISION_KINDS:
                rise = current[name] - previous[name]
                if rise > 1e-6:
                    events.append({"type": "collision", "frame": frame, "other": kind,
                                   "intensity": rise})
        if self._report_invasions:
            crossed = [marking for name, marking in INVASION_KINDS
                       if previous[name] < self.invasion_threshold <= current[name]]
            if crossed:
                events.append({"type": "lane_invasion", "frame": frame, "markings": crossed})
        return events

    @staticmethod
    def _lead(measurements: Any, x: float, y: float, yaw: float, speed: float) -> Any:
        """(bumper distance, closing speed) to the nearest vehicle ahead within a lane-wide band,
        from the non-player agents (sent with SendNonPlayerAgentsInfo); (LEAD_RANGE, 0) if none."""
        best = (LEAD_RANGE, 0.0)
        if not len(measurements.non_player_agents):
            return best
        ego_half = float(measurements.player_measurements.bounding_box.extent.x)
        c, s = math.cos(yaw), math.sin(yaw)
        for agent in measurements.non_player_agents:
            if agent.WhichOneof("agent") != "vehicle":
                continue
            other = agent.vehicle
            dx = other.transform.location.x - x
            dy = other.transform.location.y - y
            ahead, lateral = dx * c + dy * s, -dx * s + dy * c
            gap = ahead - ego_half - float(other.bounding_box.extent.x)
            if ahead <= 0 or abs(lateral) > LEAD_HALF_WIDTH or gap >= best[0]:
                continue
            relative = math.radians(other.transform.rotation.yaw) - yaw
            best = (max(0.0, gap), speed - float(other.forward_speed) * math.cos(relative))
        return best

    @staticmethod
    def _blank(sensor: SensorConfig) -> np.ndarray:
        field = sensor.field()
        shape = tuple(0 if n == -1 else n for n in field.shape)
        return np.zeros(shape, dtype=field.dtype)
