"""The 0.8.4 settings file (``ini_file``): written from our sensor configs, read by our server.

Writing follows what the 0.8.4 PythonClient's ``CarlaSettings`` writes (``[CARLA/Server]``,
``[CARLA/QualitySettings]``, ``[CARLA/LevelSettings]``, ``[CARLA/Sensor]`` and one
``[CARLA/Sensor/<Name>]`` section per sensor). Reading follows the server: section names, keys and
values case-insensitive, and a sensor ``<Name>/<Variant>`` inheriting every key of
``[CARLA/Sensor/<Name>]`` that its own section does not set.
"""
import configparser
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from bridge.errors import SpecError
from carla_client.sensors import CAMERA_DEPTH, CAMERA_RGB, CAMERA_SEMANTIC, SensorConfig

SERVER, QUALITY, LEVEL, SENSOR = ("CARLA/Server", "CARLA/QualitySettings", "CARLA/LevelSettings",
                                  "CARLA/Sensor")

#: our camera types -> 0.8.4 PostProcessing, and back.
POST_PROCESSING = {CAMERA_RGB: "SceneFinal", CAMERA_DEPTH: "Depth",
                   CAMERA_SEMANTIC: "SemanticSegmentation"}
#: the image-type numbers of the camera payload header.
IMAGE_TYPES = ("None", "SceneFinal", "Depth", "SemanticSegmentation")


class LevelSettings(NamedTuple):
    """The episode settings our backend controls (``[CARLA/LevelSettings]`` and friends)."""

    synchronous: bool = True
    weather: int = 1
    vehicles: int = 0
    pedestrians: int = 0
    seed_vehicles: Optional[int] = None
    seed_pedestrians: Optional[int] = None
    quality: str = "Low"
    send_non_player_agents: bool = False


def _camera_keys(sensor: SensorConfig) -> List[Tuple[str, Any]]:
    return [("SensorType", "CAMERA"), ("PostProcessing", POST_PROCESSING[sensor.type]),
            ("ImageSizeX", int(sensor.attr("width", 84))),
            ("ImageSizeY", int(sensor.attr("height", 84))), ("FOV", float(sensor.attr("fov", 90)))]


def _lidar_keys(sensor: SensorConfig) -> List[Tuple[str, Any]]:
    return [("SensorType", "LIDAR_RAY_CAST"), ("Channels", int(sensor.attr("channels", 32))),
            ("Range", float(sensor.attr("range", 50.0))),
            ("PointsPerSecond", int(sensor.attr("points_per_second", 56000))),
            ("RotationFrequency", float(sensor.attr("rotation_frequency", 20.0))),
            ("UpperFovLimit", float(sensor.attr("upper_fov", 10.0))),
            ("LowerFovLimit", float(sensor.attr("lower_fov", -30.0))),
            ("ShowDebugPoints", False)]


def sensor_sections(sensors: Sequence[SensorConfig]) -> List[Tuple[str, List[Tuple[str, Any]]]]:
    """(name, keys) for each sensor the 0.8.4 server must create (event sensors need none).

    Raises:
        SpecError: a name 0.8.4 cannot carry (it separates names by "," and variants by "/").
    """
    sections = []
    for sensor in sensors:
        if sensor.is_event:
            continue  # collisions and lane invasions come from the measurements
        if not sensor.name or any(c in sensor.name for c in ",/[] =\t"):
            raise SpecError("sensor {!r}: a 0.8.4 sensor name cannot contain ',', '/', brackets, "
                            "'=' or spaces".format(sensor.name))
        keys = _camera_keys(sensor) if sensor.type in POST_PROCESSING else _lidar_keys(sensor)
        placement = [("PositionX", sensor.x), ("PositionY", sensor.y), ("PositionZ", sensor.z),
                     ("RotationPitch", sensor.pitch), ("RotationRoll", sensor.roll),
                     ("RotationYaw", sensor.yaw)]
        sections.append((sensor.name, keys + placement))
    return sections


