"""Cameras of the built-in world: ray casting onto the flat ground texture, vehicles as boxes.

A camera is rigidly attached to the ego, which never pitches or rolls, so every ray meets the ground
at a point that is fixed in the ego's frame: those points, the sky, the ego's own body and the depth
of all of them are computed once. Each tick only rotates the ground points by the ego's yaw, looks
them up in the texture (a mip level chosen per pixel, also once) and ray-casts the boxes of nearby
vehicles inside their projected screen rectangles.

Camera frame (CARLA's): x forward, y right, z up; the image's columns run along +y, rows along -z.
Placement pitch > 0 looks up, yaw > 0 turns right, roll > 0 lowers the right side.
"""
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from bridge.errors import SpecError
from carla_client.builtin.texture import (CLASS_TAGS, MIP_LEVELS, TAG_CAR, TAG_SKY,
                                          GroundTexture)
from carla_client.builtin.vehicle import VehicleParams
from carla_client.sensors import CAMERA_DEPTH, CAMERA_RGB, CAMERA_SEMANTIC, SensorConfig

#: depth of the sky and of anything farther, metres (CARLA's depth camera saturates at 1000 m).
FAR = 1000.0
SKY_HORIZON = np.array([238, 214, 186], dtype=np.float64)  # BGR, pale near the horizon
SKY_ZENITH = np.array([214, 150, 92], dtype=np.float64)    # BGR, deeper blue overhead
EGO_COLOUR = (200, 90, 30)                                 # BGR: blue
NPC_COLOURS = ((40, 40, 190), (50, 170, 230), (225, 225, 225), (60, 60, 60), (60, 140, 40))
FACE_SHADE = (0.75, 0.55, 1.0)  # front/back faces, sides, roof

#: other vehicles to draw: arrays x, y, yaw (radians) and colour index.
Vehicles = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pack(bgr: Sequence[float]) -> np.uint32:
    """A BGRA colour as the uint32 whose bytes are B, G, R, A in memory order."""
    return np.array([[int(bgr[0]), int(bgr[1]), int(bgr[2]), 255]], dtype=np.uint8).view(
        np.uint32)[0, 0]


def _shaded(bgr: Sequence[float]) -> np.ndarray:
    return np.array([_pack([c * shade for c in bgr]) for shade in FACE_SHADE], dtype=np.uint32)


NPC_SHADED = [_shaded(c) for c in NPC_COLOURS]
EGO_SHADED = _shaded(EGO_COLOUR)


