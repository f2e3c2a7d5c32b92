"""BuiltinWorld: a small deterministic driving simulator whose data is shaped like CARLA's.

The circuit depends on the world seed only: the constructor's ``seed``, or with ``circuits=K`` one of
the seeds ``seed .. seed + K - 1``, drawn at each reset from the reset's seed (or named by the
``world_seed`` reset option). The seed given to ``reset`` drives episode randomness (circuit, random
start, NPC placement and speeds). The clock runs on like CARLA's in synchronous
mode: every tick, resets included (as the CARLA backend ticks once to settle a reset), adds one frame
and ``tick_seconds``, so frame ids never repeat within a process, except after ``restore``, which
puts the clock back with everything else (``snapshot``/``restore`` save and restore the full state).
"""
import copy
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from bridge.errors import ProtocolError, SnapshotError, SpecError
from bridge.schema import LEAD_RANGE, MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from bridge.spec import Tick, WorldSpec
from carla_client.backend import WorldBackend
from carla_client.builtin.render import Camera
from carla_client.builtin.road import TrackParams, cached_track, wrap_angle
from carla_client.builtin.route import Projection, RouteTracker
from carla_client.builtin.texture import build_texture
from carla_client.builtin.traffic import Traffic
from carla_client.builtin.vehicle import (VehicleParams, VehicleState, advance, body_points,
                                          boxes_overlap, wheel_points)
from carla_client.sensors import (CAMERA_TYPES, COLLISION, LANE_INVASION, LIDAR, SensorConfig,
                                  default_sensors, observation_fields)

#: reset options and what they do (documented in docs/builtin_world.md).
RESET_OPTIONS = {
    "random_start": "start at a random point of the route with a small lateral and heading jitter",
    "start_distance": "start this many metres along the route (default 0: the start line)",
    "start_speed": "initial forward speed in m/s (default 0)",
    "world_seed": "drive this circuit (one of the world's seeds; default: drawn from the reset seed)",
}
RANDOM_START_LATERAL = 0.5  # metres either side of the lane centre
RANDOM_START_HEADING = 0.1  # radians either side of the lane direction


def _seed_words(seed: int, salt: int) -> List[int]:
    """Any Python int (negative or beyond 32 bits) as a RandomState seed array."""
    seed = int(seed)
    return [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, (seed >> 64) & 0xFFFFFFFF, salt]


