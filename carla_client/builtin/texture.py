"""The ground texture: the circuit rasterised once into a top-down map of surfaces and colours.

Cameras sample it where their rays meet the ground. Colours come with a mip pyramid (box-filtered
halvings) so that distant ground is averaged instead of aliased; semantic tags use the
full-resolution class map. Texel (row, col) covers x from ``x0 + col * res`` and y from
``y0 + row * res``, ``res`` metres each way.
"""
import functools
import math
from typing import NamedTuple, Tuple

import numpy as np

from carla_client.builtin.road import Track, TrackParams

# surface classes stored in the class map
GRASS, ASPHALT, CENTRE_LINE, EDGE_LINE, BARRIER_RED, BARRIER_WHITE, VERGE = range(7)

#: CARLA >= 0.9.14 semantic tags (CityScapes palette): Roads 1, Terrain 10, Sky 11, Car 14,
#: RoadLine 24, GuardRail 28.
TAG_ROAD, TAG_TERRAIN, TAG_SKY, TAG_CAR, TAG_ROAD_LINE, TAG_GUARD_RAIL = 1, 10, 11, 14, 24, 28
CLASS_TAGS = np.array([TAG_TERRAIN, TAG_ROAD, TAG_ROAD_LINE, TAG_ROAD_LINE, TAG_GUARD_RAIL,
                       TAG_GUARD_RAIL, TAG_TERRAIN], dtype=np.uint8)

# BGRA colours and per-texel brightness noise of each class
CLASS_COLOURS = np.array([
    (48, 122, 66, 255),    # grass
    (92, 88, 86, 255),     # asphalt
    (40, 196, 232, 255),   # centre line: yellow
    (232, 232, 232, 255),  # edge line: white
    (40, 40, 200, 255),    # barrier: red
    (225, 225, 225, 255),  # barrier: white
    (92, 150, 140, 255),   # verge: dry grass between the road edge and the barrier
], dtype=np.int16)
CLASS_NOISE = np.array([14, 9, 4, 4, 4, 4, 12], dtype=np.int16)

#: texture levels kept in the colour pyramid (level l has texels 2**l times larger).
MIP_LEVELS = 6


class GroundTexture(NamedTuple):
    """The rasterised circuit. Arrays are read-only.

    Attributes:
        x0, y0: world coordinates of the texture's corner.
        resolution: metres per texel at level 0.
        classes: (h, w) uint8 surface classes.
        levels: per mip level, (height, width, flat uint32 BGRA texels in row-major order).
    """

    x0: float
    y0: float
    resolution: float
    classes: np.ndarray
    levels: Tuple[Tuple[int, int, np.ndarray], ...]


def _signed_distance(track: Track, x0: float, y0: float, shape: Tuple[int, int], res: float,
                     band: float) -> Tuple[np.ndarray, np.ndarray]:
    """Per texel near the road: signed distance from the centre line (right positive) and the arc
    length of its foot point. Texels farther than ``band`` get +inf distance."""
    h, w = shape
    best = np.full(shape, np.inf, dtype=np.float32)
    lateral = np.full(shape, np.inf, dtype=np.float32)
    along = np.zeros(shape, dtype=np.float32)
    cx, cy, s = track.centre.x, track.centre.y, track.centre.s
    n = track.n
    step = max(1, int(round(2.0 / track.params.spacing)))  # 2 m chords: sagitta < 2 cm at R 25 m
    vertices = list(range(0, n, step)) + [n]
    for a, b in zip(vertices[:-1], vertices[1:]):
        ax, ay, bx, by = cx[a], cy[a], cx[b % n], cy[b % n]
        c0 = max(0, int((min(ax, bx) - band - x0) / res))
        c1 = min(w, int((max(ax, bx) + band - x0) / res) + 2)
        r0 = max(0, int((min(ay, by) - band - y0) / res))
        r1 = min(h, int((max(ay, by) + band - y0) / res) + 2)
        px = (x0 + (np.arange(c0, c1) + 0.5) * res)[None, :] - ax
        py = (y0 + (np.arange(r0, r1) + 0.5) * res)[:, None] - ay
        ux, uy = bx - ax, by - ay
        length = math.sqrt(ux * ux + uy * uy)  # not hypot: its result varies with the Python version
        t = np.clip((px * ux + py * uy) / (length * length), 0.0, 1.0)
        dx, dy = px - t * ux, py - t * uy
        d2 = dx * dx + dy * dy
        side = np.where(px * -uy + py * ux >= 0.0, 1.0, -1.0)
        region = best[r0:r1, c0:c1]
        closer = d2 < region
        region[closer] = d2[closer]
        lateral[r0:r1, c0:c1][closer] = (side * np.sqrt(d2))[closer]
        along[r0:r1, c0:c1][closer] = (s[a] + t * (s[b] - s[a]))[closer]
    return lateral, along


def _classify(lateral: np.ndarray, along: np.ndarray, params: TrackParams) -> np.ndarray:
    distance = np.abs(lateral)
    classes = np.full(lateral.shape, GRASS, dtype=np.uint8)
    barrier = distance <= params.barrier_offset + params.barrier_width
    stripe = (np.floor(along / 2.0).astype(np.int64) % 2).astype(np.uint8)
    classes[barrier] = BARRIER_RED + stripe[barrier]
    classes[distance < params.barrier_offset] = VERGE
    classes[distance <= params.half_width] = ASPHALT
    classes[(distance <= params.half_width) & (distance >= params.half_width - params.line_width)] \
        = EDGE_LINE
    dashes = np.mod(along, 2.0 * params.dash_length) < params.dash_length
    classes[(distance <= params.line_width / 2.0) & dashes] = CENTRE_LINE
    return classes


def _halve(texels: np.ndarray) -> np.ndarray:
    """Box-filters an (h, w, 4) uint8 image to half size (odd edges replicated)."""
    h, w = texels.shape[:2]
    if h % 2 or w % 2:
        texels = np.pad(texels, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    wide = texels.astype(np.uint16)
    total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def build_texture(track: Track, resolution: float = 0.15) -> GroundTexture:
    """Rasterises ``track`` (cached: worlds built with the same circuit share the texture)."""
    params = track.params
    margin = 50.0  # a bird's-eye camera 40 m up sees 40 m beyond the barrier
    bx0, by0, bx1, by1 = track.bounds
    x0, y0 = bx0 - margin, by0 - margin
    shape = (int(math.ceil((by1 + margin - y0) / resolution)),
             int(math.ceil((bx1 + margin - x0) / resolution)))
    band = params.barrier_offset + params.barrier_width + 1.0
    lateral, along = _signed_distance(track, x0, y0, shape, resolution, band)
    classes = _classify(lateral, along, params)
    rng = np.random.RandomState([track.seed & 0xFFFFFFFF, (track.seed >> 32) & 0xFFFFFFFF,
                                 0x74657874])
    noise = rng.randint(-8, 9, size=shape).astype(np.int16)
    colours = CLASS_COLOURS[classes]
    colours[..., :3] += (noise * CLASS_NOISE[classes] // 8)[..., None]
    texels = np.clip(colours, 0, 255).astype(np.uint8)
    levels = []  # type: List[Tuple[int, int, np.ndarray]]
    for _ in range(MIP_LEVELS):
        flat = np.ascontiguousarray(texels).view(np.uint32).reshape(-1)
        flat.flags.writeable = False
        levels.append((texels.shape[0], texels.shape[1], flat))
        texels = _halve(texels)
    classes.flags.writeable = False
    return GroundTexture(x0, y0, resolution, classes, tuple(levels))
