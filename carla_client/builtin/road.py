"""The built-in world's circuit: a seeded closed loop of straights and curves, two lanes, barriers.

Coordinates follow CARLA: x and y are horizontal with y pointing 90 degrees clockwise of x seen from
above (CARLA's left-handed world), z up, yaw in radians here (degrees only in measurements) measured
from +x towards +y. A heading ``h`` has the right-hand normal ``(-sin h, cos h)``.

The circuit is a seeded polygon around a loop whose corners are rounded by circular arcs of seeded
radius (straights joined by curves), resampled at a fixed arc-length spacing. Candidates that are
too short, too long, too tight or that come too close to themselves are redrawn from the same
random stream, so a seed always gives the same circuit. The route is the right lane's centre line,
driven counter-clockwise seen from above (the ego's lane is the outer one in the main curves).
"""
import bisect
import functools
import math
from typing import List, NamedTuple, Optional, Tuple

import numpy as np


class TrackParams(NamedTuple):
    """Shape of the generated circuit. Lengths in metres.

    Attributes:
        lane_width: width of each of the two lanes.
        shoulder: grass between the road edge and the barrier.
        barrier_width: width of the barrier band drawn on the ground.
        line_width: width of the painted lane markings.
        dash_length: length of one dash (and one gap) of the broken centre line.
        min_radius: smallest curve radius allowed on the road's centre line.
        min_length / max_length: accepted range of the centre line's length.
        radius_range: range of the loop's base radius (distance of the corners from its middle).
        radius_jitter: each corner's distance is the base radius times a factor in this range.
        control_points: range (inclusive) of the number of polygon corners around the loop.
        corner_radius: range of the arc radius that rounds each corner (shrunk, down to
            min_radius, where the neighbouring straights are too short for it).
        spacing: arc-length spacing of the resampled centre line.
        clearance: smallest distance between parts of the road that are far apart along it.
    """

    lane_width: float = 3.5
    shoulder: float = 2.5
    barrier_width: float = 0.5
    line_width: float = 0.25
    dash_length: float = 3.0
    min_radius: float = 25.0
    min_length: float = 300.0
    max_length: float = 800.0
    radius_range: Tuple[float, float] = (70.0, 100.0)
    radius_jitter: Tuple[float, float] = (0.7, 1.2)
    control_points: Tuple[int, int] = (5, 8)
    corner_radius: Tuple[float, float] = (25.0, 70.0)
    spacing: float = 0.5
    clearance: float = 22.0

    @property
    def half_width(self) -> float:
        """Distance from the road's centre line to its edge."""
        return self.lane_width

    @property
    def barrier_offset(self) -> float:
        """Distance from the road's centre line to the barrier's inner face."""
        return self.lane_width + self.shoulder


class Lane(object):
    """A closed polyline in driving order: points, headings and cumulative arc length.

    ``s`` has one more entry than the points: ``s[-1]`` is the lap length (closing segment
    included).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        self.n = len(self.x)
        dx = np.roll(self.x, -1) - self.x
        dy = np.roll(self.y, -1) - self.y
        self.segment = np.hypot(dx, dy)
        self.s = np.concatenate(([0.0], np.cumsum(self.segment)))
        self.length = float(self.s[-1])
        # heading at a vertex: direction of the chord through its two neighbours
        hx = np.roll(self.x, -1) - np.roll(self.x, 1)
        hy = np.roll(self.y, -1) - np.roll(self.y, 1)
        self.heading = np.arctan2(hy, hx)
        unwrapped = np.unwrap(np.append(self.heading, self.heading[0]))
        self._heading_closed = unwrapped
        self._x_closed = np.append(self.x, self.x[0])
        self._y_closed = np.append(self.y, self.y[0])
        for array in (self.x, self.y, self.segment, self.s, self.heading):
            array.flags.writeable = False
        self._lists = None  # type: Optional[Tuple[List[float], ...]]

    def pose_at(self, distance: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions and headings at arc lengths ``distance`` (any reals, wrapped per lap)."""
        d = np.mod(distance, self.length)
        x = np.interp(d, self.s, self._x_closed)
        y = np.interp(d, self.s, self._y_closed)
        heading = np.interp(d, self.s, self._heading_closed)
        return x, y, heading

    def pose_at_distance(self, distance: float) -> Tuple[float, float, float]:
        """``pose_at`` for one arc length, as floats: the same numbers (np.interp's formula) without
        numpy's per-call overhead, for per-tick callers such as the autopilot."""
        if self._lists is None:
            self._lists = (self.s.tolist(), self._x_closed.tolist(), self._y_closed.tolist(),
                           self._heading_closed.tolist())
        s, xs, ys, headings = self._lists
        d = float(distance) % self.length
        j = min(bisect.bisect_right(s, d), len(s) - 1) - 1
        if d == s[j + 1]:
            return xs[j + 1], ys[j + 1], headings[j + 1]
        step = d - s[j]
        span = s[j + 1] - s[j]
        return ((xs[j + 1] - xs[j]) / span * step + xs[j], (ys[j + 1] - ys[j]) / span * step + ys[j],
                (headings[j + 1] - headings[j]) / span * step + headings[j])

    def distance_at_index(self, index: np.ndarray) -> np.ndarray:
        """Arc length at a fractional vertex index."""
        return np.interp(np.mod(index, self.n), np.arange(self.n + 1), self.s)


