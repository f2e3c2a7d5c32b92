"""Projects a moving point onto a closed route: arc position, lateral offset and lane heading.

Each query searches a small window of vertices around the previous answer instead of the whole
route, which is valid because a car moves at most a couple of metres per tick and the circuit keeps
its distant parts far apart (TrackParams.clearance).
"""
import math
from typing import NamedTuple

import numpy as np

from carla_client.builtin.road import Lane, wrap_angle


class Projection(NamedTuple):
    """Where a point lies relative to the route.

    Attributes:
        index: fractional vertex index of the foot point (vertex i + fraction along segment i).
        distance: arc length of the foot point in [0, route length).
        lateral: signed distance from the route, positive to the right of the driving direction.
        heading: the route's heading at the foot point, radians.
    """

    index: float
    distance: float
    lateral: float
    heading: float


class RouteTracker(object):
    """Tracks one point along a Lane. Call ``locate`` once (full search), then ``update``.

    Args:
        lane: the route.
        window: vertices searched each side of the previous foot point.
    """

    def __init__(self, lane: Lane, window: int = 24) -> None:
        self.lane = lane
        self._offsets = np.arange(-window, window + 1)
        self._x, self._y = lane.x, lane.y
        self._heading = lane.heading
        self._segment = lane.segment
        self._s = lane.s
        self.last = None  # type: Projection

    def locate(self, x: float, y: float) -> Projection:
        """Projects with a search over the whole route (after a reset or a teleport)."""
        nearest = int(np.argmin((self._x - x) ** 2 + (self._y - y) ** 2))
        self.last = self._refine(nearest, x, y)
        return self.last

    def update(self, x: float, y: float) -> Projection:
        """Projects a point that moved a few metres at most since the last call."""
        if self.last is None:
            return self.locate(x, y)
        n = self.lane.n
        candidates = (int(self.last.index) + self._offsets) % n
        d2 = (self._x[candidates] - x) ** 2 + (self._y[candidates] - y) ** 2
        self.last = self._refine(int(candidates[int(np.argmin(d2))]), x, y)
        return self.last

    def peek(self, x: float, y: float) -> Projection:
        """Like ``update`` but leaves the tracker where it was (for candidate poses)."""
        saved = self.last
        try:
            return self.update(x, y)
        finally:
            self.last = saved

    def _refine(self, vertex: int, x: float, y: float) -> Projection:
        """Foot point on the nearer of the two segments that meet at ``vertex``."""
        n = self.lane.n
        best = None
        for start in ((vertex - 1) % n, vertex):
            end = (start + 1) % n
            ax, ay = float(self._x[start]), float(self._y[start])
            ux, uy = float(self._x[end]) - ax, float(self._y[end]) - ay
            length2 = ux * ux + uy * uy
            t = ((x - ax) * ux + (y - ay) * uy) / length2
            t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
            fx, fy = ax + t * ux - x, ay + t * uy - y
            d2 = fx * fx + fy * fy
            if best is None or d2 < best[0]:
                best = (d2, start, end, t, ux, uy, math.sqrt(length2))
        _, start, end, t, ux, uy, length = best
        ax, ay = float(self._x[start]), float(self._y[start])
        lateral = ((x - ax) * -uy + (y - ay) * ux) / length
        h0 = float(self._heading[start])
        heading = wrap_angle(h0 + t * wrap_angle(float(self._heading[end]) - h0))
        distance = float(self._s[start]) + t * float(self._segment[start])
        return Projection(start + t, distance % self.lane.length, lateral, heading)
