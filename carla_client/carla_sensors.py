"""CARLA sensors: blueprint attributes, per-sensor queues matched to the tick's frame, and conversion.

CARLA delivers sensor data on its own threads, some time after ``world.tick()`` returns, through the
callback given to ``sensor.listen``. Each sensor gets one queue here (the pattern of CARLA's
``PythonAPI/examples/synchronous_mode.py``); the backend then asks every queue for the frame it just
ticked.
"""
import logging
import math
import queue
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from carla_client.carla_api import CarlaSetupError, SensorTimeoutError
from carla_client.sensors import (CAMERA_DEPTH, CAMERA_RGB, CAMERA_SEMANTIC, CAMERA_TYPES, COLLISION,
                                  LANE_INVASION, LIDAR, SensorConfig)

logger = logging.getLogger(__name__)

#: config keys that are ours, not blueprint attributes.
_OWN_KEYS = ("width", "height", "view", "max_points")

#: CARLA's depth camera encodes 24 bits of depth over R, G, B; 1.0 is 1000 m.
_DEPTH_WEIGHTS = np.array([65536.0, 256.0, 1.0], dtype=np.float32)  # B, G, R as stored (BGRA)
_DEPTH_SCALE = np.float32(1000.0 / (256 ** 3 - 1))


def blueprint_attributes(config: SensorConfig, tick_seconds: float) -> Dict[str, str]:
    """The blueprint attributes for one sensor, as the strings ``set_attribute`` takes.

    ``sensor_tick`` is "0.0" (one measurement per world tick): a sensor_tick that is not a multiple
    of the tick drops frames (CARLA issue #3653), and then frame matching would time out.

    Raises:
        CarlaSetupError: the config asks for a ``sensor_tick`` other than 0 or the tick.
    """
    attrs = {}  # type: Dict[str, Any]
    if config.type in CAMERA_TYPES:
        attrs["image_size_x"] = int(config.attr("width", 84))
        attrs["image_size_y"] = int(config.attr("height", 84))
        attrs["fov"] = float(config.attr("fov", 90.0))
    elif config.type == LIDAR:
        attrs["channels"] = int(config.attr("channels", 32))
        attrs["range"] = float(config.attr("range", 50.0))
        attrs["points_per_second"] = int(config.attr("points_per_second", 56000))
        # one full 360-degree sweep per tick; CARLA's default of 10 Hz gives half sweeps at 20 Hz
        attrs["rotation_frequency"] = float(config.attr("rotation_frequency", 1.0 / tick_seconds))
    for key, value in config.attributes.items():
        if key not in _OWN_KEYS and key not in attrs and value is not None:
            attrs[key] = value
    if config.type in CAMERA_TYPES or config.type == LIDAR:
        wanted = float(attrs.get("sensor_tick", 0.0))
        if wanted not in (0.0, tick_seconds):
            raise CarlaSetupError(
                "sensor {!r}: sensor_tick {} does not match the tick of {} s; every data sensor must "
                "measure every tick (leave sensor_tick out)".format(config.name, wanted, tick_seconds))
        attrs["sensor_tick"] = "0.0"
    return {key: _attribute_string(value) for key, value in attrs.items()}


def _attribute_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def configure_blueprint(blueprint: Any, config: SensorConfig, tick_seconds: float) -> Any:
    """Sets the sensor's attributes on its blueprint; unknown ones are logged and skipped."""
    for key, value in sorted(blueprint_attributes(config, tick_seconds).items()):
        if blueprint.has_attribute(key):
            blueprint.set_attribute(key, value)
        else:
            logger.warning("sensor %r: blueprint %s has no attribute %r; ignored", config.name,
                           config.type, key)
    return blueprint


class FrameQueue(object):
    """One data sensor's queue: hands out the measurement of a given frame.

    ``put`` is the ``sensor.listen`` callback and runs on CARLA's thread; ``get`` runs on ours.
    Measurements of older frames (left over from a tick whose step failed, or delivered late) are
    discarded; a measurement of a newer frame than asked for is kept for the next call.
    """

    def __init__(self, config: SensorConfig) -> None:
        self.config = config
        self._queue = queue.Queue()  # type: queue.Queue
        self._ahead = {}  # type: Dict[int, Any]
        self.last_frame = None  # type: Optional[int]
        self.discarded = 0

    def put(self, data: Any) -> None:
        self._queue.put(data)

    def get(self, frame: int, deadline: float) -> Any:
        """The measurement of ``frame``, waiting until ``deadline`` (a ``time.monotonic()`` value).

        Raises:
            SensorTimeoutError: it did not arrive in time; the message names the sensor and frame.
        """
        for old in [f for f in self._ahead if f < frame]:
            del self._ahead[old]
            self.discarded += 1
        if frame in self._ahead:
            return self._ahead.pop(frame)
        while True:
            try:
                data = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SensorTimeoutError(
                    "sensor {!r} ({}) delivered nothing for frame {} in time (last frame seen: {}): "
                    "is the server overloaded (raise --carla-timeout)? is another client ticking "
                    "the world?".format(self.config.name, self.config.type, frame,
                                        self.last_frame)) from None
            got = int(data.frame)
            self.last_frame = got
            if got == frame:
                return data
            if got > frame:  # impossible in lockstep, but never lose a measurement
                self._ahead[got] = data
            else:
                self.discarded += 1


