"""One 0.8.4 episode on the built-in world: settings in, protocol messages out (server side).

``EpisodeWorld`` turns a parsed settings file into a BuiltinWorld with the requested cameras, places
the car at a start spot and renders each frame as the 0.8.4 server would send it: a
``Measurements`` message (player transform, speed, acceleration, cumulative collision intensities,
the car's fraction on the other lane / off the road, the autopilot's control, other agents when asked
for) and one payload per sensor. The built-in world has no LiDAR: LIDAR_RAY_CAST sensors are left
out of the SceneDescription (a refusal the client can see) and logged.
"""
import logging
import math
import random
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from bridge.schema import VehicleControl
from bridge.spec import Tick
from carla_client.builtin import BuiltinWorld, PurePursuit
from carla_client.carla084 import schema
from carla_client.carla084.ini import IniSensor, ParsedIni, parse_bool
from carla_client.carla084.payloads import depth_to_bgra, encode_camera, labels_to_bgra
from carla_client.sensors import (CAMERA_DEPTH, CAMERA_RGB, CAMERA_SEMANTIC, COLLISION,
                                  LANE_INVASION, SensorConfig)

logger = logging.getLogger(__name__)

MAP_NAME = "BuiltinCircuit"
START_SPOTS = 20
MAX_VEHICLES = 40
#: 0.8.4 image type number and our camera type for each PostProcessing value (lower-case).
POST_PROCESSING = {"none": (0, CAMERA_RGB), "scenefinal": (1, CAMERA_RGB),
                   "depth": (2, CAMERA_DEPTH), "semanticsegmentation": (3, CAMERA_SEMANTIC)}
COLLISION_FIELDS = {"vehicle": "collision_vehicles", "pedestrian": "collision_pedestrians"}
#: the built-in world's tags (CARLA >= 0.9.14) -> 0.8.4's: Roads 1 -> 7, Terrain 10 -> Vegetation 9,
#: Sky 11 -> None 0, Car 14 -> Vehicles 10, RoadLine 24 -> RoadLines 6, GuardRail 28 -> Fences 2.
TAGS_084 = np.zeros(256, dtype=np.uint8)
TAGS_084[[1, 10, 11, 14, 24, 28]] = [7, 9, 0, 10, 6, 2]


class EpisodeSettings(NamedTuple):
    synchronous: bool
    send_agents: bool
    vehicles: int
    seed_vehicles: Optional[int]
    cameras: Tuple[Tuple[IniSensor, int, SensorConfig], ...]  # (definition, image type, config)
    refused: Tuple[Tuple[IniSensor, str], ...]               # (definition, reason)


def read_settings(text: str) -> EpisodeSettings:
    """The episode settings of a RequestNewEpisode's ini_file.

    Raises:
        SpecError: the text is not INI or a value does not parse.
    """
    ini = ParsedIni(text)
    cameras, refused = [], []
    for sensor in ini.sensors():
        kind = sensor.get("SensorType", "").upper()
        if kind == "CAMERA":
            post = sensor.get("PostProcessing", "SceneFinal").lower()
            if post not in POST_PROCESSING:
                refused.append((sensor, "unknown PostProcessing {!r}".format(post)))
                continue
            image_type, our_type = POST_PROCESSING[post]
            config = SensorConfig(
                name=sensor.name, type=our_type, x=sensor.get("PositionX", 0.2, float),
                y=sensor.get("PositionY", 0.0, float), z=sensor.get("PositionZ", 1.3, float),
                pitch=sensor.get("RotationPitch", 0.0, float),
                yaw=sensor.get("RotationYaw", 0.0, float),
                roll=sensor.get("RotationRoll", 0.0, float),
                attributes={"width": sensor.get("ImageSizeX", 720, int),
                            "height": sensor.get("ImageSizeY", 512, int),
                            "fov": sensor.get("FOV", 90.0, float)})
            cameras.append((sensor, image_type, config))
        elif kind == "LIDAR_RAY_CAST":
            refused.append((sensor, "the built-in world has no LiDAR"))
        else:
            refused.append((sensor, "unknown SensorType {!r}".format(kind)))
    seed = ini.get("CARLA/LevelSettings", "SeedVehicles", None, int)
    return EpisodeSettings(
        synchronous=parse_bool(ini.get("CARLA/Server", "SynchronousMode", "true")),
        send_agents=parse_bool(ini.get("CARLA/Server", "SendNonPlayerAgentsInfo", "false")),
        vehicles=max(0, min(MAX_VEHICLES, ini.get("CARLA/LevelSettings", "NumberOfVehicles", 0,
                                                  int))),
        seed_vehicles=seed, cameras=tuple(cameras), refused=tuple(refused))


