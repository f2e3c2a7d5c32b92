"""A scripted driver for the built-in world: pure-pursuit steering and a proportional speed control.

It reads only what every backend reports (location, yaw, speed) plus the circuit's geometry, so it
serves as a test oracle (a lap must be drivable), a benchmark load and an expert baseline.
"""
import math
from typing import Any, Mapping, Optional

from bridge.schema import VehicleControl
from carla_client.builtin.road import Track
from carla_client.builtin.route import Projection, RouteTracker
from carla_client.builtin.vehicle import VehicleParams


class PurePursuit(object):
    """Follows the route (or a line parallel to it) at a target speed.

    Args:
        track: the circuit (``BuiltinWorld.track``).
        vehicle: the ego's parameters (wheelbase, steering range).
        target_speed: cruising speed, m/s.
        offset: lateral offset of the followed line from the route, metres, positive to the right
            (``-track.params.lane_width`` follows the opposite lane's centre line).
    """

    def __init__(self, track: Track, vehicle: VehicleParams = VehicleParams(),
                 target_speed: float = 8.0, offset: float = 0.0) -> None:
        self.track = track
        self.vehicle = vehicle
        self.target_speed = target_speed
        self.offset = offset
        self._tracker = RouteTracker(track.route)
        self._located = False

    def reset(self) -> None:
        """Forget the last position (call after the world resets)."""
        self._located = False

    def control(self, measurements: Mapping[str, Any], projection: Optional[Projection] = None
                ) -> VehicleControl:
        """The control for these measurements.

        Args:
            measurements: location, yaw and speed of the car.
            projection: the location's projection onto ``track.route`` when the caller already
                has it (``BuiltinWorld.route_projection``); saves this driver's own search.
        """
        location = measurements["location"]
        x, y = float(location[0]), float(location[1])
        yaw = math.radians(float(measurements["yaw"]))
        speed = float(measurements["speed"])
        if projection is not None:
            self._tracker.last = projection
        elif self._located:
            projection = self._tracker.update(x, y)
        else:
            projection = self._tracker.locate(x, y)
        self._located = True
        lookahead = min(15.0, max(5.0, 0.8 * speed + 3.0))
        tx, ty, heading = self.track.route.pose_at_distance(projection.distance + lookahead)
        tx, ty = tx - self.offset * math.sin(heading), ty + self.offset * math.cos(heading)
        dx, dy = tx - x, ty - y
        forward = math.cos(yaw) * dx + math.sin(yaw) * dy
        right = -math.sin(yaw) * dx + math.cos(yaw) * dy
        alpha = math.atan2(right, forward)
        curvature = 2.0 * math.sin(alpha) / max(math.hypot(dx, dy), 1e-3)
        wheel = math.atan(self.vehicle.wheelbase * curvature)
        steer = max(-1.0, min(1.0, wheel / math.radians(self.vehicle.max_steer_deg)))
        error = self.target_speed - speed
        throttle = max(0.0, min(1.0, 0.5 * error + 0.1))
        brake = max(0.0, min(1.0, -0.5 * error - 0.25))
        return VehicleControl(throttle=throttle, steer=steer, brake=brake)
