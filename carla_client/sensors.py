"""Sensor configuration: one entry per sensor, from which the observation spec is derived.

Adding a sensor is one entry in the JSON list given to ``--sensors``; its type decides the observation
field it announces (or none, for event sensors whose output travels in ``events``). Both backends read
the same entries. JSON rather than YAML so the 3.6 sim side needs no extra dependency.

Example ``sensors.json``::

    [
      {"name": "camera", "type": "sensor.camera.rgb", "width": 84, "height": 84, "fov": 90,
       "x": -5.5, "z": 2.8, "pitch": -15},
      {"name": "collision", "type": "sensor.other.collision"},
      {"name": "lane_invasion", "type": "sensor.other.lane_invasion"}
    ]
"""
import json
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from bridge.errors import SpecError, quote
from bridge.spec import FieldSpec

CAMERA_RGB = "sensor.camera.rgb"
CAMERA_DEPTH = "sensor.camera.depth"
CAMERA_SEMANTIC = "sensor.camera.semantic_segmentation"
LIDAR = "sensor.lidar.ray_cast"
COLLISION = "sensor.other.collision"
LANE_INVASION = "sensor.other.lane_invasion"

CAMERA_TYPES = (CAMERA_RGB, CAMERA_DEPTH, CAMERA_SEMANTIC)
#: the largest camera side, in pixels (docs/builtin_world.md, docs/carla_backend.md): 4096x4096 BGRA is
#: 64 MiB per frame, already far past what a 20 Hz lockstep tick can move.
MAX_CAMERA_SIDE = 4096
EVENT_TYPES = (COLLISION, LANE_INVASION)
SENSOR_TYPES = CAMERA_TYPES + (LIDAR,) + EVENT_TYPES

#: placement presets: a chase view behind and above the car, and a bird's-eye view looking down.
VIEWS = {
    "chase": {"x": -5.5, "y": 0.0, "z": 2.8, "pitch": -15.0, "yaw": 0.0},
    "birdeye": {"x": 0.0, "y": 0.0, "z": 40.0, "pitch": -90.0, "yaw": 0.0},
}


class SensorConfig(NamedTuple):
    """One sensor: its name (the observation key), CARLA blueprint type, placement and attributes.

    Placement is relative to the ego vehicle in CARLA's convention: x forward, y right, z up, metres;
    pitch and yaw in degrees. ``attributes`` holds type-specific settings (``width``, ``height``,
    ``fov`` for cameras; ``channels``, ``range``, ``points_per_second``, ``rotation_frequency``,
    ``max_points`` for LiDAR).
    """

    name: str
    type: str
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0
    attributes: Dict[str, Any] = {}

    @property
    def is_event(self) -> bool:
        return self.type in EVENT_TYPES

    def to_dict(self) -> Dict[str, Any]:
        """The JSON entry that ``sensor_from_dict`` turns back into this config."""
        entry = {"name": self.name, "type": self.type}  # type: Dict[str, Any]
        entry.update((key, getattr(self, key)) for key in _PLACEMENT_KEYS)
        entry.update((k, v) for k, v in self.attributes.items() if v is not None or k != "view")
        return entry

    def attr(self, key: str, default: Any) -> Any:
        return self.attributes.get(key, default)

    def field(self) -> Optional[FieldSpec]:
        """The observation field this sensor announces, or None for event sensors."""
        if self.type in CAMERA_TYPES:
            h, w = int(self.attr("height", 84)), int(self.attr("width", 84))
            if self.type == CAMERA_RGB:
                return FieldSpec(self.name, "uint8", (h, w, 4), 0, 255,
                                 "BGRA image, like carla.Image.raw_data")
            if self.type == CAMERA_DEPTH:
                return FieldSpec(self.name, "float32", (h, w), 0.0, 1000.0, "depth in metres")
            return FieldSpec(self.name, "uint8", (h, w), 0, 255, "semantic tag per pixel (CityScapes)")
        if self.type == LIDAR:
            return FieldSpec(self.name, "float32", (-1, 4), None, None,
                             "points (x, y, z, intensity) in the sensor frame")
        return None


_PLACEMENT_KEYS = ("x", "y", "z", "pitch", "yaw", "roll")


def sensor_from_dict(entry: Dict[str, Any]) -> SensorConfig:
    """Parses one config entry. A ``view`` key ("chase" or "birdeye") presets the placement.

    Raises:
        SpecError: unknown type or view, missing name, non-numeric placement.
    """
    if not isinstance(entry, dict) or "name" not in entry or "type" not in entry:
        raise SpecError("sensor entry needs 'name' and 'type': {!r}".format(entry))
    entry = dict(entry)
    name, kind = str(entry.pop("name")), str(entry.pop("type"))
    if kind not in SENSOR_TYPES:
        raise SpecError("sensor {!r}: unknown type {!r}; known: {}".format(
            name, kind, ", ".join(SENSOR_TYPES)))
    placement = {}  # type: Dict[str, float]
    view = entry.pop("view", None)
    if view is not None:
        if view not in VIEWS:
            raise SpecError("sensor {!r}: unknown view {!r}; known: {}".format(
                name, view, ", ".join(VIEWS)))
        placement.update(VIEWS[view])
    try:
        for key in _PLACEMENT_KEYS:
            if key in entry:
                placement[key] = float(entry.pop(key))
    except (TypeError, ValueError) as e:
        raise SpecError("sensor {!r}: placement must be numbers: {}".format(name, e)) from e
    attributes = dict(entry)
    attributes.setdefault("view", view)
    if kind in CAMERA_TYPES:
        _check_camera_size(name, attributes)
    return SensorConfig(name=name, type=kind, attributes=attributes, **placement)


def _check_camera_size(name: str, attributes: Dict[str, Any]) -> None:
    for key in ("width", "height"):
        value = attributes.get(key, 84)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CAMERA_SIDE:
            raise SpecError("sensor {!r}: {} must be a whole number of pixels in 1-{}, got {}".format(
                name, key, MAX_CAMERA_SIDE, quote(value, 40)))


def load_sensors(path: Optional[str] = None) -> Tuple[SensorConfig, ...]:
    """Reads a JSON list of sensor entries, or returns the default set when ``path`` is None.

    Raises:
        SpecError: the file is not a JSON list, an entry is invalid, or two sensors share a name.
    """
    if path is None:
        return default_sensors()
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise SpecError("cannot read sensor config {}: {}".format(path, e)) from e
    if not isinstance(entries, list):
        raise SpecError("sensor config {} must be a JSON list of sensor entries".format(path))
    return parse_sensors(entries)


def parse_sensors(entries: Sequence[Dict[str, Any]]) -> Tuple[SensorConfig, ...]:
    sensors = tuple(sensor_from_dict(e) for e in entries)
    names = [s.name for s in sensors]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SpecError("sensor names must be unique; repeated: {}".format(duplicated))
    return sensors


def default_sensors(width: int = 64, height: int = 64) -> Tuple[SensorConfig, ...]:
    """A chase-view RGB camera plus collision and lane-invasion sensors."""
    return parse_sensors([
        {"name": "camera", "type": CAMERA_RGB, "view": "chase", "width": width, "height": height,
         "fov": 90},
        {"name": "collision", "type": COLLISION},
        {"name": "lane_invasion", "type": LANE_INVASION},
    ])


def observation_fields(sensors: Sequence[SensorConfig]) -> List[FieldSpec]:
    """The observation spec announced for these sensors, in config order."""
    return [f for f in (s.field() for s in sensors) if f is not None]
