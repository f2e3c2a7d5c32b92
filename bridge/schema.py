"""The shared schema: the vehicle control every world accepts and the measurements it reports.

Both sides import it from here (the protocol's package), so the trainer never imports the sim package
to learn what an action or a measurement is; a trainer builds its spaces from the fields the sim
announces in ``hello`` (``WorldSpec.action`` / ``.measurements``), which a backend takes from here.
"""
from typing import Dict, NamedTuple

import numpy as np

from bridge.spec import FieldSpec

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
