"""Turns one tick's sensor arrays and measurements into the env's observation (camera + state vector)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from gymnasium import spaces

from bridge.spec import FieldSpec

#: the state vector's features, in order; every one is scaled and clipped to [-1, 1].
STATE_FEATURES = (
    "speed",             # speed / (2 * target_speed)
    "speed_error",       # (speed - target_speed) / target_speed
    "lateral_offset",    # offset / (2 * lane_half_width), positive right of the centre
    "heading_sin",       # sin(heading_error)
    "heading_cos",       # cos(heading_error): negative when driving against the lane
    "lateral_velocity",  # d(offset)/dt / 5 m/s
    "heading_rate",      # d(heading_error)/dt / 2 rad/s
    "curvature",         # lane direction change per metre of route / 0.1 (a 10 m radius is 1)
    "previous_steer",    # the steer applied on the tick that produced this observation
    "previous_pedal",    # throttle minus brake applied on that tick
)
#: with ``lead_vehicle=True`` (a sim in traffic), these follow STATE_FEATURES.
LEAD_FEATURES = (
    "lead_distance",     # bumper-to-bumper gap to the vehicle ahead in the lane / LEAD_SCALE (1: none)
    "lead_closing",      # closing speed on it / 10 m/s (positive: getting nearer)
    "lead_urgency",      # closing speed / max(gap, 1 m) / 2 per second: an inverse time to collision
)
#: metres at which the lead gap feature saturates (the sims' default look-ahead, LEAD_RANGE).
LEAD_SCALE = 50.0
#: the measurements the lead features need (announced by every current sim; not by older ones).
LEAD_MEASUREMENTS = ("lead_distance", "lead_closing_speed")


def _wrap_angle(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def find_camera(observation_specs: Sequence[FieldSpec], name: str | None) -> FieldSpec | None:
    """The RGB(A) camera field to use: ``name`` if given, or the first uint8 HxWx3/4 field ("auto").

    Raises:
        ValueError: ``name`` is not announced by the sim, or is not an 8-bit colour image.
    """
    if name is None:
        return None
    candidates = [f for f in observation_specs if f.dtype == "uint8" and len(f.shape) == 3
                  and f.shape[2] in (3, 4) and min(f.shape[:2]) > 0]
    if name == "auto":
        return candidates[0] if candidates else None
    for f in observation_specs:
        if f.name == name:
            if f not in candidates:
                raise ValueError(f"observation {name!r} is {f.dtype}{list(f.shape)}, not an 8-bit "
                                 "colour image (HxWx3 RGB or HxWx4 BGRA)")
            return f
    raise ValueError(f"the sim announces no observation {name!r}; it announces "
                     f"{[f.name for f in observation_specs]}")


def to_rgb(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """BGRA (CARLA's raw_data layout) or BGR -> a new RGB uint8 array, resized to ``size`` (h, w)."""
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    rgb = cv2.cvtColor(np.ascontiguousarray(image), code)
    if size is not None and rgb.shape[:2] != tuple(size):
        # INTER_AREA averages when shrinking, which keeps thin lane markings visible.
        interpolation = cv2.INTER_AREA if rgb.shape[0] > size[0] else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=interpolation)
    return rgb


class StateEncoder:
    """Builds the normalised ``vehicle_state`` vector; keeps the few values it differentiates."""

    def __init__(self, tick_seconds: float, target_speed: float, lane_half_width: float,
                 lead_vehicle: bool = False) -> None:
        self.tick_seconds = tick_seconds
        self.target_speed = target_speed
        self.lane_half_width = lane_half_width
        self.lead_vehicle = lead_vehicle
        self.names = STATE_FEATURES + (LEAD_FEATURES if lead_vehicle else ())
        self._previous: Mapping[str, Any] | None = None
        self._curvature = 0.0

    @property
    def space(self) -> spaces.Box:
        n = len(self.names)
        return spaces.Box(-1.0, 1.0, (n,), np.float32)

    def reset(self, measurements: Mapping[str, Any]) -> np.ndarray:
        self._previous = None
        self._curvature = 0.0
        return self.encode(measurements, 0.0, 0.0)

    def encode(self, m: Mapping[str, Any], steer: float, pedal: float) -> np.ndarray:
        speed = float(m["speed"])
        offset = float(m["lateral_offset"])
        heading = float(m["heading_error"])
        lateral_velocity = heading_rate = 0.0
        previous = self._previous
        if previous is not None:
            dt = self.tick_seconds
            lateral_velocity = (offset - float(previous["lateral_offset"])) / dt
            heading_rate = _wrap_angle(heading - float(previous["heading_error"])) / dt
            ds = float(m["route_distance"]) - float(previous["route_distance"])
            if abs(ds) > 0.05:  # too little motion makes the ratio noise
                lane = math.radians(float(m["yaw"])) - heading
                previous_lane = math.radians(float(previous["yaw"])) - float(previous["heading_error"])
                self._curvature = _wrap_angle(lane - previous_lane) / ds
        self._previous = {k: m[k] for k in ("lateral_offset", "heading_error", "route_distance", "yaw")}
        values = [
            speed / (2.0 * self.target_speed),
            (speed - self.target_speed) / self.target_speed,
            offset / (2.0 * self.lane_half_width),
            math.sin(heading),
            math.cos(heading),
            lateral_velocity / 5.0,
            heading_rate / 2.0,
            self._curvature / 0.1,
            steer,
            pedal,
        ]
        if self.lead_vehicle:
            gap, closing = float(m["lead_distance"]), float(m["lead_closing_speed"])
            values += [gap / LEAD_SCALE, closing / 10.0, closing / max(gap, 1.0) / 2.0]
        # NaN -> 0, then clip to [-1, 1] (infinities included), on Python floats: numpy's
        # nan_to_num and clip cost several times more than this for a dozen values.
        return np.array([0.0 if v != v else -1.0 if v < -1.0 else 1.0 if v > 1.0 else v
                         for v in values], dtype=np.float32)