def camera_basis(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Rows: the camera's forward, right and up unit vectors in the vehicle frame (degrees in)."""
    p, y, r = math.radians(pitch), math.radians(yaw), math.radians(roll)
    forward = np.array([math.cos(p), 0.0, math.sin(p)])
    up = np.array([-math.sin(p), 0.0, math.cos(p)])
    right = np.array([0.0, 1.0, 0.0])
    right, up = right * math.cos(r) - up * math.sin(r), up * math.cos(r) + right * math.sin(r)
    turn = np.array([[math.cos(y), -math.sin(y), 0.0], [math.sin(y), math.cos(y), 0.0],
                     [0.0, 0.0, 1.0]])
    return np.stack([turn.dot(forward), turn.dot(right), turn.dot(up)])


def ray_box(origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, tz: Tuple[np.ndarray, np.ndarray],
            half_length: float, half_width: float) -> Tuple[np.ndarray, np.ndarray]:
    """Slab test of rays ``origin + t * d`` against the box |x| <= hl, |y| <= hw (z slab given).

    Returns (t of entry, or inf when missed; face hit: 0 front/back, 1 side, 2 roof).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ax = (-half_length - origin[0]) / dx
        bx = (half_length - origin[0]) / dx
        ay = (-half_width - origin[1]) / dy
        by = (half_width - origin[1]) / dy
        tx0, tx1 = np.minimum(ax, bx), np.maximum(ax, bx)
        ty0, ty1 = np.minimum(ay, by), np.maximum(ay, by)
        near = np.maximum(np.maximum(tx0, ty0), tz[0])
        far = np.minimum(np.minimum(tx1, ty1), tz[1])
        hit = (near <= far) & (near > 0.0)
    face = np.where(near == tz[0], 2, np.where(near == ty0, 1, 0))
    return np.where(hit, near, np.inf), face


class Camera(object):
    """One camera sensor: renders BGRA, semantic tags or depth for an ego pose each tick.

    Args:
        config: the sensor entry (type, placement, ``width``/``height``/``fov`` attributes).
        texture: the world's ground texture.
        vehicle: body dimensions of the ego and the NPCs.

    Raises:
        SpecError: bad size, field of view or a camera at or below the ground.
    """

    def __init__(self, config: SensorConfig, texture: GroundTexture, vehicle: VehicleParams
                 ) -> None:
        try:
            width, height = int(config.attr("width", 84)), int(config.attr("height", 84))
            fov = float(config.attr("fov", 90.0))
        except (TypeError, ValueError) as e:
            raise SpecError("camera {!r}: width, height and fov must be numbers: {}".format(
                config.name, e)) from e
        if width < 1 or height < 1 or not 1.0 <= fov <= 170.0:
            raise SpecError("camera {!r}: need width, height >= 1 and fov in [1, 170] degrees, got "
                            "{}x{}, fov {}".format(config.name, width, height, fov))
        if config.z <= 0.05:
            raise SpecError("camera {!r}: z must be above the ground (> 0.05 m), got {}".format(
                config.name, config.z))
        self.name, self.kind = config.name, config.type
        self.width, self.height = width, height
        self.texture = texture
        self.vehicle = vehicle
        self.origin = np.array([config.x, config.y, config.z])
        self.basis = camera_basis(config.pitch, config.yaw, config.roll)
        self.focal = width / (2.0 * math.tan(math.radians(fov) / 2.0))
        self.dirs = self._rays(np.arange(height) + 0.5, np.arange(width) + 0.5)  # (h, w, 3)
        dz = self.dirs[..., 2]
        safe_dz = np.where(dz == 0.0, 1e-12, dz)
        lo, hi = -self.origin[2] / safe_dz, (vehicle.height - self.origin[2]) / safe_dz
        inside = 0.0 <= self.origin[2] <= vehicle.height
        self.tz = (np.where(dz == 0.0, -np.inf if inside else np.inf, np.minimum(lo, hi)),
                   np.where(dz == 0.0, np.inf if inside else -np.inf, np.maximum(lo, hi)))
        body = vehicle
        self._box_corners = tuple(np.array(v, dtype=np.float64) for v in zip(*[
            (fx, fy, fz) for fx in (-body.length / 2.0, body.length / 2.0)
            for fy in (-body.width / 2.0, body.width / 2.0) for fz in (0.0, body.height)]))
        self._build_static()

    def _rays(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Ray directions (vehicle frame) through image points, scaled so forward component is 1:
        the ray parameter t is then the planar depth CARLA's depth camera reports."""
        right = (cols - self.width / 2.0) / self.focal
        down = (rows - self.height / 2.0) / self.focal
        f, r, u = self.basis
        return (f[None, None, :] + right[None, :, None] * r[None, None, :]
                - down[:, None, None] * u[None, None, :])

    def _ground_t(self, dirs: np.ndarray) -> np.ndarray:
        dz = dirs[..., 2]
        with np.errstate(divide="ignore"):
            t = np.where(dz < 0.0, -self.origin[2] / np.where(dz < 0.0, dz, -1.0), np.inf)
        return np.where(t <= FAR, t, np.inf)

    def _build_static(self) -> None:
        """Everything that does not move in the camera image: sky, ego body, ground points."""
        h, w = self.height, self.width
        dirs = self.dirs
        t_ground = self._ground_t(dirs)
        body = self.vehicle
        hl, hw = body.length / 2.0, body.width / 2.0
        camera_in_body = (abs(self.origin[0]) <= hl and abs(self.origin[1]) <= hw
                          and self.origin[2] <= body.height)
        if camera_in_body:  # a dashboard camera does not see its own car from inside
            t_ego, ego_face = np.full((h, w), np.inf), np.zeros((h, w), dtype=np.int64)
        else:
            t_ego, ego_face = ray_box(self.origin, dirs[..., 0], dirs[..., 1], self.tz, hl, hw)
        ego = t_ego < t_ground
        ground = np.isfinite(t_ground) & ~ego
        self.depth = np.where(ego, t_ego, np.where(ground, t_ground, FAR)).astype(np.float32)
        self.depth = np.minimum(self.depth, np.float32(FAR))
        # sky: a gradient by elevation
        elevation = np.clip(dirs[..., 2] / np.linalg.norm(dirs, axis=-1), 0.0, 1.0) ** 0.5
        sky = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * elevation[..., None]
        colour = np.concatenate([np.round(sky), np.full((h, w, 1), 255.0)], axis=-1)
        self.colour = np.ascontiguousarray(colour.astype(np.uint8)).view(np.uint32)[..., 0]
        self.colour[ego] = EGO_SHADED[ego_face[ego]]
        self.tags = np.full((h, w), TAG_SKY, dtype=np.uint8)
        self.tags[ego] = TAG_CAR
        # ground points in the vehicle frame, grouped by mip level
        gx = self.origin[0] + t_ground * dirs[..., 0]
        gy = self.origin[1] + t_ground * dirs[..., 1]
        levels = self._mip_levels()
        pixels = np.flatnonzero(ground)
        res = self.texture.resolution
        self.ground_all = (pixels, gx.ravel()[pixels] / res, gy.ravel()[pixels] / res)
        self._ground_all_work = _texel_work(len(pixels))
        # The colour camera's ground points, level after level, in one set of arrays: each tick
        # computes every level's texel indices in one numpy pass (per point: its level's scale,
        # last row and column, and row length) and only the lookups go level by level.
        chosen, spans, start = [], [], 0  # type: List[np.ndarray], List[Tuple[int, int, int]], int
        for level in range(MIP_LEVELS):
            points = pixels[levels.ravel()[pixels] == level]
            if len(points):
                chosen.append(points)
                spans.append((level, start, start + len(points)))
                start += len(points)
        self.ground_spans = spans
        self.ground_pixels = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.intp)
        per_point = [(np.full(stop - first, 1.0 / (res * 2 ** level)),
                      np.full(stop - first, self.texture.levels[level][0] - 1, dtype=np.intp),
                      np.full(stop - first, self.texture.levels[level][1] - 1, dtype=np.intp),
                      np.full(stop - first, self.texture.levels[level][1], dtype=np.intp))
                     for level, first, stop in spans]
        if per_point:
            scale, last_row, last_col, row_length = (np.concatenate(part) for part in zip(*per_point))
        else:  # no ground in view (a camera looking up)
            scale, (last_row, last_col, row_length) = np.zeros(0), [np.zeros(0, np.intp)] * 3
        # (scaled the way the per-level passes did: x * (1 / (res * 2**level)))
        self.ground_scaled = (gx.ravel()[self.ground_pixels] * scale,
                              gy.ravel()[self.ground_pixels] * scale)
        self.ground_tables = (scale, last_row, last_col, row_length)
        self._ground_colours = np.empty(len(self.ground_pixels), dtype=np.uint32)
        count = len(self.ground_pixels)
        self._ground_origin = (np.empty(count), np.empty(count))  # per point: col0, row0
        self._ground_work = _texel_work(count)

    def _mip_levels(self) -> np.ndarray:
        """Per pixel, the mip level whose texel matches the pixel's ground footprint (geometric
        mean of its extent along rows and columns, from the ground points of its corners)."""
        corners = self._rays(np.arange(self.height + 1), np.arange(self.width + 1))
        corners[..., 2] = np.minimum(corners[..., 2], -1e-4)  # rays above the horizon: far away
        t = np.minimum(-self.origin[2] / corners[..., 2], 1e5)
        px, py = t * corners[..., 0], t * corners[..., 1]
        across = np.hypot(np.diff(px, axis=1), np.diff(py, axis=1))  # (h+1, w)
        along = np.hypot(np.diff(px, axis=0), np.diff(py, axis=0))   # (h, w+1)
        across = 0.5 * (across[1:] + across[:-1])
        along = 0.5 * (along[:, 1:] + along[:, :-1])
        footprint = np.sqrt(across * along) / self.texture.resolution
        level = np.round(np.log2(np.maximum(footprint, 1.0)))
        return np.clip(level, 0, MIP_LEVELS - 1).astype(np.int64)

    # -- per tick --------------------------------------------------------------------------------

    def render(self, pose: Tuple[float, float, float], vehicles: Optional[Vehicles] = None
               ) -> np.ndarray:
        """The image for the ego at ``pose`` (x, y, yaw in radians) among other ``vehicles``
        (arrays x, y, yaw, colour index): (h, w, 4) uint8, (h, w) uint8 or (h, w) float32."""
        x, y, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        tex = self.texture
        if self.kind == CAMERA_RGB:
            out = self.colour.copy()
            index = self._ground_index(x - tex.x0, y - tex.y0, c, s)
            colours = self._ground_colours
            for level, first, stop in self.ground_spans:
                tex.levels[level][2].take(index[first:stop], out=colours[first:stop])
            out.reshape(-1)[self.ground_pixels] = colours
        elif self.kind == CAMERA_SEMANTIC:
            out = self.tags.copy()
            pixels, gx, gy = self.ground_all
            h, w = tex.classes.shape
            scale = 1.0 / tex.resolution
            index = _texel_index((x - tex.x0) * scale, (y - tex.y0) * scale, c, s, gx, gy,
                                 h - 1, w - 1, w, self._ground_all_work)
            out.reshape(-1)[pixels] = CLASS_TAGS[tex.classes.reshape(-1)[index]]
        elif self.kind == CAMERA_DEPTH:
            out = self.depth.copy()
        else:
            raise SpecError("camera {!r}: unsupported type {!r}".format(self.name, self.kind))
        if vehicles is not None and len(vehicles[0]):
            self._draw_vehicles(out, pose, vehicles)
        if self.kind == CAMERA_RGB:
            return out.view(np.uint8).reshape(self.height, self.width, 4)
        return out

    def _ground_index(self, dx: float, dy: float, c: float, s: float) -> np.ndarray:
        """_texel_index of the colour camera's ground points (every mip level at once, the ego
        ``dx, dy`` metres from the texture's origin), in preallocated buffers (valid until the
        next call)."""
        scale, last_row, last_col, row_length = self.ground_tables
        col0, row0 = self._ground_origin
        np.multiply(scale, dx, out=col0)  # per point: (x - x0) * its level's scale
        np.multiply(scale, dy, out=row0)
        gx, gy = self.ground_scaled
        return _texel_index(col0, row0, c, s, gx, gy, last_row, last_col, row_length,
                            self._ground_work)

    def _draw_vehicles(self, out: np.ndarray, pose: Tuple[float, float, float],
                       vehicles: Vehicles) -> None:
        x, y, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        vx, vy, vyaw, colours = vehicles
        # the other vehicles' centres and yaws in the ego frame
        ex, ey = c * (vx - x) + s * (vy - y), -s * (vx - x) + c * (vy - y)
        relative = vyaw - yaw
        hl, hw = self.vehicle.length / 2.0, self.vehicle.width / 2.0
        depth = self.depth.copy() if self.kind != CAMERA_DEPTH else out
        for i, (r0, r1, c0, c1) in self._screen_rects(ex, ey, relative):
            cp, sp = math.cos(relative[i]), math.sin(relative[i])
            ox, oy = self.origin[0] - ex[i], self.origin[1] - ey[i]
            origin = (cp * ox + sp * oy, -sp * ox + cp * oy)
            dirs = self.dirs[r0:r1, c0:c1]
            dx = cp * dirs[..., 0] + sp * dirs[..., 1]
            dy = -sp * dirs[..., 0] + cp * dirs[..., 1]
            tz = (self.tz[0][r0:r1, c0:c1], self.tz[1][r0:r1, c0:c1])
            t, face = ray_box(origin, dx, dy, tz, hl, hw)
            window = depth[r0:r1, c0:c1]
            nearer = t < window
            if not nearer.any():
                continue
            window[nearer] = t[nearer]
            if self.kind == CAMERA_RGB:
                shades = NPC_SHADED[int(colours[i]) % len(NPC_SHADED)]
                out[r0:r1, c0:c1][nearer] = shades[face[nearer]]
            elif self.kind == CAMERA_SEMANTIC:
                out[r0:r1, c0:c1][nearer] = TAG_CAR

    def _screen_rects(self, ex: np.ndarray, ey: np.ndarray, relative_yaw: np.ndarray
                      ) -> List[Tuple[int, Tuple[int, int, int, int]]]:
        """(vehicle index, pixel rectangle r0, r1, c0, c1) of every vehicle box in view."""
        cy, sy = np.cos(relative_yaw)[:, None], np.sin(relative_yaw)[:, None]
        fx, fy, fz = self._box_corners
        rel = np.stack([ex[:, None] + cy * fx - sy * fy - self.origin[0],
                        ey[:, None] + sy * fx + cy * fy - self.origin[1],
                        np.broadcast_to(fz - self.origin[2], (len(ex), 8))], axis=-1)
        cam = rel.dot(self.basis.T)  # (n, 8, forward/right/up)
        forward = cam[..., 0]
        behind = forward <= 0.05
        with np.errstate(divide="ignore", invalid="ignore"):
            cols = self.width / 2.0 + self.focal * cam[..., 1] / forward
            rows = self.height / 2.0 - self.focal * cam[..., 2] / forward
        near = np.min(np.abs(forward), axis=1) < FAR
        bounds = np.stack([np.floor(rows.min(axis=1)), np.ceil(rows.max(axis=1)) + 1,
                           np.floor(cols.min(axis=1)), np.ceil(cols.max(axis=1)) + 1], axis=1)
        rects = []
        for i in np.flatnonzero(near & ~behind.all(axis=1)).tolist():
            if behind[i].any():  # straddles the camera plane: test the whole image
                rects.append((i, (0, self.height, 0, self.width)))
                continue
            r0, r1, c0, c1 = bounds[i].tolist()
            r0, r1 = max(0, int(r0)), min(self.height, int(r1))
            c0, c1 = max(0, int(c0)), min(self.width, int(c1))
            if r0 < r1 and c0 < c1:
                rects.append((i, (r0, r1, c0, c1)))
        return rects


