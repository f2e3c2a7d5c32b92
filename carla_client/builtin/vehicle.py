"""The ego vehicle: a kinematic bicycle model with a simple longitudinal drivetrain.

Scalar maths with ``math`` on purpose: for one vehicle, numpy's per-call overhead would dominate.
Conventions are CARLA's: positive steer turns right (yaw increases), yaw in radians from +x to +y.
"""
import math
from typing import NamedTuple, Tuple

from bridge.schema import VehicleControl


class VehicleParams(NamedTuple):
    """Dimensions and dynamics of the ego (and, for dimensions, of the NPC) vehicles. SI units.

    Attributes:
        length / width / height: the body's bounding box (the pose is its ground-level centre).
        wheelbase: distance between the axles (the centre of mass sits midway).
        track: distance between the left and right wheels (lane invasions look at the wheels).
        max_steer_deg: front wheel angle at steer = +-1.
        steer_rate: how fast the steering follows the command, in steer units per second.
        max_lateral_accel: grip limit; at speed the effective wheel angle is reduced so that
            v^2 * curvature stays below it (the car understeers instead of spinning).
        max_accel: engine acceleration at full throttle at low speed.
        power_per_mass: engine power over mass (W/kg); caps acceleration at max_accel .. P/(m v).
        reverse_accel: engine acceleration in reverse gear.
        max_reverse_speed: the reverse gear pulls no further beyond this speed.
        drag: aerodynamic deceleration coefficient, a = drag * v^2.
        rolling: rolling-resistance deceleration.
        brake_decel: deceleration at full brake.
        hand_brake_decel: deceleration of the hand brake (it also holds the car at rest).
        mass: for collision impulses.
    """

    length: float = 4.6
    width: float = 1.9
    height: float = 1.5
    wheelbase: float = 2.9
    track: float = 1.6
    max_steer_deg: float = 35.0
    steer_rate: float = 5.0
    max_lateral_accel: float = 9.0
    max_accel: float = 4.0
    power_per_mass: float = 40.0
    reverse_accel: float = 2.0
    max_reverse_speed: float = 8.0
    drag: float = 0.001
    rolling: float = 0.1
    brake_decel: float = 8.0
    hand_brake_decel: float = 6.0
    mass: float = 1500.0


class VehicleState(object):
    """Pose and motion of one vehicle: centre (x, y), yaw, signed speed along the body, steering."""

    __slots__ = ("x", "y", "yaw", "speed", "steer", "vx", "vy")

    def __init__(self, x: float = 0.0, y: float = 0.0, yaw: float = 0.0, speed: float = 0.0
                 ) -> None:
        self.x, self.y, self.yaw, self.speed = x, y, yaw, speed
        self.steer = 0.0
        self.vx, self.vy = speed * math.cos(yaw), speed * math.sin(yaw)

    def copy(self) -> "VehicleState":
        other = VehicleState(self.x, self.y, self.yaw, self.speed)
        other.steer, other.vx, other.vy = self.steer, self.vx, self.vy
        return other

    def stop(self) -> None:
        self.speed = self.vx = self.vy = 0.0


def _clip(value: float, low: float, high: float) -> float:
    if not value == value:  # NaN: treat as the neutral value
        return 0.0 if low <= 0.0 <= high else low
    return low if value < low else high if value > high else value


def sanitize(control: VehicleControl) -> Tuple[float, float, float, bool, bool]:
    """Clips a control into its ranges (the server validates; this keeps the model robust)."""
    return (_clip(float(control.throttle), 0.0, 1.0), _clip(float(control.steer), -1.0, 1.0),
            _clip(float(control.brake), 0.0, 1.0), bool(control.hand_brake),
            bool(control.reverse))


def advance(state: VehicleState, control: VehicleControl, params: VehicleParams, dt: float
            ) -> VehicleState:
    """Returns the state one step of ``dt`` seconds later (``state`` is not modified).

    The car moves exactly ``|speed| * dt`` along an arc (midpoint heading), so it never jumps.
    """
    throttle, steer, brake, hand_brake, reverse = sanitize(control)
    new = state.copy()
    max_change = params.steer_rate * dt
    new.steer = state.steer + _clip(steer - state.steer, -max_change, max_change)

    # longitudinal: engine pushes along the gear's direction, resistances oppose the motion
    v = state.speed
    if reverse:
        engine = -throttle * params.reverse_accel if v > -params.max_reverse_speed else 0.0
    else:
        engine = throttle * min(params.max_accel, params.power_per_mass / max(abs(v), 1e-3))
    v += engine * dt
    resist = (brake * params.brake_decel + (params.hand_brake_decel if hand_brake else 0.0)
              + params.rolling + params.drag * v * v) * dt
    v = 0.0 if abs(v) <= resist else v - math.copysign(resist, v)
    new.speed = v

    # lateral: kinematic bicycle about the centre of mass, wheel angle limited by grip
    tan_delta = math.tan(math.radians(params.max_steer_deg) * new.steer)
    if v != 0.0:
        grip = params.max_lateral_accel * params.wheelbase / (v * v)
        tan_delta = _clip(tan_delta, -grip, grip)
    slip = math.atan(0.5 * tan_delta)
    yaw_rate = v * math.cos(slip) * tan_delta / params.wheelbase
    mid = state.yaw + 0.5 * yaw_rate * dt + slip
    new.x = state.x + v * dt * math.cos(mid)
    new.y = state.y + v * dt * math.sin(mid)
    new.yaw = (state.yaw + yaw_rate * dt + math.pi) % (2.0 * math.pi) - math.pi
    direction = new.yaw + slip
    new.vx, new.vy = v * math.cos(direction), v * math.sin(direction)
    return new


def body_points(params: VehicleParams) -> Tuple[Tuple[float, float], ...]:
    """The body's four corners in the vehicle frame (x forward, y right)."""
    hl, hw = params.length / 2.0, params.width / 2.0
    return ((hl, hw), (hl, -hw), (-hl, -hw), (-hl, hw))


def wheel_points(params: VehicleParams) -> Tuple[Tuple[float, float], ...]:
    """The four wheels' contact points in the vehicle frame."""
    hb, ht = params.wheelbase / 2.0, params.track / 2.0
    return ((hb, ht), (hb, -ht), (-hb, -ht), (-hb, ht))


def boxes_overlap(a: Tuple[float, float, float], b: Tuple[float, float, float],
                  params: VehicleParams) -> bool:
    """True when two vehicle bodies at poses (x, y, yaw) overlap (separating axis test)."""
    hl, hw = params.length / 2.0, params.width / 2.0
    dx, dy = b[0] - a[0], b[1] - a[1]
    if dx * dx + dy * dy > (2 * hl) ** 2 + (2 * hw) ** 2:
        return False
    axes = []
    for yaw in (a[2], b[2]):
        c, s = math.cos(yaw), math.sin(yaw)
        axes.append((c, s, -s, c))
    for ux, uy in ((axes[0][0], axes[0][1]), (axes[0][2], axes[0][3]),
                   (axes[1][0], axes[1][1]), (axes[1][2], axes[1][3])):
        distance = abs(dx * ux + dy * uy)
        reach = 0.0
        for fx, fy, rx, ry in axes:
            reach += hl * abs(fx * ux + fy * uy) + hw * abs(rx * ux + ry * uy)
        if distance > reach:
            return False
    return True