def build_ini(sensors: Sequence[SensorConfig], level: LevelSettings) -> str:
    """The settings file text for these sensors and settings, as the 0.8.4 PythonClient writes it."""
    lines = ["[{}]".format(SERVER), "SynchronousMode={}".format(level.synchronous),
             "SendNonPlayerAgentsInfo={}".format(level.send_non_player_agents), "",
             "[{}]".format(QUALITY), "QualityLevel={}".format(level.quality), "",
             "[{}]".format(LEVEL), "NumberOfVehicles={}".format(int(level.vehicles)),
             "NumberOfPedestrians={}".format(int(level.pedestrians)),
             "WeatherId={}".format(int(level.weather))]
    if level.seed_vehicles is not None:
        lines.append("SeedVehicles={}".format(int(level.seed_vehicles)))
    if level.seed_pedestrians is not None:
        lines.append("SeedPedestrians={}".format(int(level.seed_pedestrians)))
    sections = sensor_sections(sensors)
    lines += ["", "[{}]".format(SENSOR), "Sensors={}".format(",".join(n for n, _ in sections))]
    for name, keys in sections:
        lines += ["", "[{}/{}]".format(SENSOR, name)]
        lines += ["{}={}".format(key, value) for key, value in keys]
    return "\n".join(lines) + "\n"


# -- reading (the server side) ------------------------------------------------------------------

class IniSensor(NamedTuple):
    """One sensor definition as the server reads it: name and its keys (lower-case names)."""

    name: str
    keys: Dict[str, str]

    def get(self, key: str, default: Any, cast: Any = str) -> Any:
        value = self.keys.get(key.lower())
        if value is None:
            return default
        try:
            return cast(value)
        except (TypeError, ValueError) as e:
            raise SpecError("sensor {!r}: {}={!r} is not a valid {}".format(
                self.name, key, value, getattr(cast, "__name__", cast))) from e


def parse_bool(text: str) -> bool:
    """The server's reading of a boolean value: true/1/yes/on, any case."""
    return str(text).strip().lower() in ("true", "1", "yes", "on")


class ParsedIni(object):
    """A settings file read like the 0.8.4 server reads it: names, keys and values case-insensitive.

    Raises:
        SpecError: text that is not INI.
    """

    def __init__(self, text: str) -> None:
        parser = configparser.ConfigParser(strict=False, interpolation=None,
                                           inline_comment_prefixes=(";", "#"))
        try:
            parser.read_string(text)
        except configparser.Error as e:
            raise SpecError("the settings file does not parse as INI: {}".format(e)) from e
        self.sections = {}  # type: Dict[str, Dict[str, str]]
        for section in parser.sections():
            merged = self.sections.setdefault(section.strip().lower(), {})
            merged.update((k.lower(), v.strip()) for k, v in parser.items(section))

    def get(self, section: str, key: str, default: Any, cast: Any = str) -> Any:
        value = self.sections.get(section.lower(), {}).get(key.lower())
        if value is None or value == "":
            return default
        try:
            return cast(value)
        except (TypeError, ValueError) as e:
            raise SpecError("[{}] {}={!r} is not a valid {}".format(
                section, key, value, getattr(cast, "__name__", cast))) from e

    def sensors(self) -> List[IniSensor]:
        """The sensors listed in ``[CARLA/Sensor] Sensors``, variants inheriting their parent's keys."""
        listed = self.get(SENSOR, "Sensors", "")
        result = []
        for name in (n.strip() for n in listed.split(",")):
            if not name:
                continue
            keys = {}  # type: Dict[str, str]
            parts = name.split("/")
            for depth in range(1, len(parts) + 1):  # parent first, the variant overrides
                keys.update(self.sections.get("{}/{}".format(SENSOR, "/".join(parts[:depth]))
                                              .lower(), {}))
            result.append(IniSensor(name, keys))
        return result