def _texel_work(count: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scratch arrays for _texel_index over ``count`` points: two float, two intp."""
    return (np.empty(count), np.empty(count), np.empty(count, dtype=np.intp),
            np.empty(count, dtype=np.intp))


def _texel_index(col0: Any, row0: Any, c: float, s: float, gx: np.ndarray, gy: np.ndarray,
                 last_row: Any, last_col: Any, row_length: Any, work: Tuple[np.ndarray, ...]
                 ) -> np.ndarray:
    """Flat texel indices of ground points (gx, gy), in texels of the ego frame, for an ego at
    texel coordinates (col0, row0) with heading cos/sin (c, s); clamped to the texture (its last
    row and column). col0, row0 and the texture's bounds are scalars or per point. The result is
    the last array of ``work`` (_texel_work), which holds every temporary: no allocation."""
    term, other, col, row = work
    # col = col0 + c * gx - s * gy, row = row0 + s * gx + c * gy, in that order of operations
    for out, start, a, b, combine in ((col, col0, c, s, np.subtract), (row, row0, s, c, np.add)):
        np.multiply(gx, a, out=term)
        np.add(start, term, out=term)
        np.multiply(gy, b, out=other)
        combine(term, other, out=term)
        np.copyto(out, term, casting="unsafe")  # astype(intp): truncation
    # maximum/minimum ufuncs: np.clip costs ~25 us a call in numpy 1.19
    np.minimum(np.maximum(col, 0, out=col), last_col, out=col)
    np.minimum(np.maximum(row, 0, out=row), last_row, out=row)
    row *= row_length
    row += col
    return row