class EventQueue(object):
    """One event sensor's queue (collision, lane invasion): events fire on some frames only.

    CARLA streams events like any sensor data, on its own threads and possibly after later frames'
    data, and nothing marks "no event this frame", so events are never waited for. The rule
    (docs/carla_backend.md, "Event attribution"):

    - ``collect(frame)`` hands out, once, every event delivered so far whose frame is at most
      ``frame``, each with ``late=True`` if its frame is earlier (it missed its own tick). Events of
      later frames are kept.
    - ``discard_through(frame)`` (a reset's tick) ends the episode: events of frames up to
      ``frame`` (the old episode's unreported ones and the teleport's own) are orphans: counted,
      logged, never handed out. So is anything of those frames that arrives afterwards.
    """

    def __init__(self, config: SensorConfig) -> None:
        self.config = config
        self._queue = queue.Queue()  # type: queue.Queue
        self._pending = []  # type: List[Any]
        self._floor = -1
        self.late = 0
        self.orphaned = 0

    def put(self, event: Any) -> None:
        self._queue.put(event)

    def _drain(self) -> None:
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return
            if int(event.frame) <= self._floor:
                self._orphan([event], "arrived after the episode ended at frame {}".format(
                    self._floor))
            else:
                self._pending.append(event)

    def _orphan(self, events: List[Any], why: str) -> None:
        if events:
            self.orphaned += len(events)
            logger.warning("sensor %r: %d event(s) of frame(s) %s %s: counted, not attributed to "
                           "any episode", self.config.name, len(events),
                           sorted(int(e.frame) for e in events), why)

    def collect(self, frame: int) -> List[Tuple[Any, bool]]:
        """(event, late) pairs for the events due at ``frame``, oldest frame first."""
        self._drain()
        due = sorted((e for e in self._pending if int(e.frame) <= frame), key=lambda e: int(e.frame))
        self._pending = [e for e in self._pending if int(e.frame) > frame]
        result = [(e, int(e.frame) < frame) for e in due]
        self.late += sum(1 for _, late in result if late)
        return result

    def discard_through(self, frame: int) -> int:
        """Ends the episode at ``frame``; returns how many events were orphaned now."""
        before = self.orphaned
        self._floor = max(self._floor, frame)
        self._drain()
        stale = [e for e in self._pending if int(e.frame) <= frame]
        self._pending = [e for e in self._pending if int(e.frame) > frame]
        self._orphan(stale, "were not reported before the reset at frame {}".format(frame))
        return self.orphaned - before

    def close(self) -> int:
        """The session ends: whatever is still pending is orphaned; returns how many."""
        self._drain()
        stale, self._pending = self._pending, []
        self._orphan(stale, "were not reported before the session ended")
        return len(stale)


def _bgra(config: SensorConfig, image: Any) -> np.ndarray:
    """A read-only view of a camera image's BGRA bytes as (height, width, 4)."""
    h, w = int(config.attr("height", 84)), int(config.attr("width", 84))
    if int(image.height) != h or int(image.width) != w:
        raise CarlaSetupError("sensor {!r} delivered a {}x{} image but is configured as {}x{}".format(
            config.name, image.width, image.height, w, h))
    return np.frombuffer(image.raw_data, dtype=np.uint8).reshape(h, w, 4)


def to_observation(config: SensorConfig, data: Any) -> np.ndarray:
    """Converts one measurement into the array its observation field announces.

    Every result is a copy: CARLA reuses its sensor buffers once the measurement is released.
    """
    if config.type == CAMERA_RGB:
        return _bgra(config, data).copy()
    if config.type == CAMERA_DEPTH:
        bgr = _bgra(config, data)[..., :3].astype(np.float32)
        return np.dot(bgr, _DEPTH_WEIGHTS) * _DEPTH_SCALE  # (R + G*256 + B*65536) / (2^24-1) km
    if config.type == CAMERA_SEMANTIC:
        return np.ascontiguousarray(_bgra(config, data)[..., 2])  # the tag is in the red channel
    if config.type == LIDAR:
        points = np.frombuffer(data.raw_data, dtype=np.float32).reshape(-1, 4)
        limit = config.attr("max_points", None)
        return points[:int(limit)].copy() if limit is not None else points.copy()
    raise CarlaSetupError("sensor {!r}: {} has no observation".format(config.name, config.type))


def to_event(config: SensorConfig, event: Any) -> Dict[str, Any]:
    """Converts a collision or lane-invasion event into the dict sent in ``Tick.events``."""
    if config.type == COLLISION:
        other = event.other_actor
        impulse = event.normal_impulse
        return {"type": "collision", "frame": int(event.frame),
                "other": str(other.type_id) if other is not None else "unknown",
                "intensity": math.sqrt(impulse.x ** 2 + impulse.y ** 2 + impulse.z ** 2)}
    if config.type == LANE_INVASION:
        return {"type": "lane_invasion", "frame": int(event.frame),
                "markings": [str(m.type) for m in event.crossed_lane_markings]}
    raise CarlaSetupError("sensor {!r}: {} is not an event sensor".format(config.name, config.type))