class BuiltinWorld(WorldBackend):
    """A seeded two-lane circuit with a kinematic-bicycle ego, optional NPCs, cameras and events.

    Args:
        sensors: sensor configs (default: ``default_sensors()``); LiDAR is CARLA-only.
        tick_seconds: fixed simulation step.
        seed: the world seed; it alone decides the circuit.
        circuits: serve this many circuits, world seeds ``seed .. seed + circuits - 1``; each reset
            draws one (built on first use, then kept).
        npc_vehicles: number of NPC cars (alternating lanes).
        vehicle: ego (and NPC body) parameters.
        track: circuit generation parameters.
        texture_resolution: metres per ground-texture texel (finer: sharper, slower to build).
        tick_latency: served, every tick (resets included) takes at least this many seconds of wall
            time from the request's arrival to the reply's departure, sleeping whatever the work
            left over (bridge.server does the sleeping): it emulates a CARLA server whose tick is
            bound by rendering on a GPU, without using this machine's CPU (scaling benchmarks).

    Raises:
        SpecError: an unsupported sensor, a bad camera, a bad tick or too many NPCs.
    """

    name = "builtin"
    version = "1.0"
    deterministic = True
    supports_snapshot = True

    def __init__(self, sensors: Optional[Sequence[SensorConfig]] = None, tick_seconds: float = 0.05,
                 seed: int = 0, npc_vehicles: int = 0, vehicle: VehicleParams = VehicleParams(),
                 track: TrackParams = TrackParams(), texture_resolution: float = 0.15,
                 circuits: int = 1, tick_latency: float = 0.0) -> None:
        tick_seconds = float(tick_seconds)
        if not (math.isfinite(tick_seconds) and 0.0 < tick_seconds <= 0.5):
            raise SpecError("tick_seconds must be in (0, 0.5], got {!r}".format(tick_seconds))
        tick_latency = float(tick_latency)
        if not (math.isfinite(tick_latency) and 0.0 <= tick_latency <= 10.0):
            raise SpecError("tick_latency must be in [0, 10] seconds, got {!r}".format(tick_latency))
        self.tick_latency = tick_latency
        self.sensors = tuple(default_sensors() if sensors is None else sensors)
        for sensor in self.sensors:
            if sensor.type == LIDAR:
                raise SpecError("sensor {!r}: sensor.lidar.ray_cast is only available with the "
                                "CARLA backend (--world carla); remove it from the sensor config "
                                "for the built-in world".format(sensor.name))
        if int(circuits) < 1:
            raise SpecError("circuits must be at least 1, got {!r}".format(circuits))
        self.tick_seconds = tick_seconds
        self.vehicle = vehicle
        self.npc_vehicles = int(npc_vehicles)
        self.world_seeds = tuple(range(int(seed), int(seed) + int(circuits)))
        self._track_params = track
        self._texture_resolution = float(texture_resolution)
        self._circuits = {}  # type: Dict[int, Tuple[Any, ...]]
        self._report_collisions = any(s.type == COLLISION for s in self.sensors)
        self._report_invasions = any(s.type == LANE_INVASION for s in self.sensors)
        self._use_circuit(self.world_seeds[0])
        self._spec = WorldSpec(tuple(observation_fields(self.sensors)), MEASUREMENT_SPEC,
                               VEHICLE_CONTROL_SPEC, tick_seconds)
        self._rng = np.random.RandomState(_seed_words(self.seed, 0x65706973))
        params = track
        edge = params.half_width - params.line_width / 2.0
        self._markings = ((-edge, "Solid"), (0.0, "Broken"), (edge, "Solid"))
        self._half_lane = params.lane_width / 2.0
        self._body = body_points(vehicle)
        self._wheels = wheel_points(vehicle)
        self._state = None  # type: Optional[VehicleState]
        self._previous = None  # type: Optional[VehicleState]  # the state before the last tick
        self._events = []  # type: List[Dict[str, Any]]  # the last tick's events
        self._frame = 0
        self._route_distance = 0.0
        self._wheel_offsets = ()  # type: Tuple[float, ...]

    def _use_circuit(self, world_seed: int) -> None:
        """Makes ``world_seed``'s circuit current: its track, ground texture, NPCs and tracker.

        Raises:
            SpecError: more NPCs than the circuit has room for.
        """
        if world_seed not in self._circuits:
            track = cached_track(world_seed, self._track_params)
            cameras = [s for s in self.sensors if s.type in CAMERA_TYPES]
            texture = build_texture(track, self._texture_resolution) if cameras else None
            self._circuits[world_seed] = (track, [Camera(s, texture, self.vehicle) for s in cameras],
                                          Traffic(track, self.npc_vehicles), RouteTracker(track.route))
        self.seed = world_seed
        self.track, self._cameras, self.traffic, self._tracker = self._circuits[world_seed]

    # -- WorldBackend ----------------------------------------------------------------------------

    def spec(self) -> WorldSpec:
        return self._spec

    def settings(self) -> Dict[str, Any]:
        """``python -m carla_client`` rebuilds this world from these (vehicle and track parameters
        are the defaults there)."""
        return {"seed": self.seed, "tick_seconds": self.tick_seconds,
                "npc_vehicles": self.traffic.count,
                "sensors": [sensor.to_dict() for sensor in self.sensors]}

    def stop(self) -> None:
        self._state = None  # the next session starts with a reset

    def reset(self, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None) -> Tick:
        """Places the ego on the route and returns that tick (the next frame).

        Raises:
            SpecError: an unknown option or a bad option value.
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise SpecError("unknown reset option(s) {}; the built-in world knows {}".format(
                unknown, sorted(RESET_OPTIONS)))
        if seed is not None:
            self._rng = np.random.RandomState(_seed_words(seed, 0x65706973))
        if "world_seed" in options:
            world_seed = options["world_seed"]
            if world_seed not in self.world_seeds or isinstance(world_seed, bool):
                raise SpecError("world_seed {!r} is not served here; this world's seeds are {}".format(
                    world_seed, list(self.world_seeds)))
            self._use_circuit(int(world_seed))
        elif len(self.world_seeds) > 1:
            self._use_circuit(self.world_seeds[self._rng.randint(len(self.world_seeds))])
        route = self.track.route
        try:
            distance = float(options.get("start_distance", 0.0))
            speed = float(options.get("start_speed", 0.0))
        except (TypeError, ValueError) as e:
            raise SpecError("start_distance and start_speed must be numbers: {}".format(e)) from e
        if not (math.isfinite(distance) and math.isfinite(speed) and 0.0 <= speed <= 30.0):
            raise SpecError("need a finite start_distance and start_speed in [0, 30] m/s, got "
                            "{!r}, {!r}".format(distance, speed))
        lateral = heading_jitter = 0.0
        if bool(options.get("random_start", False)):
            distance = self._rng.uniform(0.0, route.length)
            lateral = self._rng.uniform(-RANDOM_START_LATERAL, RANDOM_START_LATERAL)
            heading_jitter = self._rng.uniform(-RANDOM_START_HEADING, RANDOM_START_HEADING)
        xs, ys, headings = route.pose_at(np.array([distance]))
        x, y, heading = float(xs[0]), float(ys[0]), float(headings[0])
        x, y = x - lateral * math.sin(heading), y + lateral * math.cos(heading)
        self._state = VehicleState(x, y, wrap_angle(heading + heading_jitter), speed)
        projection = self._tracker.locate(x, y)
        self.traffic.reset(self._rng, self._ego_lanes(projection))
        self._frame += 1
        self._route_distance = 0.0
        self._wheel_offsets = self._offsets(self._state, projection, self._wheels)
        self._previous, self._events = self._state, []
        return self._tick(self._state, self._state, projection, [])

    def step(self, control: VehicleControl) -> Tick:
        """Advances one tick under ``control``.

        Raises:
            ProtocolError: step before reset.
        """
        if self._state is None:
            raise ProtocolError("step() before reset(): the built-in world needs a reset first")
        previous, before = self._state, self._tracker.last
        moved = advance(previous, control, self.vehicle, self.tick_seconds)
        projection = self._tracker.peek(moved.x, moved.y)
        self.traffic.step(self.tick_seconds, self._ego_lanes(projection))
        events = []  # type: List[Dict[str, Any]]
        frame = self._frame + 1
        hit = self._collision(moved, projection)
        if hit is not None:
            state = previous.copy()
            state.steer = moved.steer
            state.stop()
            projection = before
            self._stop_npcs_touching(state)
            if self._report_collisions:
                events.append({"type": "collision", "frame": frame, "other": hit[0],
                               "intensity": hit[1]})
        else:
            state = moved
            self._tracker.last = projection
        self._route_distance += wrap_angle_distance(projection.distance - before.distance,
                                                    self.track.length)
        offsets = self._offsets(state, projection, self._wheels)
        crossed = self._crossed(self._wheel_offsets, offsets)
        self._wheel_offsets = offsets
        if crossed and self._report_invasions:
            events.append({"type": "lane_invasion", "frame": frame, "markings": crossed})
        self._frame = frame
        self._state = state
        self._previous, self._events = previous, events
        return self._tick(previous, state, projection, events)

    @property
    def route_projection(self) -> Optional[Projection]:
        """The ego's projection onto the route at the current tick (None before the first reset)."""
        return self._tracker.last if self._state is not None else None

    def snapshot(self) -> "_Snapshot":
        """Everything a later tick depends on: ego, NPCs, route tracker, clock, random generator and
        the last tick's inputs (cameras are stateless and re-render from them).

        Raises:
            SnapshotError: before the first reset of the session.
        """
        if self._state is None:
            raise SnapshotError("the built-in world has nothing to snapshot before its first reset")
        return copy.deepcopy(_Snapshot(
            self._state, self._previous, self._events, self._frame, self._route_distance,
            self._wheel_offsets, self._tracker.last, self._rng.get_state(),
            self.traffic.get_state(), self.seed))

    def restore(self, state: "_Snapshot") -> Tick:
        """Restores a ``snapshot`` (which stays valid) and returns the tick of that moment.

        Raises:
            SnapshotError: ``state`` is not a snapshot of a built-in world.
        """
        if not isinstance(state, _Snapshot):
            raise SnapshotError("not a snapshot of the built-in world: {!r}".format(type(state)))
        saved = copy.deepcopy(state)  # later steps must not change the stored snapshot
        self._use_circuit(saved.world_seed)
        self._state, self._previous, self._events = saved.ego, saved.previous, saved.events
        self._frame, self._route_distance = saved.frame, saved.route_distance
        self._wheel_offsets, self._tracker.last = saved.wheel_offsets, saved.projection
        self._rng.set_state(saved.rng)
        self.traffic.set_state(saved.traffic)
        return self._tick(self._previous, self._state, self._tracker.last, list(self._events))

    # -- physics helpers -------------------------------------------------------------------------

    def _offsets(self, state: VehicleState, projection: Projection,
                 points: Sequence[Tuple[float, float]]) -> Tuple[float, ...]:
        """Signed distances of body points from the road's centre line (right positive)."""
        error = state.yaw - projection.heading
        s, c = math.sin(error), math.cos(error)
        centre = projection.lateral + self._half_lane
        return tuple(centre + fx * s + fy * c for fx, fy in points)

    def _crossed(self, before: Sequence[float], after: Sequence[float]) -> List[str]:
        crossed = []  # type: List[str]
        for position, kind in self._markings:
            if any((a < position) != (b < position) for a, b in zip(before, after)):
                if kind not in crossed:
                    crossed.append(kind)
        return crossed

    def _collision(self, moved: VehicleState, projection: Projection
                   ) -> Optional[Tuple[str, float]]:
        """("barrier" or "vehicle", normal impulse in N*s) when the moved ego hits something."""
        barrier = self.track.params.barrier_offset
        if any(abs(d) > barrier for d in self._offsets(moved, projection, self._body)):
            return "barrier", self.vehicle.mass * abs(moved.speed)
        if self.traffic.count:
            x, y, yaw = self.traffic.poses_arrays()
            pose = (moved.x, moved.y, moved.yaw)
            for i in np.flatnonzero(np.hypot(x - moved.x, y - moved.y) < 6.0):
                if boxes_overlap(pose, (x[i], y[i], yaw[i]), self.vehicle):
                    npc_v = self.traffic.speed[i]
                    dvx = moved.vx - npc_v * math.cos(yaw[i])
                    dvy = moved.vy - npc_v * math.sin(yaw[i])
                    self.traffic.hold(int(i))
                    return "vehicle", self.vehicle.mass * _norm(dvx, dvy)
        return None

    def _stop_npcs_touching(self, state: VehicleState) -> None:
        """After the ego was pushed back, NPCs that still overlap it undo their move too."""
        if not self.traffic.count:
            return
        x, y, yaw = self.traffic.poses_arrays()
        for i in np.flatnonzero(np.hypot(x - state.x, y - state.y) < 6.0):
            if boxes_overlap((state.x, state.y, state.yaw), (x[i], y[i], yaw[i]), self.vehicle):
                self.traffic.hold(int(i))

    def _ego_lanes(self, projection: Projection) -> List[Tuple[int, float]]:
        """The (lane, sigma) positions the ego blocks for NPC car-following."""
        lanes = []
        if projection.lateral > -self._half_lane - 1.0:
            lanes.append((0, projection.distance))
        if projection.lateral < -self._half_lane + 1.0:
            lanes.append((1, self.track.left_distance(projection.index)))
        return lanes

    def _lead(self, state: VehicleState, projection: Projection) -> Tuple[float, float]:
        """The vehicle ahead in the ego's lane, exactly (see Traffic.lead): the lane is the one under
        the ego's centre, "ahead" its direction of travel along that lane."""
        heading_error = wrap_angle(state.yaw - projection.heading)
        along_route = math.cos(heading_error) >= 0.0
        ego_speed = math.hypot(state.vx, state.vy) * abs(math.cos(heading_error))
        if projection.lateral >= -self._half_lane:  # the ego's own lane, the route's direction
            return self.traffic.lead(0, projection.distance, along_route, ego_speed,
                                     self.vehicle.length, LEAD_RANGE)
        return self.traffic.lead(1, self.track.left_distance(projection.index), not along_route,
                                 ego_speed, self.vehicle.length, LEAD_RANGE)

    # -- output ----------------------------------------------------------------------------------

    def _tick(self, previous: VehicleState, state: VehicleState, projection: Projection,
              events: List[Dict[str, Any]]) -> Tick:
        dt = self.tick_seconds
        centre = projection.lateral + self._half_lane
        measurements = {
            "location": np.array([state.x, state.y, 0.0]),
            "yaw": math.degrees(wrap_angle(state.yaw)),
            "velocity": np.array([state.vx, state.vy, 0.0]),
            "speed": _norm(state.vx, state.vy),
            "acceleration": np.array([(state.vx - previous.vx) / dt, (state.vy - previous.vy) / dt,
                                      0.0]),
            "lateral_offset": projection.lateral,
            "heading_error": wrap_angle(state.yaw - projection.heading),
            "route_distance": self._route_distance,
            "route_completion": self._route_distance / self.track.length,
            "off_road": abs(centre) > self.track.params.half_width,
        }
        measurements["lead_distance"], measurements["lead_closing_speed"] = self._lead(
            state, projection)
        observation = {}  # type: Dict[str, np.ndarray]
        if self._cameras:
            pose = (state.x, state.y, state.yaw)
            vehicles = self.traffic.poses_arrays() + (self.traffic.colour,) \
                if self.traffic.count else None
            for camera in self._cameras:
                observation[camera.name] = camera.render(pose, vehicles)
        return Tick(self._frame, self._frame * dt, observation, measurements, events)


class _Snapshot(NamedTuple):
    """A saved BuiltinWorld state (opaque to everyone else)."""

    ego: VehicleState
    previous: VehicleState
    events: List[Dict[str, Any]]
    frame: int
    route_distance: float
    wheel_offsets: Tuple[float, ...]
    projection: Projection
    rng: Tuple[Any, ...]
    traffic: Dict[str, Any]
    world_seed: int  # the circuit driven (a world may serve several)


def _norm(x: float, y: float) -> float:
    """sqrt(x^2 + y^2), bit for bit the same under every Python: math.hypot's algorithm changed in
    3.8, which made the same episode differ in the last bit between a 3.6 and a 3.11 world."""
    return math.sqrt(x * x + y * y)


def wrap_angle_distance(delta: float, length: float) -> float:
    """Wraps an arc-length difference on a loop of ``length`` to [-length/2, length/2)."""
    return (delta + 0.5 * length) % length - 0.5 * length
