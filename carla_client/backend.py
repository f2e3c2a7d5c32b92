"""The world-backend interface that every simulator (built-in, CARLA) implements for the server.

The server (carla_client/serve.py) owns the protocol; a backend owns the world. One backend object
lives for the whole process; a *session* (one connected trainer) runs between ``start()`` and
``stop()``, and a process may see many sessions.
"""
from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from bridge.spec import FieldSpec, Tick, WorldSpec  # Tick: one tick, as both sides see it

#: the action every backend accepts, field by field (carla.VehicleControl's fields and ranges).
VEHICLE_CONTROL_SPEC = (
    FieldSpec("throttle", "float32", (), 0.0, 1.0, "accelerator pedal"),
    FieldSpec("steer", "float32", (), -1.0, 1.0, "steering, -1 full left .. 1 full right"),
    FieldSpec("brake", "float32", (), 0.0, 1.0, "brake pedal"),
    FieldSpec("hand_brake", "bool", (), 0, 1, "hand brake engaged"),
    FieldSpec("reverse", "bool", (), 0, 1, "reverse gear"),
)


class VehicleControl(NamedTuple):
    """One tick's control, field for field like ``carla.VehicleControl``."""

    throttle: float = 0.0
    steer: float = 0.0
    brake: float = 0.0
    hand_brake: bool = False
    reverse: bool = False

    @classmethod
    def from_fields(cls, fields: Dict[str, np.ndarray]) -> "VehicleControl":
        """Builds a control from fields already validated against VEHICLE_CONTROL_SPEC."""
        return cls(float(fields["throttle"]), float(fields["steer"]), float(fields["brake"]),
                   bool(fields["hand_brake"]), bool(fields["reverse"]))


class WorldBackend(object):
    """Base class of world backends. Subclasses set ``name``/``version`` and implement the methods."""

    name = "abstract"
    version = "0"
    #: True when the same seed and the same actions give byte-identical observations.
    deterministic = False

    def spec(self) -> WorldSpec:
        """The observation, measurement and action fields and the tick length (constant per process)."""
        raise NotImplementedError

    def start(self) -> None:
        """Begins a session: connect, save and change world settings, spawn actors (idempotent)."""

    def reset(self, seed: Optional[int], options: Dict[str, Any]) -> Tick:
        """Starts a new episode (seeded if ``seed`` is not None) and returns its first tick."""
        raise NotImplementedError

    def step(self, control: VehicleControl) -> Tick:
        """Applies ``control``, advances the world by exactly one tick and returns that tick."""
        raise NotImplementedError

    def stop(self) -> None:
        """Ends the session: restore every setting changed, destroy every actor spawned.

        Idempotent, and must be safe to call after a failed ``start()``.
        """

    def close(self) -> None:
        """Releases everything at process exit (calls ``stop()``). Idempotent."""
        self.stop()

    def __enter__(self) -> "WorldBackend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


#: how far ahead (metres) the lead-vehicle measurements look.
LEAD_RANGE = 50.0

#: the measurements every backend reports each tick (CARLA's conventions: metres, m/s, degrees for
#: the yaw, x forward / y right / z up world axes).
MEASUREMENT_SPEC = (
    FieldSpec("location", "float64", (3,), None, None, "ego position x, y, z in metres"),
    FieldSpec("yaw", "float64", (), -180.0, 180.0, "ego heading in degrees"),
    FieldSpec("velocity", "float64", (3,), None, None, "ego velocity vector in m/s"),
    FieldSpec("speed", "float64", (), 0.0, None, "ego speed in m/s"),
    FieldSpec("acceleration", "float64", (3,), None, None, "ego acceleration vector in m/s^2"),
    FieldSpec("lateral_offset", "float64", (), None, None,
              "signed distance from the lane centre in metres, positive to the right"),
    FieldSpec("heading_error", "float64", (), -3.1416, 3.1416,
              "ego heading minus the lane direction in radians, wrapped to [-pi, pi]"),
    FieldSpec("route_distance", "float64", (), None, None,
              "distance travelled along the route since reset in metres (negative if backwards)"),
    FieldSpec("route_completion", "float64", (), None, None,
              "route_distance over the route length: 1.0 is one completed lap"),
    FieldSpec("off_road", "bool", (), 0, 1, "ego centre is off the drivable road"),
    FieldSpec("lead_distance", "float64", (), 0.0, None,
              "bumper-to-bumper distance in metres along the ego's lane to the nearest vehicle ahead "
              "in that lane; LEAD_RANGE when there is none within LEAD_RANGE"),
    FieldSpec("lead_closing_speed", "float64", (), None, None,
              "ego speed minus the lead vehicle's speed along the ego's direction in m/s (positive: "
              "closing in); 0 when there is no lead vehicle within LEAD_RANGE"),
)