def wrap_angle(angle: float) -> float:
    """Wraps radians to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _rounded_polygon(px: np.ndarray, py: np.ndarray, radii: np.ndarray, min_radius: float,
                     step: float) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Straight edges between the polygon's vertices, each corner rounded by a circular arc.

    Returns a densely sampled closed polyline, or None when a corner cannot take ``min_radius``
    (its neighbouring edges are too short for the arc's tangent lengths).
    """
    k = len(px)
    points = np.stack([px, py], axis=1)
    edges = np.roll(points, -1, axis=0) - points  # edge i runs from vertex i to vertex i+1
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    directions = edges / lengths[:, None]
    xs, ys = [], []
    for i in range(k):
        d_in, d_out = directions[i - 1], directions[i]
        turn = math.atan2(d_in[0] * d_out[1] - d_in[1] * d_out[0], float(np.dot(d_in, d_out)))
        half_tan = math.tan(abs(turn) / 2.0)
        room = 0.45 * min(lengths[i - 1], lengths[i])  # each edge shares itself between two arcs
        radius = min(radii[i], room / max(half_tan, 1e-9))
        if radius < min_radius:
            return None
        tangent = radius * half_tan
        start = points[i] - tangent * d_in
        side = 1.0 if turn > 0 else -1.0  # turning right (towards +y from +x): centre on the right
        centre = start + side * radius * np.array([-d_in[1], d_in[0]])
        a0 = math.atan2(start[1] - centre[1], start[0] - centre[0])
        count = max(2, int(abs(turn) * radius / step))
        angles = a0 + np.linspace(0.0, turn, count)
        xs.append(centre[0] + radius * np.cos(angles))
        ys.append(centre[1] + radius * np.sin(angles))
    return np.concatenate(xs), np.concatenate(ys)


def _resample(x: np.ndarray, y: np.ndarray, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
    """Resamples a closed polyline at (nearly) equal arc-length spacing."""
    xc, yc = np.append(x, x[0]), np.append(y, y[0])
    s = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(xc), np.diff(yc)))))
    n = int(round(s[-1] / spacing))
    targets = np.arange(n) * (s[-1] / n)
    return np.interp(targets, s, xc), np.interp(targets, s, yc)


def _curvature(x: np.ndarray, y: np.ndarray, spacing: float) -> np.ndarray:
    """Signed curvature (positive turning right, i.e. towards +y from +x) of a closed polyline."""
    heading = np.arctan2(np.roll(y, -1) - y, np.roll(x, -1) - x)
    turn = (np.roll(heading, -1) - heading + math.pi) % (2 * math.pi) - math.pi
    curvature = np.roll(turn, 1) / spacing
    kernel = np.ones(9) / 9.0  # smooths the resampling noise out of the finite differences
    padded = np.concatenate((curvature[-4:], curvature, curvature[:4]))
    return np.convolve(padded, kernel, mode="valid")