def _overlap(left: float, right: float, low: float, high: float) -> float:
    return max(0.0, min(right, high) - max(left, low))


class EpisodeWorld(object):
    """The built-in world behind one 0.8.4 episode's settings.

    Args:
        settings: read_settings()'s result.
        seed: the server's world seed (the circuit).
        tick_seconds: simulated seconds per frame.
        rng: the server's random source (sensor ids, NPC seeds when the settings give none).
        world_cache: BuiltinWorlds by configuration, reused across episodes (building the ground
            texture of a camera takes a while).
    """

    def __init__(self, settings: EpisodeSettings, seed: int, tick_seconds: float,
                 rng: random.Random, world_cache: Dict[Any, BuiltinWorld]) -> None:
        self.settings = settings
        self.tick_seconds = tick_seconds
        sensors = [c for _, _, c in settings.cameras] + [
            SensorConfig("collision", COLLISION), SensorConfig("lane_invasion", LANE_INVASION)]
        key = (seed, tick_seconds, settings.vehicles, tuple(
            (c.name, c.type, c.x, c.y, c.z, c.pitch, c.yaw, c.roll, tuple(sorted(c.attributes.items())))
            for _, _, c in settings.cameras))
        world = world_cache.get(key)
        if world is None:
            world = BuiltinWorld(sensors=sensors, tick_seconds=tick_seconds, seed=seed,
                                 npc_vehicles=settings.vehicles)
            world_cache.clear()  # one cached world: a client alternating settings pays twice
            world_cache[key] = world
        self.world = world
        self._driver = PurePursuit(world.track, world.vehicle)
        ids = set()  # type: set
        while len(ids) < len(settings.cameras):
            ids.add(rng.randint(1, 2 ** 32 - 1))
        self.sensor_ids = dict(zip((s.name for s, _, _ in settings.cameras), sorted(ids)))
        self._episode_seed = (settings.seed_vehicles if settings.seed_vehicles is not None
                              else rng.randint(0, 2 ** 31 - 1))
        self._collisions = {}  # type: Dict[str, float]
        self._frames = 0
        self._tick = None  # type: Optional[Tick]
        self._lane_limits = self._lane_geometry()
        # One Measurements message, refilled each frame: the bounding box never changes, and the
        # nested messages are looked up once instead of per field (the bytes are the same).
        self._measurements = schema.Measurements()
        player = self._player = self._measurements.player_measurements
        vehicle = world.vehicle
        player.bounding_box.extent.x, player.bounding_box.extent.y = (vehicle.length / 2,
                                                                      vehicle.width / 2)
        player.bounding_box.extent.z = vehicle.height / 2
        self._location = player.transform.location
        self._rotation = player.transform.rotation
        self._acceleration = player.acceleration
        self._autopilot = player.autopilot_control
        self._fov = [float(config.attr("fov", 90.0)) for _, _, config in settings.cameras]

    # -- the scene ---------------------------------------------------------------------------------

    def start_spots(self) -> List[Any]:
        route = self.world.track.route
        distances = np.arange(START_SPOTS) * route.length / START_SPOTS
        xs, ys, headings = route.pose_at(distances)
        return [schema.transform((x, y, 0.0), (0.0, math.degrees(h), 0.0))
                for x, y, h in zip(xs, ys, headings)]

    def scene(self) -> Any:
        for sensor, reason in self.settings.refused:
            logger.warning("sensor %r refused (left out of the SceneDescription): %s",
                           sensor.name, reason)
        message = schema.SceneDescription(map_name=MAP_NAME)
        message.player_start_spots.extend(self.start_spots())
        for sensor, _, _ in self.settings.cameras:
            message.sensors.add(id=self.sensor_ids[sensor.name], type=schema.SENSOR_CAMERA,
                                name=sensor.name)
        return message

    # -- frames -------------------------------------------------------------------------------------

    def start(self, spot: int) -> None:
        """Places the car at start spot ``spot`` (an invalid index means spot 0, as on 0.8.4)."""
        if not 0 <= spot < START_SPOTS:
            spot = 0
        distance = spot * self.world.track.route.length / START_SPOTS
        self.world.reset(seed=self._episode_seed, options={"start_distance": distance})
        self._driver.reset()
        self._collisions = {"collision_vehicles": 0.0, "collision_pedestrians": 0.0,
                            "collision_other": 0.0}
        self._frames = 0

    def step(self, control: VehicleControl) -> None:
        """Simulates one frame under ``control`` (the first frame of an episode is one step in)."""
        tick = self.world.step(control)
        self._frames += 1
        for event in tick.events:
            if event["type"] == "collision":
                field = COLLISION_FIELDS.get(event.get("other"), "collision_other")
                self._collisions[field] += float(event.get("intensity", 0.0))
        self._tick = tick

    def messages(self, frame_number: int) -> List[bytes]:
        """The current frame as stream messages: Measurements, then one per sensor."""
        tick = self._tick
        assert tick is not None, "messages() before step()"
        m = tick.measurements
        measurements, player = self._measurements, self._player
        measurements.platform_timestamp = int(time.time() * 1000) & 0xFFFFFFFF
        measurements.game_timestamp = int(round(self._frames * self.tick_seconds * 1000)) & 0xFFFFFFFF
        measurements.frame_number = frame_number
        location, rotation = self._location, self._rotation
        x, y, z = m["location"].tolist()
        location.x, location.y, location.z = x, y, z
        yaw_degrees = float(m["yaw"])
        rotation.pitch, rotation.yaw, rotation.roll = 0.0, yaw_degrees, 0.0
        yaw = math.radians(yaw_degrees)
        vx, vy = m["velocity"].tolist()[:2]
        player.forward_speed = vx * math.cos(yaw) + vy * math.sin(yaw)
        acceleration = self._acceleration
        acceleration.x, acceleration.y, acceleration.z = m["acceleration"].tolist()
        collisions = self._collisions
        player.collision_vehicles = collisions["collision_vehicles"]
        player.collision_pedestrians = collisions["collision_pedestrians"]
        player.collision_other = collisions["collision_other"]
        otherlane, offroad = self._lane_fractions(float(m["lateral_offset"]))
        player.intersection_otherlane, player.intersection_offroad = otherlane, offroad
        auto = self._driver.control(m, self.world.route_projection)
        autopilot = self._autopilot
        autopilot.steer, autopilot.throttle, autopilot.brake = auto.steer, auto.throttle, auto.brake
        if self.settings.send_agents:
            del measurements.non_player_agents[:]
            self._add_agents(measurements)
        out = [measurements.SerializeToString()]
        for (sensor, image_type, config), fov in zip(self.settings.cameras, self._fov):
            image = tick.observation[sensor.name]
            if config.type == CAMERA_DEPTH:
                image = depth_to_bgra(image)
            elif config.type == CAMERA_SEMANTIC:
                image = labels_to_bgra(TAGS_084[image])
            out.append(encode_camera(self.sensor_ids[sensor.name], frame_number, image_type, fov,
                                     image))
        return out

    def _lane_geometry(self) -> Tuple[float, float, float]:
        params = self.world.track.params
        return self.world.vehicle.width / 2, params.lane_width / 2, params.half_width

    def _lane_fractions(self, lateral: float) -> Tuple[float, float]:
        """The car's width fraction on the other lane and off the road (its heading ignored)."""
        half_car, half_lane, half_road = self._lane_limits
        centre = lateral + half_lane  # from the road's centre line, right positive
        left, right = centre - half_car, centre + half_car
        width = 2 * half_car
        otherlane = _overlap(left, right, -half_road, 0.0) / width
        offroad = (_overlap(left, right, -1e9, -half_road)
                   + _overlap(left, right, half_road, 1e9)) / width
        return otherlane, min(1.0, offroad)

    def _add_agents(self, measurements: Any) -> None:
        traffic = self.world.traffic
        if not traffic.count:
            return
        xs, ys, yaws = traffic.poses_arrays()
        vehicle = self.world.vehicle
        for i in range(traffic.count):
            agent = measurements.non_player_agents.add(id=i + 1)
            agent.vehicle.transform.CopyFrom(schema.transform(
                (float(xs[i]), float(ys[i]), 0.0), (0.0, math.degrees(float(yaws[i])), 0.0)))
            agent.vehicle.forward_speed = float(traffic.speed[i])
            agent.vehicle.bounding_box.extent.x = vehicle.length / 2
            agent.vehicle.bounding_box.extent.y = vehicle.width / 2
            agent.vehicle.bounding_box.extent.z = vehicle.height / 2
