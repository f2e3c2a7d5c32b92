"""The vehicle ahead in the ego's lane on a CARLA 0.9 server: distance and closing speed.

CARLA has no "lead vehicle" query, so it is computed from what the client already holds each tick:
the map's waypoints (a client-side OpenDRIVE copy, no server call) and the vehicles' transforms and
velocities (cached from the last tick's snapshot; ``world.get_actors()`` is the only server call).

1. Walk the ego's lane ahead from the waypoint under the ego, ``step`` metres at a time, to
   ``max_range`` (``waypoint.next``; ``previous`` when the ego drives against the lane), keeping at
   forks the branch whose heading changes least. This gives the lane's centre line with arc lengths.
2. A vehicle is in the lane when its centre lies within half the lane's width of that centre line;
   its position along the lane is the nearest centre point's arc length plus its offset along that
   point's direction.
3. The lead is the nearest such vehicle ahead of the ego: the distance is bumper to bumper (centre
   gap minus both bounding boxes' half lengths, at least 0), the closing speed the ego's velocity
   minus the lead's, projected on the lane's direction at the lead.

With no vehicle within ``max_range`` the answer is ``(max_range, 0.0)``, as in the built-in world.
"""
import math
from typing import Any, List, Optional, Sequence, Tuple

#: arc-length spacing of the walked lane centre line, metres.
STEP = 2.0


def _xy(vector: Any) -> Tuple[float, float]:
    return float(vector.x), float(vector.y)


def _forward(rotation: Any) -> Tuple[float, float]:
    yaw = math.radians(float(rotation.yaw))
    return math.cos(yaw), math.sin(yaw)


def _pick(candidates: Sequence[Any], heading: Tuple[float, float]) -> Any:
    """At a fork: the waypoint whose direction is closest to ``heading``."""
    return max(candidates, key=lambda wp: sum(a * b for a, b in zip(_forward(wp.transform.rotation),
                                                                    heading)))


def lane_ahead(waypoint: Any, max_range: float, against: bool = False, step: float = STEP
               ) -> List[Tuple[float, float, float, float, float]]:
    """Centre points ``(x, y, forward x, forward y, arc length)`` of the lane from ``waypoint`` on.

    Args:
        waypoint: the lane waypoint under the ego.
        max_range: how far to walk, metres (one step more is kept for vehicles at the limit).
        against: walk against the lane's driving direction (the ego drives the wrong way).
        step: spacing, metres.
    """
    sign = -1.0 if against else 1.0
    points = []  # type: List[Tuple[float, float, float, float, float]]
    s = 0.0
    while True:
        fx, fy = _forward(waypoint.transform.rotation)
        x, y = _xy(waypoint.transform.location)
        points.append((x, y, sign * fx, sign * fy, s))
        if s >= max_range + step:
            return points
        following = waypoint.previous(step) if against else waypoint.next(step)
        if not following:  # the lane ends (a dead end, the map's edge)
            return points
        waypoint = _pick(following, (sign * fx, sign * fy)) if len(following) > 1 else following[0]
        s += step


def _half_length(actor: Any) -> float:
    box = getattr(actor, "bounding_box", None)
    return float(box.extent.x) if box is not None else 2.3


def lead_vehicle(ego: Any, ego_waypoint: Optional[Any], vehicles: Sequence[Any], max_range: float,
                 step: float = STEP) -> Tuple[float, float]:
    """(bumper-to-bumper distance, closing speed) to the nearest vehicle ahead in the ego's lane.

    Args:
        ego: the ego ``carla.Vehicle``.
        ego_waypoint: the driving-lane waypoint under the ego (None off the road: no lane, no lead).
        vehicles: every vehicle in the world (the ego among them is skipped).
        max_range: look-ahead, metres; also the distance reported when there is no lead.
        step: spacing of the walked centre line, metres.
    """
    if ego_waypoint is None:
        return max_range, 0.0
    transform = ego.get_transform()
    ex, ey = _xy(transform.location)
    lane_fx, lane_fy = _forward(ego_waypoint.transform.rotation)
    ego_fx, ego_fy = _forward(transform.rotation)
    against = lane_fx * ego_fx + lane_fy * ego_fy < 0.0
    points = lane_ahead(ego_waypoint, max_range, against, step)
    x0, y0, f0x, f0y, _ = points[0]
    ego_s = (ex - x0) * f0x + (ey - y0) * f0y
    half_width = float(ego_waypoint.lane_width) / 2.0
    reach = max_range + 2.0 * step + 10.0
    best = None  # type: Optional[Tuple[float, Any, Tuple[float, float]]]
    for vehicle in vehicles:
        if vehicle.id == ego.id:
            continue
        vx, vy = _xy(vehicle.get_transform().location)
        if math.hypot(vx - ex, vy - ey) > reach:
            continue
        x, y, fx, fy, s = min(points, key=lambda p: (p[0] - vx) ** 2 + (p[1] - vy) ** 2)
        if abs(-(vx - x) * fy + (vy - y) * fx) > half_width:  # beside the lane, not in it
            continue
        along = s + (vx - x) * fx + (vy - y) * fy - ego_s
        if along <= 0.0:  # behind the ego's centre
            continue
        gap = along - _half_length(ego) - _half_length(vehicle)
        if best is None or gap < best[0]:
            best = (gap, vehicle, (fx, fy))
    if best is None or best[0] > max_range:
        return max_range, 0.0
    gap, vehicle, (fx, fy) = best
    ego_vx, ego_vy = _xy(ego.get_velocity())
    lead_vx, lead_vy = _xy(vehicle.get_velocity())
    return max(gap, 0.0), (ego_vx - lead_vx) * fx + (ego_vy - lead_vy) * fy