def _acceptable(x: np.ndarray, y: np.ndarray, curvature: np.ndarray, params: TrackParams) -> bool:
    length = len(x) * params.spacing
    if not params.min_length <= length <= params.max_length:
        return False
    if np.max(np.abs(curvature)) * params.min_radius > 1.0:
        return False
    # parts of the loop more than 3 clearances apart along the road must be a clearance apart
    step = max(1, int(2.0 / params.spacing))
    sx, sy = x[::step], y[::step]
    m = len(sx)
    d2 = (sx[:, None] - sx[None, :]) ** 2 + (sy[:, None] - sy[None, :]) ** 2
    gap = np.abs(np.arange(m)[:, None] - np.arange(m)[None, :])
    gap = np.minimum(gap, m - gap) * step * params.spacing
    far_along = gap > 3.0 * params.clearance
    return not np.any(d2[far_along] < params.clearance ** 2)


def generate_centre_line(seed: int, params: TrackParams = TrackParams(), attempts: int = 500
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """The road's centre line for ``seed``: (x, y) every ``params.spacing``, counter-clockwise.

    Raises:
        ValueError: no acceptable circuit in ``attempts`` draws (only with extreme params).
    """
    rng = np.random.RandomState([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, 0x7261636B])
    lo, hi = params.control_points
    for _ in range(attempts):
        k = rng.randint(lo, hi + 1)
        base = rng.uniform(*params.radius_range)
        angles = (np.arange(k) + rng.uniform(-0.3, 0.3, size=k)) * (2 * math.pi / k)
        distances = base * rng.uniform(*params.radius_jitter, size=k)
        corner_radii = rng.uniform(*params.corner_radius, size=k)
        # decreasing angle: counter-clockwise seen from above in CARLA's (y-down) frame
        px, py = distances * np.cos(-angles), distances * np.sin(-angles)
        loop = _rounded_polygon(px, py, corner_radii, params.min_radius, params.spacing / 4.0)
        if loop is None:
            continue
        x, y = _resample(loop[0], loop[1], params.spacing)
        if _acceptable(x, y, _curvature(x, y, params.spacing), params):
            return x, y
    raise ValueError("no acceptable circuit for seed {} in {} attempts; relax TrackParams "
                     "(min_radius, clearance, min_length/max_length)".format(seed, attempts))


class Track(object):
    """The generated circuit: centre line, both lanes, curvature, and the route (the right lane).

    Vertex ``i`` of the centre line, the right lane and the route is the same cross-section; the
    left lane is stored in its own driving order (opposite), its vertex ``j`` matching centre vertex
    ``(n - j) % n``. Vertex 0 is the start line, placed at the start of the straightest 50 m.
    """

    def __init__(self, seed: int, params: TrackParams = TrackParams()) -> None:
        self.seed = seed
        self.params = params
        x, y = generate_centre_line(seed, params)
        curvature = _curvature(x, y, params.spacing)
        start = self._straightest(curvature, int(round(50.0 / params.spacing)))
        x, y, curvature = np.roll(x, -start), np.roll(y, -start), np.roll(curvature, -start)
        self.centre = Lane(x, y)
        self.curvature = curvature
        self.n = self.centre.n
        heading = self.centre.heading
        nx, ny = -np.sin(heading), np.cos(heading)  # right-hand normals
        half = params.lane_width / 2.0
        self.route = Lane(x + half * nx, y + half * ny)
        order = (self.n - np.arange(self.n)) % self.n
        self.left = Lane((x - half * nx)[order], (y - half * ny)[order])
        self.length = self.route.length
        margin = params.barrier_offset + params.barrier_width
        self.bounds = (float(x.min() - margin), float(y.min() - margin),
                       float(x.max() + margin), float(y.max() + margin))

    @staticmethod
    def _straightest(curvature: np.ndarray, window: int) -> int:
        """First vertex of the window with the least total curvature (the start line: a car
        starting there has a straight ahead of it)."""
        padded = np.concatenate((np.abs(curvature), np.abs(curvature)[:window]))
        sums = np.convolve(padded, np.ones(window), mode="valid")[:len(curvature)]
        return int(np.argmin(sums))

    def left_distance(self, centre_index: float) -> float:
        """Arc length along the left lane (its own driving order) at a fractional centre index."""
        return float(self.left.distance_at_index(self.n - centre_index))

    @property
    def min_radius(self) -> float:
        return float(1.0 / max(np.max(np.abs(self.curvature)), 1e-9))


@functools.lru_cache(maxsize=8)
def cached_track(seed: int, params: TrackParams = TrackParams()) -> Track:
    """The circuit for ``seed``, shared by every world built with the same seed and params."""
    return Track(seed, params)
